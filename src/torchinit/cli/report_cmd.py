"""``torchinit report [MODEL] [--policy P | --compare pytorch,xavier,kaiming,lsuv] [--out DIR]``:
initialize MODEL, run :func:`torchinit.diagnose` on a random batch, print the
signal-propagation table and the verdicts, and write plots, JSON and a
self-contained HTML page to DIR."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn

from ._models import load_model, parse_kwargs

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

__all__ = ["register", "run", "check_out_dir", "check_out_file", "make_inputs", "build_and_init", "diagnose_schemes", "std_table", "run_info", "print_verdicts", "scheme_policy",
           "DEFAULT_SCHEMES"]

DEFAULT_SCHEMES = ("pytorch", "xavier", "kaiming", "lsuv")
AS_BUILT = "as-built"


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to ``subparsers``; returns its parser."""
    from torchinit import PRESETS  # every registered preset, so the help never falls behind

    others = ", ".join(name for name in PRESETS if name != "xavier")
    p = subparsers.add_parser(
        "report",
        help="diagnose signal propagation of an initialized model: verdicts, tables, plots, HTML",
        description="Build MODEL (default: the zoo's 30-layer ReLU 'mlp'), initialize it with --policy (or each "
        "scheme of --compare on a fresh copy), run one forward and backward pass on a random batch with "
        "torchinit.diagnose, print per-layer statistics and verdicts, and write signal.png, histograms*.png, "
        "report*.json and report.html to --out.",
        epilog="MODEL is a zoo name (mlp, cnn, resnet, gpt), package.module:factory, path/to/file.py:factory or "
        "a Hugging Face model built offline from its config (hf:TYPE, hf:TYPE:CLASS, hf:path/to/config.json). "
        "WARNING: a module or file MODEL is imported and its code RUNS with your permissions; only load models "
        "you trust. Schemes: 'as-built' (the constructors' own init), 'lsuv' (torchinit.lsuv_), 'xavier' (Glorot & "
        "Bengio with gain 1, torch.nn.init.xavier_uniform_'s default) or any other preset of torchinit.init_model "
        f"({others}).",
    )
    p.add_argument("model", metavar="MODEL", nargs="?", default="mlp", help="model to diagnose (default: mlp)")
    p.add_argument("--kwargs", default=None, metavar="JSON",
                   help='keyword arguments for the model factory as a JSON object, e.g. \'{"depth": 10}\'')
    g = p.add_mutually_exclusive_group()
    g.add_argument("--policy", "-p", default=None,
                   help="initialize with this scheme before diagnosing (default: as built)")
    g.add_argument("--compare", "-c", default=None, metavar="S1,S2,...",
                   help=f"compare schemes on fresh copies, e.g. {','.join(DEFAULT_SCHEMES)}")
    p.add_argument("--input-shape", default=None, metavar="B,D,...",
                   help="full input shape including the batch, e.g. 64,256 or 32,3,32,32 (default: the zoo's "
                   "example input, or inferred from the first layer)")
    p.add_argument("--batch", type=int, default=64, help="batch size when --input-shape is not given (default 64)")
    p.add_argument("--out", "-o", default="torchinit-report", metavar="DIR",
                   help="folder for plots, JSON and report.html (default: ./torchinit-report)")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="also write the self-contained HTML page (summary, run, plots, layers) to FILE")
    p.add_argument("--seed", "-s", type=int, default=0, help="seed of the init and of the random batch (default 0)")
    p.add_argument("--no-backward", action="store_true", help="forward statistics only (less memory)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads while diagnosing (default 0: torch's default; 1 is fastest for small "
                   "models on a busy machine)")
    p.add_argument("--fail-on", choices=("never", "warning", "error"), default="never",
                   help="exit with status 1 when a verdict of this severity (or worse) is found")
    add_width_argument(p)
    p.set_defaults(func=run)
    return p


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = [t for t in text.replace("x", ",").split(",") if t.strip()]
    try:
        shape = tuple(int(t) for t in parts)
    except ValueError:
        raise ValueError(f"--input-shape must be comma-separated integers such as 64,256, got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"--input-shape needs positive sizes, got {text!r}")
    return shape


def make_inputs(model: nn.Module, model_spec: str, *, input_shape: Sequence[int] | None = None, batch: int = 64,
                seed: int = 0) -> torch.Tensor:
    """A random batch for ``model``: token ids in ``[0, num_embeddings)`` when its first
    layer is an embedding, else ``N(0, 1)``; the shape is ``input_shape``, else the zoo's
    example input, else inferred from the first Linear/Conv layer (images 32 pixels wide)."""
    from .. import zoo

    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 2:
        raise ValueError(f"--batch must be an integer >= 2, got {batch!r}")
    g = torch.Generator().manual_seed(seed)
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding))),
                 None)
    if input_shape is None and model_spec in zoo.ZOO:
        return zoo.example_inputs(model_spec, model, batch, generator=g)
    if input_shape is not None:
        shape = tuple(input_shape)
    elif isinstance(first, nn.Linear):
        shape = (batch, first.in_features)
    elif isinstance(first, nn.modules.conv._ConvNd):
        nd = len(first.kernel_size)
        shape = (batch, first.in_channels, *([32] * nd))
    elif isinstance(first, nn.Embedding):
        shape = (batch, 16)
    else:
        raise ValueError(f"cannot infer the input shape of {model_spec!r}: pass --input-shape B,D,...")
    if isinstance(first, nn.Embedding):
        return torch.randint(0, first.num_embeddings, shape, generator=g)
    return torch.randn(shape, generator=g)


