"""Series computed from job rows: jobs by site and state, and over the last WINDOW_SECONDS, launch
latency, time to running, exit -> publish latency and the jobs that ended."""

from __future__ import annotations

from bisect import bisect_right

from django.db.models import Count, F, Min, Q
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily

from backends.base import JobState
from jobs.models import ACTIVE, Job

WINDOW_SECONDS = 900
WINDOW_ROWS = 20000  # at most this many newest jobs enter the histograms (a burst cannot make a scrape slow)
LAUNCH_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
RUNNING_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)
EXIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
REASON_MAX = 40  # reasons are short codes (OOMKilled, vanished, LaunchError); cap any free text


def jobs_by_state(sites):
    counts = {(site, state.value): 0 for site in sites for state in JobState}
    for site, state, n in Job.objects.values_list("site__name", "state").annotate(n=Count("id")).order_by():
        counts[(site, state)] = n
    family = GaugeMetricFamily("flare_launcher_jobs", "Jobs by site and state.", labels=["site", "state"])
    for (site, state), n in sorted(counts.items()):
        family.add_metric([site, state], n)
    return family


def _histogram(name, documentation, buckets, samples_by_key, labels=("site",)):
    family = GaugeHistogramMetricFamily(name, documentation, labels=list(labels))
    for key, samples in sorted(samples_by_key.items()):
        samples.sort()
        cumulative = [(str(float(b)), bisect_right(samples, b)) for b in buckets]
        cumulative.append(("+Inf", len(samples)))
        family.add_metric(list(key) if isinstance(key, tuple) else [key], cumulative, gsum_value=sum(samples))
    return family


def latencies(since):
    rows = (Job.objects.filter(created_at__gte=since)
            .annotate(left_queue=Min("events__at", filter=Q(events__from_state=JobState.QUEUED) & ~Q(
                events__to_state=JobState.QUEUED)))
            .values_list("site__name", "created_at", "left_queue", "started_at")
            .order_by("-created_at")[:WINDOW_ROWS])
    launch: dict[str, list[float]] = {}
    running: dict[str, list[float]] = {}
    for site, created_at, left_queue, started_at in rows:
        if left_queue is not None:
            launch.setdefault(site, []).append(max(0.0, (left_queue - created_at).total_seconds()))
        if started_at is not None:
            running.setdefault(site, []).append(max(0.0, (started_at - created_at).total_seconds()))
    window = f"jobs submitted in the last {WINDOW_SECONDS} s"
    return [
        _histogram("flare_launcher_launch_seconds", f"Submit -> launched or launch failed, {window}.",
                   LAUNCH_BUCKETS, launch),
        _histogram("flare_launcher_time_to_running_seconds", f"Submit -> running, {window}.",
                   RUNNING_BUCKETS, running),
    ]


def exit_latency(since):
    """The engine's exit time (Job.exited_at) -> the dashboard recording it (finished_at; the publish
    to browsers follows its commit), by site and by who recorded it: `watcher` is the live path, a
    `reconcile` sample is an exit the stream missed and the periodic reconcile found later."""
    rows = (Job.objects.filter(finished_at__gte=since, exited_at__isnull=False,
                               events__to_state=F("state"), events__from_state__in=ACTIVE)
            .values_list("site__name", "events__source", "finished_at", "exited_at")
            .order_by("-finished_at")[:WINDOW_ROWS])
    samples: dict[tuple, list[float]] = {}
    for site, source, finished_at, exited_at in rows:
        # Clamped at 0: the engine's clock (a Kubernetes node's) may run ahead of ours.
        samples.setdefault((site, source), []).append(max(0.0, (finished_at - exited_at).total_seconds()))
    return _histogram("flare_launcher_exit_to_publish_seconds",
                      f"Workload exit (engine time) -> recorded and published, jobs that ended in the last "
                      f"{WINDOW_SECONDS} s, by who recorded the exit.", EXIT_BUCKETS, samples, labels=("site", "source"))


def ended(since):
    # The event that ended the job (to its final state) says who recorded the end.
    rows = (Job.objects.filter(finished_at__gte=since)
            .filter(events__to_state=F("state")).exclude(events__from_state=F("state"))
            .values_list("site__name", "state", "reason", "events__source").annotate(n=Count("id")).order_by())
    counts: dict[tuple, int] = {}
    for site, state, reason, source, n in rows:
        key = (site, state, (reason or "none")[:REASON_MAX], source)
        counts[key] = counts.get(key, 0) + n
    family = GaugeMetricFamily(
        "flare_launcher_jobs_ended_recent",
        f"Jobs that reached a final state in the last {WINDOW_SECONDS} s, by reason and by who recorded it "
        "(source=reconcile: drift a reconcile found).", labels=["site", "state", "reason", "source"])
    for key, n in sorted(counts.items()):
        family.add_metric(list(key), n)
    return family
