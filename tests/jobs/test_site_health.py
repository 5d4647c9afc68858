"""Site health on every page of a site and on the all-sites home page: engine reachable, watcher
connected (and who holds the lease), last reconcile and what it repaired, orphans; a banner when a
site is in trouble. Real watchers (WatcherPool) against the process backend and an unreachable
Docker engine."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from jobs.models import Job, OrphanWorkload, Role, Site, SiteHealth, SiteMembership
from jobs.services.site_health import site_health, site_health_disconnected
from jobs.watchers import WatcherPool
from tests.util import wait_until

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]
BANNER = 'id="site-health-banner"'


@pytest.fixture
def pool():
    started: list[WatcherPool] = []

    def start() -> WatcherPool:
        started.append(WatcherPool(lease_seconds=6).start())
        return started[-1]
    yield start
    for p in started:
        p.stop()


def site_pages(site):
    return [reverse("site-overview", args=[site.name]), reverse("site-history", args=[site.name]),
            reverse("studies", args=[site.name])]


def test_a_site_no_watcher_ever_connected_to_shows_the_banner_and_why(client, users, process_site):
    client.force_login(users["viewer"])
    for url in site_pages(process_site):
        body = client.get(url).content.decode()
        assert BANNER in body, url
        assert "No watcher holds this site&#x27;s lease" in body and "Never reconciled." in body, url


def test_a_site_whose_engine_is_unreachable_shows_the_banner_with_the_engine_error(client, users, pool, tmp_path):
    site = Site.objects.create(name="site-d", backend="docker", docker={
        "workspace": str(tmp_path), "user": "1000:1000", "timeout": 5, "docker_host": "unix:///nonexistent/docker.sock"})
    SiteMembership.objects.create(site=site, user=users["viewer"], role=Role.VIEWER)
    pool()
    wait_until(lambda: SiteHealth.objects.filter(site=site).exclude(watcher_error="").exists(), timeout=30,
               message="the watcher recorded its failure")
    health = site_health(site)
    assert health.engine_reachable is False and health.lease_holder and health.connected_since is None
    client.force_login(users["viewer"])
    for url in site_pages(site):
        body = client.get(url).content.decode()
        assert BANNER in body and "Engine unreachable:" in body and "nonexistent" in body, url
    home = client.get("/").content.decode()
    assert "Engine unreachable:" in home and ">unreachable<" in home


def test_a_healthy_site_shows_no_banner_and_its_panel_says_who_watches_it(client, users, process_site, pool):
    Job.objects.create(site=process_site, job_id="gone", backend="process", state="running",
                       handle={"backend": "process", "ref": "999999999"})
    watchers = pool()
    wait_until(lambda: "site-1" in watchers.watching() and site_health(process_site).connected_since, timeout=30,
               message="the watcher connected")
    health = site_health(process_site)
    assert health.ok and health.engine_reachable and health.lease_holder == watchers.owner
    assert "gone: running -> lost" in health.reconcile_summary  # what the reconcile on connect repaired
    client.force_login(users["viewer"])
    for url in site_pages(process_site):
        assert BANNER not in client.get(url).content.decode(), url
    body = client.get(reverse("site-overview", args=["site-1"])).content.decode()
    assert "connected since" in body and watchers.owner in body and "gone: running -&gt; lost" in body


def test_an_old_or_failed_reconcile_is_trouble(process_site):
    from jobs.models import WatcherLease

    WatcherLease.objects.create(site=process_site, owner="h:1:x", expires_at=timezone.now() + timedelta(minutes=1))
    SiteHealth.objects.create(site=process_site, watcher_connected_at=timezone.now(),
                              reconciled_at=timezone.now() - timedelta(hours=1), reconcile_ok=True)
    assert any("too old" in p for p in site_health(process_site).problems)
    SiteHealth.objects.filter(site=process_site).update(reconciled_at=timezone.now(), reconcile_ok=False,
                                                        reconcile_summary="failed: engine said no")
    health = site_health(process_site)
    assert health.engine_reachable is False and "Last reconcile failed: engine said no" in health.problems


def test_a_reconnect_loop_does_not_rewrite_the_same_error(process_site):
    site_health_disconnected(site_pk=process_site.pk, error="API unreachable")
    first = SiteHealth.objects.get(site=process_site).watcher_error_at
    site_health_disconnected(site_pk=process_site.pk, error="API unreachable")
    assert SiteHealth.objects.get(site=process_site).watcher_error_at == first
    site_health_disconnected(site_pk=process_site.pk, error="another error")
    assert SiteHealth.objects.get(site=process_site).watcher_error == "another error"


def test_the_home_page_lists_only_the_sites_the_user_may_see_with_counts(client, users, process_site, other_site):
    Job.objects.create(site=process_site, job_id="j1", backend="process", state="failed")
    OrphanWorkload.objects.create(site=process_site, ref="stray", state="running")
    client.force_login(users["outsider"])
    body = client.get("/").content.decode()
    assert 'data-site="site-b"' in body and 'data-site="site-1"' not in body and "site-1" not in body
    client.force_login(users["staff"])
    body = client.get("/").content.decode()
    assert 'data-site="site-b"' in body and 'data-site="site-1"' in body
    row = body.split('data-site="site-1"')[1].split("</tr>")[0]
    assert 'data-count="failed"><span class="n">1</span> failed' in row and "?state=failed" in row
    assert '<td data-col="orphans">1</td>' in row
    assert "no jobs" in body.split('data-site="site-b"')[1].split("</tr>")[0]
    assert BANNER not in body  # the home page shows health in its table, not a banner for one site
