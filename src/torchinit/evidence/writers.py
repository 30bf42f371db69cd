"""Writing a diagnostics :class:`~torchinit.Report` to the tools runs are watched in:
a TensorBoard ``SummaryWriter`` or a Weights & Biases run (:meth:`Report.log`).

Neither package is imported here: the writer is recognized by what it is (a
``SummaryWriter`` has ``add_scalar`` and ``add_histogram_raw``; a W&B run is an object of
the ``wandb`` package with ``log``), so torchinit keeps its dependencies.

What is written, under ``prefix`` (default ``"torchinit"``), ``<layer>`` being a recorded
layer's name (``name#k`` for the k-th call of a module called more than once):

* ``<prefix>/activation_std/<layer>`` and ``<prefix>/grad_std/<layer>``: the std of the
  layer's output and of the loss gradient at it (scalars; the gradient where measured);
* ``<prefix>/activation_hist/<layer>``: the layer's 50-bin output histogram;
* ``<prefix>/weight_hist/<param>``: each parameter's values, when ``model`` is given
  (the report keeps statistics, not the weights);
* ``<prefix>/verdict_count/<severity>``: how many verdicts of each severity (scalars), and the
  verdicts themselves (TensorBoard: a markdown text; W&B: a table, beside a table of the
  layers ``<prefix>/layers``);
* ``<prefix>/signal_propagation`` and ``<prefix>/histograms``: the report's figures
  (:meth:`Report.plot_signal`, :meth:`Report.plot_histograms`) as images.
"""

from __future__ import annotations

import importlib
import math
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from torch import nn

    from .diagnostics.report import Report

__all__ = ["log_report", "writer_kind"]

_SEVERITIES = ("error", "warning", "info")
_LAYER_COLUMNS = ("layer", "type", "kind", "mean", "std", "max_abs", "dead", "saturated", "cosine", "grad_std")


def writer_kind(writer: Any) -> str:
    """``"tensorboard"`` or ``"wandb"``; ``TypeError`` naming the object for anything else."""
    if hasattr(writer, "add_scalar") and hasattr(writer, "add_histogram_raw"):
        return "tensorboard"
    if type(writer).__module__.split(".")[0] == "wandb" and callable(getattr(writer, "log", None)):
        return "wandb"
    raise TypeError(
        f"Report.log: cannot write to a {type(writer).__module__}.{type(writer).__qualname__}; pass a "
        "TensorBoard SummaryWriter (torch.utils.tensorboard) or a W&B run (wandb.init()); for a "
        "Lightning logger pass logger.experiment")


def _named_layers(report: Report) -> list[tuple[str, Any]]:
    """(name, LayerStats) of every record; the recorder names the k-th call of a module ``name#k``
    (k >= 2), so names are unique."""
    return [(r.name, r) for r in report.layers]


def _edges(r: Any) -> list[float]:
    lo, hi = r.hist_range
    n = len(r.hist)
    return [lo + (hi - lo) * j / n for j in range(n + 1)]


def _image(fig: Figure) -> Any:
    """The figure as an ``(H, W, 3)`` uint8 array (drawn with its Agg canvas)."""
    import numpy as np

    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _weights(model: nn.Module | None) -> list[tuple[str, Any]]:
    """(name, float32 CPU values) of every parameter that holds values (a DTensor: its local shard)."""
    if model is None:
        return []
    out = []
    for name, p in model.named_parameters():
        t = p.to_local() if hasattr(p, "to_local") else p
        if t.is_meta or t.numel() == 0:
            continue
        out.append((name, t.detach().float().cpu()))
    return out


def _verdict_markdown(report: Report) -> str:
    if not report.verdicts:
        return "no problem found"
    rows = ["| severity | kind | starts at | finding | fix |", "|---|---|---|---|---|"]
    for v in report.verdicts:
        cells = (v.severity, v.kind, v.layer, v.message, v.fix)
        rows.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(rows)


def _check_step(step: Any) -> None:
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"Report.log: step must be None or an int >= 0, got {step!r}")


