"""The loopback cluster shared by the load-balancer tests: three `llmserve run` instances on the
tiny model behind HAProxy (deploy/haproxy/haproxy.cfg), started once for tests/deploy/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.lb_cluster import Cluster, start_cluster
from tests.live_server import free_port

DRAIN_GRACE_S = 3.0  # > fall x inter = 2 s in haproxy.cfg


def require(tool: str) -> str:
    """The tool's path; CI must have it (`make lb` installs it), elsewhere the test is skipped."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed: `make lb` installs Debian's package")
        pytest.skip(f"{tool} is not installed (`make lb`)")
    return path


@pytest.fixture(scope="package")
def cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require("haproxy")
    workdir = tmp_path_factory.mktemp("lb")
    ports = [free_port() for _ in range(3)]
    yield from start_cluster(workdir, tiny_model_dir, ports, free_port(), DRAIN_GRACE_S)
