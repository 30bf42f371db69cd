"""``torchinit demo`` (what ``make demo`` runs): why initialization matters, measured.

On the zoo's 30-layer ReLU MLP and its small CNN with BatchNorm, each initialized
with the PyTorch default, Xavier, Kaiming and LSUV, it prints the output std of
every weight layer by depth (Xavier and the PyTorch default vanish with ReLU
depth: per-layer variance factors 1/2 and 1/6; Kaiming holds: 1), the verdicts of
:func:`torchinit.diagnose`, and writes plots and HTML pages to a folder
(default ``./torchinit-report``). No arguments, no downloads, a few seconds on CPU.
"""

from __future__ import annotations

import argparse
import html
import time
from pathlib import Path
from typing import Any

from .report_cmd import (
    DEFAULT_SCHEMES,
    add_width_argument,
    check_out_dir,
    console_for,
    diagnose_schemes,
    print_verdicts,
    std_table,
    threads,
)

__all__ = ["register", "run", "DEMO_MODELS"]

#: (zoo name, constructor kwargs, batch size, what it shows)
DEMO_MODELS = (
    ("mlp", {}, 256, "30 Linear layers of width 256 with ReLU between them, no normalization"),
    ("cnn", {}, 32, "3 x (Conv2d, BatchNorm2d, ReLU), global average pooling, Linear"),
)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "demo",
        help="see why init matters: pytorch/xavier/kaiming/lsuv on a 30-layer ReLU MLP and a CNN",
        description="Initialize the zoo's 30-layer ReLU MLP and its CNN with the PyTorch default, Xavier, Kaiming "
        "and LSUV; print the activation std per layer and the verdicts of torchinit.diagnose; write plots and "
        "HTML to --out.",
    )
    p.add_argument("--out", "-o", default="torchinit-report", metavar="DIR",
                   help="folder for the plots and HTML pages (default: ./torchinit-report)")
    p.add_argument("--seed", "-s", type=int, default=0, help="seed of the inits and the random batch (default 0)")
    add_width_argument(p)
    p.set_defaults(func=run)
    return p


def _summary(reports: dict[str, Any]) -> str:
    parts = []
    for name, rep in reports.items():
        sig = rep.signal()
        if len(sig) >= 2:
            hidden = sig[-2]  # last hidden layer (the last layer is the 10-way head)
            parts.append(f"{name} {hidden.std:.2g}")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Run ``torchinit demo`` with the parsed ``args``; returns the exit code."""
    # The demo's tensors are small: one thread avoids OpenMP overhead (and is many
    # times faster on a busy machine); results do not depend on it.
    with threads(1):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..evidence.diagnostics.html import save_comparison

    console = console_for(getattr(args, "width", None))
    check_out_dir(args.out)  # before the work, not after it
    t0 = time.perf_counter()
    out = Path(args.out)
    links = []
    console.rule("[bold]torchinit demo: does the signal survive depth?")
    console.print("Each scheme initializes a fresh copy of the model; all see the same N(0,1) batch.\n"
                  "Theory for a plain ReLU stack: each layer multiplies the variance by 1/6 (PyTorch default "
                  "U(+-1/sqrt(fan_in))), 1/2 (Xavier, gain 1), 1 (Kaiming, gain sqrt(2)); LSUV sets every "
                  "layer's output std to 1 from data.")
    for name, kwargs, batch, what in DEMO_MODELS:
        reports = diagnose_schemes(name, DEFAULT_SCHEMES, kwargs=kwargs, seed=args.seed, batch=batch)
        console.rule(f"[bold]{name}[/]: {what}")
        console.print(std_table(reports, f"{name}: output std of each weight layer (batch {batch})"))
        print_verdicts(console, reports, f"{name}: verdicts")
        if name == "mlp":
            console.print(f"std at the last hidden layer: {_summary(reports)}: Xavier and the PyTorch default "
                          f"vanish with ReLU depth (the default's biases then dominate and every sample looks "
                          f"alike), Kaiming and LSUV hold.")
        else:
            console.print("BatchNorm re-normalizes every block, so all four schemes keep the forward signal.")
        run = {"seed": str(args.seed), "batch": str(batch), "command": f"torchinit demo --seed {args.seed}"}
        page = save_comparison(reports, out / name, title=f"torchinit demo: {name} ({what})", run=run)
        links.append((name, what, page.relative_to(out)))
    index = out / "index.html"
    index.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>torchinit demo</title></head><body>"
        "<h1>torchinit demo</h1><ul>"
        + "".join(f"<li><a href='{html.escape(str(p))}'>{html.escape(n)}</a>: {html.escape(w)}</li>"
                  for n, w, p in links)
        + "</ul></body></html>",
        encoding="utf-8",
    )
    console.print(f"\nwrote {index} (one page per model, with signal-propagation plots and histograms) "
                  f"in {time.perf_counter() - t0:.1f} s")
    return 0
