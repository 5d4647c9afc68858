"""Watchers: one thread per site consuming its backend's change stream.

A WatcherPool holds a per-site lease in the database, so that with several processes only one
watches each site; the others stand by and take over when the lease expires. Each watcher reconciles
its site after every (re)connect before it trusts the stream again, and reconnects with capped,
jittered backoff.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import Q
from django.utils import timezone

from backends.base import BackendError
from jobs.models import Site, WatcherLease
from jobs.services.launching import job_apply_observation
from jobs.services.reconciliation import site_reconcile
from jobs.services.sites import site_backend

log = logging.getLogger(__name__)
BACKOFF_START, BACKOFF_CAP = 0.5, 30.0


def lease_acquire(*, site_pk: int, owner: str, seconds: int) -> bool:
    """Take or renew the site's watcher lease; False while another owner holds an unexpired one."""
    now = timezone.now()
    until = now + timedelta(seconds=seconds)
    with transaction.atomic():
        if WatcherLease.objects.filter(site_id=site_pk).filter(Q(owner=owner) | Q(expires_at__lt=now)).update(
                owner=owner, expires_at=until):
            return True
        try:
            with transaction.atomic():
                WatcherLease.objects.create(site_id=site_pk, owner=owner, expires_at=until)
            return True
        except IntegrityError:
            return False


def lease_release(*, owner: str) -> None:
    WatcherLease.objects.filter(owner=owner).delete()


class SiteWatcher(threading.Thread):
    """Streams one site until `stop` is set; reconnects on errors."""

    def __init__(self, site_pk: int, site_name: str):
        super().__init__(name=f"watcher-{site_name}", daemon=True)
        self.site_pk = site_pk
        self.site_name = site_name
        self.stop = threading.Event()
        self.connected = threading.Event()

    def run(self) -> None:
        backoff = BACKOFF_START
        try:
            while not self.stop.is_set():
                try:
                    self._stream_once()
                    backoff = BACKOFF_START
                except BackendError as exc:
                    log.warning("watcher %s: %s; reconnecting in %.1fs", self.site_name, exc, backoff)
                except Exception:
                    log.exception("watcher %s failed; reconnecting in %.1fs", self.site_name, backoff)
                finally:
                    self.connected.clear()
                    close_old_connections()
                self.stop.wait(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_CAP)
        finally:
            connection.close()

    def _stream_once(self) -> None:
        site = Site.objects.get(pk=self.site_pk)
        backend = site_backend(site)
        stream = backend.stream(self.stop)
        site_reconcile(site=site)  # anything that happened while we were away
        self.connected.set()
        for observation in stream:
            job_apply_observation(observation, source="watcher")


class WatcherPool:
    """Starts a SiteWatcher for every site whose lease this process holds; restarts it when the
    site's settings change; stops it when the lease is lost."""

    def __init__(self, *, lease_seconds: int | None = None):
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.lease_seconds = lease_seconds or settings.LAUNCHER_WATCHER_LEASE_SECONDS
        self.watchers: dict[int, tuple[object, SiteWatcher]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher-pool", daemon=True)

    def start(self) -> WatcherPool:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.sync()
                except Exception:
                    log.exception("watcher pool sync failed")
                    close_old_connections()
                self._stop.wait(min(2.0, self.lease_seconds / 3))
        finally:
            for _, watcher in self.watchers.values():
                watcher.stop.set()
            for _, watcher in self.watchers.values():
                watcher.join(5)
            try:
                lease_release(owner=self.owner)
            finally:
                connection.close()

    def sync(self) -> None:
        sites = {s.pk: s for s in Site.objects.all()}
        for pk, (version, watcher) in list(self.watchers.items()):
            site = sites.get(pk)
            held = site is not None and lease_acquire(site_pk=pk, owner=self.owner, seconds=self.lease_seconds)
            if not held or (site.backend, site.updated_at) != version or not watcher.is_alive():
                watcher.stop.set()
                del self.watchers[pk]
        for pk, site in sites.items():
            if pk not in self.watchers and lease_acquire(site_pk=pk, owner=self.owner, seconds=self.lease_seconds):
                watcher = SiteWatcher(pk, site.name)
                self.watchers[pk] = ((site.backend, site.updated_at), watcher)
                watcher.start()
