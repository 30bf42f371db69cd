"""Coordinate check (Yang et al., Tensor Programs V, section 4 and appendix D.1): train a
model for a few steps at several widths and watch each layer's activation size.

Under a parametrization with a width limit (muP) the size of every layer's output
(its root mean square, "coordinate size") stays put as width grows, at every step;
under standard parametrization with Adam it grows with width from the first update on.
:func:`coord_check` measures it and fits, per layer and step, the exponent ``g`` of
``rms ~ width**g`` (least squares on log-log); ``.growth`` is each layer's largest
exponent over the steps, ``.stable`` says whether every one is within ``tol`` of 0.

Besides the leaf layers' outputs it records the attention logits (the pre-softmax scores
``q @ k^T * scale``, ``attention_logits.LogitRecorder``) as ``"<attention module>:logits"``
in the group ``"attention logits"``: the only place a missing muP ``1/head_dim`` scale
shows (they grow like ``sqrt(head_dim)`` once trained).
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.apply import init_model
from ..model.mup import MuP
from .attention_logits import GROUP, LogitRecorder

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["coord_check", "CoordCheck"]

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def _slope(widths: Sequence[int], values: Sequence[float]) -> float:
    """Least-squares slope of log(values) against log(widths); nan if a value is 0
    (nothing to compare: a zero readout at step 0), +inf if one is not finite."""
    if any(not math.isfinite(v) for v in values):
        return math.inf
    if any(v <= 0 for v in values):
        return math.nan
    xs = [math.log(w) for w in widths]
    ys = [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


@dataclass
class CoordCheck:
    """Result of :func:`coord_check`.

    ``rms[layer][step][i]``: RMS of ``layer``'s output at ``step`` (the forward pass
    after ``step`` updates) for ``widths[i]``; ``groups[layer]``: the layer's muP role
    (input, hidden, output, vector, fixed) used for the plot's panels, or
    ``"attention logits"`` for an attention module's pre-softmax scores
    (``"<module>:logits"``); ``losses[i][step]``.
    """

    parametrization: str
    widths: list[int]
    steps: int
    rms: dict[str, list[list[float]]]
    groups: dict[str, str]
    losses: list[list[float]]
    tol: float = 0.25
    notes: list[str] = field(default_factory=list)

    @property
    def exponents(self) -> dict[str, list[float]]:
        """Per layer, per step: the exponent of RMS against width (nan: undefined)."""
        return {n: [_slope(self.widths, s) for s in steps] for n, steps in self.rms.items()}

    @property
    def growth(self) -> dict[str, float]:
        """Per layer: the exponent of largest magnitude over the steps (nan if none is defined)."""
        out = {}
        for n, ex in self.exponents.items():
            defined = [e for e in ex if not math.isnan(e)]
            out[n] = max(defined, key=abs) if defined else math.nan
        return out

    @property
    def stable(self) -> bool:
        """Every layer's growth within ``tol`` of 0 (an undefined one, all-zero output, counts as stable)."""
        return all(math.isnan(g) or abs(g) <= self.tol for g in self.growth.values())

    @property
    def unstable_layers(self) -> list[str]:
        """Layers whose growth exceeds ``tol`` in magnitude."""
        return [n for n, g in self.growth.items() if not math.isnan(g) and abs(g) > self.tol]

    # -- display -----------------------------------------------------------------------
    def _rows(self) -> list[list[str]]:
        rows = []
        for n, ex in self.exponents.items():
            g = self.growth[n]
            ok = "?" if math.isnan(g) else ("ok" if abs(g) <= self.tol else "GROWS" if g > 0 else "SHRINKS")
            rows.append([n, self.groups.get(n, ""), *(f"{e:+.2f}" if not math.isnan(e) else "-" for e in ex),
                         f"{g:+.2f}" if not math.isnan(g) else "-", ok])
        return rows

    def _headers(self) -> list[str]:
        return ["layer", "role", *(f"step {s}" for s in range(self.steps)), "growth", "verdict"]

    def _title(self) -> str:
        verdict = "stable" if self.stable else f"NOT stable ({len(self.unstable_layers)} layers grow)"
        return (f"coordinate check, {self.parametrization}: exponent of activation RMS vs width "
                f"(widths {', '.join(map(str, self.widths))}; |exponent| <= {self.tol:g} is stable): {verdict}")

    def __rich__(self):
        from rich.table import Table

        t = Table(title=self._title(), header_style="bold")
        for i, h in enumerate(self._headers()):
            t.add_column(h, justify="left" if i < 2 else "right")
        for r in self._rows():
            t.add_row(*r)
        return t

    def render(self, width: int = 160) -> str:
        """The table as plain text."""
        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=width, color_system=None, force_terminal=False).print(self)
        return buf.getvalue()

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return (f"CoordCheck(parametrization={self.parametrization!r}, widths={self.widths}, steps={self.steps}, "
                f"stable={self.stable})")

    def plot(self, path: Any = None, title: str | None = None) -> "Figure":
        """Activation RMS against width (log-log), one line per step, a panel per layer
        group (the geometric mean over the group's layers); saved as PNG to ``path`` if given."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        order = [g for g in ("input", "hidden", GROUP, "vector", "output", "fixed", "layers")
                 if g in self.groups.values()]
        fig = Figure(figsize=(3.2 * max(len(order), 1), 3.0), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, max(len(order), 1), squeeze=False)[0]
        cmap = __import__("matplotlib").colormaps["viridis"]
        for ax, grp in zip(axes, order):
            layers = [n for n, g in self.groups.items() if g == grp]
            for s in range(self.steps):
                ys = []
                for i in range(len(self.widths)):
                    vals = [self.rms[n][s][i] for n in layers]
                    ok = [v for v in vals if v > 0 and math.isfinite(v)]
                    ys.append(math.exp(sum(map(math.log, ok)) / len(ok)) if ok else math.nan)
                ax.plot(self.widths, ys, marker="o", ms=3, color=cmap(s / max(self.steps - 1, 1)), label=f"step {s}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            worst = max((self.growth[n] for n in layers if not math.isnan(self.growth[n])), key=abs, default=math.nan)
            ax.set_title(f"{grp} ({len(layers)} layers), growth {worst:+.2f}", fontsize=9)
            ax.set_xlabel("width", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0].set_ylabel("activation RMS", fontsize=8)
        axes[-1].legend(fontsize=7)
        fig.suptitle(title or f"coordinate check: {self.parametrization}", fontsize=10)
        if path is not None:
            from pathlib import Path

            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(p, format="png", dpi=80)
        return fig

    def to_html(self) -> str:
        """An HTML ``<section>`` (plot as an embedded PNG, then the table) for a report page."""
        buf = io.BytesIO()
        self.plot().savefig(buf, format="png", dpi=80)
        img = base64.b64encode(buf.getvalue()).decode("ascii")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self._headers())
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self._rows())
        return (f"<section class='coord-check'><h2>{html.escape(self._title())}</h2>"
                f"<img alt='coordinate check' src='data:image/png;base64,{img}'/>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>")


def _first_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, Tensor)), None)
    return getattr(out, "last_hidden_state", None) if not isinstance(out, dict) else None


def _loss(out: Any, target: Tensor) -> Tensor:
    if not isinstance(out, Tensor):  # a tuple, or a Hugging Face output with .logits
        logits = getattr(out, "logits", None)
        out = logits if isinstance(logits, Tensor) else _first_tensor(out)
    if out is None:
        raise TypeError("coord_check: the model's output holds no tensor to compute a loss from")
    if not target.is_floating_point():
        return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), target.reshape(-1))
    return F.mse_loss(out.float(), target.float())


def _roles_or_none(shaper: MuP, model: nn.Module) -> dict | None:
    """muP roles group the layers for the plot; a model muP cannot type (a dim other than
    the fans scales) is still checked, in one group."""
    try:
        return shaper.roles(model)
    except ValueError:
        return None


def coord_check(build: Callable[[int], nn.Module], widths: Sequence[int], batch: tuple[Any, Tensor], *,
                parametrization: str | Callable[[nn.Module, nn.Module], MuP] = "mup", base_width: int | None = None,
                steps: int = 5, lr: float, optimizer: str = "adam", seed: int = 0, tol: float = 0.25) -> CoordCheck:
    """Train ``build(width)`` for ``steps`` steps at each width and measure activation sizes:
    the RMS of each leaf layer's output and of each attention module's logits
    (``F.scaled_dot_product_attention``, a softmax inside an ``*Attention`` module,
    ``nn.MultiheadAttention``; see :mod:`.attention_logits`).

    Args:
        build: ``width -> model`` (called under ``torch.device("meta")`` for the base and
            delta models of muP, so it must not allocate on a fixed device).
        widths: at least two widths.
        batch: ``(inputs, targets)``; integer targets train with cross-entropy, float
            ones with MSE. ``inputs`` is a tensor or a tuple of positional inputs.
        parametrization: ``"mup"`` (``MuP(base, delta)`` with the kaiming policy and
            ``param_groups``), ``"sp"`` (the model's own init from ``build`` and one LR),
            or a factory ``(base, delta) -> MuP``.
        base_width: the muP base width (default: the smallest width).
        lr, optimizer (``"adam"``, ``"adamw"``, ``"sgd"``), seed: the run; the same seed
            gives the same result (``torch.manual_seed(seed)`` before each build, keyed init).
        tol: |exponent| up to which a layer counts as stable.
    """
    widths = [int(w) for w in widths]
    if len(widths) < 2 or any(w < 1 for w in widths) or len(set(widths)) != len(widths):
        raise ValueError(f"coord_check: widths must be at least two distinct positive ints, got {widths}")
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"coord_check: optimizer must be one of {', '.join(_OPTIMIZERS)}, got {optimizer!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"coord_check: steps must be an int >= 1, got {steps!r}")
    if not (isinstance(parametrization, str) and parametrization in ("mup", "sp")) and not callable(parametrization):
        raise ValueError(f"coord_check: parametrization must be 'mup', 'sp' or a (base, delta) -> MuP factory, "
                         f"got {parametrization!r}")
    inputs, target = batch
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    bw = min(widths) if base_width is None else int(base_width)
    other = next((w for w in sorted(widths) if w != bw), 2 * bw)
    with torch.device("meta"):
        base, delta = build(bw), build(other)
    shaper = MuP(base, delta)  # roles group the layers in every parametrization
    if parametrization == "mup":
        mup: MuP | None = shaper
        label = "muP"
    elif parametrization == "sp":
        mup, label = None, "SP (model's own init, one LR)"
    else:
        mup = parametrization(base, delta)
        if not isinstance(mup, MuP):
            raise TypeError(f"coord_check: the parametrization factory must return a MuP, got {type(mup).__name__}")
        label = f"muP ({mup.base_policy.name}, readout={mup.readout})"
    rms: dict[str, list[list[float]]] = {}
    groups: dict[str, str] = {}
    losses: list[list[float]] = []
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        for wi, w in enumerate(widths):
            torch.manual_seed(seed)
            model = build(w)
            if mup is not None:
                init_model(model, mup, seed=seed, example_inputs=args)  # a forward for the gains (no fx trace)
                param_groups = mup.param_groups(model, lr=lr, optimizer=optimizer)
            else:
                param_groups = [{"params": list(model.parameters()), "lr": lr}]
            opt = _OPTIMIZERS[optimizer](param_groups, lr=lr)
            roles = _roles_or_none(shaper, model)
            layers = [(n, m) for n, m in model.named_modules()
                      if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]
            seen: dict[str, float] = {}
            hooks = []
            for n, m in layers:
                if wi == 0:
                    rms[n] = [[math.nan] * len(widths) for _ in range(steps)]
                    ws = [roles[f"{n}.{k}"] for k in ("weight", "in_proj_weight") if roles and f"{n}.{k}" in roles]
                    groups[n] = (ws[0].role if ws else "fixed") if roles else "layers"

                def hook(mod, inp, out, n=n):
                    t = _first_tensor(out)
                    if t is not None:
                        seen[n] = t.detach().float().pow(2).mean().sqrt().item()
                hooks.append(m.register_forward_hook(hook))
            logits = LogitRecorder(model)
            row = []
            model.train()
            try:
                for s in range(steps):
                    seen.clear()
                    logits.clear()
                    with logits:
                        out = model(*args)
                    loss = _loss(out, target)
                    for n, v in logits.rms().items():
                        if n not in rms:  # attention logits: known once a forward has run
                            rms[n] = [[math.nan] * len(widths) for _ in range(steps)]
                            groups[n] = GROUP
                        seen[n] = v
                    for n, v in seen.items():
                        if n in rms:
                            rms[n][s][wi] = v
                    row.append(loss.item())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            finally:
                for h in hooks:
                    h.remove()
                logits.close()
            losses.append(row)
    return CoordCheck(parametrization=label, widths=widths, steps=steps, rms=rms, groups=groups, losses=losses,
                      tol=tol)
