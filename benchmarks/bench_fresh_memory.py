"""Benchmark: where the time of writing fresh memory goes (the parts of materialize's floor).

Each case runs in a fresh process (fresh memory, as ``materialize`` of a new model gets)
and writes ``--tensors`` tensors of ``--shape`` once, timing only the allocation and the
writes:

* ``floor``: ``torch.empty`` + ``fill_`` (the stores take the first-touch faults page by page);
* ``populate`` / ``populate_huge``: only fault the pages in, as ``materialize`` does
  (``MADV_POPULATE_WRITE`` on the keyed engine's threads; ``_huge``: the tensors advised
  ``MADV_HUGEPAGE`` first, as ``huge_pages=True`` does);
* ``normal`` / ``uniform``: the keyed engine's fill of N(0, 0.02) / U(-0.02, 0.02) under
  ``prefaulting()`` (each thread faults its share in just ahead of its writes), as
  ``materialize`` does by default;
* ``huge:normal``: each tensor faulted in as ``populate_huge``, then filled with normals
  (no ``prefaulting()``: what ``materialize(..., huge_pages=True)`` does);
* ``touched:fill`` / ``touched:normal`` / ``touched:uniform``: the same writes into
  tensors whose pages were faulted in (and written) before the clock started: the cost
  of the writes alone.

The cases run interleaved (each repeat runs every case once), each in a fresh process.

So ``normal`` = faults + draws, ``floor`` = faults + stores, and ``normal / floor`` is the
ratio that ``materialize`` of a normal-initialized model cannot go below.

    python benchmarks/bench_fresh_memory.py                      # bfloat16, 48 x 6400 x 1600
    python benchmarks/bench_fresh_memory.py --dtype float32 --pause 20
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import _host  # benchmarks/ is the script's directory, first on sys.path

CASES = ["floor", "populate", "populate_huge", "normal", "uniform", "huge:normal", "touched:fill", "touched:normal",
         "touched:uniform"]


def _child(case: str, dtype_name: str, shape: tuple[int, ...], count: int) -> float:
    """One run of ``case`` in this (fresh) process: seconds of allocation plus writes."""
    import contextlib
    import importlib

    import torch
    from torchinit.keyed import Key, fill_
    from torchinit.keyed import backend as B

    from torchinit.core import specs as S

    dtype = getattr(torch, dtype_name)
    spec = {"normal": S.Normal(0.0, 0.02), "uniform": S.Uniform(-0.02, 0.02)}.get(case.split(":")[-1])
    native = B.native_module()
    # the huge page size materialize(huge_pages=True) passes (0 where the kernel has none)
    huge = importlib.import_module("torchinit.scale.materialize")._thp_size()
    # the kernel's worker threads and code paths, off the clock: several chunks, so every thread runs
    warm = torch.empty(max(1 << 20, 4 * B.get_num_threads() * B.get_chunk_size()), dtype=dtype)
    fill_(warm, S.Normal(0.0, 1.0), Key(1))
    touched = case.startswith("touched:")
    ready = [torch.zeros(shape, dtype=dtype) for _ in range(count)] if touched else []
    kept = []
    # only the fresh keyed fills fault their pages in themselves, as materialize's default does;
    # huge:normal populates first and then fills without, as materialize(huge_pages=True) does
    inline = B.prefaulting() if case in ("normal", "uniform") else contextlib.nullcontext()
    populate = case.startswith(("populate", "huge:"))
    with_huge = huge if case in ("populate_huge", "huge:normal") else 0
    with torch.no_grad():
        t0 = time.perf_counter()
        with inline:
            for i in range(count):
                t = ready[i] if touched else torch.empty(shape, dtype=dtype)
                if populate:
                    native.populate(t.data_ptr(), t.numel() * t.element_size(), B.get_num_threads(), with_huge)
                if spec is not None:
                    fill_(t, spec, Key(0).child(f"t{i}"))
                elif not case.startswith("populate"):
                    t.fill_(0.5)
                kept.append(t)
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--shape", default="6400,1600", help="shape of each tensor (comma-separated)")
    ap.add_argument("--tensors", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per case")
    ap.add_argument("--pause", type=float, default=0.0,
                    help="seconds to wait before each run (a VM's host may take freed memory back meanwhile)")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=CASES)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args, unknown = ap.parse_known_args()  # run_all.py passes its arguments to every benchmark
    if unknown:
        print(f"# bench_fresh_memory: ignoring arguments {unknown}")
    shape = tuple(int(x) for x in args.shape.split(","))
    if args.child:
        print(_child(args.child, args.dtype, shape, args.tensors))
        return 0

    import torch
    from torchinit.keyed import backend as B

    n = args.tensors * int(torch.Size(shape).numel())
    nbytes = n * torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()
    print(f"# bench_fresh_memory: {args.tensors} x {shape} {args.dtype} = {n / 1e6:.0f} M elements "
          f"({nbytes / 1e6:.0f} MB), {B.get_num_threads()} kernel thread(s), {args.repeat} fresh process(es) "
          f"per case, pause {args.pause:g} s")
    print(f"# kernel path: {B.get_kernel_path()}; CPU: {_host.cpu_name()}")
    checks = [_host.report("before")]
    results: dict[str, list[float]] = {case: [] for case in args.cases}
    failed = False
    for r in range(args.repeat):  # the cases interleaved, so that each finds memory as the others left it
        for case in args.cases:
            time.sleep(args.pause)
            proc = subprocess.run([sys.executable, __file__, "--child", case, "--dtype", args.dtype, "--shape",
                                   args.shape, "--tensors", str(args.tensors)], capture_output=True, text=True,
                                  check=False)
            if proc.returncode != 0:
                print(f"{case:16s} run {r + 1}: ERROR {(proc.stderr or proc.stdout).strip().splitlines()[-3:]}")
                failed = True
                continue
            results[case].append(float(proc.stdout.strip().splitlines()[-1]))
            print(f"{case:16s} run {r + 1}: {results[case][-1] * 1e3:8.1f} ms", flush=True)
    checks.append(_host.report("after"))
    floor = min(results["floor"]) if results.get("floor") else None
    print(f"\n| case | best (ms) | median (ms) | ns per element ({B.get_num_threads()} threads) | best / floor |")
    print("|---|---:|---:|---:|---:|")
    for case, runs in results.items():
        if not runs:
            continue
        best = min(runs)
        rel = f"{best / floor:.2f}x" if floor else ""
        print(f"| {case} | {best * 1e3:.1f} | {statistics.median(runs) * 1e3:.1f} | {best / n * 1e9:.3f} | {rel} |")
    print(_host.verdict(checks))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
