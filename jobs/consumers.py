"""Websocket consumers: authenticate, authorise, join a group, forward.

They accept no commands, with one exception: the resume handshake. After (re)connecting, the
browser may send `{"type": "resume", "seq": <it holds every change up to here>, "jobs": {"<job id>":
<the latest seq it holds of that job, for jobs changed after seq>}}` once and receives what it
missed (jobs.services.resume). Heartbeats then tell it how far it holds everything (their `seq`),
which keeps its `jobs` short. Anything else a client sends is ignored. A refused connection is
accepted and closed at once with 4401 (not logged in) or 4403 (may not see that site), so the
browser can tell the two from a network error; nothing else is sent. A heartbeat goes out every
LAUNCHER_WS_HEARTBEAT_SECONDS so proxies keep the socket open and clients notice a dead server.
Before each heartbeat the socket's access is checked again (jobs.services.socket_access): once its
session is gone (signed out, expired), its user deactivated or no longer allowed to see the site,
it leaves its group and is closed with 4401 or 4403, so nothing more reaches it.

The channel layer is at-most-once (a Redis outage drops pushes). So that an open socket does not
stay wrong until the browser reconnects, each heartbeat first catches up: changes in the socket's
scope since the previous check that were not forwarded are sent then (nothing is sent twice). Per
socket and heartbeat that costs one count, compared with the sequence numbers that came live; the
changed jobs are looked up only when the two differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from array import array

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from jobs import events, selectors
from jobs.models import Job, Site
from jobs.payloads import dumps, loads, updates_text
from jobs.services import resume, runtime_facts
from jobs.services.socket_access import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED, socket_access

CLOSE_UNCHECKED = 1011  # access could not be checked again (database down)


class _ForwardingConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None
    target: Site | Job | None = None
    site_pk: int | None = None

    async def connect(self):
        events.bind_server_loop(asyncio.get_running_loop())
        self.sent: dict[int, int] = {}  # job pk -> highest seq sent, so resume and live never repeat
        self.live_seqs = array("q")  # seqs of live messages since the last catch-up window (see _catch_up)
        self.resumed = False
        self.answered = False  # the resume handshake has been answered
        self.heartbeat: asyncio.Task | None = None
        self.counted = False  # in this process's websocket clients (/metrics)
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self._refuse(CLOSE_UNAUTHENTICATED)
            return
        group = await self.authorised_group(user)
        if group is None:
            await self._refuse(CLOSE_FORBIDDEN)
            return
        self.group = group
        self.session_key = self.scope["session"].session_key  # checked again on every heartbeat
        self.user_pk = user.pk
        self.checked = self.checked_before = await database_sync_to_async(resume.latest_seq)()
        await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        self.heartbeat = asyncio.create_task(self._beat())
        self.counted = True
        await runtime_facts.websocket_client_changed(+1)

    @classmethod
    async def encode_json(cls, content) -> str:  # send_json (heartbeats, snapshots, log lines)
        return dumps(content)

    async def _refuse(self, code: int) -> None:
        await self.accept()
        await self.close(code=code)

    async def authorised_group(self, user) -> str | None:
        raise NotImplementedError

    async def missed_since(self, seq) -> resume.ResumeReply:
        """The resume handshake's answer (may be a snapshot)."""
        raise NotImplementedError

    async def missed_after(self, since: int, until: int, received: int) -> resume.ResumeReply:
        """The heartbeat's catch-up: changes in (since, until] this socket was not sent (never a
        snapshot); `received`: how many distinct seqs of that window came live."""
        raise NotImplementedError

    async def disconnect(self, code):
        if getattr(self, "counted", False):
            self.counted = False
            await runtime_facts.websocket_client_changed(-1)
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.heartbeat
        if self.group:
            with contextlib.suppress(Exception):  # the layer may be down; the socket is gone anyway
                await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if self.group is None or not text_data:
            return
        try:
            content = loads(text_data)
        except ValueError:
            return
        if isinstance(content, dict) and content.get("type") == "resume" and not self.resumed:
            self.resumed = True
            await self._resume(content.get("seq"), resume.held_seqs(content.get("jobs")))

    async def _resume(self, seq, held: dict[int, int] | None) -> None:
        if held is None:
            seq = None  # a malformed `jobs` gets a snapshot, as an unknown seq does
        for pk, job_seq in (held or {}).items():
            self.sent[pk] = max(self.sent.get(pk, 0), job_seq)  # the page has it: never send it again
        reply = await self.missed_since(seq)
        if reply.snapshot is not None:
            await self._send_snapshot(reply.snapshot)
        else:
            # The first catch-up looks back to `seq`: a change committed just after the answer was
            # read, whose push then got lost, is still sent.
            self.checked_before = min(self.checked_before, seq)
        for frame in reply.updates:
            await self._send_frame(frame)
        self.answered = True

    def _fresh(self, pk: int, seq: int | None) -> bool:
        """Not yet sent through the other path (live vs resume); notes it as sent."""
        if seq is None:
            return True
        if seq <= self.sent.get(pk, 0):
            return False
        self.sent[pk] = seq
        return True

    async def _forward(self, message: dict) -> None:
        # A live job change (jobs.payloads.job_broadcast): its frame is already encoded ("text").
        seq = message.get("seq")
        if seq is not None:
            self.live_seqs.append(seq)
        if self._fresh(message["id"], seq):
            await self.send(text_data=message["text"])

    async def _send_frame(self, frame: dict) -> None:
        # A job change found by resume or catch-up (jobs.payloads.job_frame), encoded here.
        if self._fresh(frame["job"]["id"], frame["seq"]):
            await self.send(text_data=dumps(frame))

    async def _forward_batch(self, updates: list[dict]) -> None:
        # One frame for the batch, joined from the pre-encoded updates (no JSON encoding here).
        self.live_seqs.extend(m["seq"] for m in updates if m.get("seq") is not None)
        texts = [m["text"] for m in updates if self._fresh(m["id"], m.get("seq"))]
        if len(texts) == 1:
            await self.send(text_data=texts[0])
        elif texts:
            await self.send(text_data=updates_text(texts))

    async def _beat(self) -> None:
        interval = settings.LAUNCHER_WS_HEARTBEAT_SECONDS
        # The first beat comes after a random part of the interval: browsers that reconnected
        # together (a web process restarted) would otherwise beat, and query, together for good.
        delay = interval * random.uniform(0.5, 1.0)
        with contextlib.suppress(Exception):  # the socket closed under us: disconnect() cleans up
            while True:
                await asyncio.sleep(delay)
                delay = interval
                try:
                    code = await database_sync_to_async(socket_access)(session_key=self.session_key,
                                                                       user_pk=self.user_pk, site_pk=self.site_pk)
                except Exception:  # not checked, not trusted: the browser reconnects (checked again)
                    code = CLOSE_UNCHECKED
                if code is not None:
                    await self._revoke(code)
                    return
                await self._catch_up()
                await self.send_json(self._heartbeat())
                await runtime_facts.websocket_clients_beat()

    async def _revoke(self, code: int) -> None:
        group, self.group = self.group, None  # dispatch() drops what is already queued for it
        with contextlib.suppress(Exception):
            await self.channel_layer.group_discard(group, self.channel_name)
        await self.close(code=code)

    def _heartbeat(self) -> dict:
        # After a catch-up this socket has been sent every change of its scope up to checked_before
        # (the resume answer, then live or caught up); the page may resume from there. Only a page
        # that resumed holds what came before its connect.
        if self.answered:
            return {"type": "heartbeat", "seq": self.checked_before}
        return {"type": "heartbeat"}

    async def _catch_up(self) -> None:
        # The window is (the check before last, the last check]: every change in it was committed
        # at least one heartbeat ago, so its live message has had that long to arrive (an event id
        # taken before the earlier check may commit after it, hence the overlap). Usually every
        # event of the window came live, which the count of their seqs shows cheaply.
        since, until = self.checked_before, self.checked
        received = len({seq for seq in self.live_seqs if since < seq <= until})
        reply = await self.missed_after(since, until, received)
        self.live_seqs = array("q", (seq for seq in self.live_seqs if seq > until))
        self.checked_before, self.checked = self.checked, reply.last
        for frame in reply.updates:
            await self._send_frame(frame)

    async def _send_snapshot(self, snapshot: dict) -> None:
        for job in snapshot["jobs"]:
            self.sent[job["id"]] = max(self.sent.get(job["id"], 0), snapshot["seq"])
        await self.send_json(snapshot)

    async def dispatch(self, message):
        # Forwarding a group message touches no database, so it skips Channels' per-message
        # close_old_connections (a thread hop for every message on every socket, which is what
        # limits fan-out to hundreds of browsers). Everything else is dispatched as usual.
        if self.group is None and message["type"].startswith("job."):
            return  # access revoked (or never granted): nothing more is forwarded
        if message["type"] == "job.update":
            await self.job_update(message)
        elif message["type"] == "job.updates":
            await self._forward_batch(message["updates"])
        elif message["type"] == "job.log":
            await self.job_log(message)
        else:
            await super().dispatch(message)

    # Group messages (the only thing forwarded).
    async def job_update(self, event):
        await self._forward(event)

    async def job_log(self, event):
        message = {"type": "job.log", "job": event["job"], "lines": event["lines"]}
        if event.get("saved"):
            message["saved"] = True  # the finished job's tail is now on record (GET .../logs/)
        await self.send_json(message)


