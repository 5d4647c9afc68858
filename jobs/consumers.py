"""Websocket consumers: authenticate, authorise, join a group, forward. They accept no commands."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from jobs import events, selectors
from jobs.models import Job, Site

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


class _ForwardingConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        group = await self.authorised_group(user)
        if group is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.group = group
        await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def authorised_group(self, user) -> str | None:
        raise NotImplementedError

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        pass  # commands go through the REST API

    async def job_update(self, event):
        await self.send_json({"type": "job.update", "job": event["job"], "seq": event.get("seq")})

    async def job_log(self, event):
        await self.send_json({"type": "job.log", "job": event["job"], "lines": event["lines"]})


class SiteJobsConsumer(_ForwardingConsumer):
    """/ws/sites/{site}/jobs/: every change of that site's jobs."""

    @database_sync_to_async
    def authorised_group(self, user):
        name = self.scope["url_route"]["kwargs"]["site"]
        site = Site.objects.filter(name=name).first()
        if site is None or not selectors.user_may(user, site, "viewer"):
            return None
        return events.site_group(site.name)


class JobConsumer(_ForwardingConsumer):
    """/ws/jobs/{id}/: that job's changes and its new log lines."""

    @database_sync_to_async
    def authorised_group(self, user):
        job = Job.objects.select_related("site").filter(pk=self.scope["url_route"]["kwargs"]["job_pk"]).first()
        if job is None or not selectors.user_may(user, job.site, "viewer"):
            return None
        return events.job_group(job.pk)
