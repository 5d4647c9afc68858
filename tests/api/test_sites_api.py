"""Sites, studies, datasets and the study files over the API: catalog validation surfaces as
field-named 400s, deletes of busy sites are 409, every change is audited."""

from __future__ import annotations

import pytest
import yaml

from jobs.models import AuditEntry, Dataset, Job, Site, Study

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def test_staff_creates_a_site_and_backend_errors_name_the_field(as_user, tmp_path):
    staff = as_user("staff")
    created = staff.post("/api/v1/sites/", {"name": "site-7", "backend": "process",
                                            "process": {"workspace": str(tmp_path), "allow_root": True}},
                         format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["process"]["workspace"] == str(tmp_path)
    bad = staff.post("/api/v1/sites/", {"name": "site-8", "process": {"workspace": "relative"}}, format="json")
    assert bad.status_code == 400 and "process.workspace" in bad.json()
    docker = staff.post("/api/v1/sites/", {"name": "site-9", "backend": "docker", "docker": {"network": 5}}, format="json")
    assert docker.status_code == 400 and any(k.startswith("docker.") for k in docker.json()), docker.json()
    assert staff.post("/api/v1/sites/", {"name": "bad name"}, format="json").json()["name"]
    assert staff.post("/api/v1/sites/", {"name": "s", "docker": "x"}, format="json").json()["docker"]
    assert staff.post("/api/v1/sites/", {"name": "s", "colour": "red"}, format="json").json()["colour"]
    assert list(Site.objects.values_list("name", flat=True)) == ["site-7"]
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.target, entry.actor, entry.user.username) == ("site.create", "site:site-7", "staff", "staff")


def test_site_delete_is_409_while_jobs_are_in_flight(process_site, as_user):
    job = Job.objects.create(site=process_site, job_id="j1", backend="process", state="running")
    refused = as_user("owner").delete("/api/v1/sites/site-1/")  # a site admin: deleting drops job records
    assert refused.status_code == 403 and refused.json()["detail"].startswith("Only platform staff may delete sites")
    owner = as_user("staff")
    busy = owner.delete("/api/v1/sites/site-1/")
    assert busy.status_code == 409 and "in flight" in busy.json()["detail"]
    Job.objects.filter(pk=job.pk).update(state="succeeded")
    assert owner.delete("/api/v1/sites/site-1/").status_code == 204
    assert not Site.objects.exists()
    assert list(AuditEntry.objects.values_list("action", flat=True)) == ["site.delete"]


def test_test_connection_returns_the_backend_checks(process_site, as_user):
    results = as_user("owner").post("/api/v1/sites/site-1/test/", {}, format="json")
    assert results.status_code == 200
    assert {r["name"]: r["ok"] for r in results.json()}.items() >= {"workspace": True, "python": True}.items()
    assert as_user("viewer").post("/api/v1/sites/site-1/test/", {}, format="json").status_code == 403


def test_studies_and_datasets_crud_with_field_errors_and_audit(process_site, as_user, data_root):
    owner = as_user("owner")
    base = "/api/v1/sites/site-1/studies/"
    assert owner.post(base, {"name": "cohort", "env": {"FLAG": True}}, format="json").status_code == 201
    assert Study.objects.get().env == {"FLAG": "true"}
    assert "env" in owner.post(base, {"name": "c2", "env": {"PYTHONPATH": "/x"}}, format="json").json()
    assert "docker_kwargs" in owner.post(base, {"name": "c3", "docker_kwargs": {"shm_size": "1g"}}, format="json").json()
    assert owner.patch(f"{base}cohort/", {"description": "CT"}, format="json").json()["description"] == "CT"
    datasets = f"{base}cohort/datasets/"
    made = owner.post(datasets, {"name": "ct", "source": str(data_root / "cohort-a"), "mode": "rw"}, format="json")
    assert made.status_code == 201 and made.json()["mount_path"] == "/data/cohort/ct"
    outside = owner.post(datasets, {"name": "x", "source": "/etc"}, format="json")
    assert outside.status_code == 400 and "source" in outside.json()
    assert owner.post(datasets, {"name": "y", "source": str(data_root), "mode": "rx"}, format="json").json()["mode"]
    assert owner.patch(f"{datasets}ct/", {"mode": "ro"}, format="json").json()["mode"] == "ro"
    viewer = as_user("viewer")
    assert viewer.get(f"{datasets}ct/").json()["source"] == str(data_root / "cohort-a")
    assert [s["name"] for s in viewer.get(base).json()] == ["cohort"]
    assert viewer.patch(f"{datasets}ct/", {"mode": "rw"}, format="json").status_code == 403
    assert viewer.post(base, {"name": "v"}, format="json").status_code == 403
    assert owner.get(f"{datasets}nope/").status_code == 404
    assert owner.delete(f"{datasets}ct/").status_code == 204
    assert owner.delete(f"{base}cohort/").status_code == 204
    assert not Study.objects.exists()
    assert list(AuditEntry.objects.order_by("id").values_list("action", flat=True)) == [
        "study.create", "study.update", "dataset.create", "dataset.update", "dataset.delete", "study.delete"]


