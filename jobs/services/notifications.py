"""Notifications: a site's webhooks, told when a job ends failed, launch_failed or lost and when the
site's engine turns unreachable (issue #17).

A webhook URL makes the launcher send HTTP requests from inside the site's network (SSRF), so only
platform staff set one (docs/security.md); site admins see, test and read the delivery history.
Every URL is checked when it is saved (http/https only, no userinfo, no literal link-local,
metadata, multicast or unspecified address) and again at each send, on the address it resolves to,
which is the address connected to (a name re-pointed at a metadata address after the check is
refused). Redirects are never followed, each socket operation times out after SEND_TIMEOUT and at
most RESPONSE_CAP bytes of an answer are read. Bodies carry the job payload (no spec, no
credentials) and an HMAC-SHA256 signature of the body under the webhook's secret.

Email, if configured (LAUNCHER_EMAIL_HOST): a Webhook row with `email` set instead of `url` is an
email recipient of the same events, set by staff too (the launcher would otherwise mail job details
anywhere a site admin chose). It goes the same way: the same task, retries (no answer or an SMTP 4xx)
and delivery history (status_code is the SMTP reply code), over plain SMTP with SEND_TIMEOUT.

Delivery runs in Celery (jobs.tasks.webhook_deliver_task), enqueued after commit; each attempt is a
WebhookDelivery row. No errors escape into the caller: a notification never breaks a job's record.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import smtplib
import socket
import ssl
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from jobs.models import Job, Site, Webhook, WebhookDelivery
from jobs.services.policy import require_staff

log = logging.getLogger(__name__)
JOB_EVENTS = {"failed": "job.failed", "launch_failed": "job.launch_failed", "lost": "job.lost"}
SITE_UNHEALTHY = "site.unhealthy"
EVENTS = (*JOB_EVENTS.values(), SITE_UNHEALTHY)
TEST_EVENT = "test"
SEND_TIMEOUT = 5  # seconds per connect/send/receive: a slow receiver must not hold a worker thread
RESPONSE_CAP = 4096  # bytes of an answer read (only its status is used)
SIGNATURE_HEADER = "X-Launcher-Signature"
# Cloud metadata endpoints that are not link-local (Alibaba; AWS's IPv6 one), besides the ranges below.
BLOCKED_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("100.100.100.200/32", "fd00:ec2::254/128"))
PAYLOAD_DROPPED = ("spec", "job_args", "set_options", "job_meta")  # never sent, whatever job_payload grows


class Refused(Exception):
    """A URL or the address it resolves to that the launcher will not send to."""


def _blocked(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved
            or any(ip in net for net in BLOCKED_NETWORKS if net.version == ip.version))


def _literal_ip(host: str):
    """The address a numeric host names, in any form the resolver accepts ("2852039166", "0xa9.254.169.254")."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def url_check(url: str) -> str:
    """The URL if the launcher may send to it; ValidationError keyed "url" otherwise. No DNS here."""
    url = (url or "").strip()
    if not url:
        raise ValidationError({"url": ["Enter the webhook URL."]})
    if len(url) > 500:
        raise ValidationError({"url": ["At most 500 characters."]})
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise ValidationError({"url": ["Not a valid URL."]}) from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError({"url": ["Only http:// and https:// URLs are allowed."]})
    if not parts.hostname:
        raise ValidationError({"url": ["The URL has no host."]})
    if parts.username is not None or parts.password is not None:
        raise ValidationError({"url": ["No user or password in the URL: the request is signed instead."]})
    ip = _literal_ip(parts.hostname)
    if ip is not None and _blocked(ip):
        raise ValidationError({"url": [f"Not allowed: {ip} is a link-local, metadata, multicast or reserved address."]})
    return url


def _events_check(events) -> list[str]:
    events = [e for e in (events or []) if e]
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise ValidationError({"events": [f"Choose one or more of: {', '.join(EVENTS)}."]})
    return [e for e in EVENTS if e in events]