def build_and_init(model_spec: str, kwargs: Mapping[str, Any], scheme: str, *, seed: int,
                   inputs: torch.Tensor | None = None, batch: int = 64,
                   input_shape: Sequence[int] | None = None) -> tuple[nn.Module, torch.Tensor, Any]:
    """Build a fresh model, make its inputs and initialize it with ``scheme``.
    Returns ``(model, inputs, plan_or_None)``."""
    import torchinit

    torch.manual_seed(seed)
    model = load_model(model_spec, dict(kwargs))
    if inputs is None:
        inputs = make_inputs(model, model_spec, input_shape=input_shape, batch=batch, seed=seed)
    plan = None
    if scheme == AS_BUILT:
        pass
    elif scheme == "lsuv":
        torchinit.lsuv_(model, inputs, seed=seed)
    else:
        # the batch is the forward that nonlinearity detection needs where torch.fx cannot trace the
        # model (the zoo's GPT): without it the gains were guessed from registration order
        plan = torchinit.init_model(model, scheme_policy(scheme), seed=seed, example_inputs=inputs)
    return model, inputs, plan


def scheme_policy(scheme: str) -> Any:
    """The policy behind a scheme name: ``"xavier"`` is Glorot & Bengio's normalized
    init with gain 1 (``torch.nn.init.xavier_uniform_``'s default, what the papers
    and most code call Xavier) on top of the ``xavier`` preset; every other name is a
    :func:`torchinit.init_model` preset."""
    if scheme == "xavier":
        from ..model.policy import Rule
        from ..model.presets import get_preset

        return get_preset("xavier") + Rule("xavier_uniform", {"gain": 1.0, "fans": "module"},
                                           modules=("Linear", "_ConvNd"), params="weight",
                                           name="Glorot & Bengio, gain 1")
    return scheme


def diagnose_schemes(model_spec: str, schemes: Sequence[str], *, kwargs: Mapping[str, Any] | None = None,
                     seed: int = 0, batch: int = 64, input_shape: Sequence[int] | None = None,
                     backward: bool = True) -> dict[str, Any]:
    """``{scheme: Report}`` (a :class:`~torchinit.diagnostics.Comparison`, which renders as HTML):
    each scheme on a fresh copy of the model, all on the same batch."""
    import torchinit

    from ..evidence.diagnostics.html import Comparison

    from .. import zoo

    from .._progress import _track

    reports = Comparison()
    inputs = None
    # one bar over the schemes (diagnose's and lsuv_'s own stay silent inside it)
    for scheme in _track(schemes, "report"):
        try:
            model, inputs, plan = build_and_init(model_spec, kwargs or {}, scheme, seed=seed, inputs=inputs,
                                                 batch=batch, input_shape=input_shape)
            reports[scheme] = torchinit.diagnose(model, inputs, plan=plan, backward=backward, label=scheme)
        except RuntimeError as exc:
            if input_shape is None and model_spec in zoo.ZOO:
                raise  # the zoo's own example input: not a user error
            shape = ",".join(map(str, input_shape)) if input_shape is not None else "inferred from its first layer"
            raise ValueError(f"{model_spec} failed on a random batch of shape {shape}: {exc} (pass an "
                             f"--input-shape B,D,... that the model accepts)") from exc
    return reports


def std_table(reports: Mapping[str, Any], title: str, *, max_rows: int | None = None) -> "Table":
    """Rich table: output std of each weight layer (rows, by depth) for each scheme (columns)."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("depth", justify="right")
    t.add_column("layer")
    for name in reports:
        t.add_column(f"{name} std", justify="right")
    tracks = {n: r.signal() for n, r in reports.items()}
    depth = max(len(v) for v in tracks.values()) if tracks else 0
    rows = list(range(depth))
    if max_rows is not None and depth > max_rows:
        rows = rows[: max_rows // 2] + rows[-(max_rows - max_rows // 2):]
    for i in rows:
        layer = next((v[i].name for v in tracks.values() if i < len(v)), "-")
        t.add_row(str(i + 1), layer, *(f"{v[i].std:.3g}" if i < len(v) else "-" for v in tracks.values()))
    return t


def print_verdicts(console: Any, reports: Mapping[str, Any], title: str) -> None:
    """Print every scheme's verdicts: severity, kind, the layer where it starts, the
    finding and the fix (one block per verdict, readable at any terminal width)."""
    style = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    console.print(f"[bold]{title}[/]")
    for name, rep in reports.items():
        if not rep.verdicts:
            console.print(f"  [bold]{name}[/]: [green]ok[/], no problem found")
        for v in rep.verdicts:
            console.print(f"  [bold]{name}[/]: [{style.get(v.severity, '')}]{v.severity}[/] {v.kind} "
                          f"(starts at {v.layer}): {v.message}", highlight=False)
            console.print(f"      fix: {v.fix}", highlight=False)


def run_info(args: argparse.Namespace, schemes: Sequence[str]) -> dict[str, str]:
    """The run table's rows for a page made by ``torchinit report``: seed, scheme(s) and an
    equivalent command line (rebuilt from the parsed arguments)."""
    import shlex

    cmd = ["torchinit", "report", args.model]
    if args.kwargs:
        cmd += ["--kwargs", args.kwargs]
    cmd += ["--compare", ",".join(schemes)] if args.compare else (["--policy", args.policy] if args.policy else [])
    if args.input_shape:
        cmd += ["--input-shape", args.input_shape]
    else:
        cmd += ["--batch", str(args.batch)]
    cmd += ["--seed", str(args.seed)]
    if args.no_backward:
        cmd.append("--no-backward")
    return {"seed": str(args.seed), "command": shlex.join(cmd)}  # the schemes have their own row


def _worst(reports: Mapping[str, Any]) -> str | None:
    sev = [v.severity for r in reports.values() for v in r.verdicts]
    return "error" if "error" in sev else "warning" if "warning" in sev else None


#: Output width when stdout is not a terminal (a pipe, a file): wide enough that verdict
#: lines and the layer table are not cut at rich's 80-column fallback (as ``plan``).
PIPE_WIDTH = 200


def add_width_argument(p: argparse.ArgumentParser) -> None:
    """Add ``--width`` (shared by ``report`` and ``demo``)."""
    p.add_argument("--width", type=int, default=None, metavar="N",
                   help=f"output width in characters (default: the terminal's, {PIPE_WIDTH} when stdout is not "
                   "a terminal)")


def console_for(width: int | None) -> Any:
    """A rich Console on stdout, ``width`` characters wide; ``None``: the terminal's width,
    or :data:`PIPE_WIDTH` when stdout is a pipe or a file (rich would fall back to 80)."""
    import sys

    from rich.console import Console

    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 20):
        raise ValueError(f"--width must be an integer >= 20, got {width!r}")
    if width is None and not sys.stdout.isatty():
        width = PIPE_WIDTH
    return Console(file=sys.stdout, width=width)


def check_out_dir(path: str, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be created or written: a
    file in its place or on its path, or a first existing ancestor that is not writable
    (otherwise the diagnosis runs to the end and only then fails to write)."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                where = "" if q == p else f" ({str(q)!r} is a file)"
                raise NotADirectoryError(f"{flag} {path!r} is not a directory{where}")
            if not os.access(q, os.W_OK | os.X_OK):
                raise PermissionError(f"{flag} {path!r}: directory {str(q)!r} is not writable")
            return


def check_out_file(path: str, flag: str) -> None:
    """Refuse, before any work, an output file whose folder is missing or not writable, or
    that is a directory."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{flag} {path!r} is a directory")
    parent = p.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{flag} {path!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path!r}: directory {str(parent)!r} is not writable")


class threads:
    """Context manager: ``torch.set_num_threads(n)`` inside (``n <= 0``: unchanged),
    the previous value restored on exit."""

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"--threads must be an integer >= 0, got {n!r}")
        self.n = n
        self.prev = torch.get_num_threads()

    def __enter__(self) -> "threads":
        self.prev = torch.get_num_threads()
        if self.n > 0:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.prev)


def run(args: argparse.Namespace) -> int:
    """Run ``torchinit report`` with the parsed ``args``; returns the exit code."""
    with threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..evidence.diagnostics.html import save_comparison

    console = console_for(getattr(args, "width", None))  # before the work: a bad --width fails fast
    check_out_dir(args.out)  # and so do --out and --html that cannot be written
    if args.html:
        check_out_file(args.html, "--html")
    if not 0 <= args.seed < 2**63:  # as init and plan: -1 passed with the as-built scheme, 2**64 failed in torch
        raise ValueError(f"seed must be in [0, 2**63), got {args.seed}")
    kwargs = parse_kwargs(args.kwargs)
    shape = _parse_shape(args.input_shape) if args.input_shape else None
    if args.compare:
        schemes = [s.strip() for s in args.compare.split(",") if s.strip()]
        if not schemes:
            raise ValueError("--compare needs at least one scheme, e.g. pytorch,xavier,kaiming,lsuv")
        if len(set(schemes)) != len(schemes):
            raise ValueError(f"--compare lists a scheme twice: {args.compare!r}")
    else:
        schemes = [args.policy or AS_BUILT]
    reports = diagnose_schemes(args.model, schemes, kwargs=kwargs, seed=args.seed, batch=args.batch,
                               input_shape=shape, backward=not args.no_backward)
    if len(reports) == 1:
        rep = next(iter(reports.values()))
        rep.print(console)
    else:
        console.print(std_table(reports, f"{args.model}: output std of each weight layer"))
        print_verdicts(console, reports, f"{args.model}: verdicts")
    title = f"torchinit report: {args.model} ({', '.join(schemes)})"
    html = save_comparison(reports, Path(args.out), title=title, run=run_info(args, schemes))
    console.print(f"wrote {html} (plots and JSON in {Path(args.out)})")
    if args.html:
        Path(args.html).write_text(html.read_text(encoding="utf-8"), encoding="utf-8")
        console.print(f"wrote {args.html}")
    worst = _worst(reports)
    if args.fail_on == "warning" and worst in ("warning", "error"):
        return 1
    if args.fail_on == "error" and worst == "error":
        return 1
    return 0
