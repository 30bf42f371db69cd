"""save_weights / load_weights of about 512 MiB (8 x Linear(4096, 4096), float32, with a
plan, so the tensor digests are computed), best of ``--repeat``: wall clock and CPU time
(getrusage user + sys, every thread of the process). Also: the digests alone, and the
hashlib digests' throughput on this CPU (SHA-256 is fast where the CPU has SHA-NI).

    PYTHONPATH=src taskset -c 0,1 python benchmarks/bench_weights.py [--repeat 5]

Runs against whatever ``torchinit`` is on the path: run it from an older tree to compare.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import tempfile
import time


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _best(fn, repeat: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = _cpu(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    return min(walls), min(cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temporary folder)")
    args, _ = ap.parse_known_args()  # run_all.py passes every script the same arguments

    import torch

    import torchinit
    from torchinit.scale import weights as W

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096, bias=False) for _ in range(8)])
    plan = torchinit.plan(model, "pytorch")
    mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    d = tempfile.mkdtemp(dir=args.dir)
    path = os.path.join(d, "w.safetensors")
    try:
        rows = [("save_weights (with plan)", _best(lambda: W.save_weights(model, path, plan=plan), args.repeat)),
                ("load_weights (state dict)", _best(lambda: W.load_weights(path), args.repeat)),
                ("load_weights into the model", _best(lambda: W.load_weights(path, model), args.repeat))]
        if hasattr(W, "_tensor_digests"):
            rows.append(("tensor digests alone", _best(lambda: W._tensor_digests(model.state_dict()), args.repeat)))
    finally:
        shutil.rmtree(d)
    with open("/proc/loadavg") as fh:
        load = " ".join(fh.read().split()[:3])
    print(f"{mib:.0f} MiB, torchinit from {os.path.dirname(torchinit.__file__)}, load average {load}")
    for name, (wall, cpu) in rows:
        print(f"  {name:30s} wall {wall:6.3f} s   CPU {cpu:6.3f} s")
    data = os.urandom(1 << 20) * 64
    speeds = []
    for name in ("sha256", "sha1", "blake2b", "blake2s", "sha512", "md5", "sha3_256"):
        _, cpu = _best(lambda name=name: hashlib.new(name, data).digest(), 3)
        speeds.append(f"{name} {64 / 1024 / cpu:.2f}")
    print("  hashlib, one thread, GiB/s of CPU time: " + ", ".join(speeds))


if __name__ == "__main__":
    main()
