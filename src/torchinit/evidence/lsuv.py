"""Data-dependent initialization: LSUV, prior-probability biases, user rules.

:func:`lsuv_` is Mishkin & Matas (2016), "All you need is a good init", done as
the paper describes:

1. orthogonal pre-initialization of every selected weight (the keyed engine when
   ``seed`` is given, so the result is a pure function of ``(seed, name, inputs)``),
   biases set to zero (a selected layer that the batch does not reach is left as it was);
2. in FORWARD order, for every selected layer, the first one included: forward
   the batch, measure the std of the layer's output (its pre-activation) and divide
   the weight by it, until ``|std - 1| < tol`` or ``max_iter`` rescalings;
3. only after the weight has converged, optionally (``center=True``) subtract the
   output mean through the bias (a scalar shift: it leaves the std unchanged).

Two popular implementations never rescale the first layer (their layer counter
is reset) and fastai's course version fixes the bias before the weight and
measures post-activations; here every selected layer ends within ``tol``.

Two kinds of layer are not the paper's plain chain, and :func:`lsuv_` treats them
deliberately, saying in its report what it did with each layer:

* a layer whose weight is shared with another module (a language model's
  ``lm_head`` tied to its input embedding) is never rewritten: rescaling it would
  rewrite the other module's tensor through the alias, after the layers reading it
  were calibrated. It is skipped (``skipped="tied: ..."``).
* a layer that ends a residual branch (its output is added to the residual stream,
  ``x + proj(h)``: GPT-2's ``c_proj``, Llama's ``o_proj``/``down_proj``, the last conv
  of a pre-activation ResNet block) is found on the model as given by
  :func:`torchinit.diagnose` (``LayerStats.residual``: added to a stream at least as
  large, or to any stream when named like one of the residual projections the
  ``gpt2``/``llama`` presets scale by depth: ``*.c_proj``, ``*.o_proj``,
  ``*.down_proj``, ...). Such a layer is small by design (depth scaling such as
  GPT-2's ``0.02/sqrt(2 n_layer)``); unit output would erase that.
  ``residual="skip"`` (default) leaves it as initialized,
  ``residual="relative"`` scales it so that its output std is ``residual_ratio``
  times the stream's at the sum, ``residual="scale"`` treats it like any layer.

:func:`prior_bias_` sets a classification head's bias from class prior
probabilities (RetinaNet / focal loss: ``b = log(p / (1 - p))``), and
:func:`class_prior` estimates those priors from data. :func:`data_init_` is the
hook for user-defined data-dependent rules: it calls ``rule(name, module, inputs,
output)`` for each selected layer in forward order, each time on a fresh forward
pass that already reflects the changes made to earlier layers.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .._progress import _track
from ..core import specs as S
from ..initializers import fill_
from ..model.calls import call_model, first_tensor, seeded_rng
from .diagnostics.classify import _kind
from .diagnostics.fmt import _fmt
from .lsuv_roles import _branch_stats, _label, _residual_ends, _tied_layers

__all__ = ["lsuv_", "LSUVReport", "LSUVLayer", "prior_bias_", "class_prior", "data_init_"]


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def _is_weight_layer(module: nn.Module) -> bool:
    """Linear/Conv/Bilinear, or any other leaf with a >= 2-D ``weight`` (embeddings excluded):
    the layers :func:`torchinit.diagnose` records as ``"linear"``."""
    return _kind(module) == "linear"


def _select(model: nn.Module, modules: Any, fn: str) -> list[tuple[str, nn.Module]]:
    named = dict(model.named_modules())
    if modules is None:
        return [(n, m) for n, m in named.items() if _is_weight_layer(m)]
    if callable(modules) and not isinstance(modules, nn.Module):
        return [(n, m) for n, m in named.items() if modules(n, m)]
    if isinstance(modules, (str, nn.Module)):
        modules = [modules]
    ids = {id(m): n for n, m in named.items()}
    out = []
    for item in modules:
        if isinstance(item, str):
            if item not in named:
                raise ValueError(f"{fn}: modules: the model has no module named {item!r}")
            out.append((item, named[item]))
        elif isinstance(item, nn.Module):
            if id(item) not in ids:
                raise ValueError(f"{fn}: modules: {type(item).__name__} object is not a submodule of the model")
            out.append((ids[id(item)], item))
        else:
            raise TypeError(f"{fn}: modules must be names, modules or a predicate (name, module) -> bool, "
                            f"got {type(item).__name__}")
    return out


def _forward_order(model: nn.Module, inputs: Any, chosen: list[tuple[str, nn.Module]]) -> list[str]:
    order: list[str] = []
    handles = []

    def hook_for(name: str) -> Callable:
        def hook(mod, args, out):
            if name not in order:
                order.append(name)
        return hook

    try:  # hooks registered before any failure are removed in finally
        for name, m in chosen:
            handles.append(m.register_forward_hook(hook_for(name)))
        with torch.no_grad():
            call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return order


def _capture(model: nn.Module, inputs: Any, module: nn.Module) -> tuple[tuple, Tensor]:
    """Forward until ``module`` has run once; returns (its inputs, its output)."""
    box: list[Any] = []

    def hook(mod, args, out):
        box.append((args, out))
        raise _Stop

    h = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            call_model(model, inputs)
    except _Stop:
        pass
    finally:
        h.remove()
    if not box:
        raise RuntimeError(f"module {type(module).__name__} was not called by the forward pass")
    args, out = box[0]
    y = first_tensor(out)
    if y is None:
        raise TypeError(f"module {type(module).__name__} returned no tensor")
    return args, y


class _Transaction:
    """Snapshot of parameters and buffers, restored on failure; buffers always restored."""

    def __init__(self, model: nn.Module, modules: Sequence[nn.Module]) -> None:
        self.model = model
        self.saved = [(p, p.detach().clone()) for m in modules for p in m.parameters()]
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    @torch.no_grad()
    def restore(self, params: bool) -> None:
        if params:
            for p, v in self.saved:
                p.copy_(v)
        for n, b in self.model.named_buffers():
            if n in self.buffers:
                b.copy_(self.buffers[n])


@dataclass
class LSUVLayer:
    """What :func:`lsuv_` did to one layer (``action``, in words): rescalings, std before
    and after, the std it aimed at (``target_std``: 1, or ``residual_ratio`` times the
    stream's std ``stream_std`` for a residual-branch end with ``residual="relative"``),
    the bias shift (``center=True``) and why it was skipped, if it was (``skipped``:
    ``"tied: ..."``, ``"residual end"``, ``"not called by forward"``)."""

    name: str
    type: str
    iterations: int = 0
    initial_std: float | None = None
    final_std: float | None = None
    converged: bool = False
    bias_shift: float | None = None
    skipped: str | None = None
    action: str = ""
    target_std: float | None = None
    stream_std: float | None = None


@dataclass
class LSUVReport:
    """Per-layer report of :func:`lsuv_` in forward order."""

    layers: list[LSUVLayer]
    tol: float
    max_iter: int
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        """True when every layer that ran ended with ``|std - 1| < tol``."""
        return all(l.converged for l in self.layers if l.skipped is None)

    def to_dict(self) -> dict[str, Any]:
        return {"tol": self.tol, "max_iter": self.max_iter, "seed": self.seed,
                "layers": [asdict(l) for l in self.layers], "extra": dict(self.extra)}

    def table(self):
        from rich.table import Table

        t = Table(title=f"LSUV (tol={self.tol:g}, max_iter={self.max_iter})")
        for c in ("layer", "type", "iters", "std before", "std after", "target", "ok", "action"):
            t.add_column(c, justify="left" if c in ("layer", "type", "action") else "right", overflow="fold")
        for l in self.layers:
            t.add_row(l.name, l.type, str(l.iterations), _fmt(l.initial_std, ".4g"), _fmt(l.final_std, ".4g"),
                      _fmt(l.target_std, ".4g"), "-" if l.skipped else ("yes" if l.converged else "NO"), l.action)
        return t

    def __str__(self) -> str:
        import io

        from rich.console import Console

        c = Console(width=160, file=io.StringIO(), record=True, color_system=None)
        c.print(self.table())
        return c.export_text()


def _batch_size(inputs: Any) -> str:
    x = first_tensor(inputs)
    return f"batch size {x.shape[0]}" if x is not None and x.dim() else "no batched tensor"


def _check_common(model: Any, fn: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be an nn.Module, got {type(model).__name__}")
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(f"{fn}: the model has parameters on the meta device; materialize it first")


def lsuv_(
    model: nn.Module,
    inputs: Any,
    *,
    tol: float = 0.1,
    max_iter: int = 10,
    seed: int | None = None,
    modules: Iterable[str | nn.Module] | Callable[[str, nn.Module], bool] | None = None,
    orthogonal: bool = True,
    zero_bias: bool = True,
    center: bool = False,
    residual: str = "skip",
    residual_ratio: float | None = None,
) -> LSUVReport:
    """Layer-sequential unit-variance initialization (Mishkin & Matas 2016), in place.

    For each selected layer ``l`` in forward order (the first layer included),
    with ``y_l`` its output on ``inputs``::

        repeat at most max_iter times, while |std(y_l) - 1| >= tol:
            W_l <- W_l / std(y_l)

    Args:
        model: the model; modified in place (on error it is left unchanged).
        inputs: a batch: Tensor (``model(inputs)``), tuple (``model(*inputs)``) or dict.
        tol: tolerance on the output std, in (0, 1).
        max_iter: maximum number of rescalings per layer (>= 1).
        seed: when given, the orthogonal pre-init uses the keyed engine with
            ``Key(seed).child(f"{name}.weight")``: deterministic for any seed and
            independent of the global RNG. Without it, the global torch RNG is used.
            The measurement passes run on a forked global RNG seeded with ``seed`` (0
            without one): dropout in a train-mode model draws the same masks whatever the
            caller's RNG state, which is restored after; the model's mode is not changed.
        modules: which layers: None = every Linear/Conv (any leaf module with a
            >= 2-D ``weight``, embeddings excluded); or names / module objects; or a
            predicate ``(name, module) -> bool``. Each must have a floating-point
            ``weight`` (any module the user selects: its output std is what is
            rescaled). A selected layer that the forward pass on ``inputs`` does not
            call is left unchanged and reported as skipped.
        orthogonal: orthogonal pre-init (gain 1) of the selected weights with >= 2 dims.
        zero_bias: set the selected layers' biases to 0 first.
        center: after a layer's weight has converged, subtract the mean of its
            output through its bias (leaves the std unchanged).
        residual: what to do with a layer that ends a residual branch (its output is
            added to the residual stream, as :func:`torchinit.diagnose` detects on the
            model as given: ``LayerStats.residual``): ``"skip"`` leaves it as initialized
            (depth scaling kept); ``"relative"`` pre-initializes it like the others and
            rescales it until ``std(branch output) / std(stream at the sum)`` is within
            ``tol`` (relative) of ``residual_ratio``; ``"scale"`` treats it like any layer
            (unit output std: the paper, which has no residual branches).
        residual_ratio: the ratio for ``residual="relative"``; default ``1/sqrt(N)`` for N
            branch ends, so that adding them (each ``r^2`` of the stream's variance) grows
            the stream's variance by at most ``(1 + 1/N)^N < e``.

    A layer whose weight (or bias) is shared with another module (a tied ``lm_head``) is
    never rewritten, whatever ``modules`` says: it is skipped and reported as
    ``"tied: ..."`` with the other names of its tensors.

    Returns:
        an :class:`LSUVReport` (iterations, std before/after per layer).

    Raises:
        ValueError: bad ``tol``/``max_iter``/``modules``, a selected module without a
            weight or whose weight is computed by a parametrization (weight_norm,
            spectral_norm), a layer whose output has fewer than 2 values (a batch of one
            sample into a layer with one output), or whose output std is 0 or not finite
            (model restored).
    """
    fn = "lsuv_"
    _check_common(model, fn)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise ValueError(f"{fn}: tol must be in (0, 1), got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"{fn}: max_iter must be an integer >= 1, got {max_iter!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"{fn}: seed must be an int or None, got {seed!r}")
    if residual not in ("skip", "relative", "scale"):
        raise ValueError(f"{fn}: residual must be 'skip', 'relative' or 'scale', got {residual!r}")
    if residual_ratio is not None and (isinstance(residual_ratio, bool) or not isinstance(residual_ratio, (int, float))
                                       or not 0 < residual_ratio < math.inf):
        raise ValueError(f"{fn}: residual_ratio must be a positive finite number, got {residual_ratio!r}")
    if residual_ratio is not None and residual != "relative":
        raise ValueError(f"{fn}: residual_ratio is used with residual='relative' only (got residual={residual!r})")
    chosen = _select(model, modules, fn)
    for name, m in chosen:
        w = getattr(m, "weight", None)
        if not isinstance(w, Tensor) or not (w.is_floating_point() or w.is_complex()) or w.numel() == 0:
            raise ValueError(f"{fn}: module {name!r} ({type(m).__name__}) has no floating-point weight to rescale")
        if m._parameters.get("weight") is not w and m._buffers.get("weight") is not w:
            raise ValueError(f"{fn}: the weight of module {name!r} ({type(m).__name__}) is computed (a "
                             f"parametrization such as weight_norm or spectral_norm): rescaling it would have no "
                             f"effect; remove the parametrization first or leave the layer out (`modules=`)")
    if not chosen:
        raise ValueError(f"{fn}: no layer selected (the model has no Linear/Conv layer, or `modules` matched none)")
    key = None
    if seed is not None:
        from ..engines.keyed import Key

        key = Key(seed)
    tied = _tied_layers(model, chosen)
    # on the model as given: its depth scaling makes branch ends small
    ends = _residual_ends(model, inputs, [c for c in chosen if c[0] not in tied]) if residual != "scale" else []
    kept = set(tied) | (set(ends) if residual == "skip" else set())  # never written
    tx = _Transaction(model, [m for _, m in chosen])
    report = LSUVReport(layers=[], tol=float(tol), max_iter=max_iter, seed=seed,
                        extra={"residual": residual, "tied": dict(tied), "residual_ends": list(ends)})
    rng = contextlib.ExitStack()
    try:
        with torch.no_grad():
            for name, m in chosen:
                if name in kept:
                    continue
                if orthogonal and m.weight.dim() >= 2:
                    spec = S.Orthogonal(1.0)
                    if key is not None:
                        fill_(m.weight, spec, key=key.child(f"{name}.weight"))
                    else:
                        fill_(m.weight, spec)
                b = getattr(m, "bias", None)
                if zero_bias and isinstance(b, Tensor):
                    b.zero_()
        # the measurement passes run on a forked RNG seeded with seed (0 without one): dropout in a
        # train-mode model draws the same masks whatever the caller's RNG state (restored after)
        rng.enter_context(seeded_rng(model, inputs, seed if seed is not None else 0))
        order = _forward_order(model, inputs, chosen)
        by_name = dict(chosen)
        for name, m in chosen:
            if name not in order:
                report.layers.append(LSUVLayer(name, type(m).__name__, skipped="not called by forward",
                                               action="skipped: not called by the forward pass on inputs"))
        # a layer the batch does not reach is left as it was (pre-init undone)
        called = {id(p) for n in order for p in by_name[n].parameters()}
        with torch.no_grad():
            for p, v in tx.saved:
                if id(p) not in called:
                    p.copy_(v)
        ratio = residual_ratio if residual_ratio is not None else (
            1.0 / math.sqrt(sum(n in ends for n in order)) if ends else None)
        ordered = []
        for name in _track(order, "lsuv"):  # a progress bar on long runs
            m = by_name[name]
            layer = LSUVLayer(name, type(m).__name__)
            ordered.append(layer)
            if name in tied:
                layer.skipped = f"tied: shared with {', '.join(tied[name])}"
                layer.action = f"skipped: tied to {', '.join(tied[name])} (not rewritten through the alias)"
                continue
            if name in ends and residual == "skip":
                layer.skipped = "residual end"
                layer.action = "skipped: residual end (added to the stream; kept as initialized)"
                continue
            relative = name in ends
            for it in range(max_iter + 1):
                if relative:
                    std, stream = _branch_stats(model, inputs, _label(name, m))
                    if not stream or not math.isfinite(stream):
                        raise ValueError(f"{fn}: the residual stream that layer {name!r} is added to has std "
                                         f"{stream} on this batch: cannot scale the branch relative to it "
                                         f"(use residual='skip')")
                    layer.stream_std = stream
                    target = ratio * stream
                else:
                    _, y = _capture(model, inputs, m)
                    if y.numel() < 2:
                        # checked before std(), which would warn about degrees of freedom first
                        raise ValueError(f"{fn}: output of layer {name!r} has shape {tuple(y.shape)}: "
                                         f"{y.numel()} value(s), too few to measure a std; pass a batch with more "
                                         f"samples (inputs has {_batch_size(inputs)})")
                    std, target = float(y.detach().float().std()), 1.0
                if layer.initial_std is None:
                    layer.initial_std = std
                if not math.isfinite(std) or std == 0.0:
                    raise ValueError(f"{fn}: output of layer {name!r} has std {std} on this batch: cannot rescale "
                                     f"(0: a dead input, e.g. all-zero samples; not finite: NaN or inf in the "
                                     f"batch or weights)")
                layer.final_std, layer.target_std = std, target
                if abs(std / target - 1.0) < tol:
                    layer.converged = True
                    break
                if it == max_iter:
                    break
                with torch.no_grad():
                    m.weight.mul_(target / std)
                layer.iterations += 1
            layer.action = (f"scaled: output std {ratio:.3g} x the stream's (residual end)" if relative
                            else "scaled: unit output std")
            if center and isinstance(getattr(m, "bias", None), Tensor):
                _, y = _capture(model, inputs, m)
                mu = float(y.detach().float().mean())
                with torch.no_grad():
                    m.bias.sub_(mu)
                layer.bias_shift = -mu
        report.layers = ordered + report.layers
    except BaseException:
        rng.close()
        tx.restore(params=True)
        raise
    rng.close()
    tx.restore(params=False)
    return report


# ----------------------------------------------------------------------------------
# priors
# ----------------------------------------------------------------------------------


def class_prior(targets: Tensor, num_classes: int | None = None, *, smoothing: float = 0.0) -> Tensor:
    """Class frequencies of integer ``targets`` (any shape; negative values, e.g. an
    ignore index of -100, are skipped), with additive ``smoothing`` per class:
    ``p_c = (count_c + smoothing) / (N + C * smoothing)``."""
    if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.is_complex():
        raise TypeError("class_prior: targets must be an integer tensor of class indices")
    if smoothing < 0:
        raise ValueError(f"class_prior: smoothing must be >= 0, got {smoothing}")
    t = targets.reshape(-1)
    t = t[t >= 0]
    if t.numel() == 0:
        raise ValueError("class_prior: targets has no class index >= 0")
    c = int(t.max()) + 1 if num_classes is None else int(num_classes)
    if int(t.max()) >= c:
        raise ValueError(f"class_prior: target {int(t.max())} out of range for num_classes={c}")
    counts = torch.bincount(t.cpu(), minlength=c).double()
    return (counts + smoothing) / (counts.sum() + c * smoothing)


def prior_bias_(
    head: nn.Module | Tensor,
    prior: float | Sequence[float] | Tensor,
    *,
    activation: str = "sigmoid",
) -> Tensor:
    """Set a classification head's bias from prior class probabilities, in place.

    * ``activation="sigmoid"`` (independent binary outputs; RetinaNet / focal loss):
      ``b_c = log(p_c / (1 - p_c))`` so that ``sigmoid(b_c) = p_c`` at init;
      ``prior`` is one probability for every output or one per output.
    * ``activation="softmax"``: ``b_c = log p_c - mean_c log p_c`` so that
      ``softmax(b) = p`` at init; ``prior`` must be a distribution (sums to 1).

    ``head`` is a module with a ``bias`` (e.g. the last ``nn.Linear``) or the bias
    tensor itself. Returns the bias.
    """
    fn = "prior_bias_"
    bias = head.bias if isinstance(head, nn.Module) else head
    if not isinstance(bias, Tensor):
        raise ValueError(f"{fn}: {type(head).__name__} has no bias tensor (build the head with bias=True)")
    if bias.dim() != 1:
        raise ValueError(f"{fn}: expected a 1-D bias, got shape {tuple(bias.shape)}")
    n = bias.shape[0]
    p = torch.as_tensor(prior, dtype=torch.float64).reshape(-1)
    if p.numel() == 1:
        p = p.expand(n)
    if p.numel() != n:
        raise ValueError(f"{fn}: prior has {p.numel()} values but the bias has {n}")
    if not bool(((p > 0) & (p < 1)).all()):
        raise ValueError(f"{fn}: every prior probability must be in (0, 1), got {p.tolist()[:8]}")
    if activation == "sigmoid":
        b = torch.log(p / (1 - p))
    elif activation == "softmax":
        if abs(float(p.sum()) - 1.0) > 1e-3:
            raise ValueError(f"{fn}: a softmax prior must sum to 1, got sum {float(p.sum()):.6g}")
        lp = torch.log(p)
        b = lp - lp.mean()
    else:
        raise ValueError(f"{fn}: activation must be 'sigmoid' or 'softmax', got {activation!r}")
    with torch.no_grad():
        bias.copy_(b.to(dtype=bias.dtype, device=bias.device))
    return bias


def data_init_(
    model: nn.Module,
    inputs: Any,
    rule: Callable[[str, nn.Module, tuple, Tensor], Any],
    *,
    modules: Iterable[str | nn.Module] | Callable[[str, nn.Module], bool] | None = None,
) -> dict[str, Any]:
    """Apply a user-defined data-dependent rule to each selected layer in forward order.

    For each layer (default: every Linear/Conv; ``modules`` as in :func:`lsuv_`), the
    batch is forwarded up to that layer (later layers do not run) and
    ``rule(name, module, inputs_of_module, output_of_module)`` is called under
    ``torch.no_grad()``; it may modify the module in place. Later layers see the
    effect of earlier changes. Buffers (e.g. BatchNorm statistics) are restored
    afterwards; if the rule raises, the selected modules' parameters are restored
    too (the rule should only modify the module it is given).

    Returns ``{name: rule's return value}`` in forward order.
    """
    fn = "data_init_"
    _check_common(model, fn)
    if not callable(rule):
        raise TypeError(f"{fn}: rule must be callable (name, module, inputs, output) -> Any")
    chosen = _select(model, modules, fn)
    tx = _Transaction(model, [m for _, m in chosen])
    out: dict[str, Any] = {}
    try:
        order = _forward_order(model, inputs, chosen)
        by_name = dict(chosen)
        for name in order:
            args, y = _capture(model, inputs, by_name[name])
            with torch.no_grad():
                out[name] = rule(name, by_name[name], args, y)
    except BaseException:
        tx.restore(params=True)
        raise
    tx.restore(params=False)
    return out
