"""Watchers: one thread per site consuming its backend's change stream.

A WatcherPool holds a per-site lease in the database, so that with several processes only one
watches each site; the others stand by and take over when the lease expires (at once when the
holder was a process on this host that has died). Each watcher opens the stream, then reconciles
its site before it trusts the stream (so nothing that happened while it was away, or between the
two, is missed), and reconnects with capped, jittered backoff. While a job runs, a bounded number
of log followers forward its new output lines to the job's page.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import Q
from django.utils import timezone

from backends.base import BackendError, Handle, JobState
from backends.logtail import without_cut_mark
from jobs import events
from jobs.models import Job, Site, WatcherLease
from jobs.services.launching import job_apply_observation
from jobs.services.progress import ProgressFeed
from jobs.services.reconciliation import site_reconcile
from jobs.services.runtime_facts import backend_error_recorded
from jobs.services.site_health import site_health_connected, site_health_disconnected
from jobs.services.sites import site_backend
from jobs.services.usage import UsageFeed

log = logging.getLogger(__name__)
BACKOFF_START, BACKOFF_CAP = 0.5, 30.0  # seconds between reconnect attempts, doubling, with jitter
LOG_POLL_SECONDS = 1.0  # how often a follower reads a running job's output
HOSTNAME = socket.gethostname()


# ---------------------------------------------------------------------------------------------
# The lease
# ---------------------------------------------------------------------------------------------


def lease_acquire(*, site_pk: int, owner: str, seconds: int) -> bool:
    """Take or renew the site's watcher lease; False while another live owner holds an unexpired one."""
    now = timezone.now()
    until = now + timedelta(seconds=seconds)
    with transaction.atomic():
        if WatcherLease.objects.filter(site_id=site_pk).filter(Q(owner=owner) | Q(expires_at__lt=now)).update(
                owner=owner, expires_at=until):
            return True
        current = WatcherLease.objects.filter(site_id=site_pk).values_list("owner", flat=True).first()
        if current is not None and _owner_is_dead(current):
            return bool(WatcherLease.objects.filter(site_id=site_pk, owner=current).update(owner=owner, expires_at=until))
        try:
            with transaction.atomic():
                WatcherLease.objects.create(site_id=site_pk, owner=owner, expires_at=until)
            return True
        except IntegrityError:
            return False


def lease_release(*, owner: str) -> None:
    WatcherLease.objects.filter(owner=owner).delete()


def _owner_is_dead(owner: str) -> bool:
    """A lease owner is "host:pid:pool"; on this host a vanished pid cannot renew, so don't wait."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != HOSTNAME or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie (killed, not yet reaped) is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Log followers
# ---------------------------------------------------------------------------------------------


def new_lines(previous: list[str], current: list[str]) -> list[str]:
    """The lines of `current` (a tail) that come after `previous` (an earlier tail of the same output)."""
    for k in range(min(len(previous), len(current)), 0, -1):
        if previous[-k:] == current[:k]:
            return current[k:]
    return current


class LogFollower(threading.Thread):
    """Forwards one running job's new output lines with events.publish_log_lines until stopped."""

    def __init__(self, backend, job_pk: int, site_name: str, handle: Handle, spec: dict | None = None):
        super().__init__(name=f"logs-{job_pk}", daemon=True)
        self.backend, self.job_pk, self.site_name, self.handle = backend, job_pk, site_name, handle
        self.stop = threading.Event()
        self.owner: LogFollowers | None = None  # the watcher's LogFollowers that started or took it over
        self.usage = UsageFeed(backend, job_pk, handle, spec)  # CPU/memory every LAUNCHER_RESOURCE_SAMPLE_SECONDS

    def run(self) -> None:
        previous: list[str] = []
        progress = ProgressFeed(self.job_pk)  # the job's rounds and aggregations, from these lines
        tail = max(1, settings.LAUNCHER_LOGS_TAIL_LINES)
        while not self.stop.is_set():
            try:
                current = without_cut_mark(self.backend.logs(self.handle, tail=tail).splitlines())
            except BackendError as exc:
                backend_error_recorded(exc, operation="logs", site_name=self.site_name)  # /metrics
                current = previous
            fresh = new_lines(previous, current)
            previous = current
            events.publish_log_lines(self.job_pk, self.site_name, fresh)
            progress.feed(fresh)
            self.usage.tick()
            # Whatever this pass wrote (progress, usage, an error count), its pooled connection goes
            # back now: 20 followers holding one each starve the watcher's lanes (LAUNCHER_DB_POOL_SIZE 10).
            connection.close()
            self.stop.wait(LOG_POLL_SECONDS)


class LogFollowers:
    """At most LAUNCHER_LOG_FOLLOWERS followers per process; a job's follower ends with the job."""

    _lock = threading.Lock()
    _running: dict[int, LogFollower] = {}  # shared by every watcher of the process: the bound is per process

    def __init__(self, site_name: str):
        self.site_name = site_name
        self.mine: set[int] = set()

    def track(self, job: Job | None, backend) -> None:
        if job is None:
            return
        if job.state != JobState.RUNNING or not job.handle:
            self.drop(job.pk)
            return
        with self._lock:
            follower = self._running.get(job.pk)
            if follower is not None and follower.is_alive():
                # The site's newest watcher owns it: when a site's settings change its watcher is
                # replaced, and the old one, stopping, must not stop a follower its successor found.
                follower.owner.mine.discard(job.pk)
                follower.owner = self
                self.mine.add(job.pk)
                return
            if len(self._running) >= settings.LAUNCHER_LOG_FOLLOWERS:
                return
            follower = LogFollower(backend, job.pk, self.site_name, Handle(**job.handle), job.spec)
            follower.owner = self
            self._running[job.pk] = follower
            self.mine.add(job.pk)
        follower.start()

    def drop(self, job_pk: int, *, only_mine: bool = False) -> None:
        with self._lock:
            self.mine.discard(job_pk)
            follower = self._running.get(job_pk)
            if follower is None or (only_mine and follower.owner is not self):
                return
            del self._running[job_pk]
        follower.stop.set()

    def drop_all(self) -> None:
        """This watcher stops: its followers stop, but not one another watcher has taken over."""
        with self._lock:
            mine = list(self.mine)
        for pk in mine:
            self.drop(pk, only_mine=True)