def webhook_create(*, site: Site, url: str, events, actor) -> Webhook:
    """Staff only (StaffOnly otherwise); every field checked before anything is saved."""
    require_staff(actor, "set webhook URLs")
    errors: dict[str, list[str]] = {}
    for name, check, value in (("url", url_check, url), ("events", _events_check, events)):
        try:
            checked = check(value)
        except ValidationError as exc:
            errors.update(exc.message_dict)
        else:
            if name == "url":
                url = checked
            else:
                events = checked
    if errors:
        raise ValidationError(errors)
    return Webhook.objects.create(site=site, url=url, events=events, secret=secrets.token_urlsafe(32))


def email_enabled() -> bool:
    return bool(settings.LAUNCHER_EMAIL_HOST)


def email_recipient_create(*, site: Site, email: str, events, actor) -> Webhook:
    """Staff only, like a URL; refused (naming "email") while email is not configured."""
    require_staff(actor, "set notification email addresses")
    errors: dict[str, list[str]] = {}
    email = (email or "").strip()
    if not email_enabled():
        errors["email"] = ["Email is not configured on this launcher (LAUNCHER_EMAIL_HOST)."]
    else:
        try:
            validate_email(email)
        except ValidationError:
            errors["email"] = ["Enter one valid email address."]
    try:
        events = _events_check(events)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    return Webhook.objects.create(site=site, email=email, events=events, secret=secrets.token_urlsafe(32))


def webhook_delete(*, webhook: Webhook, actor) -> None:
    require_staff(actor, "remove webhooks")
    webhook.delete()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- triggers (called by the lifecycle door and site health) ---------------------------------------

def job_state_notify(job: Job, state) -> None:
    """After commit, for a job that just reached failed, launch_failed or lost."""
    event = JOB_EVENTS.get(str(getattr(state, "value", state)))
    if event is None:
        return
    site_pk, job_pk = job.site_id, job.pk
    transaction.on_commit(lambda: _notify(site_pk, event, lambda: _job_data(job_pk)))


def site_unhealthy_notify(*, site_pk: int, row, error: str) -> None:
    """Called before site health records an engine failure; notifies only on the flip from
    reachable (or unknown) to unreachable, so a reconnect loop sends one notification, not one per try."""
    already_down = row is not None and (
        (row.watcher_connected_at is None and row.watcher_error_at is not None) or row.reconcile_ok is False)
    if not already_down:
        transaction.on_commit(lambda: _notify(site_pk, SITE_UNHEALTHY,
                                              lambda: {"problem": f"Engine unreachable: {error}"[:1000]}))


def _job_data(job_pk: int) -> dict:
    from jobs.payloads import job_payload

    payload = job_payload(Job.objects.select_related("site").get(pk=job_pk))
    for key in PAYLOAD_DROPPED:
        payload.pop(key, None)
    return {"job": payload}


def _notify(site_pk: int, event: str, data) -> None:
    try:
        hooks = [h.pk for h in Webhook.objects.filter(site_id=site_pk, active=True) if event in (h.events or [])]
        if not hooks:
            return
        from jobs.tasks import webhook_deliver_task

        payload = {"event": event, "site": Site.objects.get(pk=site_pk).name,
                   "sent_at": timezone.now().isoformat(), **data()}
        for pk in hooks:
            webhook_deliver_task.delay(pk, event, payload)
    except Exception:  # a notification must never break the job or health write that triggered it
        log.warning("notifications: cannot queue %s for site %s", event, site_pk, exc_info=True)


# --- sending ---------------------------------------------------------------------------------------

def webhook_deliver(*, webhook_pk: int, event: str, payload: dict, attempt: int = 1) -> bool:
    """One attempt, recorded; True when a later attempt may succeed (no answer, 5xx or 429)."""
    webhook = Webhook.objects.filter(pk=webhook_pk, active=True).first()
    if webhook is None:
        return False
    delivery = webhook_send(webhook=webhook, event=event, payload=payload, attempt=attempt)
    code = delivery.status_code
    if webhook.email:  # SMTP: 4xx is "try again later", 5xx is final
        return bool(delivery.error) and not delivery.error.startswith("refused") and (code is None or code < 500)
    return code is None or code >= 500 or code == 429


