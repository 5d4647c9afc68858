"""Notifications (issue #17): a site's webhooks get a signed POST when a job ends failed,
launch_failed or lost and when the site's engine turns unreachable, with retries, a delivery history
and a "Send test" button. Only platform staff set a URL (SSRF: docs/security.md); dangerous URLs are
refused at validation. Every request in these tests goes to a real HTTP server on 127.0.0.1; the
refused URLs are never connected to."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading

import pytest
from django.urls import reverse

from backends.base import JobState
from jobs.models import AuditEntry, Webhook, WebhookDelivery
from jobs.services import notifications
from jobs.services.lifecycle import job_create, job_observe, verdict
from jobs.services.site_health import site_health_connected, site_health_disconnected
from tests.util import wait_until

pytestmark = pytest.mark.embedded


class Receiver:
    """A loopback HTTP server that records every request and answers from a list of statuses."""

    def __init__(self, statuses=(200,), location: str = ""):
        self.requests: list[dict] = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def payloads(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]


@pytest.fixture
def receiver():
    made = []

    def make(*args, **kwargs):
        made.append(Receiver(*args, **kwargs))
        return made[-1]
    yield make
    for r in made:
        r.close()


def hooks_url(site="site-1"):
    return reverse("site-webhooks", args=[site])


def signed_ok(hook: Webhook, request: dict) -> bool:
    expected = "sha256=" + hmac.new(hook.secret.encode(), request["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(request["headers"]["X-Launcher-Signature"], expected)


@pytest.mark.django_db
@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "gopher://127.0.0.1:70/", "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/", "http://2852039166/", "http://0xa9.0xfe.0xa9.0xfe/",
    "http://[fe80::1]/", "http://100.100.100.200/", "http://0.0.0.0:8080/", "http://224.0.0.1/",
    "http://user:pw@127.0.0.1:9/", "http://127.0.0.1:99999/", "", "not a url",
])
def test_dangerous_urls_are_refused_at_validation_and_nothing_is_saved(client, users, process_site, url):
    client.force_login(users["staff"])
    answer = client.post(hooks_url(), {"url": url, "events": ["job.failed"]})
    assert answer.status_code == 400
    body = answer.content.decode()
    assert "Nothing was saved" in body and 'href="#id_url"' in body
    assert not Webhook.objects.exists() and not WebhookDelivery.objects.exists()


@pytest.mark.django_db
def test_unknown_events_are_refused_with_the_url_error_at_once(client, users, process_site):
    client.force_login(users["staff"])
    answer = client.post(hooks_url(), {"url": "file:///x", "events": ["job.succeeded"]})
    assert answer.status_code == 400
    body = answer.content.decode()
    assert 'href="#id_url"' in body and 'href="#id_events"' in body
    assert not Webhook.objects.exists()


@pytest.mark.django_db
def test_only_staff_set_urls_site_admins_test_others_get_403(client, users, process_site, receiver):
    server = receiver()
    client.force_login(users["owner"])
    assert client.get(hooks_url()).status_code == 200
    assert client.post(hooks_url(), {"url": server.url + "/hook", "events": ["job.failed"]}).status_code == 403
    assert not Webhook.objects.exists() and server.requests == []
    hook = notifications.webhook_create(site=process_site, url=server.url + "/hook", events=["job.failed"],
                                        actor=users["staff"])
    remove = reverse("site-webhook-remove", args=["site-1", hook.pk])
    assert client.post(remove, {"confirm": "yes"}).status_code == 403
    assert Webhook.objects.filter(pk=hook.pk).exists()
    for who in ("operator", "viewer", "outsider"):
        client.force_login(users[who])
        assert client.get(hooks_url()).status_code in (403, 404)
        assert client.post(reverse("site-webhook-test", args=["site-1", hook.pk])).status_code in (403, 404)
    assert server.requests == []


@pytest.mark.django_db
def test_staff_add_a_webhook_the_admin_sends_a_signed_test_and_sees_it_in_the_history(
        client, users, process_site, receiver):
    server = receiver()
    client.force_login(users["staff"])
    added = client.post(hooks_url(), {"url": server.url + "/hook?k=1", "events": ["job.failed", "site.unhealthy"]})
    assert added.status_code == 302
    hook = Webhook.objects.get()
    assert (hook.url, hook.events, len(hook.secret) >= 40) == (server.url + "/hook?k=1",
                                                               ["job.failed", "site.unhealthy"], True)
    assert AuditEntry.objects.filter(action="webhook.add").exists()
    assert server.requests == []  # adding sends nothing

    client.force_login(users["owner"])
    client.post(reverse("site-webhook-test", args=["site-1", hook.pk]))
    [request] = server.requests
    assert request["path"] == "/hook?k=1" and signed_ok(hook, request)
    assert request["headers"]["X-Launcher-Event"] == "test"
    assert json.loads(request["body"])["site"] == "site-1"
    delivery = WebhookDelivery.objects.get()
    assert (delivery.event, delivery.status_code, delivery.error, delivery.attempt) == ("test", 200, "", 1)
    page = client.get(hooks_url()).content.decode()
    assert "Test to " in page and "delivered (HTTP 200)" in page
    assert '<td class="delivery-result">HTTP 200</td>' in page

    client.force_login(users["staff"])
    client.post(reverse("site-webhook-remove", args=["site-1", hook.pk]), {"confirm": "yes"})
    assert not Webhook.objects.exists() and not WebhookDelivery.objects.exists()


@pytest.mark.django_db
def test_a_redirect_is_not_followed_and_not_retried(process_site, users, receiver):
    target = receiver()
    server = receiver(statuses=[302], location=target.url + "/elsewhere")
    hook = notifications.webhook_create(site=process_site, url=server.url, events=["job.lost"], actor=None)
    retry = notifications.webhook_deliver(webhook_pk=hook.pk, event="job.lost", payload={"x": 1})
    assert retry is False
    assert len(server.requests) == 1 and target.requests == []
    delivery = WebhookDelivery.objects.get()
    assert delivery.status_code == 302 and "redirects are not followed" in delivery.error


@pytest.mark.django_db
def test_a_row_pointing_at_metadata_is_refused_at_send_time(process_site):
    # A row written around the checks (admin, an old rule): the send re-checks and never connects.
    hook = Webhook.objects.create(site=process_site, url="http://169.254.169.254/", events=["job.lost"], secret="s")
    assert notifications.webhook_deliver(webhook_pk=hook.pk, event="job.lost", payload={}) is True
    delivery = WebhookDelivery.objects.get()
    assert delivery.status_code is None and delivery.error.startswith("refused: ")


@pytest.mark.django_db(transaction=True)  # the worker's threads use their own database connections
def test_a_failed_job_is_delivered_after_commit_with_retries_and_no_credentials(process_site, receiver, settings):
    from launcher_site.embedded import embedded_worker

    settings.LAUNCHER_WEBHOOK_BACKOFF = 0
    server = receiver(statuses=[500, 503, 200])
    hook = notifications.webhook_create(site=process_site, url=server.url + "/n", events=["job.failed"], actor=None)
    other = notifications.webhook_create(site=process_site, url=server.url + "/lost-only", events=["job.lost"],
                                         actor=None)
    with embedded_worker(concurrency=1):
        ok = job_create(site=process_site, job_id="ok-1", source="api", message="", backend="process",
                        job_args={"token": "tok-SECRET-123"})
        job_observe(ok.pk, verdict(JobState.SUCCEEDED), source="worker")
        bad = job_create(site=process_site, job_id="bad-1", source="api", message="", backend="process",
                         job_args={"token": "tok-SECRET-123"})
        job_observe(bad.pk, verdict(JobState.FAILED, message="boom"), source="worker")
        wait_until(lambda: WebhookDelivery.objects.filter(status_code=200).exists(), timeout=20,
                   message="the third attempt delivered")
    attempts = list(WebhookDelivery.objects.order_by("id").values_list("webhook_id", "attempt", "status_code"))
    assert attempts == [(hook.pk, 1, 500), (hook.pk, 2, 503), (hook.pk, 3, 200)]
    assert all(r["path"] == "/n" and signed_ok(hook, r) for r in server.requests)
    payload = server.payloads()[-1]
    assert payload["event"] == "job.failed" and payload["site"] == "site-1"
    assert (payload["job"]["id"], payload["job"]["state"], payload["job"]["detail"]) == (bad.pk, "failed", "boom")
    assert not {"spec", "job_args", "set_options"} & set(payload["job"])
    assert b"tok-SECRET" not in server.requests[-1]["body"]
    assert not WebhookDelivery.objects.filter(webhook=other).exists()


@pytest.mark.django_db(transaction=True)
def test_site_unhealthy_is_sent_once_per_flip_not_per_reconnect_attempt(process_site, receiver):
    from launcher_site.embedded import embedded_worker

    server = receiver()
    notifications.webhook_create(site=process_site, url=server.url, events=["site.unhealthy"], actor=None)
    with embedded_worker(concurrency=1):  # one thread: deliveries in the order they were queued
        site_health_disconnected(site_pk=process_site.pk, error="engine down A")
        wait_until(lambda: len(server.requests) == 1, message="the first flip")
        site_health_disconnected(site_pk=process_site.pk, error="engine down B")  # still down: nothing
        site_health_connected(site_pk=process_site.pk)
        site_health_disconnected(site_pk=process_site.pk, error="engine down C")
        wait_until(lambda: len(server.requests) == 2, message="the second flip")
    problems = [p["problem"] for p in server.payloads()]
    assert problems == ["Engine unreachable: engine down A", "Engine unreachable: engine down C"]
    assert {p["event"] for p in server.payloads()} == {"site.unhealthy"}
