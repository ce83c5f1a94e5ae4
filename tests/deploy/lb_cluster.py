"""A loopback cluster for load-balancer tests and benchmarks: `llmserve run` instances on the tiny
model behind HAProxy running deploy/haproxy/haproxy.cfg (only its `bind` and `server` lines
replaced), streaming clients that count every request, and per-instance metrics.

Every process is started here and stopped by its handle."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.live_server import is_running, wait_ready

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def haproxy_config(bind_port: int, servers: dict[str, int], source: Path = HAPROXY_CFG) -> str:
    """The documented config with this cluster's listener and servers: nothing else changes."""
    text = source.read_text()
    text, binds = re.subn(r"(?m)^    bind \S+$", f"    bind 127.0.0.1:{bind_port}", text)
    lines = "\n".join(f"    server {name} 127.0.0.1:{port}" for name, port in servers.items())
    text, n = re.subn(r"(?m)(^    server \S+ \S+\n)+", lines + "\n", text)
    assert binds == 1 and n == 1, "haproxy.cfg no longer has one bind line and one block of server lines"
    return text


@dataclass
class Instance:
    """One `llmserve run` process (restartable) on a fixed port."""

    name: str
    port: int
    config: Path
    log: Path
    src: Path = ROOT  # the llmserve source tree it runs from (another one for a baseline)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("a") as out:
            # `-m` puts the working directory first on sys.path: the tree in `src` is the one imported.
            self.proc = subprocess.Popen([sys.executable, "-m", "llmserve", "run", str(self.config)], cwd=self.src,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})

    def wait_ready(self, timeout_s: float = 120) -> None:
        assert self.proc is not None, f"{self.name} was not started"
        wait_ready(self.url + "/ready", is_running(self.proc), timeout_s,
                   describe=lambda: f"{self.name}: {self.log.read_text()[-2000:]}")

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait for the drain to end; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def metric(self, name: str) -> float:
        """The instance's `name{model="*"}` sample."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        match = re.search(rf'^{re.escape(name)}{{model="\*"}} (\S+)$', text, re.MULTILINE)
        assert match, f"{name} not on {self.name}'s /metrics"
        return float(match.group(1))


def write_instance_config(path: Path, port: int, model_dir: Path, drain_grace: float | None) -> None:
    """None leaves drain_grace out (an llmserve from before it, for a baseline)."""
    grace = "" if drain_grace is None else f"drain_grace = {drain_grace}\n"
    path.write_text(f'[server]\nport = {port}\n{grace}shutdown_timeout = 30\n'
                    f'[[workers]]\nmodel_path = "{model_dir}"\nmodel_names = ["tiny"]\ndtype = "float32"\n'
                    f'kv_cache_tokens = 8192\nmax_num_seqs = 32\n[ui]\nenabled = false\n')


@dataclass
class Result:
    """One streamed request through the balancer."""

    started: float
    ended: float
    ok: bool
    served_by: str = ""
    detail: str = ""


@dataclass
class Load:
    """`clients` threads streaming completions through the balancer until stopped."""

    url: str
    clients: int = 16
    max_tokens: int = 16
    results: list[Result] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self) -> None:
        body = {"model": "tiny", "prompt": "Balance the load", "max_tokens": self.max_tokens, "ignore_eos": True,
                "stream": True}
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                self.results.append(stream_once(client, self.url, body))

    def served_since(self, since: float, box: str) -> int:
        return sum(1 for r in list(self.results) if r.ok and r.started >= since and r.served_by == box)

    def failures(self) -> list[Result]:
        return [r for r in self.results if not r.ok]


def stream_once(client: httpx.Client, url: str, body: dict, headers: dict | None = None) -> Result:
    """One streaming completion; ok only with a 200, every token's chunk, finish_reason and [DONE]."""
    started = time.monotonic()
    served_by, finish, done = "", None, False
    try:
        with client.stream("POST", url + "/v1/completions", json=body, headers=headers) as response:
            served_by = response.headers.get("x-served-by", "")
            if response.status_code != 200:
                response.read()
                return Result(started, time.monotonic(), False, served_by, f"{response.status_code} {response.text}")
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    for choice in json.loads(line[6:]).get("choices", []):
                        finish = choice["finish_reason"] or finish
    except httpx.HTTPError as exc:
        return Result(started, time.monotonic(), False, served_by, f"{type(exc).__name__}: {exc}")
    ok = done and finish == "length"
    return Result(started, time.monotonic(), ok, served_by, "" if ok else f"finish={finish} done={done}")


@dataclass
class Cluster:
    instances: dict[str, Instance]
    lb_port: int
    haproxy: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    def wait_in_rotation(self, load: Load, box: str, since: float, timeout_s: float = 30) -> float:
        """Seconds until the balancer sends `box` a request again (under `load`)."""
        deadline = time.monotonic() + timeout_s
        while load.served_since(since, box) == 0:
            assert time.monotonic() < deadline, f"{box} got no traffic within {timeout_s} s"
            time.sleep(0.05)
        return time.monotonic() - since


def start_cluster(workdir: Path, model_dir: Path, ports: list[int], lb_port: int,
                  drain_grace: float | None, src: Path = ROOT) -> Iterator[Cluster]:
    """Instances box1..boxN and HAProxy in front; stops every process on exit (a generator for
    `contextlib.contextmanager` or a pytest fixture)."""
    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy is not installed (`make lb` installs Debian's package)"
    instances = {}
    for i, port in enumerate(ports, start=1):
        name = f"box{i}"
        config = workdir / f"{name}.toml"
        write_instance_config(config, port, model_dir, drain_grace)
        instances[name] = Instance(name, port, config, workdir / f"{name}.log", src=src)
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(haproxy_config(lb_port, {n: i.port for n, i in instances.items()}))
    with (workdir / "haproxy.log").open("a") as out:
        proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=out, stderr=subprocess.STDOUT)
    try:
        for instance in instances.values():
            instance.start()
        for instance in instances.values():
            instance.wait_ready()
        cluster = Cluster(instances, lb_port, proc)
        _wait_all_up(cluster)
        yield cluster
    finally:
        for instance in instances.values():
            instance.kill()
        proc.terminate()
        proc.wait(30)


def _wait_all_up(cluster: Cluster, timeout_s: float = 30) -> None:
    """Until a round of requests through the balancer reached every box (each passed `rise` checks)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    body = {"model": "tiny", "prompt": "up?", "max_tokens": 16, "ignore_eos": True}
    with httpx.Client(timeout=30) as client:
        while seen != set(cluster.instances):
            assert time.monotonic() < deadline, f"only {sorted(seen)} up behind haproxy"
            # Concurrent ones: leastconn spreads them; one at a time would all go to one box.
            served: list[str] = []

            def ask(served: list[str] = served) -> None:
                response = client.post(cluster.url + "/v1/completions", json=body)
                served.append(response.headers.get("x-served-by", ""))

            threads = [threading.Thread(target=ask) for _ in range(2 * len(cluster.instances))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            seen |= set(served) & set(cluster.instances)
            time.sleep(0.2)