def webhook_test(*, webhook: Webhook) -> WebhookDelivery:
    """The dashboard's "Send test": one attempt now, recorded like any other."""
    payload = {"event": TEST_EVENT, "site": webhook.site.name, "sent_at": timezone.now().isoformat(),
               "message": "Test notification from FLARE Launcher."}
    return webhook_send(webhook=webhook, event=TEST_EVENT, payload=payload, attempt=1)


def webhook_send(*, webhook: Webhook, event: str, payload: dict, attempt: int) -> WebhookDelivery:
    if webhook.email:
        status, error = _mail(webhook.email, event, payload)
        return WebhookDelivery.objects.create(webhook=webhook, event=event, status_code=status, error=error,
                                              attempt=attempt)
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "flare-launcher-webhook",
               "X-Launcher-Event": event, SIGNATURE_HEADER: signature(webhook.secret, body)}
    status, error = None, ""
    try:
        status = _post(webhook.url, body, headers)
        if status >= 300:
            error = f"HTTP {status}" + (" (redirects are not followed)" if status < 400 else "")
    except Refused as exc:
        error = f"refused: {exc}"
    except ValidationError as exc:
        error = "refused: " + "; ".join(exc.messages)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    return WebhookDelivery.objects.create(webhook=webhook, event=event, status_code=status, error=error,
                                          attempt=attempt)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an address already checked, with the certificate verified for the URL's host name."""

    def __init__(self, ip: str, host: str, port: int):
        super().__init__(host, port, timeout=SEND_TIMEOUT, context=ssl.create_default_context())
        self._ip = ip

    def connect(self):
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _resolve(host: str, port: int) -> str:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    bad = [str(a) for a in addresses if _blocked(a)]
    if bad or not addresses:
        raise Refused(f"{host} resolves to a blocked address ({', '.join(bad) or 'none'})")
    return str(addresses[0])


def _post(url: str, body: bytes, headers: dict) -> int:
    parts = urlsplit(url_check(url))  # checked again: the row may predate a tighter rule
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    ip = _resolve(parts.hostname, port)
    conn = _PinnedHTTPS(ip, parts.hostname, port) if https else \
        http.client.HTTPConnection(ip, port, timeout=SEND_TIMEOUT)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", path, body=body, headers={**headers, "Host": parts.netloc})
        response = conn.getresponse()
        response.read(RESPONSE_CAP)
        return response.status
    finally:
        conn.close()


def _mail(address: str, event: str, payload: dict) -> tuple[int | None, str]:
    """One SMTP send: (reply code, error). Always the SMTP backend, whatever EMAIL_BACKEND says (tests
    set locmem there), so what is recorded is what the relay answered."""
    from django.core.mail import EmailMessage, get_connection

    if not email_enabled():
        return None, "refused: email is not configured (LAUNCHER_EMAIL_HOST)"
    job = payload.get("job") or {}
    subject = f"[FLARE Launcher] {payload.get('site', '')}: {event}"  # site names are slugs: no header injection
    lines = [f"Event: {event}", f"Site: {payload.get('site', '')}"]
    if job:
        lines += [f"Job: {job.get('job_id', '')} (#{job.get('id', '')})", f"State: {job.get('state', '')}",
                  f"Reason: {job.get('reason', '')}", f"Detail: {job.get('detail', '')}"]
    for key in ("problem", "message"):
        if payload.get(key):
            lines.append(str(payload[key]))
    body = "\n".join(lines) + "\n\n" + json.dumps(payload, indent=2, sort_keys=True) + "\n"
    connection = get_connection("django.core.mail.backends.smtp.EmailBackend", host=settings.EMAIL_HOST,
                                port=settings.EMAIL_PORT, username="", password="", use_tls=False, use_ssl=False,
                                timeout=SEND_TIMEOUT, fail_silently=False)
    try:
        EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, [address], connection=connection).send()
    except smtplib.SMTPRecipientsRefused as exc:
        code, message = next(iter(exc.recipients.values()), (None, b""))
        return code, f"SMTP {code}: recipient refused: {_text(message)}"[:500]
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code, f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}"[:500]
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]
    return 250, ""


def _text(message) -> str:
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