V1 = """\
cohort-a:
  ct:
    source: {root}/cohort-a
    mode: ro
  labels:
    source: {root}/cohort-a
    mode: rw
empty-study: {{}}
"""


def test_study_data_round_trips_as_yaml_and_is_all_or_nothing(process_site, as_user, data_root):
    owner = as_user("owner")
    url = "/api/v1/sites/site-1/study-data/"
    text = V1.format(root=data_root)
    put = owner.put(url, text, content_type="application/yaml")
    assert put.status_code == 200, put.content
    got = owner.get(url)
    assert got["Content-Type"].startswith("application/yaml")
    assert yaml.safe_load(got.content) == yaml.safe_load(text)
    assert AuditEntry.objects.get().action == "study_data.replace"

    # One bad entry: the whole file is refused and nothing changes.
    broken = text.replace("mode: rw", "mode: rx")
    refused = owner.put(url, broken, content_type="application/yaml")
    assert refused.status_code == 400 and refused["Content-Type"] == "application/json"
    assert refused.json() == {"study_data": ["dataset entry 'cohort-a/labels' must set mode to 'ro' or 'rw'."]}
    outside = owner.put(url, text.replace(f"{data_root}/cohort-a\n    mode: rw", "/etc\n    mode: rw"),
                        content_type="application/yaml")
    assert outside.status_code == 400 and "cohort-a/labels.source" in outside.json()
    malformed = owner.put(url, "a: [1,\n", content_type="application/yaml")
    assert malformed.status_code == 400 and "detail" in malformed.json()
    assert yaml.safe_load(owner.get(url).content) == yaml.safe_load(text)
    assert Dataset.objects.count() == 2

    # A file without a study removes that study's datasets.
    assert owner.put(url, "empty-study: {}\n", content_type="application/yaml").status_code == 200
    assert not Dataset.objects.exists()
    assert as_user("viewer").put(url, text, content_type="application/yaml").status_code == 403


V2 = """\
format_version: 2
studies:
  cohort-a:
    container:
      image: nvflare/pt:2.7
    datasets:
      ct:
        type: mount
        source: {root}/cohort-a
        mode: ro
    env:
      LOG_LEVEL: info
      DEBUG: true
"""


def test_study_runtime_round_trip_and_unsupported_keys(process_site, as_user, data_root):
    owner = as_user("owner")
    url = "/api/v1/sites/site-1/study-runtime/"
    put = owner.put(url, V2.format(root=data_root), content_type="application/yaml")
    assert put.status_code == 200, put.content
    study = Study.objects.get(name="cohort-a")
    assert study.image == "nvflare/pt:2.7" and study.env == {"LOG_LEVEL": "info", "DEBUG": "true"}
    got = yaml.safe_load(owner.get(url).content)
    assert got["format_version"] == 2 and got["studies"]["cohort-a"]["datasets"]["ct"]["mode"] == "ro"
    with_secret = V2.format(root=data_root) + "    secret_env:\n      TOKEN: {source: s, key: k}\n"
    refused = owner.put(url, with_secret, content_type="application/yaml")
    assert refused.status_code == 400
    assert "Docker and Kubernetes sites only" in refused.json()["cohort-a.secret_env"][0]  # a process site
    as_string = owner.put(url, V2.format(root=data_root).replace("format_version: 2", "format_version: '2'"),
                          content_type="application/yaml")
    assert "format_version must be 2" in as_string.json()["study_runtime"][0]
    k8s_only = V2.format(root=data_root) + "    pod_template: {kind: Pod}\n"
    assert "cohort-a.pod_template" in owner.put(url, k8s_only, content_type="application/yaml").json()
    assert Study.objects.get(name="cohort-a").pod_template is None


def test_oversized_study_blocks_are_refused_on_every_path(process_site, as_user):
    """A study's env / docker_kwargs / pod_template sit in a row every viewer reads: bounded in
    size through the API as through study files, with the field named and nothing stored."""
    client = as_user("owner")
    big_env = {f"VAR_{i}": "x" * 1000 for i in range(70)}  # ~72 KiB as JSON
    response = client.post("/api/v1/sites/site-1/studies/", {"name": "big", "env": big_env}, format="json")
    assert response.status_code == 400 and "limit" in response.json()["env"][0]
    assert not process_site.studies.exists()


def test_a_rename_is_audited_under_the_new_name_and_keeps_its_site(process_site, as_user):
    from jobs.models import AuditEntry

    assert as_user("staff").patch("/api/v1/sites/site-1/", {"name": "site-one"}, format="json").status_code == 200
    entry = AuditEntry.objects.get(action="site.update")
    assert entry.target == "site:site-one" and entry.site_id == process_site.pk
    assert entry.detail["renamed_from"] == "site-1"