# ---------------------------------------------------------------------------------------------
# One site
# ---------------------------------------------------------------------------------------------


class SiteWatcher(threading.Thread):
    """Streams one site until `stop` is set; reconnects (and reconciles) after every error."""

    def __init__(self, site_pk: int, site_name: str):
        super().__init__(name=f"watcher-{site_name}", daemon=True)
        self.site_pk = site_pk
        self.site_name = site_name
        self.stop = threading.Event()
        self.connected = threading.Event()
        self.connects = 0  # successful (re)connections, each followed by a reconcile
        self.followers = LogFollowers(site_name)

    def run(self) -> None:
        backoff = BACKOFF_START
        try:
            while not self.stop.is_set():
                try:
                    self._stream_once()
                except BackendError as exc:
                    log.warning("watcher %s: %s; reconnecting in ~%.1fs", self.site_name, exc, backoff)
                    backend_error_recorded(exc, operation="watch", site_pk=self.site_pk)  # /metrics
                    site_health_disconnected(site_pk=self.site_pk, error=str(exc))
                except Exception as exc:
                    log.exception("watcher %s failed; reconnecting in ~%.1fs", self.site_name, backoff)
                    backend_error_recorded(exc, operation="watch", site_pk=self.site_pk)
                    site_health_disconnected(site_pk=self.site_pk, error=f"watcher failed: {exc!r}")
                finally:
                    if self.connected.is_set():
                        backoff = BACKOFF_START  # it was up: the next failure starts over
                    self.connected.clear()
                    self.followers.drop_all()
                    close_old_connections()
                if self.stop.wait(backoff * random.uniform(0.5, 1.0)):
                    break
                backoff = min(backoff * 2, BACKOFF_CAP)
        finally:
            self.followers.drop_all()
            connection.close()

    def _stream_once(self) -> None:
        site = Site.objects.get(pk=self.site_pk)
        backend = site_backend(site)
        # Replayed from a second ago (where the backend replays), so the reconcile that follows and
        # the stream overlap instead of leaving a gap.
        stream = backend.stream(self.stop, since=int(time.time()) - 1)
        site_reconcile(site=site)  # anything that happened while we were away
        for job in Job.objects.filter(site=site, state=JobState.RUNNING).exclude(handle=None):
            self.followers.track(job, backend)
        self.connects += 1
        self.connected.set()
        site_health_connected(site_pk=self.site_pk)
        with Lanes(settings.LAUNCHER_WATCHER_LANES) as lanes:
            for observation in stream:
                lanes.submit(observation.ref, self._apply, observation, backend)

    def _apply(self, observation, backend) -> None:
        try:
            job = job_apply_observation(observation, source="watcher", site_pk=self.site_pk)
            self.followers.track(job, backend)
        except Exception:  # one bad observation must not stop the others; reconcile repairs drift
            log.exception("watcher %s could not record %s", self.site_name, observation.ref)
        finally:
            close_old_connections()


class Lanes:
    """Recording an exit costs a few engine calls (logs tail, removal) and a database write; with
    many exits at once, doing them one after another makes the last wait for all the others. Each
    workload's observations go to one lane (by its ref), so they stay in order, while different
    workloads are recorded in parallel. Leaving the block waits for every lane to finish."""

    def __init__(self, count: int):
        from concurrent.futures import ThreadPoolExecutor

        self.executors = [ThreadPoolExecutor(1, thread_name_prefix=f"watcher-lane-{n}") for n in range(max(1, count))]

    def submit(self, key: str, function, *args) -> None:
        self.executors[hash(key) % len(self.executors)].submit(function, *args)

    def __enter__(self) -> Lanes:
        return self

    def __exit__(self, *exc) -> None:
        for executor in self.executors:
            executor.submit(connection.close)  # each lane thread holds its own database connection
            executor.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------
# The pool
# ---------------------------------------------------------------------------------------------


class WatcherPool:
    """Starts a SiteWatcher for every site whose lease this process holds; restarts it when the
    site's settings change; stops it when the lease is lost."""

    def __init__(self, *, lease_seconds: int | None = None):
        self.owner = f"{HOSTNAME}:{os.getpid()}:{id(self):x}"
        self.lease_seconds = lease_seconds or settings.LAUNCHER_WATCHER_LEASE_SECONDS
        self.watchers: dict[int, tuple[object, SiteWatcher]] = {}
        self.syncs = 0  # completed lease rounds (tests and health checks wait on it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher-pool", daemon=True)

    def start(self) -> WatcherPool:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def watching(self) -> set[str]:
        return {watcher.site_name for _, watcher in self.watchers.values() if watcher.is_alive()}

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
            except Exception:
                log.warning("could not release watcher leases; they expire in %ss", self.lease_seconds)
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
        self.syncs += 1
