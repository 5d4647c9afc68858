"""A container printing 16 KB lines: the Docker backend's logs tail stays within the byte cap
(read as a stream, so the whole output is never held at once) and keeps the newest output."""

from __future__ import annotations

import pytest

from backends.base import LABEL_SITE, Handle
from backends.logtail import DEFAULT_MAX_BYTES
from tests.backends.conftest import IMAGE

pytestmark = pytest.mark.docker

SCRIPT = "i=0; while [ $i -lt 400 ]; do printf \"%s %16384s\\n\" line$i x; i=$((i+1)); done; echo last-line"


def test_logs_of_a_container_printing_16k_lines_stay_under_the_cap(docker_backend, docker_client, docker_site):
    container = docker_client.containers.run(IMAGE, ["sh", "-c", SCRIPT], detach=True,
                                             labels={LABEL_SITE: docker_site}, name=f"{docker_site}-loud")
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0
        handle = Handle(backend="docker", ref=container.name)
        text = docker_backend.logs(handle, tail=10_000)
        assert len(text.encode()) <= DEFAULT_MAX_BYTES
        assert text.endswith("last-line\n") and "line399 " in text and "bytes cut]" in text.splitlines()[0]
        five = docker_backend.logs(handle, tail=5).splitlines()
        # Docker stores a line over 16 KiB as several entries and `tail` counts entries
        assert 2 <= len(five) <= 5 and five[-1] == "last-line" and five[-2].startswith("line399 ")
    finally:
        container.remove(force=True)
