"""CPU time of each thread of a process over a window, from /proc (no ptrace needed, unlike py-spy).

    python benchmarks/thread_cpu.py PID --seconds 8 --out threads.json

Prints each thread's name and its share of one core over the window, busiest first. In a server where
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
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    before, started = thread_times(args.pid), time.monotonic()
    time.sleep(args.seconds)
    after, elapsed = thread_times(args.pid), time.monotonic() - started
    shares = {name: (after[name] - before.get(name, 0.0)) / elapsed for name in after}
    busy = sorted(((share, name) for name, share in shares.items() if share > 0.005), reverse=True)
    for share, name in busy:
        print(f"{share:7.1%}  {name}")
    print(f"{sum(shares.values()):7.1%}  all threads over {elapsed:.1f} s")
    if args.out:
        args.out.write_text(json.dumps({"seconds": elapsed, "shares": dict((n, s) for s, n in busy)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
