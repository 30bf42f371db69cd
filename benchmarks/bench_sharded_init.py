"""Benchmark: a model's own init code on FSDP2 shards, per rank, at 1, 2 and 4 gloo ranks.

A torchtitan-style Llama (examples/torchtitan_style_llama.py; ~1 B parameters in
bfloat16 by default) is built on the meta device, ``fully_shard``-ed (each block, then
the root) and ``to_empty``-ed; then, per case:

* ``keyed_mode``: its own ``init_weights()`` inside ``torchinit.keyed_init_mode``: each
  rank draws its shard only, equal to one process bit for bit (issue 16);
* ``full_per_rank``: the full-tensor approach (Megatron-LM's CPU path, OLMo-core): every
  rank fills each FULL tensor with the keyed engine, then keeps its shard;
* ``torch_dtensor``: ``torch.manual_seed(0); init_weights()`` on torch's own DTensor RNG
  (values depend on the sharding; timed anyway);
* ``materialize``: ``torchinit.materialize(model, "cpu", "llama", seed=0)`` from the
  sharded meta model (a policy drawing the same kinds of values: truncated normals
  for every weight, ones for norms).

Each (case, world size) runs in fresh processes, one thread each. Reported per rank
(the slowest / largest rank): the wall time of the init step (``to_empty`` and the
init; for ``materialize`` the whole call), the process CPU time over it, and the peak
resident memory above the RSS before the model was built (``VmHWM``). The host has 2
cores: at 4 ranks, wall time includes waiting for a core, so the CPU time is the
per-rank work figure.

Usage::

    python benchmarks/bench_sharded_init.py                # ~1 B parameters, 1/2/4 ranks
    python benchmarks/bench_sharded_init.py --small        # ~30 M parameters (make bench)
    python benchmarks/bench_sharded_init.py --worlds 1 2 --cases keyed_mode
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import _host  # benchmarks/ is the script's directory, first on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

FULL = dict(dim=2048, n_layers=16, n_heads=16, vocab_size=32000, multiple_of=256, max_seq_len=2048)
SMALL = dict(dim=512, n_layers=6, n_heads=8, vocab_size=16384, multiple_of=256, max_seq_len=512)
CASES = ["keyed_mode", "full_per_rank", "torch_dtensor", "materialize"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _full_per_rank(model) -> None:
    """Every rank fills each whole tensor (keyed), then copies out the box it holds."""
    import torch

    from torchinit import specs as S
    from torchinit.keyed import Key, fill_
    from torchinit.sharding import local_boxes

    with torch.no_grad():
        for name, p in model.named_parameters():
            spec = S.Constant(1.0) if name.endswith("norm.weight") else S.TruncatedNormal(0.0, 0.02, -0.04, 0.04)
            full = fill_(torch.empty(tuple(p.shape), dtype=p.dtype), spec, Key(0).child(name))
            local = p._local_tensor
            for index, offsets, sizes in local_boxes(p, name):
                local[index].copy_(full[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))])
            del full


def _rank(rank: int, world: int, init_method: str, case: str, cfg: dict, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import torchinit
    import torchtitan_style_llama as L

    torchinit.keyed.set_num_threads(1)
    mesh = init_device_mesh("cpu", (world,))
    with torch.device("meta"):  # warm-up: the first meta module costs torch a one-time setup
        L.Transformer(dim=64, n_layers=1, n_heads=4, vocab_size=64, multiple_of=32, max_seq_len=8)
    dist.barrier()
    rss0 = _status_kib("VmRSS") * 1024
    with torch.device("meta"):
        model = L.Transformer(**cfg).to(torch.bfloat16)
    for layer in model.layers.values():
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    n_params = sum(p.numel() for p in model.parameters())
    dist.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    if case == "materialize":
        # the "llama" preset, and zeros for the rotary table (init_weights recomputes it; a policy cannot)
        policy = torchinit.load_policy("llama") + torchinit.Rule("zeros", qualnames=("rope",))
        torchinit.materialize(model, "cpu", policy, seed=0, progress=False)
    else:
        model.to_empty(device="cpu")
        if case == "keyed_mode":
            with torchinit.keyed_init_mode(model, seed=0):
                model.init_weights()
        elif case == "full_per_rank":
            _full_per_rank(model)
        elif case == "torch_dtensor":
            torch.manual_seed(0)
            with torch.no_grad():
                model.init_weights()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _status_kib("VmHWM") * 1024 - rss0
    local_bytes = sum(p._local_tensor.numel() * p.element_size() for p in model.parameters())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(dict(wall=wall, cpu=cpu, peak=peak, local_bytes=local_bytes, n_params=n_params), fh)
    dist.barrier()
    dist.destroy_process_group()


def run_case(case: str, world: int, cfg: dict) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank, args=(world, f"file://{tmp}/pg", case, cfg, tmp), nprocs=world, join=True,
                           start_method="spawn")
        ranks = [json.load(open(os.path.join(tmp, f"rank{r}.json"))) for r in range(world)]
    return {k: max(r[k] for r in ranks) for k in ("wall", "cpu", "peak", "local_bytes", "n_params")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="~30 M parameters instead of ~1 B")
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    args, _ = ap.parse_known_args()  # run_all passes every script the same arguments
    cfg = SMALL if args.small else FULL
    scal = [_host.report("before")]
    import torch

    print(f"# torch {torch.__version__}; cpu: {_cpu_name()}; config {cfg}; bfloat16; 1 thread per rank", flush=True)
    print(f"{'case':<14} {'ranks':>5} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9} {'shard MiB':>9} "
          f"{'wall/1':>7} {'cpu/1':>7} {'peak/1':>7}")
    base: dict[str, dict] = {}
    for case in args.cases:
        for world in args.worlds:
            r = run_case(case, world, cfg)
            b = base.setdefault(case, r) if world == min(args.worlds) else base.get(case, r)
            print(f"{case:<14} {world:>5} {r['wall']:8.2f} {r['cpu']:8.2f} {r['peak'] / 2**20:9.0f} "
                  f"{r['local_bytes'] / 2**20:9.0f} {r['wall'] / b['wall']:7.2f} {r['cpu'] / b['cpu']:7.2f} "
                  f"{r['peak'] / b['peak']:7.2f}", flush=True)
        print(f"# {case}: {r['n_params'] / 1e9:.3f} B parameters")
    scal.append(_host.report("after"))
    print(_host.verdict(scal))
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


if __name__ == "__main__":
    raise SystemExit(main())
