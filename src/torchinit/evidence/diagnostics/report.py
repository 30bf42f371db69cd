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
  ``[0.0257, 0.9743]``); for a recurrent layer (RNN/GRU/LSTM and their cells,
  kind ``"recurrent"``), of its gates and tanh units (see ``recurrent.py``), which
  also measures ``time_grad_ratio``, the gradient through time;
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

import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .fmt import _fmt, _pct

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from rich.console import Console
    from rich.table import Table


__all__ = ["Report", "LayerStats", "ParamStats", "Verdict", "Thresholds"]


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

    A layer fed by a normalization layer (``ln -> proj``, as in every block of a transformer)
    restarts the comparison: its ``s_k`` is taken over the normalized input's root mean
    square (its own gain on that input), and the layers after it, up to the next such
    layer, are compared with that input too; a pre-norm transformer's layers are thus
    each judged on their gain, never against a layer of another block. On a normalized
    input, *vanishing* needs ``vanish**2`` (0.01x: GPT-2's std 0.02 gives a gain of 0.08 at
    width 16, a recipe, not a collapse), and the model's output layer alone after a norm
    is not judged (small logits at init are by design: a tied 0.02 head, a zeroed classifier).

    * ``vanish=0.1``: *vanishing* when some ``s_k / s_1 < vanish``. The verdict
      starts at the first layer of the run of shrinking layers (``s_j < s_{j-1}``)
      that leads there; an ``error`` when the ratio is below ``vanish**3``.
    * ``explode=10``: *exploding* when some ``s_k / s_1 > explode`` (same start rule).
    * ``grad_vanish=0.01`` / ``grad_explode=100``: gradient std at the output of the
      first weight layer over that of the last weight layer whose output has the same
      per-sample shape (groups of >= 3 layers; the most extreme group is judged). In a
      residual network (>= 3 layers ending a branch) only those layers count: the
      gradient at their output is the residual stream's.
    * the same ``grad_vanish`` / ``grad_explode`` judge a recurrent layer through time
      (*vanishing_through_time* / *exploding_through_time*): for a loss on its last step's
      output, the gradient norm at its first step's input over that at its last step's
      (``LayerStats.time_grad_ratio``); for a cell called once per step, the gradient std
      at its first call's output over that at its last call's.
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
    #: weight layers whose input is a normalization layer's output (a transformer's
    #: ``ln_1 -> c_attn``): the signal's scale starts afresh there
    after_norm: bool = False
    #: weight layers: the output (through dropout) is added to a tensor that is not a weight
    #: layer's output and is at least as large (``x + proj(h)``), or of any size when the layer
    #: is named like a residual projection (``*.c_proj``, ``*.o_proj``, ``*.down_proj``, ...):
    #: the end of a residual branch
    residual: bool = False
    #: weight layers whose output is added to a tensor that is not a weight layer's output:
    #: that tensor's std at the (first) sum, the residual stream's for a branch end
    stream_std: float | None = None
    #: recurrent sequence layers: ``||dL/dx_1|| / ||dL/dx_T||`` for a loss on the last step's
    #: output, over ``time_steps`` steps (how far back in time the gradient reaches)
    time_grad_ratio: float | None = None
    time_steps: int | None = None
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
    finite: bool = True  #: False when the tensor holds a NaN or inf


@dataclass
class Verdict:
    """One finding: ``kind`` (vanishing, exploding, vanishing_gradients,
    exploding_gradients, collapse, dead_units, saturation, vanishing_through_time,
    exploding_through_time, symmetry, wrong_nonlinearity, mismatch, nonfinite), ``severity`` (error/warning/info), the
    ``layer`` where it starts, a ``message``, a concrete ``fix``, the measured
    ``value`` and the ``threshold`` it crossed.

    Findings of one kind and severity on several tensors (nine all-zero weights, the
    deep-copied layers of ``nn.TransformerEncoder``) are one verdict: ``layers`` names
    every layer or tensor it covers (``layer`` is the first) and ``details`` keeps each
    one's own finding (``{"layer", "message", "value"}``)."""

    kind: str
    severity: str
    layer: str
    message: str
    fix: str
    value: float | None = None
    threshold: float | None = None
    layers: list[str] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"[{self.severity}] {self.kind} at {self.layer}: {self.message} Fix: {self.fix}"


@dataclass
class Report:
    """Result of :func:`diagnose`: ``layers`` (:class:`LayerStats`, forward order),
    ``params`` (:class:`ParamStats`), ``verdicts`` (:class:`Verdict`) and ``meta``.

    ``print()`` shows rich tables, ``to_dict()``/``to_json()`` serialize
    (``from_dict``/``from_json`` invert them), ``plot_signal()`` /
    ``plot_histograms()`` draw matplotlib figures, ``save(dir)`` writes PNGs,
    ``report.json`` and a self-contained ``report.html``, and ``log(writer, step=...)``
    writes to TensorBoard or W&B.
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

    def print(self, console: Console | None = None, *, kinds: Iterable[str] | None = ("linear", "activation", "norm", "embedding", "attention", "recurrent"),
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
        from ..plots import signal_propagation

        return signal_propagation({self.label: self}, path, **kw)

    def plot_histograms(self, path: str | Path | None = None, **kw: Any) -> Figure:
        """Glorot-style activation histograms (see :func:`torchinit.plots.activation_histograms`)."""
        from ..plots import activation_histograms

        return activation_histograms(self, path, **kw)

    def to_html(self, path: str | Path | None = None, *, title: str | None = None,
                run: Mapping[str, Any] | None = None) -> str:
        """The self-contained HTML page of this report (summary, run, plots, layers; see
        :mod:`.html`); also written to ``path`` when given. ``run`` adds rows to its run
        table (seed, policy, command, ...)."""
        from .html import comparison_html  # html renders reports: imported when used

        page = comparison_html({self.label: self}, title or f"torchinit report: {self.label}", run=run)
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def _repr_html_(self) -> str:
        """Notebook display: the verdicts, the std table and the forward/backward plots."""
        from .html import notebook_html

        return notebook_html({self.label: self})

    def __repr__(self) -> str:
        kinds = list(dict.fromkeys(v.kind for v in self.verdicts))
        found = f"{len(self.verdicts)} verdict{'s' if len(self.verdicts) != 1 else ''}" + (
            f" ({', '.join(kinds)})" if kinds else "")
        return (f"<Report {self.label!r}: {len(self.layers)} layers, {len(self.params)} parameters, {found}; "
                f".print(), .to_html(), .save(dir)>")
    def log(self, writer: Any, *, step: int | None = None, model: Any = None,
            prefix: str = "torchinit") -> list[str]:
        """Write this report to a TensorBoard ``SummaryWriter`` or a W&B run: per-layer
        activation and gradient std scalars, activation histograms (and weight histograms of
        ``model``'s parameters when given), verdict counts and the verdicts, and the
        signal-propagation and histogram figures as images; returns the tags written. See
        :mod:`torchinit.evidence.writers`. ``TypeError`` (before anything is written) for any
        other writer."""
        from ..writers import log_report  # the writers are used only here: imported when used

        return log_report(self, writer, step=step, model=model, prefix=prefix)

    def save(self, directory: str | Path) -> Path:
        """Write ``signal.png``, ``histograms.png``, ``report.json`` and a self-contained
        ``report.html`` (PNGs embedded as base64) into ``directory``; returns the HTML path."""
        from .html import save_comparison  # html renders reports: imported when used

        return save_comparison({self.label: self}, directory, title=f"torchinit report: {self.label}")
