"""Plots of diagnostics reports (matplotlib, Agg canvas: no display needed).

* :func:`signal_propagation`: std and average channel squared mean (``mean^2``) of
  each weight layer's output by depth, several schemes on one figure (log scale),
  optionally with theoretical curves (dashed).
* :func:`activation_histograms`: normalized histograms of the values of a few
  layers, overlaid, in the style of Glorot & Bengio (2010, figures 3 and 6):
  activation outputs for saturating nonlinearities (tanh, sigmoid), pre-activations
  (weight-layer outputs) otherwise.

Figures are built with ``matplotlib.figure.Figure`` and drawn with the Agg canvas,
so importing this module never changes the global pyplot backend.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .diagnostics.report import LayerStats, Report

__all__ = ["signal_propagation", "gradient_propagation", "residual_stream", "activation_histograms", "save_figure",
           "training_curves"]

_DEPTH = "depth (weight layers in forward order)"
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]


def _figure(w: float, h: float) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: "Figure", path: str | Path, dpi: int = 80) -> Path:
    """Save ``fig`` as PNG to ``path`` (parent folders are created); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, format="png", dpi=dpi)
    return p


def _track(series: Any) -> tuple[list[float], list[float]]:
    """(std, mean^2) per depth from a Report, a list of LayerStats or a list of dicts."""
    layers = series.signal() if hasattr(series, "signal") else list(series)
    std, sq = [], []
    for r in layers:
        get = r.get if isinstance(r, Mapping) else (lambda k, r=r: getattr(r, k))
        std.append(float(get("std")))
        sq.append(float(get("sq_mean")))
    return std, sq


