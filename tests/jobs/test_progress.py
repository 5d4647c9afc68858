"""A job's federated training progress: fed from its output lines (the log follower) and from its
saved logs tail, written through the lifecycle door only when a reader would see a change, pushed as
a job.update, shown by the API (as its schema says) and on the job page. The output is real NVFlare
2.9 output (tests/fixtures/nvflare_logs/); the follower test replays it from a real process job."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from rest_framework.test import APIClient

from backends.base import JobRequest
from backends.process import ProcessBackend, ProcessSiteConfig
from jobs import events
from jobs.models import Job, JobEvent, Role, Site, SiteMembership
from jobs.payloads import PROGRESS_FIELDS, job_payload
from jobs.services.lifecycle import job_note, job_observe, verdict
from jobs.services.progress import ProgressFeed
from jobs.watchers import LogFollower
from tests.conftest import FAKE_MODULE, client_job_args, process_settings
from tests.util import wait_until

pytestmark = pytest.mark.embedded
LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "nvflare_logs"
REPLAY = "replay_nvflare_log"  # tests/fixtures/nvflare_logs/replay_nvflare_log.py


def lines(name: str) -> list[str]:
    return (LOGS / name).read_text().splitlines()


def make_job(site: Site, job_id: str = "j1", *, role: str = "server", state: str = "running", **fields) -> Job:
    return Job.objects.create(site=site, job_id=job_id, role=role, backend=site.backend, state=state, **fields)


@pytest.fixture
def site(db, workspace, users):
    site = Site.objects.create(name="site-1", backend="process", process=process_settings(
        workspace, allowed_modules=[FAKE_MODULE, REPLAY], default_job_env={"PYTHONPATH": str(LOGS)}))
    SiteMembership.objects.create(site=site, user=users["viewer"], role=Role.VIEWER)
    return site


def deploy_config(workspace: Path, job_id: str) -> None:
    """The server app as NVFlare deploys it into the job's directory (a real exported FedAvg config)."""
    config = workspace / job_id / "app_server" / "config"
    config.mkdir(parents=True)
    shutil.copyfile(LOGS / "fedavg_config_fed_server.json", config / "config_fed_server.json")


def test_feeding_real_output_records_progress_and_writes_only_on_change(site, django_capture_on_commit_callbacks):
    job = make_job(site)
    events_before = JobEvent.objects.filter(job=job).count()
    feed = ProgressFeed(job.pk)
    with django_capture_on_commit_callbacks(execute=False) as pushes:
        written = [feed.feed([line]) for line in lines("poc_sag_server.log")]
    written = [w for w in written if w is not None]
    # Round 0, its aggregation, round 1, its aggregation, round 2, its aggregation, the end.
    assert [(w["round"], w["aggregation_round"], w["aggregated_updates"], w["finished"]) for w in written] == [
        (0, None, None, False), (0, 0, 2, False), (1, 0, 2, False), (1, 1, 2, False), (2, 1, 2, False),
        (2, 2, 2, False), (2, 2, 2, True)]
    assert len(pushes) == len(written)  # each write is pushed, after commit
    job.refresh_from_db()
    assert job.progress == written[-1] and set(job.progress) == set(PROGRESS_FIELDS)  # PostgreSQL's jsonb orders keys its own way
    assert job.progress["last_aggregation_at"] and job.progress["updated_at"].endswith("Z")
    assert JobEvent.objects.filter(job=job).count() == events_before  # no timeline noise
    # The same output again (a restarted follower reads the tail again): nothing to write.
    again = ProgressFeed(job.pk)
    assert again.feed(lines("poc_sag_server.log")) is None


def test_last_aggregation_time_is_kept_until_a_new_aggregation(site):
    job = make_job(site)
    feed = ProgressFeed(job.pk)
    text = lines("sim_fedavg_server.log")
    first_round_end = next(i for i, line in enumerate(text) if "Aggregated 2/2" in line)
    feed.feed(text[:first_round_end + 1])
    job.refresh_from_db()
    aggregated_at = job.progress["last_aggregation_at"]
    second_round = next(i for i, line in enumerate(text) if "Round 1 started." in line)
    feed.feed(text[first_round_end + 1:second_round + 1])
    job.refresh_from_db()
    assert (job.progress["round"], job.progress["last_aggregation_at"]) == (1, aggregated_at)
    assert job.progress["updated_at"] > aggregated_at


