"""The lifecycle door (job_create, job_observe, job_note) is the only writer of jobs, their states and
their events, and concurrent writers cannot interleave."""

from __future__ import annotations

import ast
import re
import threading
from pathlib import Path

import pytest
from django.db import close_old_connections

from backends.base import JobState
from jobs.models import Job, JobEvent, Site
from jobs.services.lifecycle import job_observe, verdict

pytestmark = pytest.mark.embedded
ROOT = Path(__file__).resolve().parents[2]
DOOR = ROOT / "jobs" / "services" / "lifecycle.py"


def state_writes(path: Path) -> list[str]:
    """Places in a module that assign a job's state: `x.state = ...`, `.update(state=...)`,
    `bulk_update(..., ["state"])`, or raw SQL touching the state column."""
    found = []
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError:  # a module being edited right now; importing it fails loudly elsewhere
        return []
    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr == "state":
                    found.append(where)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name == "update" and any(k.arg == "state" for k in node.keywords):
                found.append(where)
            if name == "bulk_update" and "state" in ast.dump(node):
                found.append(where)
            if name in ("create", "get_or_create", "update_or_create") and any(k.arg == "state" for k in node.keywords):
                if "OrphanWorkload" not in ast.unparse(node.func):  # an orphan's state is the backend's, not a job's
                    found.append(where)
            if name in ("raw", "execute") and "state" in ast.unparse(node).lower():
                found.append(where)
    return found


# Methods that write rows, sync and async.
ROW_WRITES = {"create", "get_or_create", "update_or_create", "bulk_create", "bulk_update", "update", "delete", "save"}
ROW_WRITES |= {"a" + name for name in ROW_WRITES}
JOBBISH = re.compile(r"\bJob(Event)?\b|\bjobs?\b|\bevents?\b", re.IGNORECASE)
# Functions that may erase job rows outside the door, and why: neither writes a state or publishes.
EXEMPT = {
    ("jobs/services/retention.py", "jobs_prune"): "drops the events and logs tails of jobs that ended long ago",
    ("jobs/services/catalog.py", "site_delete"): "a deleted site's finished jobs go with it (staff only)",
}


def row_writes(path: Path) -> list[str]:
    """Places in a module that write a Job or JobEvent row or a field of one: a write method
    (create, update, save, delete...) called on `Job.objects`, `JobEvent.objects`, a job or its
    events; an assignment to an attribute of a job (`job.logs_tail = ...`); a `Job(...)` or
    `JobEvent(...)` built by hand; plus every state write (state_writes)."""
    found = state_writes(path)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError:
        return found
    relative = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    exempt = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and (relative, f.name) in EXEMPT
              for n in ast.walk(f)}
    for node in ast.walk(tree):
        if id(node) in exempt:
            continue
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ROW_WRITES:
            if JOBBISH.search(ast.unparse(node.func.value)):
                found.append(where)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("Job", "JobEvent"):
            found.append(where)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and JOBBISH.search(ast.unparse(target.value)):
                    found.append(where)
    return sorted(set(found))


def test_only_the_lifecycle_door_writes_jobs_and_their_events():
    offenders = []
    for package in ("jobs", "launcher_site", "backends"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == DOOR or "migrations" in path.parts:
                continue
            offenders += row_writes(path)
    assert offenders == []


def test_the_row_scanner_finds_each_kind_of_write(tmp_path):
    # The check above must be able to fail.
    module = tmp_path / "x.py"
    module.write_text("Job.objects.create(site=s, job_id='x')\nJobEvent.objects.create(job=j, to_state='queued')\n"
                      "Job.objects.filter(pk=1).update(logs_tail='')\njob.events.create(message='m')\n"
                      "job.save()\njob.logs_tail = 'x'\nJobEvent(job=j).save()\nawait job.asave()\n"
                      "Site.objects.create(name='s')\nsite.save()\n")
    assert len(row_writes(module)) == 8


def test_each_exemption_still_names_a_function_that_writes():
    for (relative, name), why in EXEMPT.items():
        tree = ast.parse((ROOT / relative).read_text())
        assert any(isinstance(f, ast.FunctionDef) and f.name == name for f in tree.body), (relative, name, why)


def test_door_writes_jobs_and_events():
    assert row_writes(DOOR), "lifecycle should be the one place that writes jobs and their events"


def test_only_job_observe_writes_job_state():
    offenders = []
    for package in ("jobs", "launcher_site", "backends"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == DOOR or "migrations" in path.parts:
                continue
            offenders += state_writes(path)
    assert offenders == []


def test_the_scanner_finds_a_state_write(tmp_path):
    # The check above must be able to fail.
    module = tmp_path / "x.py"
    module.write_text("job.state = 'running'\nJob.objects.filter(pk=1).update(state='lost')\n"
                      "Job.objects.create(site=s, state='running')\n")
    assert len(state_writes(module)) == 3


def test_door_is_the_place_that_assigns_state():
    assert state_writes(DOOR), "lifecycle.job_observe should be the one place that assigns job.state"


@pytest.mark.django_db(transaction=True)
def test_concurrent_observers_write_each_transition_once():
    site = Site.objects.create(name="site-1")
    job = Job.objects.create(site=site, job_id="race", backend="process")
    sources = ["worker", "watcher", "reconcile", "api"] * 2
    plan = [JobState.STARTING, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED]
    start = threading.Barrier(len(sources))
    errors = []

    def observer(source: str) -> None:
        try:
            start.wait(10)
            for state in plan:
                job_observe(job.pk, verdict(state, return_code=0 if state == "succeeded" else None), source=source)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=observer, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    events = list(JobEvent.objects.filter(job=job).values_list("from_state", "to_state"))
    # Forward-only and sticky: each event starts where the previous one ended; one terminal event.
    assert all(a[1] == b[0] for a, b in zip(events, events[1:]))
    assert len(events) == len(set(events)) <= 3
    assert sum(1 for _, to in events if JobState(to).is_terminal) == 1
    job.refresh_from_db()
    assert job.state == events[-1][1] and JobState(job.state).is_terminal


def test_unknown_source_is_refused(db):
    site = Site.objects.create(name="site-1")
    job = Job.objects.create(site=site, job_id="j", backend="process")
    with pytest.raises(ValueError):
        job_observe(job.pk, verdict("running"), source="browser")
    assert not JobEvent.objects.filter(job=job).exists()
