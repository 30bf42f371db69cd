"""The state of the shared host, printed beside every benchmark's figures.

This machine is a VM whose two vCPUs share their physical cores with other tenants: at
times the second vCPU gets much less than a whole core, and every two-thread figure
(torch's and ours) drops with it, without any change of code. A quick check before and
after a benchmark says whether its figures are usable: a fixed compute-bound workload
(an in-cache float32 matmul) timed on one and on two threads. On an idle host two
threads run it 1.9-2.0x as fast as one; below ``MIN_SCALING`` the host was contended.
"""

from __future__ import annotations

import os
import time

#: two-thread speed-up of the check below which figures are marked as taken on a contended host
MIN_SCALING = 1.8


def cpu_scaling(rounds: int = 7) -> float:
    """Two-thread over one-thread throughput of an in-cache matmul, best of ``rounds``
    alternating runs of each (about a second)."""
    import torch

    a = torch.randn(512, 512)
    best = {1: float("inf"), 2: float("inf")}
    prev = torch.get_num_threads()
    try:
        for _ in range(rounds):
            for n in (1, 2):  # alternating, so that a change of the host's load hits both
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                for _ in range(20):
                    a @ a
                best[n] = min(best[n], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(prev)
    return best[1] / best[2]


def cpu_name() -> str:
    """The CPU's model name and its SIMD level (every figure names the CPU it ran on)."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and name == "unknown CPU":
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = "AVX-512 BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else (
        "AVX2" if "avx2" in flags else "no AVX2")
    return f"{name} ({simd})"


def report(when: str) -> float:
    """Print one line on the host's state (``when``: "before" / "after") and return the scaling."""
    s = round(cpu_scaling(), 2)  # judged as printed
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    verdict = "idle" if s >= MIN_SCALING else "CONTENDED: two-thread figures are not comparable"
    print(f"# host {when}: load average {load}; 2-thread CPU check {s:.2f}x one thread ({verdict})", flush=True)
    return s


def verdict(scalings: list[float]) -> str:
    """A closing line for a run whose checks gave ``scalings``."""
    if min(scalings) >= MIN_SCALING:
        return f"# host: idle before and after (2-thread check >= {MIN_SCALING}x): figures usable"
    return (f"# host: CONTENDED during this run (2-thread check {min(scalings):.2f}x < {MIN_SCALING}x): "
            "rerun on an idle host before comparing these figures with targets or other runs")
