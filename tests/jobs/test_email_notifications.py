"""Email notifications, if configured (issue #17, "Notifications"): with LAUNCHER_EMAIL_HOST set, a
site's Notifications page also lists email recipients of the same events. Only platform staff add
them (the webhook rule, docs/security.md); they go through the same Celery task, retried on no answer
or an SMTP 4xx, never on a 5xx, and every attempt is in the delivery history. Every message goes to a
real SMTP server (aiosmtpd) on 127.0.0.1, through Django's SMTP backend (never locmem)."""

from __future__ import annotations

import email
import socket

import pytest
from aiosmtpd.controller import Controller
from django.urls import reverse

from backends.base import JobState
from jobs.models import AuditEntry, Webhook, WebhookDelivery
from jobs.services import notifications
from jobs.services.lifecycle import job_create, job_observe, verdict
from tests.util import wait_until

pytestmark = pytest.mark.embedded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """A real SMTP server on loopback; `refuse` lists RCPT answers given before accepting."""

    def __init__(self, refuse=()):
        self.messages: list[email.message.Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refuse = list(refuse)
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse:
            return self.refuse.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"

    def stop(self):
        self.controller.stop()


@pytest.fixture
def relay(settings):
    made = []

    def make(refuse=()) -> Relay:
        made.append(Relay(refuse))
        settings.LAUNCHER_EMAIL_HOST = settings.EMAIL_HOST = "127.0.0.1"
        settings.EMAIL_PORT = made[-1].port
        settings.DEFAULT_FROM_EMAIL = "launcher@example.test"
        return made[-1]
    yield make
    for r in made:
        r.stop()


def hooks_url(site="site-1"):
    return reverse("site-webhooks", args=[site])


@pytest.mark.django_db
def test_only_staff_add_an_address_bad_input_is_a_400_naming_email_and_nothing_is_saved(
        client, users, process_site, relay, settings):
    settings.LAUNCHER_EMAIL_HOST = ""  # not configured: refused, and the page offers no form
    client.force_login(users["staff"])
    page = client.get(hooks_url())
    assert page.status_code == 200 and b'id="email-add"' not in page.content
    assert b"LAUNCHER_EMAIL_HOST" in page.content
    refused = client.post(hooks_url(), {"email": "ops@example.test", "events": ["job.failed"]})
    assert refused.status_code == 400 and b"Email is not configured" in refused.content

    relay()
    assert b'id="email-add"' in client.get(hooks_url()).content
    for address in ("", "not-an-address", "a@b.test, c@d.test", "x@y.test\r\nBcc: z@evil.test"):
        bad = client.post(hooks_url(), {"email": address, "events": ["job.failed"]})
        assert bad.status_code == 400, address
        assert b'href="#id_email"' in bad.content and b"Enter one valid email address." in bad.content
    unknown = client.post(hooks_url(), {"email": "ops@example.test", "events": ["job.nope"]})
    assert unknown.status_code == 400 and b"Choose one or more of" in unknown.content
    assert not Webhook.objects.exists()

    client.force_login(users["owner"])  # the site's admin
    assert client.post(hooks_url(), {"email": "ops@example.test", "events": ["job.failed"]}).status_code == 403
    assert not Webhook.objects.exists()
    client.force_login(users["viewer"])
    assert client.get(hooks_url()).status_code == 403

    client.force_login(users["staff"])
    added = client.post(hooks_url(), {"email": "ops@example.test", "events": ["job.failed", "job.lost"]})
    assert added.status_code == 302
    hook = Webhook.objects.get()
    assert (hook.email, hook.url, hook.events) == ("ops@example.test", "", ["job.failed", "job.lost"])
    assert AuditEntry.objects.filter(action="webhook.add").exists()
    client.force_login(users["owner"])
    listed = client.get(hooks_url()).content.decode()
    assert "mailto:ops@example.test" in listed and 'id="email-add"' not in listed  # read, not add


@pytest.mark.django_db(transaction=True)  # the worker's threads use their own database connections
def test_a_failed_job_is_mailed_by_the_celery_task_retried_on_a_4xx_and_recorded(
        client, users, process_site, relay, settings):
    from launcher_site.embedded import embedded_worker

    settings.LAUNCHER_WEBHOOK_BACKOFF = 0
    server = relay(refuse=["451 4.3.0 try again later"])
    hook = notifications.email_recipient_create(site=process_site, email="ops@example.test",
                                                events=["job.failed"], actor=None)
    lost_only = notifications.email_recipient_create(site=process_site, email="lost@example.test",
                                                     events=["job.lost"], actor=None)
    with embedded_worker(concurrency=1):
        ok = job_create(site=process_site, job_id="ok-1", source="api", message="", backend="process",
                        job_args={"token": "tok-SECRET-123"})
        job_observe(ok.pk, verdict(JobState.SUCCEEDED), source="worker")
        bad = job_create(site=process_site, job_id="bad-1", source="api", message="", backend="process",
                         job_args={"token": "tok-SECRET-123"})
        job_observe(bad.pk, verdict(JobState.FAILED, message="boom"), source="worker")
        wait_until(lambda: WebhookDelivery.objects.filter(status_code=250).exists(), timeout=20,
                   message="the second attempt delivered")
    attempts = list(WebhookDelivery.objects.order_by("id").values_list("webhook_id", "attempt", "status_code"))
    assert attempts == [(hook.pk, 1, 451), (hook.pk, 2, 250)]
    assert "451" in WebhookDelivery.objects.get(attempt=1).error
    assert not WebhookDelivery.objects.filter(webhook=lost_only).exists()
    assert server.envelopes == [("launcher@example.test", ["ops@example.test"])]
    message = server.messages[0]
    assert message["Subject"] == "[FLARE Launcher] site-1: job.failed"
    assert message["To"] == "ops@example.test"
    body = message.get_payload(decode=True).decode()
    assert "Job: bad-1" in body and "State: failed" in body and "Detail: boom" in body
    assert "tok-SECRET" not in body and "job_args" not in body

    client.force_login(users["owner"])
    history = client.get(hooks_url()).content.decode()
    assert "SMTP 451" in history and "SMTP 250" in history and "mailto:ops@example.test" in history


@pytest.mark.django_db
def test_send_test_a_refused_recipient_is_final_and_a_dead_relay_is_recorded(client, users, process_site, relay,
                                                                               settings):
    server = relay(refuse=["550 5.1.1 no such user"])
    hook = notifications.email_recipient_create(site=process_site, email="gone@example.test",
                                                events=["job.failed"], actor=None)
    # A 5xx is final: the task is not asked to retry.
    assert notifications.webhook_deliver(webhook_pk=hook.pk, event="job.failed", payload={"site": "site-1"}) is False
    assert WebhookDelivery.objects.get().status_code == 550

    client.force_login(users["owner"])  # a site admin may send a test
    sent = client.post(reverse("site-webhook-test", args=["site-1", hook.pk]), follow=True)
    assert "Test to mailto:gone@example.test delivered (SMTP 250)" in sent.content.decode()
    assert server.messages[-1]["Subject"] == "[FLARE Launcher] site-1: test"

    # Nobody listening: recorded with the reason, retried by the task, never raised.
    settings.EMAIL_PORT = free_port()
    assert notifications.webhook_deliver(webhook_pk=hook.pk, event="job.failed", payload={"site": "site-1"}) is True
    last = WebhookDelivery.objects.first()  # newest first
    assert last.status_code is None and "ConnectionRefusedError" in last.error
