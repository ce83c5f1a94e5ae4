"""Rolling restarts of llmserve instances behind HAProxy (deploy/haproxy/haproxy.cfg) under streaming
load: requests served and failed, per `drain_grace` (issue 17; numbers in benchmarks/RESULTS.md).

    .venv/bin/python -m benchmarks.haproxy_rolling_restart --clients 16 --rounds 2 --drain-grace 3 0

The baseline, llmserve as it was before the drain (503 to new requests from SIGTERM on):

    git archive ea81304 | tar -x -C /tmp/llmserve-before
    .venv/bin/python -m benchmarks.haproxy_rolling_restart --clients 12 --llmserve-src /tmp/llmserve-before

Needs haproxy on PATH (`make lb`). Builds the tiny model in a temporary folder; every process
is started and stopped here (tests/deploy/lb_cluster.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

from llmserve.tiny import build_tiny_model
from tests.api.conftest import free_port
from tests.deploy.lb_cluster import ROOT, Load, start_cluster


def run(model_dir: Path, workdir: Path, clients: int, rounds: int, drain_grace: float | None, max_tokens: int,
        src: str) -> dict:
    ports = [free_port() for _ in range(3)]
    tree = Path(src) if src else ROOT
    with contextlib.contextmanager(start_cluster)(workdir, model_dir, ports, free_port(), drain_grace,
                                                  tree) as cluster:
        started = time.monotonic()
        with Load(cluster.url, clients=clients, max_tokens=max_tokens) as load:
            time.sleep(2.0)
            for _ in range(rounds):
                for name, instance in cluster.instances.items():
                    assert instance.terminate() == 0
                    instance.start()
                    instance.wait_ready()
                    cluster.wait_in_rotation(load, name, time.monotonic())
            time.sleep(2.0)
        drains = [line for i in cluster.instances.values() for line in i.log.read_text().splitlines()
                  if "received SIGTERM" in line]
        failures = load.failures()
        kinds: dict[str, int] = {}
        for failure in failures:
            kind = failure.detail.split(":")[0][:60]
            kinds[kind] = kinds.get(kind, 0) + 1
        return {"llmserve": src or "this checkout", "drain_grace_s": drain_grace, "clients": clients, "restarts": 3 * rounds,
                "seconds": round(time.monotonic() - started, 1), "requests": len(load.results),
                "failed": len(failures), "failure_kinds": kinds, "drain_log": drains[0].split(": ", 1)[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="restarts of each of the 3 instances")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--drain-grace", type=float, nargs="+", default=[3.0, 0.0])
    parser.add_argument("--llmserve-src", default="", help="run the instances from this source tree "
                        "(one from before drain_grace: the setting is left out)")
    args = parser.parse_args()
    graces: list[float | None] = [None] if args.llmserve_src else list(args.drain_grace)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny", seed=0)
        for grace in graces:
            workdir = Path(tmp) / f"grace-{grace}"
            workdir.mkdir()
            print(json.dumps(run(model_dir, workdir, args.clients, args.rounds, grace, args.max_tokens,
                                 args.llmserve_src)), flush=True)


if __name__ == "__main__":
    main()
