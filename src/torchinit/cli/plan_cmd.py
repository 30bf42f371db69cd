"""``torchinit plan MODEL --policy P``: print the initialization plan without
allocating any weight (the model is built on the meta device)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import textwrap
from typing import Any

import torch

from ..model.errors import _short
from ._models import load_model, meta_device, parse_example_inputs, parse_kwargs

TRUST_NOTE = (
    "MODEL is a zoo name (mlp, cnn, resnet, gpt), package.module:factory, path/to/file.py:factory, or a "
    "Hugging Face model built offline from its config: hf:TYPE (hf:gpt2, --kwargs override config fields), "
    "hf:TYPE:CLASS or hf:path/to/config.json. "
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
                   help="table width in characters (default: the terminal's, 200 when not a terminal; 80 "
                   "with --summary)")
    p.add_argument("--summary", action="store_true",
                   help="one line per rule: tensors, elements, initializer and std (fits --width, 80 by default)")
    p.add_argument("--show-unmatched", action="store_true",
                   help="also list the policy's rules that matched no tensor (by default only counted)")
    p.set_defaults(func=run)
    return p


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``plan`` and ``init``."""
    # every registered preset, so the help never falls behind
    from torchinit import PRESETS

    p.add_argument("model", metavar="MODEL",
                   help="zoo name, package.module:factory, path/to/file.py:factory, hf:TYPE or hf:path/to/config.json")
    p.add_argument("--policy", "-p", default="pytorch",
                   help=f"preset name ({', '.join(PRESETS)}), a "
                   "policy file (.yaml, .yml, .json) or a policy's JSON/YAML text, e.g. "
                   "'{\"preset\": \"kaiming\", \"rules\": [{\"role\": \"bias\", \"init\": \"zeros\"}]}' "
                   "(default: pytorch)")
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

    if args.width is not None and args.width < 20:  # as report's and demo's --width: no garbage table
        raise ValueError(f"--width must be an integer >= 20, got {args.width}")
    example_inputs = parse_example_inputs(args.example_inputs)  # before the model: a typo fails fast
    model = build_meta(args.model, args.kwargs, args.meta)
    plan = torchinit.plan(model, args.policy, example_inputs=example_inputs)
    if args.json:
        json.dump(plan.to_dict(), sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        n = sum(p.numel() for p in model.parameters())
        built = "built on meta: nothing allocated" if args.meta else "built with --no-meta"
        head = f"# {args.model}: {n:,} parameters, policy {_short(args.policy)} ({built})"
        unused = len(plan.unused_rules)
        if not args.show_unmatched:  # a preset's rules for layers this model lacks: noise, on request
            plan = dataclasses.replace(plan, unused_rules=[])
        if args.summary:
            width = args.width or 80
            print(_fit(head, width))
            print(summary_text(plan, width))
        else:
            print(head)
            width = args.width or (None if sys.stdout.isatty() else 200)
            plan.print(file=sys.stdout, width=width)
        if unused and not args.show_unmatched:
            print(_fit(f"{unused} rule(s) matched no tensor (--show-unmatched lists them)", args.width or 80))
    return 0


def _fit(line: str, width: int) -> str:
    return line if len(line) <= width else line[: max(width - 3, 1)] + "..."


def summary_text(plan: Any, width: int = 80) -> str:
    """The plan in one line per rule (tensors, elements, initializer, std range), each line
    at most ``width`` characters: for a terminal, or a model too big for the full table."""
    groups: dict[str, list[Any]] = {}
    for e in plan.entries:
        groups.setdefault(e.rule or "-", []).append(e)
    lines = [f"{'tensors':>7} {'elements':>13} {'init':<14} {'std':<14} rule"]
    for rule, es in groups.items():
        stds = [x for x in (e.std for e in es) if x is not None]
        std = "" if not stds else (f"{min(stds):.4g}" if min(stds) == max(stds) else
                                   f"{min(stds):.3g}..{max(stds):.3g}")[:14]
        inits = "+".join(sorted({e.initializer for e in es}))
        elements = sum(math.prod(e.shape) for e in es)
        lines.append(f"{len(es):>7} {elements:>13,} {_fit(inits, 14):<14} {std:<14} {rule}")
    out = [_fit(line, width) for line in lines]
    notes = []  # wrapped, not cut: a note may be the one thing to read
    if plan.unmatched:
        notes.append(f"unmatched (left as they are): {len(plan.unmatched)}: {', '.join(plan.unmatched)}")
    if plan.unused_rules:
        notes.append(f"rules that matched nothing: {', '.join(plan.unused_rules)}")
    notes.extend(plan.notes)
    for note in notes:
        out.extend(textwrap.wrap(note, width, subsequent_indent="  ", break_on_hyphens=False) or [""])
    return "\n".join(out)
