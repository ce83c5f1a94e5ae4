"""CPU time of each thread of a process over a window, from /proc (no ptrace needed, unlike py-spy).

    python benchmarks/thread_cpu.py PID --seconds 8 [--interval 1] --out threads.json

Prints each thread's name and its share of one core over the window, busiest first, then (with
`--interval`) the busiest threads' shares in each slice of the window, so a window that runs past the
end of a load shows where the load was. In a server where
Python runs on several threads (the event loop, the engine thread), their shares summing to ~100% of
one core means they are taking turns with the interpreter lock: the lock is the bound.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def thread_times(pid: int) -> dict[str, float]:
    """Seconds of user + system CPU per thread, keyed 'name (tid)'."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended
            continue
        fields = stat.rpartition(")")[2].split()
        role = ", main thread" if task.name == str(pid) else ""  # uvicorn's event loop runs on it
        out[f"{name} ({task.name}{role})"] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--interval", type=float, default=0.0, help="also report each slice of this many seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    samples = [(time.monotonic(), thread_times(args.pid))]
    step = args.interval if args.interval > 0 else args.seconds
    while samples[-1][0] - samples[0][0] < args.seconds - 1e-3:
        time.sleep(min(step, args.seconds - (samples[-1][0] - samples[0][0])))
        try:
            samples.append((time.monotonic(), thread_times(args.pid)))
        except OSError:  # the process ended
            break
    shares, elapsed = _shares(samples[0], samples[-1])
    busy = sorted(((share, name) for name, share in shares.items() if share > 0.005), reverse=True)
    for share, name in busy:
        print(f"{share:7.1%}  {name}")
    print(f"{sum(shares.values()):7.1%}  all threads over {elapsed:.1f} s")
    slices = [_shares(a, b)[0] for a, b in zip(samples, samples[1:], strict=False)] if args.interval > 0 else []
    top = [name for _, name in busy[:3]]
    for i, part in enumerate(slices):
        cells = "  ".join(f"{part.get(name, 0.0):6.1%}" for name in top)
        print(f"slice {i:2d}: {cells}  all {sum(part.values()):6.1%}")
    if args.out:
        args.out.write_text(json.dumps({"seconds": elapsed, "shares": dict((n, s) for s, n in busy),
                                        "interval": args.interval, "slices": slices}, indent=2))
    return 0


def _shares(first: tuple[float, dict[str, float]], last: tuple[float, dict[str, float]]) -> tuple[dict[str, float], float]:
    """Each thread's share of one core between two samples, and the seconds between them."""
    (t0, before), (t1, after) = first, last
    elapsed = max(t1 - t0, 1e-9)
    return {name: (after[name] - before.get(name, 0.0)) / elapsed for name in after}, elapsed


if __name__ == "__main__":
    raise SystemExit(main())