def log_report(report: Report, writer: Any, *, step: int | None = None, model: nn.Module | None = None,
               prefix: str = "torchinit") -> list[str]:
    """Write ``report`` to ``writer`` (see the module docstring); returns the tags/keys written.

    The writer's kind and ``step`` are checked before anything is written."""
    kind = writer_kind(writer)
    _check_step(step)
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"Report.log: prefix must be a non-empty string, got {prefix!r}")
    if model is not None and not callable(getattr(model, "named_parameters", None)):
        raise TypeError(f"Report.log: model must be an nn.Module (its weights are logged) or None, "
                        f"got {type(model).__name__}")
    # everything that can fail (weights, figures) is computed before the first write
    weights = _weights(model)
    images = {f"{prefix}/signal_propagation": _image(report.plot_signal()),
              f"{prefix}/histograms": _image(report.plot_histograms())}
    if kind == "tensorboard":
        return _tensorboard(report, writer, step, weights, images, prefix)
    return _wandb(report, writer, step, weights, images, prefix)


def _tensorboard(report: Report, w: Any, step: int | None, weights: list[tuple[str, Any]], images: dict[str, Any],
                 prefix: str) -> list[str]:
    tags = []

    def scalar(tag: str, value: float) -> None:
        w.add_scalar(tag, value, step)
        tags.append(tag)

    layers = _named_layers(report)
    for name, r in layers:
        scalar(f"{prefix}/activation_std/{name}", float(r.std))
        if r.grad_std is not None:
            scalar(f"{prefix}/grad_std/{name}", float(r.grad_std))
    for name, r in layers:
        num = sum(r.hist)
        if not num or len(r.hist_range) != 2 or not all(map(math.isfinite, r.hist_range)):
            continue
        edges = _edges(r)
        # sum and sum of squares from the recorded mean and std (the values themselves are not kept)
        w.add_histogram_raw(f"{prefix}/activation_hist/{name}", min=edges[0], max=edges[-1], num=num,
                            sum=float(r.mean) * num, sum_squares=(float(r.std) ** 2 + float(r.mean) ** 2) * num,
                            bucket_limits=edges[1:], bucket_counts=list(r.hist), global_step=step)
        tags.append(f"{prefix}/activation_hist/{name}")
    for name, values in weights:
        w.add_histogram(f"{prefix}/weight_hist/{name}", values, step)
        tags.append(f"{prefix}/weight_hist/{name}")
    for sev in _SEVERITIES:
        scalar(f"{prefix}/verdict_count/{sev}", float(sum(v.severity == sev for v in report.verdicts)))
    w.add_text(f"{prefix}/verdicts", _verdict_markdown(report), step)
    tags.append(f"{prefix}/verdicts")
    for tag, image in images.items():
        w.add_image(tag, image, step, dataformats="HWC")
        tags.append(tag)
    w.flush()
    return tags


def _wandb(report: Report, run: Any, step: int | None, weights: list[tuple[str, Any]], images: dict[str, Any],
           prefix: str) -> list[str]:
    wandb = sys.modules.get("wandb") or importlib.import_module("wandb")
    payload: dict[str, Any] = {}
    layers = _named_layers(report)
    for name, r in layers:
        payload[f"{prefix}/activation_std/{name}"] = float(r.std)
        if r.grad_std is not None:
            payload[f"{prefix}/grad_std/{name}"] = float(r.grad_std)
    for name, r in layers:
        if sum(r.hist) and len(r.hist_range) == 2 and all(map(math.isfinite, r.hist_range)):
            payload[f"{prefix}/activation_hist/{name}"] = wandb.Histogram(np_histogram=(list(r.hist), _edges(r)))
    for name, values in weights:
        payload[f"{prefix}/weight_hist/{name}"] = wandb.Histogram(values.reshape(-1).numpy())
    for sev in _SEVERITIES:
        payload[f"{prefix}/verdict_count/{sev}"] = sum(v.severity == sev for v in report.verdicts)
    payload[f"{prefix}/layers"] = wandb.Table(
        columns=list(_LAYER_COLUMNS),
        data=[[name, r.type, r.kind, r.mean, r.std, r.max_abs, r.dead, r.saturated, r.cosine, r.grad_std]
              for name, r in layers])
    payload[f"{prefix}/verdicts"] = wandb.Table(
        columns=["severity", "kind", "layer", "message", "fix"],
        data=[[v.severity, v.kind, v.layer, v.message, v.fix] for v in report.verdicts])
    for tag, image in images.items():
        payload[tag] = wandb.Image(image)
    if step is None:
        run.log(payload)
    else:
        run.log(payload, step=step)
    return list(payload)
