"""deploy/nginx/nginx.conf, the documented alternative to HAProxy, in front of the same three
instances (only its `listen` and `server` addresses replaced): valid to `nginx -t`, a restart of one
instance under 8 streaming clients fails no request (refused connections and a loading box's 503s
are retried), and X-Session-ID keeps a conversation on one box."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import require
from tests.deploy.lb_cluster import ROOT, Cluster, Load, stream_once
from tests.live_server import free_port

NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"


def nginx_config(listen_port: int, servers: list[int]) -> str:
    text = NGINX_CONF.read_text()
    text, listens = re.subn(r"(?m)^        listen \S+;$", f"        listen 127.0.0.1:{listen_port};", text)
    options = re.search(r"(?m)^        server \S+ (.*);$", text)
    assert options, "nginx.conf has no upstream server lines"
    lines = "\n".join(f"        server 127.0.0.1:{port} {options.group(1)};" for port in servers)
    text, n = re.subn(r"(?m)(^        server \S+ .*;\n)+", lines + "\n", text)
    assert listens == 1 and n == 1, "nginx.conf no longer has one listen line and one block of server lines"
    return text


def _nginx_args(nginx: str, conf: Path) -> list[str]:
    prefix = conf.parent
    return [nginx, "-c", str(conf), "-p", str(prefix), "-e", "stderr", "-g", f"pid {prefix / 'nginx.pid'};"]


def test_the_documented_config_is_valid(tmp_path: Path) -> None:
    nginx = require("nginx")
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_config(free_port(), [8001, 8002]))
    result = subprocess.run([*_nginx_args(nginx, conf), "-t"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def nginx_url(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    nginx = require("nginx")
    conf = tmp_path_factory.mktemp("nginx") / "nginx.conf"
    port = free_port()
    conf.write_text(nginx_config(port, [i.port for i in cluster.instances.values()]))
    proc = subprocess.Popen([*_nginx_args(nginx, conf), "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                            stderr=(conf.parent / "nginx.err").open("w"))
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, (conf.parent / "nginx.err").read_text()
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _box(result_served_by: str) -> str:
    """nginx's X-Served-By is $upstream_addr: every box tried, the one that answered last."""
    return result_served_by.split(",")[-1].strip()


def test_restarting_a_box_behind_nginx_fails_no_request(cluster: Cluster, nginx_url: str) -> None:
    box = cluster.instances["box1"]
    address = f"127.0.0.1:{box.port}"
    with Load(nginx_url, clients=8) as load:
        time.sleep(1.0)
        assert box.terminate() == 0
        box.start()
        box.wait_ready()
        back = time.monotonic()
        deadline = back + 30
        while not [r for r in list(load.results) if r.ok and r.started > back and _box(r.served_by) == address]:
            assert time.monotonic() < deadline, "box1 got no traffic through nginx after its restart"
            time.sleep(0.1)
    failures = load.failures()
    print(f"nginx, box1 restarted: {len(load.results)} requests, {len(failures)} failed "
          f"{[f.detail for f in failures[:3]]}")
    assert len(load.results) > 20 and failures == []


def test_session_header_keeps_a_conversation_on_one_box(nginx_url: str) -> None:
    body = {"model": "tiny", "prompt": "Which box?", "max_tokens": 4, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as client:
        for session in ("conversation-a", "conversation-b", "conversation-c"):
            turns = [stream_once(client, nginx_url, body, {"X-Session-ID": session}) for _ in range(3)]
            assert all(t.ok for t in turns) and len({_box(t.served_by) for t in turns}) == 1
