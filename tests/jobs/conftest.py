"""Fixtures the dashboard-page tests share: a study with one dataset, and a second site administered
by the outsider."""

from __future__ import annotations

import pytest

from jobs.models import Role, Site, SiteMembership
from jobs.services import catalog


@pytest.fixture
def study(process_site, data_root):
    study = catalog.study_create(site=process_site, name="cohort")
    catalog.dataset_create(study=study, name="train", source=str(data_root / "cohort-a"), mode="ro")
    return study


@pytest.fixture
def other_site(db, users, tmp_path):
    site = Site.objects.create(name="site-b", backend="process", process={"workspace": str(tmp_path / "ws-b")})
    SiteMembership.objects.create(site=site, user=users["outsider"], role=Role.ADMIN)
    return site
