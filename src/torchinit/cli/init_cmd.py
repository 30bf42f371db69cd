"""``torchinit init MODEL --policy P --seed S --out weights.safetensors``: build a
model, initialize it with the keyed engine and write its weights (safetensors)
plus the applied plan (JSON) beside them."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..model.buffer_code import uncovered as _uncovered
from ..model.errors import _short
from ._models import load_model, meta_device, parse_example_inputs, parse_kwargs
from .plan_cmd import TRUST_NOTE, add_model_args

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``init`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "init",
        help="initialize a model and write its weights (safetensors) and plan (JSON)",
        description="Build MODEL (on the meta device by default, then materialize it tensor by tensor), "
        "initialize it with POLICY and the keyed engine, write OUT with safetensors and the applied plan "
        "to OUT with .plan.json in place of .safetensors. model.load_state_dict(safetensors.torch.load_file(OUT)) "
        "restores the model exactly. The same MODEL, kwargs, policy and seed always give the same file.",
        epilog=TRUST_NOTE,
    )
    add_model_args(p)
    p.add_argument("--seed", "-s", type=int, required=True, help="seed of the keyed engine (Key(seed))")
    p.add_argument("--out", "-o", required=True, metavar="WEIGHTS.safetensors", help="output weights file")
    p.add_argument("--force", "-f", action="store_true",
                   help="overwrite OUT and its plan file if they exist (default: refuse, before any work)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="convert floating-point parameters and buffers to this dtype (default: as built)")
    p.add_argument("--device", default="cpu", help="device to allocate on (default: cpu)")
    p.add_argument("--meta", action=argparse.BooleanOptionalAction, default=True,
                   help="build on the meta device and materialize tensor by tensor (default; peak memory ~ the "
                   "model size); --no-meta builds normally (runs the constructors' own init) then re-initializes, for "
                   "factories that cannot run on meta: the same result where the policy covers every tensor; "
                   "tensors it leaves alone keep the constructors' values, built after torch.manual_seed(SEED), "
                   "which --meta refuses")
    p.add_argument("--huge-pages", action=argparse.BooleanOptionalAction, default=False,
                   help="with --meta on CPU, put tensors of 1 MiB or more on transparent huge pages where the "
                   "kernel offers them (no memory added). Off by default: where the kernel compacts memory for "
                   "huge pages on demand the faults stall (docs/scale.md). Values never depend on it")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)
    return p


def _check_device(device: str) -> None:
    """Raise ``ValueError`` unless ``--device`` names a device this torch can allocate on."""
    try:
        torch.empty(0, device=torch.device(device))
    except (RuntimeError, AssertionError) as exc:  # unknown type; CUDA not compiled in / no such ordinal
        raise ValueError(f"--device {device!r} cannot be used: {str(exc).strip().splitlines()[0]}") from None


def run(args: argparse.Namespace) -> int:
    """Run ``torchinit init`` with the parsed ``args``; returns the exit code."""
    import torchinit

    from ..scale.weights import check_destination, plan_path, save_weights

    if not args.out.endswith(".safetensors"):
        raise ValueError(f"--out must end with .safetensors, got {args.out!r}")
    kwargs = parse_kwargs(args.kwargs)
    example_inputs = parse_example_inputs(args.example_inputs)
    check_destination(args.out)  # before the work, not after it
    taken = [str(p) for p in (Path(args.out), plan_path(args.out)) if os.path.lexists(p)]
    if taken and not args.force:
        raise FileExistsError(f"{' and '.join(map(repr, taken))} already exist{'s' if len(taken) == 1 else ''}: pass "
                              "--force to overwrite, or choose another --out")
    _check_device(args.device)
    t0 = time.perf_counter()
    if args.meta:
        with meta_device():
            model = load_model(args.model, kwargs)
        if args.dtype:
            model.to(DTYPES[args.dtype])  # free on meta
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()  # the init's time, not the model's import and construction
        plan = torchinit.materialize(model, args.device, args.policy, seed=args.seed,
                                     progress=None if not args.quiet else False, huge_pages=args.huge_pages,
                                     example_inputs=example_inputs)
        kept: list[str] = []
    else:
        # tensors the policy leaves alone keep the constructors' values: seeded, so that the
        # file still follows from (MODEL, --kwargs, --policy, --seed)
        with torch.random.fork_rng(devices=[]), torch.device(args.device):
            torch.manual_seed(args.seed)
            model = load_model(args.model, kwargs)
        if args.dtype:
            model.to(DTYPES[args.dtype])
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan = torchinit.init_model(model, args.policy, seed=args.seed, engine="keyed",
                                    example_inputs=example_inputs)
        kept = _uncovered(plan, set(model.state_dict()))  # what the file holds (persistent tensors)
    t_init = time.perf_counter() - t0
    info = {"model": args.model, "kwargs": kwargs, "policy": args.policy, "seed": args.seed,
            "engine": "keyed", "dtype": args.dtype, "meta": bool(args.meta)}
    if kept:
        info["constructor_values"] = kept
    wpath, ppath = save_weights(model, args.out, plan=plan, info=info)
    if not args.quiet:
        n = sum(p.numel() for p in model.parameters())
        unique = {t.untyped_storage().data_ptr(): t for t in model.state_dict().values() if t.numel()}
        size = sum(t.numel() * t.element_size() for t in unique.values())
        print(f"initialized {args.model} ({n:,} parameters, {size / 2**20:.1f} MiB) with policy "
              f"{_short(args.policy)}, seed {args.seed} in {t_init:.2f} s (model built in {t_build:.2f} s)")
        if kept:
            more = f" and {len(kept) - 5} more" if len(kept) > 5 else ""
            print(f"kept the constructors' values (built after torch.manual_seed({args.seed})) for {len(kept)} "
                  f"tensor(s) the policy leaves alone: {', '.join(kept[:5])}{more} (--meta would refuse them)")
        print(f"wrote {wpath} and {ppath}")
    return 0
