"""Pure mapping of Docker's inspect data, list entries and events to Observations (launch-semantics.md
§3.8), tested on literal dicts: backends/docker/observe.py and the exit-code mapping."""

from __future__ import annotations

import pytest

from backends.base import LABEL_JOB_PK, JobState
from backends.common import return_code_for_exit
from backends.docker.observe import (
    observation_from_container,
    observation_from_event,
    observation_from_summary,
    parse_docker_time,
)

# ---------------------------------------------------------------------------------------------
# Site configuration
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("exit_code", "code"), [(0, 0), (9, 9), (1, 1), (101, 1), (127, 1), (137, 1), (None, 1)])
def test_return_code_for_exit(exit_code, code):
    assert return_code_for_exit(exit_code) == code


def _attrs(status, exit_code=0, oom=False, error=""):
    return {
        "Name": "/site-1-job-1",
        "Created": "2025-01-02T03:04:05.5Z",
        "Config": {"Labels": {LABEL_JOB_PK: "42"}},
        "State": {"Status": status, "ExitCode": exit_code, "OOMKilled": oom, "Error": error,
                  "StartedAt": "2025-01-02T03:04:06.25Z", "FinishedAt": "2025-01-02T03:04:07.125000000Z"},
    }


@pytest.mark.parametrize(
    ("status", "exit_code", "state", "code"),
    [
        ("created", 0, JobState.STARTING, None),
        ("restarting", 0, JobState.STARTING, None),
        ("running", 0, JobState.RUNNING, None),
        ("paused", 0, JobState.RUNNING, None),
        ("exited", 0, JobState.SUCCEEDED, 0),
        ("exited", 9, JobState.ABORTED, 9),
        ("exited", 3, JobState.FAILED, 1),
        ("exited", 101, JobState.FAILED, 1),
        ("dead", 0, JobState.ABORTED, 9),
    ],
)
def test_observation_from_container_states(status, exit_code, state, code):
    observation = observation_from_container(_attrs(status, exit_code), logs_tail="tail")
    assert (observation.ref, observation.job_pk, observation.state, observation.return_code) == ("site-1-job-1", "42", state, code)
    if state.is_terminal:
        assert observation.exit_code == exit_code
        assert observation.logs_tail == "tail"


@pytest.mark.parametrize(("status", "state"), [
    ("created", JobState.STARTING), ("restarting", JobState.STARTING), ("running", JobState.RUNNING),
    ("paused", JobState.RUNNING), ("removing", JobState.STARTING), ("exited", None), ("dead", None),
])
def test_observation_from_a_container_list_entry(status, state):
    summary = {"Id": "abc", "Names": ["/site-1-job-1"], "State": status, "Status": "Up 3 seconds",
               "Created": 1735787045, "Labels": {LABEL_JOB_PK: "42"}}
    observation = observation_from_summary(summary)
    if state is None:  # ended: the exit code and OOM flag need an inspect
        assert observation is None
    else:
        assert (observation.ref, observation.job_pk, observation.state) == ("site-1-job-1", "42", state)


def test_observation_times():
    assert observation_from_container(_attrs("running")).at == 1735787046.25
    assert observation_from_container(_attrs("exited")).at == 1735787047.125
    assert parse_docker_time("0001-01-01T00:00:00Z") is None


def test_oom_killed_is_failed_with_reason():
    observation = observation_from_container(_attrs("exited", 137, oom=True))
    assert (observation.state, observation.return_code, observation.exit_code, observation.reason) == (
        JobState.FAILED, 1, 137, "OOMKilled")


def test_exit_after_our_terminate_counts_as_aborted():
    observation = observation_from_container(_attrs("exited", 137), terminated=True)
    assert (observation.state, observation.return_code, observation.exit_code) == (JobState.ABORTED, 9, 137)


def _event(action, **attributes):
    return {"Type": "container", "Action": action, "status": action, "id": "abc123",
            "Actor": {"ID": "abc123", "Attributes": {"name": "site-1-job-1", LABEL_JOB_PK: "42", **attributes}},
            "time": 1735787047, "timeNano": 1735787047125000000}


@pytest.mark.parametrize(
    ("event", "state", "code", "kind"),
    [
        (_event("create"), JobState.STARTING, None, "state"),
        (_event("start"), JobState.RUNNING, None, "state"),
        (_event("die", exitCode="0"), JobState.SUCCEEDED, 0, "state"),
        (_event("die", exitCode="2"), JobState.FAILED, 1, "state"),
        (_event("die", exitCode="9"), JobState.ABORTED, 9, "state"),
        (_event("oom"), JobState.RUNNING, None, "event"),
        (_event("destroy"), JobState.LOST, None, "state"),
    ],
)
def test_observation_from_event(event, state, code, kind):
    observation = observation_from_event(event)
    assert (observation.ref, observation.job_pk, observation.state, observation.return_code, observation.kind) == (
        "site-1-job-1", "42", state, code, kind)
    assert observation.at == 1735787047.125
    assert observation.event_id == f"abc123:1735787047125000000:{event['Action']}"


def test_die_event_after_oom_and_after_terminate():
    assert observation_from_event(_event("die", exitCode="137"), oom=True).reason == "OOMKilled"
    aborted = observation_from_event(_event("die", exitCode="137"), terminated=True)
    assert (aborted.state, aborted.return_code, aborted.exit_code) == (JobState.ABORTED, 9, 137)


def test_ignored_event_actions():
    assert observation_from_event(_event("attach")) is None