def signal_propagation(
    series: Mapping[str, Any],
    path: str | Path | None = None,
    *,
    theory: Mapping[str, Sequence[float]] | None = None,
    title: str = "signal propagation",
) -> "Figure":
    """Signal-propagation plot: for each named series (a :class:`Report`, or a list of
    per-layer records with ``std`` and ``sq_mean``), the std (left) and the average
    channel squared mean (right) of every weight layer's output against depth.

    ``theory`` maps a name to the predicted std per depth (black dashed lines drawn
    over the measurements). Values <= 0 are not drawn (log scale). Saved to ``path``
    when given.
    """
    if not series:
        raise ValueError("signal_propagation: series is empty")
    fig = _figure(10, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    for i, (name, s) in enumerate(series.items()):
        std, sq = _track(s)
        c = _COLORS[i % len(_COLORS)]
        d = list(range(1, len(std) + 1))
        ax1.plot([x for x, v in zip(d, std) if v > 0], [v for v in std if v > 0], "o-", ms=3, color=c, label=name)
        ax2.plot([x for x, v in zip(d, sq) if v > 0], [v for v in sq if v > 0], "o-", ms=3, color=c, label=name)
    for j, (name, th) in enumerate((theory or {}).items()):
        d = list(range(1, len(th) + 1))
        ax1.plot([x for x, v in zip(d, th) if v > 0], [v for v in th if v > 0], "--", color="black", lw=1.2,
                 alpha=0.8, zorder=3, label="theory" if j == 0 else None)
    ax1.set_yscale("log")
    ax2.set_yscale("log")
    ax1.set_xlabel(_DEPTH)
    ax2.set_xlabel(_DEPTH)
    ax1.set_ylabel("std of layer output (log)")
    ax2.set_ylabel("mean of channel means² (log)")
    ax1.set_title("forward: how large the signal is", fontsize=10)
    ax2.set_title("forward: how far channel means drift from 0", fontsize=10)
    ax1.grid(True, which="major", alpha=0.3)
    ax2.grid(True, which="major", alpha=0.3)
    if ax1.get_legend_handles_labels()[1]:  # all names hidden ("_x"): no legend, no warning
        ax1.legend(fontsize=8)
    fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


def _series_plot(series: Mapping[str, Any], get: Any, ax: Any, ylabel: str, xlabel: str, empty: str) -> None:
    drawn = False
    for i, (name, s) in enumerate(series.items()):
        ys = get(s)
        pts = [(x, v) for x, v in enumerate(ys, 1) if v is not None and v > 0]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, color=_COLORS[i % len(_COLORS)],
                    label=name)
            drawn = True
    if drawn:
        ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def gradient_propagation(series: Mapping[str, Any], path: str | Path | None = None, *,
                         title: str = "backward: gradient at each weight layer") -> "Figure":
    """For each named :class:`Report`, the std of the loss gradient with respect to every
    weight layer's output, by depth (log scale): flat is healthy, falling towards the
    input is vanishing gradients, rising is exploding."""
    if not series:
        raise ValueError("gradient_propagation: series is empty")
    fig = _figure(5, 3.6)
    ax = fig.subplots()
    _series_plot(series, lambda r: [x.grad_std for x in r.signal()], ax,
                 "gradient std at layer output (log)", _DEPTH,
                 "no gradient measured (backward=False, or no layer reaches the output)")
    ax.set_title(title, fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig


def residual_stream(series: Mapping[str, Any], path: str | Path | None = None, *,
                    title: str = "residual stream: std after each block") -> "Figure":
    """For each named :class:`Report` whose ``meta['stream']`` holds the residual stream
    (the output of each block that ends with a residual add, see :func:`diagnose`), its
    std by block (log scale): the quantity depth-scaled inits (GPT-2's
    ``0.02/sqrt(2 n_layer)`` projections) keep from growing."""
    if not series:
        raise ValueError("residual_stream: series is empty")
    fig = _figure(5, 3.6)
    ax = fig.subplots()
    _series_plot(series, lambda r: [b["std"] for b in (r.meta.get("stream") or [])], ax,
                 "std of the residual stream (log)", "block (0: the stream entering the first block)",
                 "no residual stream found")
    ax.set_title(title, fontsize=10)
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    # position 1 is the stream entering the first block (block 0): label positions from 0
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{int(v) - 1}"))
    if path is not None:
        save_figure(fig, path)
    return fig


def _pick(layers: list["LayerStats"], k: int) -> list["LayerStats"]:
    if len(layers) <= k:
        return layers
    idx = sorted({round(i * (len(layers) - 1) / (k - 1)) for i in range(k)})
    return [layers[i] for i in idx]


def _hist_axis(ax, report: "Report", max_layers: int, title: str) -> None:
    acts = [r for r in report.activations() if r.nonlinearity in ("tanh", "sigmoid") and r.hist]
    layers = acts if acts else [r for r in report.signal() if r.hist]
    what = "activation value" if acts else "pre-activation value (weight-layer output)"
    chosen = _pick(layers, max_layers)
    widths = []
    for i, r in enumerate(chosen):
        lo, hi = r.hist_range
        n = len(r.hist)
        w = (hi - lo) / n
        total = sum(r.hist) or 1
        xs = [lo + (j + 0.5) * w for j in range(n)]
        ys = [c / (total * w) if c else float("nan") for c in r.hist]  # empty bins: no point on a log axis
        depth = layers.index(r) + 1
        ax.plot(xs, ys, "-", color=_COLORS[i % len(_COLORS)], lw=1.2, label=f"layer {depth} ({r.name}), std {r.std:.2g}")
        widths.append(max(abs(lo), abs(hi)))
    if not chosen:
        ax.text(0.5, 0.5, "no layer with a histogram", ha="center", va="center", transform=ax.transAxes)
    # a vanishing scheme's deep layers are 1000x narrower (and denser) than its first: on linear
    # axes they are one spike. Log density always; a symmetric-log value axis, linear within the
    # narrowest layer's range, when the ranges differ more than 20x.
    if chosen:
        ax.set_yscale("log")
        if not acts and min(widths) > 0 and max(widths) / min(widths) > 4:
            from matplotlib.ticker import SymmetricalLogLocator

            lt = min(widths) / 4
            ax.set_xscale("symlog", linthresh=lt)
            decades = math.log10(max(widths) / lt)  # label every decade, or every other when many
            ax.xaxis.set_major_locator(SymmetricalLogLocator(linthresh=lt, base=10 if decades <= 2.5 else 100))
            ax.tick_params(axis="x", labelsize=7)
            what += " (symlog axis)"
    ax.set_xlabel(what)
    ax.set_ylabel("density (log)" if chosen else "density")
    if chosen:  # below the panel: over the curves it hides them
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    ax.set_title(title, fontsize=10)


def activation_histograms(
    report: "Report | Mapping[str, Report]",
    path: str | Path | None = None,
    *,
    max_layers: int = 6,
    title: str | None = None,
) -> "Figure":
    """Normalized histograms of up to ``max_layers`` layers (evenly spaced in depth),
    overlaid on one axis as in Glorot & Bengio's figures: activation values when the
    model's activations saturate (tanh/sigmoid), else pre-activations (weight-layer
    outputs), whose narrowing with depth shows vanishing and widening exploding.

    ``report`` is one :class:`Report` or a mapping ``{name: Report}`` (one panel each,
    side by side)."""
    reports = dict(report) if isinstance(report, Mapping) else {report.label: report}
    if not reports:
        raise ValueError("activation_histograms: no report given")
    n = len(reports)
    fig = _figure(4.2 * n if n > 1 else 6, 3.6 + 0.13 * min(max_layers, 8))  # room for the legends below
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, rep) in zip(axes, reports.items()):
        _hist_axis(ax, rep, max_layers, name if n > 1 else (title or f"histograms: {rep.label}"))
    if n > 1 and title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


def training_curves(
    curves: Mapping[str, Sequence[float]],
    path: str | Path | None = None,
    *,
    xlabel: str = "step",
    ylabel: str = "loss",
    title: str = "training",
    logy: bool = False,
) -> "Figure":
    """Simple line plot of named curves (used by the paper reproductions).

    ``curves`` maps a legend label to its values (x = 0, 1, ...); it must not be empty
    (``ValueError``, as for :func:`signal_propagation`: an empty figure is almost always
    a bug upstream). Labels starting with ``_`` are hidden from the legend (matplotlib's
    rule); no legend is drawn when no label is shown."""
    if not curves:
        raise ValueError("training_curves: curves is empty; pass {label: [value per step, ...]}")
    fig = _figure(6, 3.6)
    ax = fig.subplots()
    for i, (name, ys) in enumerate(curves.items()):
        ax.plot(range(len(ys)), list(ys), "-", color=_COLORS[i % len(_COLORS)], label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[1]:  # else matplotlib warns "No artists with labels"
        ax.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig
