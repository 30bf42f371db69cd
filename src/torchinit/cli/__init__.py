"""The ``torchinit`` command line.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds a parser whose ``func`` default runs it
and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Subcommand modules, in the order `torchinit --help` lists them.
_COMMANDS = ("demo", "plan_cmd", "init_cmd", "report_cmd")


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="torchinit",
        description="Initialize PyTorch models correctly, reproducibly, fast, at any scale, with evidence.",
    )
    parser.add_argument("--version", action="version", version=f"torchinit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ._models import ModelBuildError

    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, ImportError, ModelBuildError) as exc:
        # User errors (OSError: files, e.g. an unwritable --out; ModelBuildError: the model's
        # factory raised, named with its file and line): one clear line, no traceback.
        print(f"torchinit {args.command}: error: {exc}", file=sys.stderr)
        return 2
