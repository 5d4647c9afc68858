"""Site, study and dataset services: one set of validation messages for the API and the forms."""

import pytest
from django.core.exceptions import ValidationError

from jobs.models import Job
from jobs.services import catalog

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def errors_of(call):
    with pytest.raises(ValidationError) as info:
        call()
    return info.value.message_dict


def test_site_settings_are_parsed_by_the_backend(tmp_path):
    site = catalog.site_create(name="site-1", backend="process", process={"workspace": str(tmp_path)})
    assert site.process["workspace"] == str(tmp_path)
    errors = errors_of(lambda: catalog.site_create(name="site-2", backend="process", process={"workspace": "relative"}))
    assert "process.workspace" in errors


def test_bad_site_name_and_data_root_are_named(tmp_path):
    assert "name" in errors_of(lambda: catalog.site_create(name="bad name"))
    assert "allowed_data_roots" in errors_of(lambda: catalog.site_create(name="s", allowed_data_roots=["/"]))
    assert "allowed_data_roots" in errors_of(lambda: catalog.site_create(name="s", allowed_data_roots=["rel"]))


def test_dataset_source_must_exist_under_allowed_roots(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    site = catalog.site_create(name="site-1", allowed_data_roots=[str(root)], process={"workspace": str(tmp_path / "ws")})
    study = catalog.study_create(site=site, name="s1")
    dataset = catalog.dataset_create(study=study, name="d1", source=str(root / "a"), mode="rw")
    assert dataset.mount_path == "/data/s1/d1"
    assert "allowed data roots" in errors_of(lambda: catalog.dataset_create(study=study, name="d2", source=str(tmp_path)))["source"][0]
    assert "does not exist" in errors_of(lambda: catalog.dataset_create(study=study, name="d3", source=str(root / "nope")))["source"][0]
    assert "mode" in errors_of(lambda: catalog.dataset_create(study=study, name="d4", source=str(root / "a"), mode="x"))
    assert "name" in errors_of(lambda: catalog.dataset_create(study=study, name="Bad", source=str(root / "a")))


def test_study_env_refuses_launcher_owned_names_and_normalises_values(tmp_path):
    site = catalog.site_create(name="site-1", process={"workspace": str(tmp_path)})
    errors = errors_of(lambda: catalog.study_create(site=site, name="s1", env={"PYTHONPATH": "/x"}))
    assert "launcher-owned" in errors["env"][0]
    study = catalog.study_create(site=site, name="s2", env={"FLAG": True, "N": 3})
    assert study.env == {"FLAG": "true", "N": "3"}
    assert "docker_kwargs" in errors_of(lambda: catalog.study_create(site=site, name="s3", docker_kwargs={"shm_size": "1g"}))


def test_site_with_jobs_in_flight_cannot_be_deleted(tmp_path):
    site = catalog.site_create(name="site-1", process={"workspace": str(tmp_path)})
    job = Job.objects.create(site=site, job_id="j1", backend="process", state="running")
    with pytest.raises(catalog.SiteBusy):
        catalog.site_delete(site=site)
    Job.objects.filter(pk=job.pk).update(state="succeeded")
    catalog.site_delete(site=site)