def test_total_comes_from_the_deployed_server_config(site, workspace):
    deploy_config(workspace, "j1")
    server = make_job(site, "j1")
    ProgressFeed(server.pk).feed(lines("sim_fedavg_server.log"))
    server.refresh_from_db()
    assert (server.progress["round"], server.progress["total_rounds"], server.progress["finished"]) == (2, 3, True)


def test_a_kubernetes_job_reads_no_host_file(db, workspace):
    site = Site.objects.create(name="k8s-1", backend="kubernetes", kubernetes={"workspace": str(workspace)})
    deploy_config(workspace, "j1")
    job = make_job(site, "j1")
    ProgressFeed(job.pk).feed(lines("sim_fedavg_server.log"))
    job.refresh_from_db()
    assert job.progress["round"] == 2 and job.progress["total_rounds"] is None


def test_a_client_job_printing_server_lines_gets_no_server_progress(site, workspace):
    deploy_config(workspace, "c1")
    client = make_job(site, "c1", role="client")
    assert ProgressFeed(client.pk).feed(lines("poc_sag_server.log")) is None
    client.refresh_from_db()
    assert client.progress is None
    ProgressFeed(client.pk).feed(lines("poc_sag_client_site1.log"))
    client.refresh_from_db()
    assert (client.progress["round"], client.progress["total_rounds"], client.progress["aggregation_round"]) == (
        2, 3, None)


def test_a_feed_never_raises(site):
    assert ProgressFeed(10**9).feed(lines("poc_sag_server.log")) is None  # no such job
    job = make_job(site)
    Job.objects.filter(pk=job.pk).update(progress={"round": "x", "total_rounds": [1]})  # a damaged row
    assert ProgressFeed(job.pk).feed(lines("poc_sag_server.log"))["round"] == 2


def test_the_saved_tail_records_progress_at_exit(site):
    job = make_job(site)
    job_observe(job.pk, verdict("succeeded", return_code=0), source="watcher")
    _, changed = job_note(job.pk, source="watcher", logs_tail="\n".join(lines("poc_sag_server.log")))
    job.refresh_from_db()
    assert changed and job.logs_tail
    assert (job.progress["round"], job.progress["aggregated_updates"], job.progress["finished"]) == (2, 2, True)
    # An exit observed with its tail (the worker's path) records it in the same write.
    other = make_job(site, "j2")
    job_observe(other.pk, verdict("succeeded", return_code=0, logs_tail="\n".join(lines("sim_fedavg_server.log"))),
                source="worker")
    other.refresh_from_db()
    assert other.state == "succeeded" and other.progress["finished"] is True


def test_the_tail_keeps_what_was_seen_live(site):
    job = make_job(site)
    ProgressFeed(job.pk).feed(lines("poc_sag_server.log"))
    job.refresh_from_db()
    live = job.progress
    job_observe(job.pk, verdict("succeeded", return_code=0), source="watcher")
    job_note(job.pk, source="watcher", logs_tail="\n".join(lines("poc_sag_server.log")))
    job.refresh_from_db()
    assert job.progress == live  # same aggregation: its time is kept, nothing rewritten


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_progress_change_is_pushed_as_a_job_update(workspace):
    site = await Site.objects.acreate(name="site-1", backend="process", process={"workspace": str(workspace)})
    job = await Job.objects.acreate(site=site, job_id="j1", role="server", backend="process", state="running")
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(events.job_group(job.pk), channel)
    feed = ProgressFeed(job.pk)
    await sync_to_async(feed.feed)(lines("poc_sag_server.log")[:30])
    message = await asyncio.wait_for(layer.receive(channel), timeout=5)
    frame = json.loads(message["text"])
    assert (message["type"], message["seq"], frame["type"]) == ("job.update", None, "job.update")
    assert frame["job"]["progress"]["round"] == 0 and frame["job"]["state"] == "running"


