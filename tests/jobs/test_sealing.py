"""Credentials cross the broker sealed: unreadable there, refused when tampered with, too old or
sealed under another SECRET_KEY, and a launch task that cannot open them fails the job saying why."""

from __future__ import annotations

import time

import pytest
from django.test import override_settings

from jobs.services import sealing
from jobs.services.sealing import SealBroken, credentials_seal, credentials_unseal

CREDENTIALS = {"auth_token": ["-t", "tok-SECRET-seal"], "ssid": ["-d", "ssid-SECRET-seal"]}


def test_sealed_credentials_round_trip_and_hide_their_values():
    sealed = credentials_seal(CREDENTIALS)
    assert "SECRET" not in sealed and "tok-" not in sealed
    assert credentials_unseal(sealed) == CREDENTIALS


def test_tampered_sealed_credentials_are_refused():
    sealed = credentials_seal(CREDENTIALS)
    tampered = sealed[:-5] + ("A" if sealed[-5] != "A" else "B") + sealed[-4:]
    with pytest.raises(SealBroken):
        credentials_unseal(tampered)
    with pytest.raises(SealBroken):
        credentials_unseal("not a sealed message")


def test_credentials_sealed_under_another_secret_key_are_refused():
    with override_settings(SECRET_KEY="another-key-" + "x" * 40):
        sealed = credentials_seal(CREDENTIALS)
    with pytest.raises(SealBroken):
        credentials_unseal(sealed)


def test_sealed_credentials_expire(monkeypatch):
    sealed = credentials_seal(CREDENTIALS)
    later = time.time() + sealing.SEAL_TTL_SECONDS + 5
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(SealBroken):
        credentials_unseal(sealed)


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_launch_whose_credentials_cannot_be_unsealed_fails_saying_why(process_site):
    from jobs.models import Job, JobEvent
    from jobs.tasks import job_launch_task

    job = Job.objects.create(site=process_site, job_id="seal-1", backend="process")
    JobEvent.objects.create(job=job, from_state="", to_state="queued", source="api")
    job_launch_task.apply(args=[job.pk, "gAAAAA-not-sealed-by-us"])
    job.refresh_from_db()
    assert (job.state, job.reason) == ("launch_failed", "CredentialsUnreadable")
    assert "submit the job again" in job.detail