class SiteJobsConsumer(_ForwardingConsumer):
    """/ws/sites/{site}/jobs/: every change of that site's jobs."""

    @database_sync_to_async
    def authorised_group(self, user):
        name = self.scope["url_route"]["kwargs"]["site"]
        site = Site.objects.filter(name=name).first()
        if site is None or not selectors.user_may(user, site, "viewer"):
            return None
        self.target, self.site_pk = site, site.pk
        return events.site_group(site.name)

    async def missed_since(self, seq):
        known = dict(self.sent)  # copied here, on the loop: the query runs in a worker thread
        return await database_sync_to_async(resume.site_jobs_resume)(site=self.target, seq=seq, known=known)

    async def missed_after(self, since, until, received):
        known = dict(self.sent)
        return await database_sync_to_async(resume.site_jobs_missed)(site=self.target, since=since, until=until,
                                                                     known=known, received=received)


class JobConsumer(_ForwardingConsumer):
    """/ws/jobs/{id}/: that job's changes and its new log lines."""

    @database_sync_to_async
    def authorised_group(self, user):
        job = Job.objects.select_related("site").filter(pk=self.scope["url_route"]["kwargs"]["job_pk"]).first()
        if job is None or not selectors.user_may(user, job.site, "viewer"):
            return None
        self.target, self.site_pk = job, job.site_id
        return events.job_group(job.pk)

    async def missed_since(self, seq):
        known = dict(self.sent)
        return await database_sync_to_async(resume.job_resume)(job=self.target, seq=seq, known=known)

    async def missed_after(self, since, until, received):
        known = dict(self.sent)
        return await database_sync_to_async(resume.job_missed)(job=self.target, since=since, until=until, known=known,
                                                               received=received)
