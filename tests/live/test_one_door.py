"""job_observe is the only writer of Job.state, and concurrent writers cannot interleave."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest
from django.db import close_old_connections

from backends.base import JobState
from jobs.models import Job, JobEvent, Site
from jobs.services.lifecycle import job_observe

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
                job_observe(job_pk=job.pk, state=state, source=source, return_code=0 if state == "succeeded" else None)
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
        job_observe(job_pk=job.pk, state="running", source="browser")
    assert not JobEvent.objects.filter(job=job).exists()
