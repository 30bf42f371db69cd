"""``torchinit plan MODEL --policy P``: print the initialization plan without
allocating any weight (the model is built on the meta device)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

import torch

from ._models import load_model, meta_device, parse_example_inputs, parse_kwargs

TRUST_NOTE = (
    "MODEL is a zoo name (mlp, cnn, resnet, gpt), package.module:factory or path/to/file.py:factory. "
    "WARNING: a module or file MODEL is imported and its code RUNS with your permissions; "
    "only load models you trust."
)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``plan`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "plan",
        help="print the initialization plan of a model (allocates no weights)",
        description="Build MODEL on the meta device and print, for every parameter and buffer, the rule, "
        "initializer, distribution, fans and gain the policy gives it. Nothing is allocated.",
        epilog=TRUST_NOTE,
    )
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON (Plan.to_dict()) instead of a table")
    p.add_argument("--meta", action=argparse.BooleanOptionalAction, default=True,
                   help="build on the meta device (default: nothing allocated); --no-meta builds the model "
                   "normally, for factories that cannot run on meta")
    p.add_argument("--width", type=int, default=None,
                   help="table width in characters (default: the terminal's, 200 when not a terminal)")
    p.set_defaults(func=run)
    return p


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``plan`` and ``init``."""
    p.add_argument("model", metavar="MODEL", help="zoo name, package.module:factory or path/to/file.py:factory")
    p.add_argument("--policy", "-p", default="pytorch",
                   help="preset name (pytorch, module, kaiming, xavier, lecun, orthogonal, gpt2, llama) "
                   "or a policy accepted by torchinit.plan (default: pytorch)")
    p.add_argument("--kwargs", default=None, metavar="JSON",
                   help='keyword arguments for the model factory as a JSON object, e.g. \'{"depth": 10}\'')
    p.add_argument("--example-inputs", default=None, metavar="INPUTS",
                   help="inputs for one forward pass, from which nonlinearity detection reads the order layers run "
                   "in when torch.fx cannot trace the model (the forward runs on the meta device: nothing is "
                   "allocated): a shape (2x3x224x224: a float tensor), name:shape keyword inputs "
                   "(input_ids:1x16,attention_mask:1x16: *ids and *mask are int64) or a Python expression with "
                   "torch in scope (\"torch.randint(0, 100, (1, 16))\")")


def build_meta(spec: str, kwargs_json: str | None, meta: bool = True) -> torch.nn.Module:
    """Build MODEL on the meta device (no storage); with ``meta=False``, normally (on the CPU)."""
    kwargs = parse_kwargs(kwargs_json)
    with meta_device() if meta else contextlib.nullcontext():
        return load_model(spec, kwargs)


def run(args: argparse.Namespace) -> int:
    """Run ``torchinit plan`` with the parsed ``args``; returns the exit code."""
    import torchinit

    example_inputs = parse_example_inputs(args.example_inputs)  # before the model: a typo fails fast
    model = build_meta(args.model, args.kwargs, args.meta)
    plan = torchinit.plan(model, args.policy, example_inputs=example_inputs)
    if args.json:
        json.dump(plan.to_dict(), sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        n = sum(p.numel() for p in model.parameters())
        built = "built on meta: nothing allocated" if args.meta else "built with --no-meta"
        print(f"# {args.model}: {n:,} parameters, policy {args.policy!r} ({built})")
        width = args.width or (None if sys.stdout.isatty() else 200)
        plan.print(file=sys.stdout, width=width)
    return 0
