"""Signal-propagation diagnostics: SEE whether a model's initialization is healthy.

:func:`diagnose` runs one forward pass (and, unless ``backward=False``, one
backward pass) of ``model`` on ``inputs`` with hooks on every leaf layer and
returns a :class:`Report`. Statistics are reduced inside the hooks as each layer
runs, so no activation is kept by the diagnostics (autograd still keeps what the
backward pass needs); buffers that a forward pass in training mode updates
(BatchNorm running statistics) are restored afterwards, and parameter ``.grad``
fields are not touched.

Per recorded layer (Linear/Conv/Embedding/attention, normalization and
activation modules, and activations called functionally in a ``forward``:
``F.relu``/``torch.relu``/``x.relu()``, ``F.leaky_relu``, ``F.gelu``, ``F.silu``,
``F.elu``, ``F.selu``, ``F.mish``, ``F.hardswish``, ``F.softplus``, recorded as
``"<module>:relu"`` and so on; ``F.tanh``/``F.sigmoid`` are not, as they are the
same call as a ``tanh`` inside other formulas), over the batch (dim 0 is the batch):

* output ``mean``, ``std``, ``max_abs`` and, per channel (dim 1 for conv-style
  outputs, also after ops that change the channel count such as ``PixelShuffle``;
  the last dim otherwise), the average channel squared mean
  ``sq_mean = mean_c(E[x_c]^2)`` and variance ``chan_var = mean_c(Var[x_c])``
  (Brock et al. 2021's signal-propagation quantities);
* ``dead``: the fraction of units (features/channels) of a ReLU-family module
  whose output is 0 for EVERY element of the batch;
* ``saturated``: the fraction of tanh/sigmoid outputs where the derivative is
  below 10% of its maximum (``|tanh| > sqrt(0.9)``; ``sigmoid`` outside
  ``[0.0257, 0.9743]``);
* ``cosine``: the mean pairwise cosine similarity of the samples' flattened
  outputs, on at most ``max_cosine_samples`` samples (correlation collapse, which
  a std-only check misses);
* ``grad_std``: the std of the loss gradient with respect to the layer output
  (measured for frozen layers too; ``meta['grad_note']`` says why when it is absent);
* a 50-bin histogram of the output values over ``mean +- 4 std`` (``[0, 1]`` for
  sigmoid, ``[-1, 1]`` for tanh, from 0 for ReLU; outliers counted in the edge
  bins), for Glorot-style plots.

Per parameter: std and mean, the std the plan promised (``plan`` entries'
``.spec.std``), the measured gain ``sqrt(mean(w^2) * fan_in)`` of weight
matrices, all-zero/constant tensors, duplicate rows (units that compute the same
function) and tensors identical to another parameter (e.g. the deep-copied
layers of ``nn.TransformerEncoder``). For a parametrized weight (``weight_norm``,
``spectral_norm``) these are measured on the weight the layer computes with
(``module.weight``); see :class:`ParamStats`.

Verdicts (:class:`Verdict`) use the thresholds of :class:`Thresholds` (documented
there) and name the layer where each problem starts and a concrete fix.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import weakref
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fans import module_fans
from .gains import auto_gain

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "diagnose",
    "Report",
    "LayerStats",
    "ParamStats",
    "Verdict",
    "Thresholds",
    "save_comparison",
    "comparison_html",
]

# ----------------------------------------------------------------------------------
# module classification
# ----------------------------------------------------------------------------------

_NORM_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

#: activation module -> nonlinearity name used for gains
_ACTIVATIONS: dict[type, str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.PReLU: "leaky_relu",
    nn.RReLU: "leaky_relu",
    nn.ELU: "elu",
    nn.CELU: "elu",
    nn.SELU: "selu",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Mish: "mish",
    nn.Softplus: "softplus",
    nn.Hardswish: "hardswish",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.Hardtanh: "hardtanh",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Softsign: "softsign",
    nn.LogSigmoid: "logsigmoid",
    nn.Tanhshrink: "tanhshrink",
}
_RELU_FAMILY = {"relu"}  # outputs exactly 0 on the negative side: units can die
_SATURATING = {"tanh", "sigmoid"}
#: derivative below 10% of its maximum: tanh' = 1 - y^2 < 0.1; sigmoid' = y(1-y) < 0.025
_TANH_SAT = math.sqrt(0.9)
_SIGMOID_SAT = 0.5 - math.sqrt(0.25 - 0.025)
_PRETTY = {
    "relu": "ReLU", "leaky_relu": "LeakyReLU", "gelu": "GELU", "silu": "SiLU", "mish": "Mish",
    "elu": "ELU", "selu": "SELU", "softplus": "Softplus", "hardswish": "Hardswish",
    "tanh": "Tanh", "sigmoid": "Sigmoid",
}


def _functional_activations() -> dict[Any, str]:
    """The functions a ``forward`` calls as an activation, as a torch-function mode sees
    them (``F.relu`` reaches the mode as itself, ``x.relu()`` as ``Tensor.relu``, ...)."""
    table: dict[Any, str] = {}
    for fn, name in [(F.relu, "relu"), (torch.relu, "relu"), (torch.Tensor.relu, "relu"),
                     (torch.relu_, "relu"), (torch.Tensor.relu_, "relu"),
                     (F.leaky_relu, "leaky_relu"), (F.gelu, "gelu"), (F.silu, "silu"), (F.elu, "elu"),
                     (F.selu, "selu"), (F.mish, "mish"), (F.hardswish, "hardswish"), (F.softplus, "softplus")]:
        table[fn] = name
    return table


_FUNCTIONAL = _functional_activations()
#: a sum whose one operand is a weight layer's output ends a residual branch (``x + proj(h)``)
_ADDS = frozenset({torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__radd__,
                   torch.Tensor.__iadd__})
_IN_PLACE_ADDS = frozenset({torch.Tensor.add_, torch.Tensor.__iadd__})
#: scale-preserving calls between a branch's last layer and its sum (GPT-2's resid_dropout)
_PASS_THROUGH = frozenset({F.dropout, F.alpha_dropout, F.feature_alpha_dropout, F.dropout1d, F.dropout2d,
                           F.dropout3d})


def _functional_param(name: str, args: tuple, kwargs: Mapping[str, Any]) -> float | None:
    if name == "leaky_relu":
        slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
        return float(slope)
    return None


class _FunctionalActivations(torch.overrides.TorchFunctionMode):
    """Records the activations a ``forward`` calls as functions (see the module
    docstring), attributed to the innermost running module; calls made inside a
    recorded activation module (``nn.ReLU`` calls ``F.relu``) are left to its hook."""

    def __init__(self, rec: "_Recorder") -> None:
        super().__init__()
        self.rec = rec
        self.busy = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        summed = func in _ADDS and not self.busy
        if summed:  # judged before the call: an in-place sum overwrites one operand
            self.rec.summed(args[0] if args else kwargs.get("input"),
                            args[1] if len(args) > 1 else kwargs.get("other"))
        out = func(*args, **kwargs)
        if not self.busy and self.rec.outputs:
            if summed:
                if func in _IN_PLACE_ADDS and args:
                    self.rec.untrack(args[0])  # now a sum, no longer the layer's output
            elif func in _PASS_THROUGH and args and isinstance(out, Tensor):
                self.rec.alias(args[0], out)
            else:
                self.rec.read(args)
        name = _FUNCTIONAL.get(func) if not self.busy else None
        if name is not None and isinstance(out, Tensor):
            self.busy = True  # the statistics below are torch calls too
            try:
                out = self.rec.functional(name, _functional_param(name, args, kwargs), args, out)
            finally:
                self.busy = False
        return out


def _kind(module: nn.Module) -> str | None:
    """'linear' (Linear/Conv/Bilinear/other leaf with a >=2-D weight), 'embedding',
    'attention', 'norm', 'activation' or None (not recorded)."""
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, nn.MultiheadAttention):
        return "attention"
    if isinstance(module, _NORM_TYPES):
        return "norm"
    if type(module) in _ACTIVATIONS or isinstance(module, tuple(_ACTIVATIONS)):
        return "activation"
    if isinstance(module, (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)):
        return "linear"
    w = getattr(module, "weight", None)
    if isinstance(w, Tensor) and w.dim() >= 2 and not list(module.children()):
        return "linear"
    return None


def _nonlinearity(module: nn.Module) -> tuple[str, float | None]:
    for cls in type(module).__mro__:
        if cls in _ACTIVATIONS:
            name = _ACTIVATIONS[cls]
            break
    else:  # pragma: no cover - _kind guarantees a match
        return "unknown", None
    param = None
    if isinstance(module, nn.LeakyReLU):
        param = float(module.negative_slope)
    elif isinstance(module, nn.PReLU):
        param = float(module.weight.detach().float().mean())
    elif isinstance(module, nn.RReLU):
        param = (module.lower + module.upper) / 2
    return name, param


def _expected_gain(name: str, param: float | None) -> float | None:
    """The gain torchinit's presets give a layer followed by nonlinearity ``name``
    (None where the criterion is not sharp: tanh/sigmoid are judged by saturation,
    and activations with no defined gain are not judged)."""
    if name in _SATURATING:
        return None
    try:
        return float(auto_gain(name, param))
    except ValueError:
        return None


# ----------------------------------------------------------------------------------
# data classes
# ----------------------------------------------------------------------------------


@dataclass
class Thresholds:
    """Thresholds of the verdicts (all documented defaults; pass your own to :func:`diagnose`).

    Let ``s_k`` be the output std of the k-th weight layer (Linear/Conv/...) in
    forward order, ``s_0`` the std of the model input. Layers that end a residual
    branch (their output, through dropout, is added to a tensor that is not a weight
    layer's output and is at least as large: ``x + proj(h)``) are not counted in ``s_k``:
    their output is small by design (GPT-2's ``0.02/sqrt(2 n_layer)`` projections) and the
    stream carries the signal.

    * ``vanish=0.1``: *vanishing* when some ``s_k / s_1 < vanish``. The verdict
      starts at the first layer of the run of shrinking layers (``s_j < s_{j-1}``)
      that leads there; an ``error`` when the ratio is below ``vanish**3``.
    * ``explode=10``: *exploding* when some ``s_k / s_1 > explode`` (same start rule).
    * ``grad_vanish=0.01`` / ``grad_explode=100``: gradient std at the output of the
      first weight layer over that of the last weight layer whose output has the same
      per-sample shape (groups of >= 3 layers; the most extreme group is judged). In a
      residual network (>= 3 layers ending a branch) only those layers count: the
      gradient at their output is the residual stream's.
    * ``collapse=0.99``: *collapse* when the mean pairwise cosine similarity of
      samples at a weight layer (other than the last) exceeds ``collapse`` while the input's is below
      ``collapse_input=0.9``; starts at the first layer above ``collapse_start=0.9``.
    * ``dead=0.5``: *dead units* when more than this fraction of a ReLU layer's
      units is 0 on the whole batch (``error`` at ``dead_error=0.99``). The fraction
      falls with the batch size (a healthy 30-layer Kaiming MLP of width 256 shows
      about 45% at batch 16, 40% at 64, 32% at 256): diagnose with >= 32 samples.
    * ``saturated=0.5``: *saturation* when more than this fraction of a
      tanh/sigmoid layer's outputs is saturated (derivative < 10% of its maximum).
    * ``gain_factor=0.7``: *wrong nonlinearity* when a weight layer that sits
      between two activations of a kind with a sharp variance criterion (ReLU,
      leaky ReLU, GELU, SiLU, ...) has a per-layer variance factor
      ``(g / g_expected)^2`` outside ``[gain_factor, 1/gain_factor]``, where
      ``g = sqrt(mean(w^2) * fan_in)`` and ``g_expected`` the activation's gain; the
      median layer decides (so data-dependent inits that scatter around the right
      gain are not flagged), and the layers off in the same direction are reported;
      a ``warning`` from 3 such layers (or a compound factor outside [0.1, 10]),
      else ``info``.
    * ``std_sigmas=5, std_floor=0.05``: *mismatch* when a parameter's std differs
      from the std its plan promised by more than ``std_floor + std_sigmas /
      sqrt(2 n)`` relative (n elements).

    Every value must be positive and finite; the fractions and cosines ``vanish``,
    ``grad_vanish``, ``collapse``, ``dead``, ``saturated`` and ``gain_factor`` must be
    below 1 (``collapse_input`` and ``dead_error`` at most 1), ``explode`` and
    ``grad_explode`` above 1, ``collapse_start <= collapse`` and ``dead <= dead_error``;
    anything else raises ``ValueError`` naming the field.
    """

    vanish: float = 0.1
    explode: float = 10.0
    grad_vanish: float = 0.01
    grad_explode: float = 100.0
    collapse: float = 0.99
    collapse_input: float = 0.9
    collapse_start: float = 0.9
    dead: float = 0.5
    dead_error: float = 0.99
    saturated: float = 0.5
    gain_factor: float = 0.7
    std_sigmas: float = 5.0
    std_floor: float = 0.05

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"Thresholds: {f.name} must be a positive finite number, got {v!r}")
        # a value outside its range silently disables its verdict (a fraction > 1 is never
        # exceeded) or turns it into noise (a factor band [g, 1/g] with g > 1 is empty)
        for name, what in (("vanish", "a std ratio below which signals vanish"),
                           ("grad_vanish", "a gradient-std ratio below which gradients vanish"),
                           ("collapse", "a cosine similarity"), ("dead", "a fraction of units"),
                           ("saturated", "a fraction of outputs"),
                           ("gain_factor", "the lower end of the variance-factor band [gain_factor, 1/gain_factor]")):
            v = getattr(self, name)
            if not v < 1:
                raise ValueError(f"Thresholds: {name} is {what} and must be in (0, 1), got {v!r}")
        for name, what in (("collapse_input", "a cosine similarity"), ("dead_error", "a fraction of units")):
            v = getattr(self, name)
            if not v <= 1:
                raise ValueError(f"Thresholds: {name} is {what} and must be in (0, 1], got {v!r}")
        for name, what in (("explode", "a std ratio above which signals explode"),
                           ("grad_explode", "a gradient-std ratio above which gradients explode")):
            v = getattr(self, name)
            if not v > 1:
                raise ValueError(f"Thresholds: {name} is {what} and must be > 1, got {v!r}")
        if self.collapse_start > self.collapse:
            # the collapse verdict starts at the first layer above collapse_start: one must exist
            raise ValueError(f"Thresholds: collapse_start must be <= collapse ({self.collapse!r}), "
                             f"got {self.collapse_start!r}")
        if self.dead_error < self.dead:
            raise ValueError(f"Thresholds: dead_error must be >= dead ({self.dead!r}), got {self.dead_error!r}")


@dataclass
class LayerStats:
    """Statistics of one call of one recorded module (see the module docstring)."""

    name: str
    type: str
    kind: str
    shape: list[int]
    mean: float
    std: float
    max_abs: float
    sq_mean: float
    chan_var: float
    finite: bool = True
    in_sq: float | None = None  #: mean square of the layer input (weight layers)
    dead: float | None = None
    saturated: float | None = None
    cosine: float | None = None
    grad_std: float | None = None
    nonlinearity: str | None = None  #: for activation modules
    next_act: str | None = None  #: weight layers: activation that follows
    next_act_param: float | None = None  #: its parameter (LeakyReLU slope)
    prev_act: str | None = None  #: weight layers: activation that precedes
    #: weight layers: the output (through dropout) is added to a tensor that is not a weight
    #: layer's output and is at least as large (``x + proj(h)``): the end of a residual branch
    residual: bool = False
    hist: list[int] = field(default_factory=list)
    hist_range: list[float] = field(default_factory=list)


@dataclass
class ParamStats:
    """Statistics of one parameter tensor.

    A parametrized tensor (``weight_norm``, ``spectral_norm``) is reported as the tensor
    the layer computes with (``module.weight``, named ``"<module>.weight"``): gain and
    symmetry checks apply to it. The parameters it is computed from
    (``<module>.parametrizations.weight.original*``) are listed with ``original_of``
    set and are not judged."""

    name: str
    module: str
    shape: list[int]
    mean: float
    std: float
    constant: bool
    zero: bool
    duplicate_rows: int = 0
    identical_to: str | None = None
    promised_std: float | None = None
    gain: float | None = None  #: sqrt(mean(w^2) * fan_in), weight matrices only
    expected_gain: float | None = None  #: gain of the activation that follows, when sharp
    #: for a parameter a parametrization computes a tensor from (weight_norm's ``g``/``v``,
    #: spectral_norm's raw weight): the name of that tensor, whose own entry is judged instead
    original_of: str | None = None


@dataclass
class Verdict:
    """One finding: ``kind`` (vanishing, exploding, vanishing_gradients,
    exploding_gradients, collapse, dead_units, saturation, symmetry,
    wrong_nonlinearity, mismatch, nonfinite), ``severity`` (error/warning/info), the
    ``layer`` where it starts, a ``message``, a concrete ``fix``, the measured
    ``value`` and the ``threshold`` it crossed."""

    kind: str
    severity: str
    layer: str
    message: str
    fix: str
    value: float | None = None
    threshold: float | None = None

    def __str__(self) -> str:
        return f"[{self.severity}] {self.kind} at {self.layer}: {self.message} Fix: {self.fix}"


def _fmt(v: float | None, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


@dataclass
class Report:
    """Result of :func:`diagnose`: ``layers`` (:class:`LayerStats`, forward order),
    ``params`` (:class:`ParamStats`), ``verdicts`` (:class:`Verdict`) and ``meta``.

    ``print()`` shows rich tables, ``to_dict()``/``to_json()`` serialize
    (``from_dict``/``from_json`` invert them), ``plot_signal()`` /
    ``plot_histograms()`` draw matplotlib figures and ``save(dir)`` writes PNGs,
    ``report.json`` and a self-contained ``report.html``.
    """

    layers: list[LayerStats]
    params: list[ParamStats]
    verdicts: list[Verdict]
    meta: dict[str, Any] = field(default_factory=dict)

    # -- views ---------------------------------------------------------------------
    @property
    def label(self) -> str:
        """The report's name: ``meta['label']``, else the model's class name."""
        return str(self.meta.get("label") or self.meta.get("model") or "model")

    def signal(self) -> list[LayerStats]:
        """The weight layers (Linear/Conv/...) in forward order: the signal track."""
        return [r for r in self.layers if r.kind == "linear"]

    def activations(self) -> list[LayerStats]:
        """Records of the activation modules, in forward order."""
        return [r for r in self.layers if r.kind == "activation"]

    def layer(self, name: str) -> LayerStats:
        """The record named ``name`` (raises KeyError if absent)."""
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(f"no recorded layer named {name!r}; recorded: {[r.name for r in self.layers][:20]}")

    def param(self, name: str) -> ParamStats:
        """The statistics of parameter ``name`` (raises KeyError if absent)."""
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"no parameter named {name!r}")

    def by_kind(self, kind: str) -> list[Verdict]:
        """The verdicts of kind ``kind``."""
        return [v for v in self.verdicts if v.kind == kind]

    @property
    def healthy(self) -> bool:
        """True when no verdict of severity warning or error was found."""
        return not any(v.severity in ("warning", "error") for v in self.verdicts)

    # -- serialization -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (:meth:`from_dict` inverts it)."""
        return {
            "format": "torchinit.report/1",
            "meta": dict(self.meta),
            "layers": [asdict(r) for r in self.layers],
            "params": [asdict(p) for p in self.params],
            "verdicts": [asdict(v) for v in self.verdicts],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Report":
        """Rebuild a report from :meth:`to_dict`'s output."""
        if not isinstance(d, Mapping) or d.get("format") != "torchinit.report/1":
            raise ValueError("Report.from_dict: expected a dict with format 'torchinit.report/1'")
        return cls(
            layers=[LayerStats(**r) for r in d["layers"]],
            params=[ParamStats(**p) for p in d["params"]],
            verdicts=[Verdict(**v) for v in d["verdicts"]],
            meta=dict(d.get("meta", {})),
        )

    def to_json(self, indent: int | None = 1) -> str:
        """JSON text of :meth:`to_dict` (non-finite values kept as NaN/Infinity)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> "Report":
        """Rebuild a report from :meth:`to_json`'s output."""
        return cls.from_dict(json.loads(text))

    # -- text ------------------------------------------------------------------------
    def layer_table(self, *, kinds: Iterable[str] | None = None, max_rows: int | None = None) -> Table:
        """A ``rich.table.Table`` of the recorded layers."""
        from rich.table import Table

        t = Table(title=f"signal propagation: {self.label}", show_lines=False)
        for col, j in (("#", "right"), ("layer", "left"), ("type", "left"), ("mean", "right"),
                       ("std", "right"), ("max|x|", "right"), ("dead", "right"), ("sat", "right"),
                       ("cos", "right"), ("grad std", "right")):
            t.add_column(col, justify=j)
        rows = [r for r in self.layers if kinds is None or r.kind in set(kinds)]
        if max_rows is not None and len(rows) > max_rows:
            rows = rows[: max_rows // 2] + rows[-(max_rows - max_rows // 2):]
        for i, r in enumerate(rows):
            t.add_row(str(i), r.name, r.type, _fmt(r.mean), _fmt(r.std), _fmt(r.max_abs), _pct(r.dead),
                      _pct(r.saturated), _fmt(r.cosine, ".2f"), _fmt(r.grad_std))
        return t

    def verdict_table(self) -> Table:
        """A ``rich.table.Table`` of the verdicts."""
        from rich.table import Table

        t = Table(title=f"verdicts: {self.label}")
        for col in ("severity", "kind", "starts at", "finding", "fix"):
            t.add_column(col, overflow="fold")
        style = {"error": "bold red", "warning": "yellow", "info": "cyan"}
        for v in self.verdicts:
            t.add_row(f"[{style.get(v.severity, '')}]{v.severity}[/]", v.kind, v.layer, v.message, v.fix)
        if not self.verdicts:
            t.add_row("[green]ok[/]", "-", "-", "no problem found", "-")
        return t

    def print(self, console: Console | None = None, *, kinds: Iterable[str] | None = ("linear", "activation", "norm", "embedding", "attention"),
              max_rows: int | None = 60) -> None:
        """Print the layer table and the verdicts with rich."""
        from rich.console import Console

        console = console or Console()
        console.print(self.layer_table(kinds=kinds, max_rows=max_rows))
        style = {"error": "bold red", "warning": "yellow", "info": "cyan"}
        console.print(f"[bold]verdicts: {self.label}[/]")
        if not self.verdicts:
            console.print("  [green]ok[/]: no problem found")
        for v in self.verdicts:
            console.print(f"  [{style.get(v.severity, '')}]{v.severity}[/] {v.kind} (starts at {v.layer}): "
                          f"{v.message}", highlight=False)
            console.print(f"      fix: {v.fix}", highlight=False)
        if self.meta.get("grad_note"):  # why the grad std column is empty
            console.print(f"  note: {self.meta['grad_note']}", highlight=False)

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=140, record=True, file=io.StringIO(), color_system=None)
        self.print(console)
        return console.export_text()

    # -- plots ---------------------------------------------------------------------
    def plot_signal(self, path: str | Path | None = None, **kw: Any) -> Figure:
        """Signal-propagation figure of this report (see :func:`torchinit.plots.signal_propagation`)."""
        from .plots import signal_propagation

        return signal_propagation({self.label: self}, path, **kw)

    def plot_histograms(self, path: str | Path | None = None, **kw: Any) -> Figure:
        """Glorot-style activation histograms (see :func:`torchinit.plots.activation_histograms`)."""
        from .plots import activation_histograms

        return activation_histograms(self, path, **kw)

    def save(self, directory: str | Path) -> Path:
        """Write ``signal.png``, ``histograms.png``, ``report.json`` and a self-contained
        ``report.html`` (PNGs embedded as base64) into ``directory``; returns the HTML path."""
        return save_comparison({self.label: self}, directory, title=f"torchinit report: {self.label}")


# ----------------------------------------------------------------------------------
# the recorder
# ----------------------------------------------------------------------------------


def _first_tensor(x: Any) -> Tensor | None:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, Mapping):
        for k in ("logits", "last_hidden_state"):
            if isinstance(x.get(k), Tensor):
                return x[k]
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


_BINS = 50


@dataclass
class _Tracked:
    """A weight layer's output seen in this forward: a weak reference (no activation is
    kept alive by the diagnostics), its layer, and whether some op has read it."""

    ref: weakref.ref
    rec: "LayerStats"
    read: bool = False


class _Recorder:
    def __init__(self, model: nn.Module, max_cosine_samples: int, grads: bool) -> None:
        self.model = model
        self.k = max_cosine_samples
        self.grads = grads
        self.records: list[LayerStats] = []
        self.calls: dict[str, int] = {}
        self.last: LayerStats | None = None
        self.last_cdim: int | None = None  # the channel dim of ``last``
        self.handles: list[Any] = []
        self.modules: dict[str, nn.Module] = {}
        self.stack: list[tuple[str, str | None]] = []  # (name, kind) of the modules running forward
        self.leaves: list[Tensor] = []  # gradient entry points made for frozen layers (see _grad_entry)
        # weight-layer outputs of this forward, by id, with a weak reference (an id can be reused
        # once a tensor is freed, and no activation is kept alive by the diagnostics)
        # The read flag lives in the entry itself: a tensor freed and its id reused by a new
        # one cannot inherit it (a bare set of ids did, and made verdicts vary call to call).
        self.outputs: dict[int, _Tracked] = {}

    def _owner(self, t: Any) -> "LayerStats | None":
        """The weight layer whose output ``t`` is (through dropout), or None."""
        if not isinstance(t, Tensor):
            return None
        hit = self._entry(t)
        return hit.rec if hit is not None else None

    def _entry(self, t: Any) -> "_Tracked | None":
        """The live tracking entry of ``t``: its id alone is not enough (ids are reused)."""
        if not isinstance(t, Tensor):
            return None
        hit = self.outputs.get(id(t))
        if hit is None:
            return None
        if hit.ref() is not t:  # a dead tensor's id, now another object's: forget it
            del self.outputs[id(t)]
            return None
        return hit

    def _track(self, y: Tensor, rec: LayerStats) -> None:
        try:
            self.outputs[id(y)] = _Tracked(weakref.ref(y), rec)
        except TypeError:  # pragma: no cover - tensor subclasses without weak references
            pass

    def untrack(self, t: Any) -> None:
        if self._owner(t) is not None:
            del self.outputs[id(t)]

    def read(self, args: tuple) -> None:
        """An op read ``args``: a tracked output among them feeds something (a norm, a branch)."""
        for a in args:
            hit = self._entry(a)
            if hit is not None:
                hit.read = True

    def alias(self, x: Any, y: Tensor) -> None:
        """``y`` is ``x`` through a scale-preserving call (dropout): it belongs to x's layer."""
        rec = self._owner(x)
        if rec is not None:
            self._track(y, rec)

    @torch.no_grad()
    def summed(self, a: Any, b: Any) -> None:
        """``a + b`` ran. A weight layer's output added to a tensor that is not one and is
        at least as large (the residual stream) ends a residual branch: the layer's small
        output is by design and the sum carries the signal. Added to something smaller
        (``h + 0.044715 * h**3`` inside a GELU formula, a bias) the layer's output is the
        signal, and stays on its path."""
        ra, rb = self._owner(a), self._owner(b)
        if ra is None and rb is None:
            return
        if ra is not None and rb is not None:
            # two layers' outputs: the one some op already read is the stream the other's
            # branch started from (x = stem(x); x + proj(f(x))); neither read: two branches
            read_a, read_b = self._entry(a).read, self._entry(b).read
            if read_a == read_b:
                return
            rec, stream = (rb, a) if read_a else (ra, b)
        else:
            rec, stream = (ra, b) if ra is not None else (rb, a)
        if not (isinstance(stream, Tensor) and stream.layout == torch.strided and not stream.is_nested
                and stream.is_floating_point() and stream.numel() > 1):
            return
        try:
            big = float(stream.detach().float().std(correction=0)) >= rec.std
        except Exception:  # a statistic must never break the model's forward
            return
        if big:
            rec.residual = True

    def attach(self) -> None:
        for name, m in self.model.named_modules():
            kind = _kind(m)
            label = name or type(m).__name__
            self.handles.append(m.register_forward_pre_hook(self._push(label, kind)))
            self.handles.append(m.register_forward_hook(self._pop, always_call=True))
            if kind is None:
                continue
            if kind != "attention" and any(_kind(c) is not None for c in m.children()):
                continue  # a container of recorded modules: record the leaves
            self.modules[label] = m
            self.handles.append(m.register_forward_hook(self._hook(label, m, kind)))

    def _push(self, label: str, kind: str | None):
        def pre_hook(mod, args):
            self.stack.append((label, kind))

        return pre_hook

    def _pop(self, mod, args, out):
        if self.stack:
            self.stack.pop()

    def functional(self, nl: str, param: float | None, args: tuple, y: Tensor) -> Tensor:
        """Record an activation called as a function inside the running module's forward;
        returns the tensor the call should return (see :meth:`_grad_entry`)."""
        scope, kind = self.stack[-1] if self.stack else ("(root)", None)
        if kind == "activation" or not (y.is_floating_point() and y.numel()):
            return y
        name = f"{scope}:{nl}"
        n = self.calls.get(name, 0)
        self.calls[name] = n + 1
        x = args[0] if args and isinstance(args[0], Tensor) else None
        # an in-place call (x.relu_()) returns its input, which the caller keeps using
        y2 = y if any(a is y for a in args) else self._grad_entry(y)
        self._record(name if n == 0 else f"{name}#{n + 1}", None, "activation", x, y2, nl=(nl, param))
        return y2

    def _grad_entry(self, y: Tensor) -> Tensor:
        """``y``, or, when gradients are measured and ``y`` does not require grad (every
        layer up to here is frozen, or the input is integer), an equal tensor that does.

        The gradient w.r.t. a layer output needs no parameter gradient, only a graph:
        starting one at the first frozen output lets the backward pass reach every
        recorded layer without touching any parameter's ``requires_grad`` or ``.grad``.
        The copy is not a leaf, so in-place ops that follow (``ReLU(inplace=True)``) work.
        """
        if not (self.grads and torch.is_grad_enabled() and not y.requires_grad
                and (y.is_floating_point() or y.is_complex())):
            return y  # grad mode off inside the model (torch.no_grad() blocks) is respected
        leaf = y.detach().requires_grad_(True)
        self.leaves.append(leaf)
        return leaf.clone()

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _hook(self, name: str, module: nn.Module, kind: str):
        def hook(mod, args, out):
            y = _first_tensor(out)
            if y is None or not (y.is_floating_point() or y.is_complex()) or y.numel() == 0:
                return None
            n = self.calls.get(name, 0)
            self.calls[name] = n + 1
            rec_name = name if n == 0 else f"{name}#{n + 1}"
            x = _first_tensor(args)
            new_out = None
            if isinstance(out, Tensor) or (isinstance(out, tuple) and any(o is y for o in out)):
                y2 = self._grad_entry(y)
                if y2 is not y:
                    if isinstance(out, Tensor):
                        new_out = y2
                    else:  # (output, attention weights) and the like
                        items = [y2 if o is y else o for o in out]
                        new_out = type(out)(*items) if hasattr(out, "_fields") else tuple(items)
                    y = y2
            self._record(rec_name, mod, kind, x, y)
            if kind == "linear":
                self._track(y, self.records[-1])
            return new_out  # None keeps the module's output

        return hook

    def _cdim(self, mod: nn.Module | None, kind: str, y: Tensor) -> int:
        if y.dim() <= 2:
            return y.dim() - 1
        if isinstance(mod, (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm,
                            nn.LocalResponseNorm)):
            return 1
        if kind == "activation" and self.last is not None and len(self.last.shape) == y.dim():
            # the channels of the layer before, also through shape changes that keep them
            # (conv -> max-pool -> ReLU)
            c = self.last_cdim
            if c is not None and self.last.shape[c] == y.shape[c]:
                return c
            # conv-style (N, C, ...) channels stay at dim 1 through rank-keeping ops that
            # change their number (PixelShuffle, channel concatenation); a permute to
            # channels-last (N, ..., C) keeps the per-sample sizes, so it is told apart
            if c == 1 and sorted(self.last.shape[1:]) != sorted(y.shape[1:]):
                return 1
        return y.dim() - 1

    @torch.no_grad()
    def _record(self, name: str, mod: nn.Module | None, kind: str, x: Tensor | None, y: Tensor,
                nl: tuple[str, float | None] | None = None) -> None:
        yd = y.detach()
        yf = yd.float() if not yd.is_complex() else yd.abs().float()
        cdim = self._cdim(mod, kind, yf)
        finite = bool(torch.isfinite(yf).all())
        var, mean = torch.var_mean(yf, correction=0)
        flat = yf.movedim(cdim, -1).reshape(-1, yf.shape[cdim]) if yf.dim() >= 1 else yf.reshape(1, 1)
        cvar, cmean = torch.var_mean(flat, dim=0, correction=0)
        rec = LayerStats(
            name=name,
            type=type(mod).__name__ if mod is not None else f"F.{nl[0] if nl else '?'}",
            kind=kind,
            shape=list(yf.shape),
            mean=float(mean),
            std=float(var.sqrt()),
            max_abs=float(yf.abs().max()),
            sq_mean=float((cmean * cmean).mean()),
            chan_var=float(cvar.mean()),
            finite=finite,
        )
        if kind == "activation":
            nl, prm = nl if nl is not None else _nonlinearity(mod)
            rec.nonlinearity = nl
            if nl in _RELU_FAMILY:
                alive = (flat > 0).any(dim=0)
                rec.dead = float(1.0 - alive.float().mean())
            elif nl == "tanh":
                rec.saturated = float((yf.abs() > _TANH_SAT).float().mean())
            elif nl == "sigmoid":
                rec.saturated = float(((yf < _SIGMOID_SAT) | (yf > 1 - _SIGMOID_SAT)).float().mean())
            if self.last is not None and self.last.kind == "linear" and self.last.next_act is None:
                self.last.next_act = nl
                self.last.next_act_param = prm
        if kind == "linear":
            if x is not None and (x.is_floating_point()):
                xf = x.detach().float()
                rec.in_sq = float((xf * xf).mean())
            if self.last is not None and self.last.kind == "activation":
                rec.prev_act = self.last.nonlinearity
        if yf.dim() >= 1 and yf.shape[0] >= 2 and finite:
            s = yf[: self.k].reshape(min(self.k, yf.shape[0]), -1)
            norms = s.norm(dim=1)
            ok = norms > 0
            if int(ok.sum()) >= 2:
                u = s[ok] / norms[ok, None]
                g = u @ u.T
                m = g.shape[0]
                rec.cosine = float((g.sum() - g.diagonal().sum()) / (m * (m - 1)))
        # histogram for Glorot-style plots
        if finite:
            nl = rec.nonlinearity
            if nl == "sigmoid":
                lo, hi = 0.0, 1.0
            elif nl == "tanh":
                lo, hi = -1.0, 1.0
            else:
                sd = rec.std if rec.std > 0 else 1.0
                lo, hi = rec.mean - 4 * sd, rec.mean + 4 * sd
                if nl in _RELU_FAMILY:
                    lo = 0.0
            if hi > lo:
                vals = yf.reshape(-1).clamp(lo, hi)  # outliers are counted in the edge bins
                rec.hist = [int(c) for c in torch.histc(vals, bins=_BINS, min=lo, max=hi).tolist()]
                rec.hist_range = [float(lo), float(hi)]
        self.records.append(rec)
        self.last, self.last_cdim = rec, cdim
        if self.grads and y.requires_grad:
            def ghook(g, rec=rec):
                gf = g.detach().float()
                rec.grad_std = float(gf.std(correction=0)) if gf.numel() else None
            y.register_hook(ghook)


# ----------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------


def _promised_std(spec: Any, shape: Sequence[int]) -> float | None:
    if spec is None:
        return None
    kind = getattr(spec, "kind", None)
    if kind == "orthogonal" or kind == "delta_orthogonal":
        rows = shape[0]
        cols = int(math.prod(shape[1:])) if len(shape) > 1 else 1
        gain = float(getattr(spec, "gain", 1.0))
        if kind == "delta_orthogonal":
            k = int(math.prod(shape[2:]))
            return gain * math.sqrt(1.0 / (max(rows, shape[1]) * k)) if k else None
        return gain / math.sqrt(max(rows, cols))
    if kind == "sparse":
        rows = shape[0]
        zeros = math.ceil(spec.sparsity * rows)
        return float(spec.std) * math.sqrt(max(rows - zeros, 0) / rows) if rows else None
    std = getattr(spec, "std", None)
    return float(std) if std is not None else None


def _fingerprint(t: Tensor) -> tuple:
    f = t.detach().reshape(-1).double()
    # integer positions: a float32 linspace rounds n - 1 up past the end beyond 2**24 elements
    n, steps = f.numel(), min(64, f.numel())
    idx = torch.arange(steps, device=f.device) * (n - 1) // max(steps - 1, 1)
    return (tuple(t.shape), float(f.sum()), float((f * f).sum()), tuple(f[idx].tolist()))


def _duplicate_rows(w2: Tensor) -> int:
    rows, cols = w2.shape
    if rows < 2 or cols == 0:
        return 0
    g = torch.Generator().manual_seed(0)
    v = torch.randn(cols, generator=g, dtype=torch.float64).to(w2.device)
    h = w2.double() @ v
    order = torch.argsort(h)
    hs = h[order]
    same = (hs[1:] == hs[:-1]).nonzero().flatten()
    dup = set()
    for i in same.tolist():
        a, b = int(order[i]), int(order[i + 1])
        if torch.equal(w2[a], w2[b]):
            dup.add(b)
    return len(dup)


def _param_stats(model: nn.Module, plan: Any, records: list[LayerStats],
                 modules: Mapping[str, nn.Module]) -> list[ParamStats]:
    from torch.nn.utils import parametrize

    # parametrized tensors are read (module.weight, also by module_fans) in eval mode:
    # in training mode spectral_norm's power iteration would update its buffers; this
    # is the weight the model's stored state defines
    modes = [(m, m.training) for pl in model.modules() if isinstance(pl, parametrize.ParametrizationList)
             for m in pl.modules()]
    try:
        for m, _ in modes:
            m.training = False
        return _param_stats_impl(model, plan, records, parametrize.is_parametrized)
    finally:
        for m, training in modes:
            m.training = training


def _param_stats_impl(model: nn.Module, plan: Any, records: list[LayerStats],
                      is_parametrized: Callable[[nn.Module], bool]) -> list[ParamStats]:
    specs: dict[str, Any] = {}
    if plan is not None:
        for e in getattr(plan, "entries", plan):
            specs[getattr(e, "name")] = getattr(e, "spec", None)
    linear_by_module: dict[str, LayerStats] = {}
    for r in records:
        if r.kind == "linear":
            linear_by_module.setdefault(r.name.split("#")[0], r)
    out: list[ParamStats] = []
    seen: dict[int, str] = {}
    prints: dict[tuple, str] = {}
    computed: dict[str, Tensor] = {}  # effective tensors of parametrizations, by name
    originals: dict[int, str] = {}  # id(ParametrizationList) -> name of the tensor it computes

    def tensor_stats(qname: str, label: str, pname: str, mod: nn.Module, t: Tensor) -> ParamStats | None:
        if t.is_meta or not t.is_floating_point() or t.numel() == 0:
            return None
        with torch.no_grad():
            pf = t.detach().float()
            var, mean = torch.var_mean(pf, correction=0)
            first = pf.reshape(-1)[0]
            constant = bool((pf == first).all())
        ps = ParamStats(name=qname, module=label, shape=list(t.shape), mean=float(mean),
                        std=float(var.sqrt()), constant=constant, zero=constant and float(first) == 0.0)
        if qname in specs:
            ps.promised_std = _promised_std(specs[qname], t.shape)
        if id(mod) in originals:
            # weight_norm's g or spectral_norm's raw weight: its rows need not differ nor
            # be random; the tensor the layer uses is judged instead
            ps.original_of = originals[id(mod)]
            return ps
        if t.dim() >= 2 and not constant:
            with torch.no_grad():
                ps.duplicate_rows = _duplicate_rows(pf.reshape(t.shape[0], -1))
                fp = _fingerprint(pf)
            if fp in prints:
                other = computed.get(prints[fp])
                if other is None:
                    other = model.get_parameter(prints[fp])
                if torch.equal(pf, other.detach().float()):
                    ps.identical_to = prints[fp]
            prints.setdefault(fp, qname)
        if pname == "weight" and t.dim() >= 2 and _kind(mod) == "linear":
            try:
                fan_in = module_fans(mod).fan_in
            except (ValueError, TypeError):
                fan_in = 0
            if fan_in:
                ps.gain = float(torch.sqrt((pf * pf).mean() * fan_in))
            rec = linear_by_module.get(label)
            if rec is not None and rec.next_act:
                ps.expected_gain = _expected_gain(rec.next_act, rec.next_act_param)
        return ps

    for mname, mod in model.named_modules():
        label = mname or type(mod).__name__  # the name the recorder gives the module
        if is_parametrized(mod):
            # weight_norm / spectral_norm: the layer computes with module.<tensor>, built
            # from parametrizations.<tensor>.original*; its stats (gain included) are
            # those of that effective tensor, named like the plain parameter
            for tname, plist in mod.parametrizations.items():
                qname = f"{mname}.{tname}" if mname else tname
                originals[id(plist)] = qname
                with torch.no_grad():
                    eff = getattr(mod, tname)
                if isinstance(eff, Tensor):
                    computed[qname] = eff
                    ps = tensor_stats(qname, label, tname, mod, eff)
                    if ps is not None:
                        out.append(ps)
        for pname, p in mod.named_parameters(recurse=False):
            qname = f"{mname}.{pname}" if mname else pname
            if id(p) in seen:
                continue
            seen[id(p)] = qname
            ps = tensor_stats(qname, label, pname, mod, p)
            if ps is not None:
                out.append(ps)
    return out


# ----------------------------------------------------------------------------------
# verdicts
# ----------------------------------------------------------------------------------


def _start_of_run(stds: list[float], idx: int, shrinking: bool) -> int:
    """Walk back from ``idx`` while each step moved the same way by more than 5%;
    returns the index of the last value before the run (its first step is ``j + 1``)."""
    j = idx
    while j > 0 and ((stds[j] < 0.95 * stds[j - 1]) if shrinking else (stds[j] > 1.05 * stds[j - 1])):
        j -= 1
    return j


def _grad_extreme(layers: list[LayerStats]) -> tuple[float, float, list[LayerStats]] | None:
    """Among groups of >= 3 layers whose outputs have the same per-sample shape, the one
    whose first/last gradient std ratio ``q`` is the most extreme: ``(|log q|, q, group)``."""
    groups: dict[tuple, list[LayerStats]] = {}
    for r in layers:
        if r.grad_std is not None and r.grad_std > 0:
            groups.setdefault(tuple(r.shape[1:]), []).append(r)
    best = None
    for grp in groups.values():
        if len(grp) >= 3:
            q = grp[0].grad_std / grp[-1].grad_std
            if best is None or abs(math.log(q)) > best[0]:
                best = (abs(math.log(q)), q, grp)
    return best


_FIX_VANISH = ("initialize for the nonlinearity that follows each layer: torchinit.init_model(model, 'kaiming') "
               "for ReLU nets (nn.init.kaiming_normal_(w, nonlinearity='relu')), or torchinit.lsuv_(model, batch)")


def _verdicts(report_layers: list[LayerStats], params: list[ParamStats], input_std: float | None,
              input_cos: float | None, th: Thresholds) -> list[Verdict]:
    out: list[Verdict] = []
    bad = [r for r in report_layers if not r.finite]
    if bad:
        out.append(Verdict("nonfinite", "error", bad[0].name,
                           f"{len(bad)} layer output(s) contain NaN or inf, first at {bad[0].name}.",
                           "check the init scale of this layer and the ones before it (and the input data).",
                           None, None))
    sig = [r for r in report_layers if r.kind == "linear" and r.finite]
    # the signal's path: residual branches end in a layer whose output is small by design
    # (GPT-2's 0.02/sqrt(2 n_layer) projections, zero-initialized branches) and is added to
    # the stream, so those layers do not count as the signal vanishing
    path = [r for r in sig if not r.residual]
    if len(path) < 2:  # every layer ends a branch (none reads the stream itself): judge them all
        path = sig
    if len(path) >= 2 and path[0].std > 0:
        s1 = path[0].std
        stds = [input_std if input_std else s1] + [r.std for r in path]
        ratios = [r.std / s1 for r in path]
        lo = min(range(len(path)), key=lambda i: ratios[i])
        hi = max(range(len(path)), key=lambda i: ratios[i])
        first_lo = next((i for i, q in enumerate(ratios) if q < th.vanish), None)
        first_hi = next((i for i, q in enumerate(ratios) if q > th.explode), None)
        if first_lo is not None:
            start = min(_start_of_run(stds, first_lo + 1, True), len(path) - 1)
            per = (ratios[lo]) ** (1.0 / max(lo, 1))
            out.append(Verdict(
                "vanishing", "error" if ratios[lo] < th.vanish ** 3 else "warning", path[start].name,
                f"activation std shrinks from {s1:.3g} at {path[0].name} to {path[lo].std:.3g} at {path[lo].name} "
                f"(x{ratios[lo]:.2g}, std x{per:.2f} per layer); it falls below {th.vanish:g}x at "
                f"{path[first_lo].name}.",
                _FIX_VANISH, ratios[lo], th.vanish))
        if first_hi is not None:
            start = min(_start_of_run(stds, first_hi + 1, False), len(path) - 1)
            per = (ratios[hi]) ** (1.0 / max(hi, 1))
            out.append(Verdict(
                "exploding", "error" if ratios[hi] > th.explode ** 3 else "warning", path[start].name,
                f"activation std grows from {s1:.3g} at {path[0].name} to {path[hi].std:.3g} at {path[hi].name} "
                f"(x{ratios[hi]:.3g}, std x{per:.2f} per layer); it exceeds {th.explode:g}x at {path[first_hi].name}.",
                "scale weights by gain/sqrt(fan_in) for the nonlinearity that follows (torchinit.init_model(model, "
                "'kaiming') or 'xavier' for tanh), or torchinit.lsuv_(model, batch)", ratios[hi], th.explode))
    if len(sig) >= 2 and sig[0].std > 0:
        # gradients: compared between layers whose outputs have the same per-sample shape
        # (per-element gradients of differently sized outputs, e.g. before and after a
        # global pooling, are not comparable); in a residual network only between layers that
        # end a branch: the gradient at their output is the stream's, while inside a branch it
        # depends on the layer's role (queries and keys get small gradients at init, through a
        # near-uniform softmax)
        ends = [r for r in sig if r.residual]
        best = _grad_extreme(ends) if len(ends) >= 3 else None
        if best is None:  # no residual branches, or too few of one shape (a ResNet's stages)
            best = _grad_extreme(sig)
        if best is not None:
            _, q, grp = best
            g = [(r.name, r.grad_std) for r in grp]
            gs = [v for _, v in g]
            if q < th.grad_vanish:
                top = 0  # walk up from the bottom while the gradient keeps growing upwards
                while top < len(gs) - 1 and gs[top] < 0.95 * gs[top + 1]:
                    top += 1
                out.append(Verdict(
                    "vanishing_gradients", "error" if q < th.grad_vanish ** 2 else "warning", g[top][0],
                    f"the gradient std at {g[0][0]} is x{q:.2g} that at {g[-1][0]} ({g[0][1]:.3g} vs {g[-1][1]:.3g}): "
                    f"lower layers barely learn with plain SGD.", _FIX_VANISH, q, th.grad_vanish))
            elif q > th.grad_explode:
                top = 0
                while top < len(gs) - 1 and gs[top] > 1.05 * gs[top + 1]:
                    top += 1
                out.append(Verdict(
                    "exploding_gradients", "error" if q > th.grad_explode ** 2 else "warning", g[top][0],
                    f"the gradient std at {g[0][0]} is x{q:.3g} that at {g[-1][0]} ({g[0][1]:.3g} vs {g[-1][1]:.3g}).",
                    "use mode='fan_out' or smaller gains, or normalization layers", q, th.grad_explode))
        # collapse
        # the output layer is excluded: the logits of a random head on pooled (positive)
        # features are naturally similar across samples
        # (on the signal's path: a small branch output is dominated by its bias by design)
        cs = [(r.name, r.cosine) for r in path[:-1] if r.cosine is not None]
        if cs and (input_cos is None or input_cos < th.collapse_input):
            worst = max(cs, key=lambda t: t[1])
            if worst[1] > th.collapse:
                start = next(n for n, c in cs if c > th.collapse_start)
                out.append(Verdict(
                    "collapse", "warning", start,
                    f"samples become nearly parallel: mean pairwise cosine similarity {worst[1]:.3f} at {worst[0]} "
                    f"(input {_fmt(input_cos, '.2f')}); the network maps different inputs to almost the same "
                    f"representation even where the std looks fine.",
                    "reduce constant offsets (zero the biases), use fewer or residual layers with normalization, "
                    "or orthogonal init (torchinit.init_model(model, 'orthogonal'))", worst[1], th.collapse))
    # dead units
    acts = [r for r in report_layers if r.dead is not None]
    deadly = [r for r in acts if r.dead > th.dead]
    if deadly:
        worst = max(deadly, key=lambda r: r.dead)
        out.append(Verdict(
            "dead_units", "error" if worst.dead >= th.dead_error else "warning", deadly[0].name,
            f"{len(deadly)} ReLU layer(s) have more than {th.dead:.0%} of their units at 0 for the whole batch "
            f"(worst {worst.dead:.0%} at {worst.name}): those units get no gradient.",
            "check negative biases and the weight scale of the layer before (kaiming, zero bias), "
            "or use LeakyReLU/GELU", worst.dead, th.dead))
    sats = [r for r in report_layers if r.saturated is not None and r.saturated > th.saturated]
    if sats:
        worst = max(sats, key=lambda r: r.saturated)
        out.append(Verdict(
            "saturation", "warning", sats[0].name,
            f"{len(sats)} {sats[0].nonlinearity} layer(s) have more than {th.saturated:.0%} of outputs saturated "
            f"(worst {worst.saturated:.0%} at {worst.name}): gradients through them nearly vanish.",
            "use xavier (Glorot & Bengio's normalized init, torchinit.init_model(model, 'xavier')) or a smaller "
            "gain for the layers feeding this activation", worst.saturated, th.saturated))
    # parameters
    lin_order = [r.name for r in report_layers if r.kind == "linear" and "#" not in r.name]
    head = lin_order[-1] if lin_order else None
    for p in params:
        if len(p.shape) < 2 or p.original_of is not None:
            continue
        if p.constant:
            promised = p.promised_std is not None and p.promised_std == 0
            is_head = p.module == head
            what = "all zero" if p.zero else f"constant ({p.mean:.3g})"
            if promised or is_head:
                out.append(Verdict(
                    "symmetry", "info", p.name,
                    f"{p.name} is {what}" + (" as its plan promised" if promised else " (the output layer)") +
                    ": fine for a last layer (Fixup / zero-init heads), since its inputs differ.",
                    "nothing to do if intended", 0.0, None))
            else:
                out.append(Verdict(
                    "symmetry", "error", p.name,
                    f"{p.name} is {what}: every unit of {p.module} computes the same function and receives the "
                    f"same gradient, so they never become different.",
                    f"initialize {p.name} randomly (kaiming/xavier); keep zeros for biases only", 0.0, None))
        elif p.duplicate_rows:
            out.append(Verdict(
                "symmetry", "warning", p.name,
                f"{p.name} has {p.duplicate_rows} duplicate row(s): those units compute identical outputs.",
                f"re-initialize {p.name} with a random initializer (each row drawn independently)",
                float(p.duplicate_rows), None))
        if p.identical_to:
            out.append(Verdict(
                "symmetry", "warning", p.name,
                f"{p.name} is identical to {p.identical_to} (e.g. layers deep-copied by nn.TransformerEncoder, "
                f"pytorch issue 86274).",
                "re-initialize each copy with its own random draw (torchinit.init_model(model, ...))", None, None))
    wrong = [p for p in params if p.gain is not None and p.expected_gain]
    rec_by_mod = {r.name: r for r in report_layers if r.kind == "linear"}
    checked = []
    for p in wrong:
        rec = rec_by_mod.get(p.module)
        if rec is None or rec.prev_act is None or rec.next_act is None or rec.prev_act != rec.next_act:
            continue
        checked.append((p, rec, (p.gain / p.expected_gain) ** 2))
    flagged = []
    if checked:
        # judge the typical layer (median), so that data-dependent inits (LSUV), whose
        # per-layer gains scatter around the right value, are not flagged
        med = sorted(f for _, _, f in checked)[len(checked) // 2]
        if med < th.gain_factor:
            flagged = [c for c in checked if c[2] < th.gain_factor]
        elif med > 1 / th.gain_factor:
            flagged = [c for c in checked if c[2] > 1 / th.gain_factor]
    if flagged:
        p, rec, factor = flagged[0]
        act = _PRETTY.get(rec.next_act, rec.next_act)
        gains = sorted({round(q.gain, 2) for q, _, _ in flagged})
        gtxt = f"{p.gain:.2f}" if len(gains) == 1 else f"{gains[0]:.2f}..{gains[-1]:.2f}"
        if rec.next_act in ("relu", "leaky_relu"):
            fix = f"use kaiming or nonlinearity='{rec.next_act}' (gain {p.expected_gain:.3g}): torchinit.init_model(model, 'kaiming')"
        else:
            fix = (f"use gain {p.expected_gain:.3g} for {act} (torchinit.second_moment_gain('{rec.next_act}')), "
                   f"e.g. torchinit.init_model(model, 'kaiming') or torchinit.lsuv_(model, batch)")
        total = math.prod(f for _, _, f in flagged)
        # one mis-scaled layer costs a constant factor; the damage compounds with depth
        severity = "warning" if len(flagged) >= 3 or not (0.1 <= total <= 10) else "info"
        out.append(Verdict(
            "wrong_nonlinearity", severity, p.module,
            f"{len(flagged)} {rec.type} layer(s) followed by {act} initialized with gain {gtxt} "
            f"(sqrt(mean(w^2) * fan_in)); {act} needs {p.expected_gain:.3g}: each such layer multiplies the "
            f"signal variance by about {factor:.2f}.", fix, factor, th.gain_factor))
    for p in params:
        if p.promised_std is None or p.constant:
            continue
        n = math.prod(p.shape)
        tol = th.std_floor + th.std_sigmas / math.sqrt(2 * n)
        ref = p.promised_std
        if ref == 0 or abs(p.std - ref) / ref > tol:
            out.append(Verdict(
                "mismatch", "warning", p.name,
                f"{p.name} has std {p.std:.4g} but its plan promised {ref:.4g} (tolerance {tol:.1%}): it was "
                f"changed after the plan was applied, or the plan was not applied.",
                "re-apply the plan (torchinit.apply_plan(model, plan, seed=...)) or re-plan after the change",
                p.std / ref if ref else None, tol))
    order = {"error": 0, "warning": 1, "info": 2}
    out.sort(key=lambda v: order.get(v.severity, 3))
    return out


# ----------------------------------------------------------------------------------
# diagnose
# ----------------------------------------------------------------------------------


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _loss(out: Tensor, target: Any, loss_fn: Callable | None) -> tuple[Tensor | None, str]:
    if loss_fn is not None:
        return (loss_fn(out) if target is None else loss_fn(out, target)), "loss_fn"
    if target is not None:
        if not isinstance(target, Tensor):
            raise TypeError(f"diagnose: target must be a Tensor, got {type(target).__name__}")
        if not target.is_floating_point():
            return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), target.reshape(-1)), "cross_entropy"
        return F.mse_loss(out.float(), target.float()), "mse"
    return None, "synthetic"


def diagnose(
    model: nn.Module,
    inputs: Any,
    *,
    target: Tensor | None = None,
    loss_fn: Callable[..., Tensor] | None = None,
    plan: Any = None,
    backward: bool = True,
    thresholds: Thresholds | None = None,
    max_cosine_samples: int = 64,
    label: str | None = None,
) -> Report:
    """Measure how the signal propagates through ``model`` on ``inputs`` and judge it.

    Args:
        model: any ``nn.Module``; left unchanged (buffers updated by the forward
            pass are restored, ``.grad`` is not touched).
        inputs: a Tensor (``model(inputs)``), a tuple/list (``model(*inputs)``) or a
            dict (``model(**inputs)``). Dim 0 of every layer output is the batch.
        target, loss_fn: the backward pass uses ``loss_fn(output, target)`` (or
            ``loss_fn(output)``), else cross-entropy for integer / MSE for float
            ``target``, else a synthetic loss ``sum(output * r)`` with ``r ~ N(0, 1)``
            (seeded), i.e. a unit-variance gradient at the output.
        plan: a :class:`torchinit.Plan` (or a list of its entries): each entry's
            ``.spec.std`` is the std the parameter was promised.
        backward: run the backward pass (gradient statistics). False keeps memory
            at one layer's activations. Gradients w.r.t. layer outputs are measured
            for frozen layers too (``requires_grad=False`` parameters, integer inputs):
            the first such output is replaced by an equal copy that requires grad, so
            no parameter's ``requires_grad`` or ``.grad`` changes. When no gradient
            could be measured, ``meta['grad_note']`` says why (printed with the report).
        thresholds: verdict thresholds (:class:`Thresholds`).
        max_cosine_samples: samples used for the pairwise cosine similarity
            (cost ``O(k^2 d)`` per layer).
        label: the report's name (default: the model's class name).

    Returns:
        a :class:`Report`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"diagnose: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(max_cosine_samples, bool) or not isinstance(max_cosine_samples, int) or max_cosine_samples < 2:
        raise ValueError(f"diagnose: max_cosine_samples must be an integer >= 2, got {max_cosine_samples!r}")
    th = thresholds or Thresholds()
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("diagnose: the model has parameters on the meta device; materialize it first "
                         "(torchinit.materialize(model, ...))")
    x0 = _first_tensor(inputs)
    input_std = input_cos = None
    if x0 is not None and x0.is_floating_point() and x0.numel():
        xf = x0.detach().float()
        input_std = float(xf.std(correction=0))
        if xf.shape[0] >= 2:
            s = xf[:max_cosine_samples].reshape(min(max_cosine_samples, xf.shape[0]), -1)
            nrm = s.norm(dim=1)
            ok = nrm > 0
            if int(ok.sum()) >= 2:
                u = s[ok] / nrm[ok, None]
                gm = u @ u.T
                m = gm.shape[0]
                input_cos = float((gm.sum() - gm.diagonal().sum()) / (m * (m - 1)))
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    params = [p for p in model.parameters() if p.requires_grad]
    # frozen layers need no parameter gradient: the recorder starts the graph at the first
    # output that does not require grad (_Recorder._grad_entry)
    rec = _Recorder(model, max_cosine_samples, backward)
    loss_kind = None
    grad_note = None if backward else "backward=False: gradient statistics were not measured"
    try:
        rec.attach()  # inside try: hooks attached before a failure are removed in finally
        with torch.set_grad_enabled(backward), _FunctionalActivations(rec):
            out = _call(model, inputs)
        y = _first_tensor(out)
        wrt = params + rec.leaves + ([x0] if x0 is not None and x0.requires_grad else [])
        if backward and y is not None and y.requires_grad and wrt:
            loss, loss_kind = _loss(y, target, loss_fn)
            if loss is None:
                g = torch.Generator().manual_seed(0)
                cot = torch.randn(y.shape, generator=g, dtype=torch.float32).to(device=y.device, dtype=y.dtype)
                roots, grads = [y], [cot]
            else:
                roots, grads = [loss], [None]
            # autograd.grad, not .backward(): nothing is accumulated into any .grad
            try:
                torch.autograd.grad(roots, wrt, grad_outputs=grads, allow_unused=True)
            except RuntimeError as e:
                if not rec.leaves:
                    raise
                # the graph through frozen layers is ours: a model written for them to run
                # without one (in-place ops on saved tensors) must still be diagnosed
                for r in rec.records:
                    r.grad_std = None
                why = str(e).split(" Hint:")[0]
                grad_note = ("gradient statistics were not measured: the backward pass through frozen layers "
                             f"failed ({why})")
        elif backward:
            floating = y is not None and (y.is_floating_point() or y.is_complex())
            grad_note = "gradient statistics were not measured: the model output " + (
                "does not depend differentiably on any recorded layer (computed under torch.no_grad() or detached)"
                if floating else "is not a floating-point tensor")
        del out
    finally:
        rec.detach()
        rec.leaves.clear()
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n])
    pstats = _param_stats(model, plan, rec.records, rec.modules)
    if grad_note is None and backward and not any(r.grad_std is not None for r in rec.records) and rec.records:
        grad_note = "gradient statistics were not measured: no recorded layer output reaches the model output"
    verdicts = _verdicts(rec.records, pstats, input_std, input_cos, th)
    meta = {
        "label": label or type(model).__name__,
        "model": type(model).__name__,
        "input_shape": list(x0.shape) if x0 is not None else None,
        "input_std": input_std,
        "input_cosine": input_cos,
        "loss": loss_kind,
        "grad_note": grad_note,
        "thresholds": asdict(th),
    }
    return Report(layers=rec.records, params=pstats, verdicts=verdicts, meta=meta)


# ----------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------


def _png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def comparison_html(reports: Mapping[str, Report], images: Mapping[str, Path], title: str) -> str:
    """A self-contained HTML page: images embedded as base64 PNGs, verdicts and layer tables."""
    css = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0;"
           "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
           "td:nth-child(2),td:nth-child(3){text-align:left}.error{color:#b00}.warning{color:#a60}"
           ".info{color:#06a}.ok{color:#080}img{max-width:100%}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>"]
    for caption, path in images.items():
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{_png_b64(path)}'/>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    for name, rep in reports.items():
        parts.append(f"<h2>{html.escape(name)}</h2><h3>verdicts</h3>")
        if rep.verdicts:
            parts.append("<ul>" + "".join(
                f"<li class='{html.escape(v.severity)}'><b>{html.escape(v.severity)}</b> {html.escape(v.kind)} "
                f"at <code>{html.escape(v.layer)}</code>: {html.escape(v.message)} <i>Fix:</i> {html.escape(v.fix)}</li>"
                for v in rep.verdicts) + "</ul>")
        else:
            parts.append("<p class='ok'>no problem found</p>")
        if rep.meta.get("grad_note"):
            parts.append(f"<p><i>note:</i> {html.escape(str(rep.meta['grad_note']))}</p>")
        parts.append("<h3>layers</h3>")
        parts.append(_html_table(
            ["#", "layer", "type", "mean", "std", "max|x|", "dead", "sat", "cos", "grad std"],
            ([i, r.name, r.type, _fmt(r.mean), _fmt(r.std), _fmt(r.max_abs), _pct(r.dead), _pct(r.saturated),
              _fmt(r.cosine, ".2f"), _fmt(r.grad_std)] for i, r in enumerate(rep.layers))))
    parts.append("</body></html>")
    return "".join(parts)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "model"


def _file_stems(names: Sequence[str]) -> dict[str, str]:
    """``{name: slug}``, unique even on case-insensitive file systems: names whose slugs
    collide ("a.b" and "a b", "ReLU" and "relu") get an 8-hex-digit hash of the exact name
    appended, so each name maps to the same file whatever the other names' order."""
    import hashlib

    slugs = {n: _slug(n) for n in names}
    count: dict[str, int] = {}
    for sl in slugs.values():
        count[sl.casefold()] = count.get(sl.casefold(), 0) + 1
    stems = {n: sl if count[sl.casefold()] == 1 else f"{sl}_{hashlib.sha1(n.encode()).hexdigest()[:8]}"
             for n, sl in slugs.items()}
    if len({st.casefold() for st in stems.values()}) < len(stems):  # a name that looks like a hashed one
        raise ValueError(f"save_comparison: report names {list(names)!r} map to clashing file names "
                         f"{list(stems.values())!r}; rename the reports")
    return stems


def save_comparison(reports: Mapping[str, Report], directory: str | Path, *, title: str = "torchinit report",
                    theory: Mapping[str, float] | None = None) -> Path:
    """Write the signal-propagation plot of all ``reports`` on one figure
    (``signal.png``), their histograms side by side (``histograms.png``),
    ``report[_NAME].json`` and a self-contained ``report.html``; returns the HTML path.

    ``NAME`` is the report's name with characters other than letters, digits, ``-`` and
    ``_`` replaced by ``_``; names that would then share a file (``"a.b"`` and ``"a b"``,
    or differ only in case) get ``_`` and 8 hex digits of a hash of the exact name
    appended, so no report overwrites another."""
    from .plots import activation_histograms, signal_propagation

    if not reports:
        raise ValueError("save_comparison: reports is empty")
    stems = _file_stems(list(reports))  # before writing anything
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    sig = d / "signal.png"
    signal_propagation(dict(reports), sig, theory=theory, title=title)
    images["signal propagation: std and mean^2 of each weight layer's output by depth"] = sig
    single = len(reports) == 1
    hp = d / "histograms.png"
    activation_histograms(dict(reports), hp, title="histograms by depth" if not single else None)
    images["histograms of layer outputs by depth (Glorot & Bengio style)"] = hp
    for name, rep in reports.items():
        suffix = "" if single else f"_{stems[name]}"
        (d / f"report{suffix}.json").write_text(rep.to_json())
    out = d / "report.html"
    out.write_text(comparison_html(reports, images, title), encoding="utf-8")
    return out
