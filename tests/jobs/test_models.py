"""Model validation names the field; the database itself enforces uniqueness and valid choices."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from jobs.models import Dataset, Job, Site, Study

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


@pytest.fixture
def site():
    return Site.objects.create(name="site-1", backend="process")


@pytest.mark.parametrize("name", ["Upper", "-lead", "trail-", "has space", "a" * 64, ""])
def test_bad_study_names_are_refused_by_validation_naming_the_field(site, name):
    with pytest.raises(ValidationError) as info:
        Study(site=site, name=name).full_clean()
    assert "name" in info.value.message_dict


@pytest.mark.parametrize("name", ["a", "cancer-2024", "x_y", "a" * 63, "0abc9"])
def test_good_study_names_pass(site, name):
    Study(site=site, name=name).full_clean()


def test_bad_study_name_is_refused_by_the_database_too(site):
    with pytest.raises(IntegrityError), transaction.atomic():
        Study.objects.create(site=site, name="Not Valid")


def test_study_names_are_unique_per_site_only(site):
    other = Site.objects.create(name="site-2", backend="process")
    Study.objects.create(site=site, name="s1")
    Study.objects.create(site=other, name="s1")
    with pytest.raises(IntegrityError), transaction.atomic():
        Study.objects.create(site=site, name="s1")


def test_dataset_mode_is_ro_or_rw_in_form_and_database(site):
    study = Study.objects.create(site=site, name="s1")
    with pytest.raises(ValidationError) as info:
        Dataset(study=study, name="d1", source="/data/x", mode="wo").full_clean()
    assert "mode" in info.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        Dataset.objects.create(study=study, name="d1", source="/data/x", mode="wo")


def test_dataset_needs_a_source(site):
    study = Study.objects.create(site=site, name="s1")
    with pytest.raises(IntegrityError), transaction.atomic():
        Dataset.objects.create(study=study, name="d1", source="", mode="ro")


def test_site_backend_must_be_a_known_one():
    with pytest.raises(ValidationError) as info:
        Site(name="site-9", backend="slurm").full_clean()
    assert "backend" in info.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        Site.objects.create(name="site-9", backend="slurm")


def test_job_id_is_unique_per_site_and_state_is_constrained(site):
    Job.objects.create(site=site, job_id="j1", backend="process")
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.create(site=site, job_id="j1", backend="process")
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.create(site=site, job_id="j2", backend="process", state="exploded")
