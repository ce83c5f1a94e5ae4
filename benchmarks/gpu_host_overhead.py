"""What the host pays per operation on a GPU machine (a diagnosis aid for issue 3).

An engine step outside its CUDA graph is a handful of host operations: Python bookkeeping, small
host-to-device copies, a graph replay, a device-to-host copy that waits for the GPU. On some hosts
each CUDA call costs tens of microseconds, which then decides the step time at small batches.
This measures each kind of operation in isolation (mean over many repetitions, GPU idle).

    python benchmarks/gpu_host_overhead.py [--out host_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _mean_us(fn: Callable[[], object], repeat: int, sync: bool = True) -> float:
    for _ in range(10):
        fn()
    if sync:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    if sync:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeat * 1e6


def measure(repeat: int) -> dict[str, float]:
    dev = torch.device("cuda")
    ints = list(range(256))
    small = torch.zeros(256, dtype=torch.int64, device=dev)
    pinned = torch.zeros(64 * 1024, dtype=torch.int32, pin_memory=True)
    device_buf = torch.zeros_like(pinned, device=dev)
    array = pinned.numpy()
    graph_in = torch.zeros(1, device=dev)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        graph_in.add_(1)
    counter = [0]

    def python_loop() -> None:
        total = 0
        for i in range(1000):
            total += i
        counter[0] = total

    return {
        "python_loop_1000_adds": _mean_us(python_loop, repeat, sync=False),
        "numpy_fill_256_ints_from_list": _mean_us(lambda: array.__setitem__(slice(0, 256), ints), repeat, False),
        "torch_tensor_256_ints_cpu": _mean_us(lambda: torch.tensor(ints), repeat, sync=False),
        "torch_tensor_256_ints_to_cuda": _mean_us(lambda: torch.tensor(ints, device=dev), repeat),
        "pinned_copy_256KB_non_blocking": _mean_us(lambda: device_buf.copy_(pinned, non_blocking=True), repeat),
        "small_kernel_launch_add": _mean_us(lambda: small.add_(1), repeat, sync=True),
        "small_kernel_launch_then_sync": _mean_us(lambda: (small.add_(1), torch.cuda.synchronize()), repeat),
        "graph_replay_one_kernel": _mean_us(graph.replay, repeat),
        "graph_replay_then_sync": _mean_us(lambda: (graph.replay(), torch.cuda.synchronize()), repeat),
        "tolist_256_ints_d2h_sync": _mean_us(small.tolist, repeat),
        "torch_empty_cuda_4KB": _mean_us(lambda: torch.empty(1024, device=dev), repeat),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "microseconds": measure(args.repeat)}
    for name, value in results["microseconds"].items():
        print(f"{name:40s} {value:9.2f} us")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
