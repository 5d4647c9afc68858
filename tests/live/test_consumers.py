"""The websocket consumers, through the real ASGI application (session auth, Origin check):
who may connect, what is forwarded, the resume handshake and the heartbeat."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from tests.live.communicator import WebsocketCommunicator

from backends.base import JobState
from jobs import events
from jobs.models import Job, JobEvent, Role, Site, SiteMembership
from jobs.services.lifecycle import job_observe, verdict
from jobs.services.resume import latest_seq as resume_latest_seq
from launcher_site.asgi import application
from tests.live.conftest import session_cookie, ws_headers

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def site_jobs(users):
    site = Site.objects.create(name="site-1")
    other = Site.objects.create(name="site-2")
    SiteMembership.objects.create(site=site, user=users["viewer"], role=Role.VIEWER)
    SiteMembership.objects.create(site=other, user=users["outsider"], role=Role.ADMIN)
    jobs = [Job.objects.create(site=site, job_id=f"j{i}", backend="process") for i in range(3)]
    foreign = Job.objects.create(site=other, job_id="theirs", backend="process")
    cookies = {name: session_cookie(user) for name, user in users.items()}
    return site, jobs, foreign, cookies


async def connect(path: str, cookie: str | None, origin: str = "http://127.0.0.1"):
    communicator = WebsocketCommunicator(application, path, headers=ws_headers(cookie, origin))
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def observe(job_pk: int, state, **kw):
    source = kw.pop("source", "watcher")
    job, _ = await sync_to_async(job_observe)(job_pk, verdict(state, **kw), source=source)
    return job


async def receive(communicator, timeout: float = 5) -> dict:
    return await communicator.receive_json_from(timeout=timeout)


async def test_anonymous_is_closed_with_4401_and_sent_nothing(site_jobs):
    communicator, connected, _ = await connect("/ws/sites/site-1/jobs/", None)
    assert connected
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}
    await communicator.wait()


@pytest.mark.parametrize("path", ["/ws/sites/site-1/jobs/", "/ws/sites/no-such-site/jobs/"])
async def test_user_without_access_is_closed_with_4403(site_jobs, path):
    _, _, _, cookies = site_jobs
    communicator, connected, _ = await connect(path, cookies["outsider"])
    assert connected
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 4403}
    # Nothing of site-1 reaches the refused socket afterwards either.
    site, jobs, _, _ = site_jobs
    await observe(jobs[0].pk, JobState.RUNNING)
    assert await communicator.receive_nothing(timeout=0.3)


async def test_job_socket_of_another_site_is_refused(site_jobs):
    _, _, foreign, cookies = site_jobs
    communicator, _, _ = await connect(f"/ws/jobs/{foreign.pk}/", cookies["viewer"])
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 4403}


async def test_foreign_origin_is_rejected_at_the_handshake(site_jobs):
    _, _, _, cookies = site_jobs
    communicator, connected, _ = await connect("/ws/sites/site-1/jobs/", cookies["viewer"], origin="https://evil.example")
    assert not connected


async def test_site_socket_forwards_every_change_of_that_site_only(site_jobs):
    site, jobs, foreign, cookies = site_jobs
    communicator, connected, _ = await connect("/ws/sites/site-1/jobs/", cookies["viewer"])
    assert connected
    await observe(foreign.pk, JobState.RUNNING)  # another site's job: never forwarded here
    job = await observe(jobs[0].pk, JobState.RUNNING)
    message = await receive(communicator)
    last = await JobEvent.objects.filter(job_id=jobs[0].pk).alast()
    assert message == {"type": "job.update", "job": message["job"], "seq": last.pk}
    assert message["job"]["id"] == job.pk and message["job"]["state"] == "running"
    assert message["job"]["site"] == "site-1" and "job_args" not in message["job"]
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_staff_may_watch_any_site(site_jobs):
    _, _, foreign, cookies = site_jobs
    communicator, _, _ = await connect("/ws/sites/site-2/jobs/", cookies["staff"])
    await observe(foreign.pk, JobState.STARTING)
    assert (await receive(communicator))["job"]["state"] == "starting"
    await communicator.disconnect()


async def test_job_socket_forwards_changes_and_log_lines_and_ignores_commands(site_jobs):
    site, jobs, _, cookies = site_jobs
    communicator, _, _ = await connect(f"/ws/jobs/{jobs[1].pk}/", cookies["viewer"])
    await communicator.send_json_to({"type": "terminate"})  # not a command channel
    await communicator.send_to(text_data="not json")
    await observe(jobs[0].pk, JobState.RUNNING)  # a sibling job: not on this socket
    await observe(jobs[1].pk, JobState.RUNNING)
    assert (await receive(communicator))["job"]["id"] == jobs[1].pk
    await sync_to_async(events.publish_log_lines)(jobs[1].pk, "site-1", ["line 1", "<b>line 2</b>"])
    assert await receive(communicator) == {"type": "job.log", "job": jobs[1].pk, "lines": ["line 1", "<b>line 2</b>"]}
    await sync_to_async(events.publish_logs_saved)(jobs[1].pk)
    assert await receive(communicator) == {"type": "job.log", "job": jobs[1].pk, "lines": [], "saved": True}
    job = await Job.objects.aget(pk=jobs[1].pk)
    assert job.state == "running"  # the "terminate" text changed nothing
    await communicator.disconnect()


async def test_resume_sends_exactly_the_missed_changes_in_order(site_jobs):
    site, jobs, foreign, cookies = site_jobs
    await observe(jobs[0].pk, JobState.STARTING)
    seen = (await JobEvent.objects.alast()).pk
    # While the browser was away: j1 and j2 change (j2 twice), j0 does not, another site's job does.
    await observe(jobs[1].pk, JobState.RUNNING)
    await observe(jobs[2].pk, JobState.STARTING)
    await observe(foreign.pk, JobState.RUNNING)
    await observe(jobs[2].pk, JobState.FAILED, exit_code=3)
    communicator, _, _ = await connect("/ws/sites/site-1/jobs/", cookies["viewer"])
    await communicator.send_json_to({"type": "resume", "seq": seen})
    first, second = await receive(communicator), await receive(communicator)
    assert [m["job"]["job_id"] for m in (first, second)] == ["j1", "j2"]
    assert second["job"]["state"] == "failed" and second["job"]["exit_code"] == 3
    assert second["seq"] == (await JobEvent.objects.filter(job_id=jobs[2].pk).alast()).pk
    assert first["seq"] < second["seq"]
    assert await communicator.receive_nothing(timeout=0.3)
    # Live changes continue after the resume, without repeats.
    await observe(jobs[1].pk, JobState.SUCCEEDED)
    live = await receive(communicator)
    assert live["job"]["job_id"] == "j1" and live["job"]["state"] == "succeeded"
    await communicator.send_json_to({"type": "resume", "seq": 0})  # only one resume per connection
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_resume_sends_a_lower_seq_the_page_never_got_and_nothing_it_holds(site_jobs):
    """Processes publish on their own: a page can hold j1's change while j0's earlier one never
    reached it (its publisher died). Resuming from the highest seq seen would skip j0 for good."""
    _, jobs, _, cookies = site_jobs
    await observe(jobs[2].pk, JobState.STARTING)
    holds_all_up_to = (await JobEvent.objects.alast()).pk
    await observe(jobs[0].pk, JobState.STARTING)  # its push never arrived
    await observe(jobs[1].pk, JobState.STARTING)  # this one did
    j1_seq = (await JobEvent.objects.alast()).pk
    communicator, _, _ = await connect("/ws/sites/site-1/jobs/", cookies["viewer"])
    await communicator.send_json_to({"type": "resume", "seq": holds_all_up_to, "jobs": {str(jobs[1].pk): j1_seq}})
    message = await receive(communicator)
    assert (message["job"]["job_id"], message["job"]["state"]) == ("j0", "starting")
    assert message["seq"] == j1_seq - 1
    assert await communicator.receive_nothing(timeout=0.3)
    # A late push of what the page already holds is not forwarded either.
    await sync_to_async(events.publish_job)(jobs[1].pk, seq=j1_seq)
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_heartbeats_after_a_resume_say_how_far_the_page_holds_everything(site_jobs, settings):
    settings.LAUNCHER_WS_HEARTBEAT_SECONDS = 1
    _, jobs, _, cookies = site_jobs
    communicator, _, _ = await connect("/ws/sites/site-1/jobs/", cookies["viewer"])
    await communicator.send_json_to({"type": "resume", "seq": await sync_to_async(resume_latest_seq)()})
    await observe(jobs[0].pk, JobState.STARTING)
    change = (await JobEvent.objects.alast()).pk
    got, marks = [], []
    while not marks or marks[-1] < change:
        message = await receive(communicator, timeout=3)
        if message["type"] == "heartbeat":
            marks.append(message["seq"])
        else:
            got.append(message["seq"])
    # Never ahead of what was sent: the change came before the heartbeat that covers it.
    assert got == [change] and marks == sorted(marks)
    await communicator.disconnect()


async def test_resume_with_nothing_missed_sends_nothing(site_jobs):
    _, jobs, _, cookies = site_jobs
    await observe(jobs[0].pk, JobState.STARTING)
    seen = (await JobEvent.objects.alast()).pk
    communicator, _, _ = await connect(f"/ws/jobs/{jobs[0].pk}/", cookies["viewer"])
    await communicator.send_json_to({"type": "resume", "seq": seen})
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


@pytest.mark.parametrize("seq", ["too-old", -1, "junk", 10**12, "bad-jobs"])
async def test_resume_too_far_behind_or_unknown_gets_a_snapshot(site_jobs, settings, seq):
    settings.LAUNCHER_WS_RESUME_MAX_EVENTS = 3
    _, jobs, _, cookies = site_jobs
    before = 0  # four changes follow: more than the limit of 3
    for state in (JobState.STARTING, JobState.RUNNING, JobState.SUCCEEDED):
        await observe(jobs[0].pk, state, return_code=0)
    await observe(jobs[1].pk, JobState.STARTING)
    communicator, _, _ = await connect("/ws/sites/site-1/jobs/", cookies["viewer"])
    if seq == "bad-jobs":  # a valid seq, but per-job seqs that are not {"<job id>": seq}
        resume_message = {"type": "resume", "seq": (await JobEvent.objects.alast()).pk, "jobs": {"j0": "x"}}
    else:
        resume_message = {"type": "resume", "seq": before if seq == "too-old" else seq}
    await communicator.send_json_to(resume_message)
    message = await receive(communicator)
    assert message["type"] == "snapshot"
    assert message["seq"] == (await JobEvent.objects.alast()).pk
    assert {j["job_id"]: j["state"] for j in message["jobs"]} == {"j0": "succeeded", "j1": "starting", "j2": "queued"}
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_heartbeat_is_sent_on_an_idle_socket(site_jobs, settings):
    settings.LAUNCHER_WS_HEARTBEAT_SECONDS = 1
    _, _, _, cookies = site_jobs
    communicator, _, _ = await connect("/ws/sites/site-1/jobs/", cookies["viewer"])
    assert await receive(communicator, timeout=3) == {"type": "heartbeat"}
    assert await receive(communicator, timeout=3) == {"type": "heartbeat"}
    await communicator.disconnect()


async def test_logged_out_session_is_refused(site_jobs):
    _, _, _, cookies = site_jobs
    from django.contrib.sessions.models import Session

    await Session.objects.all().adelete()
    communicator, _, _ = await connect("/ws/sites/site-1/jobs/", cookies["viewer"])
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}


async def test_a_lost_push_is_caught_up_within_two_heartbeats(site_jobs, settings):
    settings.LAUNCHER_WS_HEARTBEAT_SECONDS = 1
    _, jobs, _, cookies = site_jobs
    communicator, _, _ = await connect("/ws/sites/site-1/jobs/", cookies["viewer"])
    # A change whose push never arrived (the layer is at-most-once): recorded, not published.
    await Job.objects.filter(pk=jobs[0].pk).aupdate(state="running")
    event = await JobEvent.objects.acreate(job_id=jobs[0].pk, from_state="queued", to_state="running", source="watcher")
    # The catch-up looks a heartbeat back (a change that recent may still be on its way live), so
    # the first heartbeat may come before it.
    message = await receive(communicator, timeout=3)
    if message == {"type": "heartbeat"}:
        message = await receive(communicator, timeout=3)
    assert message == {"type": "job.update", "job": message["job"], "seq": event.pk}
    assert message["job"]["state"] == "running"
    assert await receive(communicator, timeout=3) == {"type": "heartbeat"}
    assert await receive(communicator, timeout=3) == {"type": "heartbeat"}  # and only once
    await communicator.disconnect()



async def test_a_burst_of_changes_arrives_batched_in_order_each_once(site_jobs, settings):
    settings.LAUNCHER_WS_FRAMES_PER_SECOND = 1  # a bucket of one frame: the burst's first change uses it
    site, jobs, _, cookies = site_jobs
    communicator, _, _ = await connect("/ws/sites/site-1/jobs/", cookies["viewer"])
    burst = [(jobs[0].pk, JobState.STARTING), (jobs[1].pk, JobState.STARTING), (jobs[0].pk, JobState.RUNNING),
             (jobs[2].pk, JobState.STARTING), (jobs[1].pk, JobState.FAILED)]
    for pk, state in burst:
        await observe(pk, state)
    seqs = [e async for e in JobEvent.objects.filter(job__site=site).order_by("id").values_list("id", flat=True)]
    frames = []
    while sum(len(f.get("updates", [f])) for f in frames) < len(burst):
        frames.append(await receive(communicator))
    # The first change goes out at once; the others wait for the next token and arrive as one frame.
    assert frames[0]["type"] == "job.update" and len(frames) < len(burst)
    assert any(f["type"] == "job.updates" for f in frames)
    updates = [u for f in frames for u in f.get("updates", [f])]
    assert all(u["type"] == "job.update" for u in updates)
    assert [(u["job"]["id"], u["job"]["state"]) for u in updates] == [(pk, state.value) for pk, state in burst]
    assert [u["seq"] for u in updates] == seqs
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


@pytest.mark.parametrize("frames_per_second", [0, 5])  # batching off; a burst within the bucket
async def test_changes_go_out_at_once_each_its_own_frame(site_jobs, settings, frames_per_second):
    settings.LAUNCHER_WS_FRAMES_PER_SECOND = frames_per_second
    _, jobs, _, cookies = site_jobs
    communicator, _, _ = await connect("/ws/sites/site-1/jobs/", cookies["viewer"])
    for job in jobs:
        await observe(job.pk, JobState.STARTING)
    frames = [await receive(communicator) for _ in jobs]
    assert [(f["type"], f["job"]["id"]) for f in frames] == [("job.update", job.pk) for job in jobs]
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_a_storm_within_the_fast_lane_arrives_unbatched(site_jobs, settings):
    # 10 changes a second (a storm of exits) at the default 5 frames a second: beyond the frame rate,
    # within the fast lane (30 a second) and the frame burst (40), so none waits for a later frame.
    # (At 20 a second a loaded CI machine stalled the publisher's thread long enough to see > 5 at once.)
    settings.LAUNCHER_WS_FRAMES_PER_SECOND = 5
    site, _, _, cookies = site_jobs
    jobs = [await Job.objects.acreate(site=site, job_id=f"storm-{i}", backend="process") for i in range(12)]
    communicator, _, _ = await connect("/ws/sites/site-1/jobs/", cookies["viewer"])
    for job in jobs:
        await observe(job.pk, JobState.FAILED)
        await asyncio.sleep(0.1)  # the storm's pace, not a wait for a condition
    frames = [await receive(communicator) for _ in jobs]
    assert [(f["type"], f["job"]["id"]) for f in frames] == [("job.update", job.pk) for job in jobs]
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()
