"""`docker.allow_host_network`: the one way to give a Docker site `network: "host"` (what keeps a real
NVFlare job's traffic on loopback, test_docker_backend.py). Refused without it, and a setting only
platform staff may change. Pure checks: no database, no daemon."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from backends.base import InvalidJobSpec
from backends.docker.config import DockerSiteConfig
from jobs.services import policy

SITE_ADMIN = SimpleNamespace(is_staff=False)
STAFF = SimpleNamespace(is_staff=True)


def test_host_network_needs_allow_host_network():
    with pytest.raises(InvalidJobSpec) as info:
        DockerSiteConfig.from_dict({"network": "host"})
    assert info.value.field == "docker.network" and "allow_host_network" in info.value.reason
    with pytest.raises(InvalidJobSpec) as info:
        DockerSiteConfig.from_dict({"network": "host", "allow_host_network": "yes"})
    assert info.value.field == "docker.allow_host_network"
    config = DockerSiteConfig.from_dict({"network": "host", "allow_host_network": True})
    assert (config.network, config.allow_host_network) == ("host", True)
    assert DockerSiteConfig.from_dict({}).allow_host_network is False
    # The switch alone changes nothing: the site keeps its own network.
    assert DockerSiteConfig.from_dict({"allow_host_network": True}).network == "nvflare-network"


def test_only_staff_may_turn_on_host_networking():
    before = {"name": "site-1", "backend": "docker", "allowed_data_roots": [], "docker": {}, "kubernetes": {},
              "process": {}}
    after = {**before, "docker": {"network": "host", "allow_host_network": True}}
    with pytest.raises(policy.StaffOnly) as info:
        policy.check_site_change(SITE_ADMIN, before, after)
    assert info.value.fields == ["docker.allow_host_network", "docker.network"]
    policy.check_site_change(STAFF, before, after)
    # Neither half may be slipped in by a site admin on its own.
    for change in ({"allow_host_network": True}, {"network": "host"}):
        with pytest.raises(policy.StaffOnly):
            policy.check_site_change(SITE_ADMIN, before, {**before, "docker": change})