def test_the_api_shows_progress_as_its_schema_declares(site, users):
    job = make_job(site)
    ProgressFeed(job.pk).feed(lines("sim_fedavg_server.log"))
    fresh = make_job(site, "j2")
    client = APIClient()
    client.force_login(users["viewer"])
    detail = client.get(f"/api/v1/jobs/{job.pk}/").json()
    assert detail["progress"]["round"] == 2 and detail["progress"]["aggregated_updates"] == 2
    assert client.get(f"/api/v1/jobs/{fresh.pk}/").json()["progress"] is None
    listed = {j["id"]: j for j in client.get("/api/v1/jobs/").json()["results"]}
    assert listed[job.pk]["progress"] == detail["progress"]
    schema = client.get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]
    declared = {"$ref": "#/components/schemas/JobDetail", "components": json_schema(schema["components"])}
    jsonschema.validate(detail, declared)
    jsonschema.validate(listed[fresh.pk], {"$ref": "#/components/schemas/Job", "components": declared["components"]})
    progress = components["JobProgress"]
    assert list(progress["properties"]) == list(PROGRESS_FIELDS)
    assert set(progress["required"]) == set(PROGRESS_FIELDS)
    bad = dict(detail, progress={**detail["progress"], "round": "2"})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, declared)


def json_schema(node):
    """OpenAPI 3.0's `nullable: true` as JSON Schema says it (jsonschema ignores `nullable`)."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


def test_the_job_page_shows_progress_as_text(site, users, client):
    job = make_job(site)
    ProgressFeed(job.pk).feed(lines("poc_sag_server.log")[:60])
    client.force_login(users["viewer"])
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Round 2" in page and "last aggregation" in page and "(2 updates)" in page
    assert 'id="job-progress-data"' in page
    assert job_payload(Job.objects.select_related("site").get(pk=job.pk))["progress"]["round"] == 1


@pytest.mark.django_db(transaction=True)
def test_a_real_job_followed_live_shows_its_rounds(workspace, settings):
    """A real process job replays a real FedAvg server output; its log follower (jobs.watchers)
    records the progress while it runs, the total from the config the job deployed."""
    settings.LAUNCHER_LOGS_TAIL_LINES = 1000
    site = Site.objects.create(name="site-1", backend="process", process=process_settings(
        workspace, allowed_modules=[REPLAY], default_job_env={"PYTHONPATH": str(LOGS)}))
    backend = ProcessBackend(site="site-1", config=ProcessSiteConfig.from_dict(site.process))
    job = make_job(site, "fl-1")
    request = JobRequest(site="site-1", job_pk=str(job.pk), job_id="fl-1", job_args=client_job_args("fl-1"),
                         set_options=("log=sim_fedavg_server.log", "config=fedavg_config_fed_server.json",
                                      "pace=0.03", "linger=2"))
    request = JobRequest(**{**request.__dict__, "job_args": {**request.job_args, "exe_module": ["-m", REPLAY]}})
    handle = backend.launch(backend.prepare(request))
    follower = LogFollower(backend, job.pk, "site-1", handle)
    follower.start()
    try:
        seen = set()

        def progressed():
            job.refresh_from_db()
            if job.progress:
                seen.add((job.progress["round"], job.progress["finished"]))
            return job.progress and job.progress["finished"]

        wait_until(progressed, timeout=30, interval=0.05, message="the end of training")
    finally:
        follower.stop.set()
        follower.join(5)
        backend.terminate(handle)
    assert (job.progress["round"], job.progress["total_rounds"], job.progress["aggregated_updates"]) == (2, 3, 2)
    assert len({r for r, _ in seen}) >= 2  # seen while it ran, not only at the end


def test_a_config_that_cannot_be_read_never_stops_the_tail_from_being_saved(db, tmp_path):
    not_a_directory = tmp_path / "workspace"
    not_a_directory.write_text("a file where the workspace should be")
    site = Site.objects.create(name="odd", backend="process", process={"workspace": str(not_a_directory)})
    job = make_job(site)
    job_observe(job.pk, verdict("failed", return_code=1), source="watcher")
    _, changed = job_note(job.pk, source="watcher", logs_tail="\n".join(lines("poc_sag_server.log")))
    job.refresh_from_db()
    assert changed and job.logs_tail and job.progress["round"] == 2 and job.progress["total_rounds"] is None
