"""What is recorded during the forward and backward passes: hooks on layers, activations called as functions, residual branches."""

from __future__ import annotations

import math
import weakref
from fnmatch import fnmatchcase
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...model.calls import first_tensor
from ...model.presets import RESIDUAL_PROJECTIONS
from .classify import (
    _ADDS,
    _FUNCTIONAL,
    _IN_PLACE_ADDS,
    _PASS_THROUGH,
    _RELU_FAMILY,
    _SIGMOID_SAT,
    _TANH_SAT,
    _functional_param,
    _kind,
    _nonlinearity,
)
from .recurrent import _batch_first_input, _cell_saturation, _probe
from .report import LayerStats


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


_BINS = 50
#: Histograms of larger outputs are drawn from this many values picked with a fixed seed
#: (a 50-bin plot needs no more, and the logits of a language model have hundreds of millions).
_HIST_SAMPLE = 1 << 18


def _hist_sample(flat: Tensor, cache: dict[int, Tensor]) -> Tensor:
    """``flat``, or :data:`_HIST_SAMPLE` of its values at positions drawn with seed 0
    (uniform, with replacement: no stride can alias with the layout of the channels);
    ``cache`` keeps the positions per size for the other layers of that size."""
    n = flat.numel()
    if n <= _HIST_SAMPLE:
        return flat
    idx = cache.get(n)
    if idx is None:
        idx = cache[n] = torch.randint(0, n, (_HIST_SAMPLE,), generator=torch.Generator().manual_seed(0))
    return flat[idx.to(flat.device)]


def _is_residual_projection(name: str) -> bool:
    """The layer's weight is named like a residual projection (``*.c_proj.weight``,
    ``*.o_proj.weight``, ``*.down_proj.weight``, ...: ``RESIDUAL_PROJECTIONS``)."""
    qual = f"{name.split('#')[0]}.weight"
    return any(fnmatchcase(qual, g) for g in RESIDUAL_PROJECTIONS)


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
        # recurrent layers measured inside after the passes (recurrent.py), outside the
        # functional mode (their unroll's ops must not count as the model's reads and sums)
        self.pending: list[tuple[LayerStats, nn.Module, tuple]] = []
        self.hist_idx: dict[int, Tensor] = {}  # histogram sample positions by output size

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
        if self.stack and self.stack[-1][1] == "activation":
            return  # a sum inside an activation's formula (x + 0.044715 x^3) ends no branch
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
            s = float(stream.detach().float().std(correction=0))
        except Exception:  # a statistic must never break the model's forward
            return
        if rec.stream_std is None:
            rec.stream_std = s
        # at least as large: the stream; or smaller, but the layer is one of the residual
        # projections the gpt2/llama presets scale by depth (a branch that outgrew the stream
        # at init, or after LSUV scaled the layers inside the branch, still ends a branch)
        if s >= rec.std or _is_residual_projection(rec.name):
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
            y = first_tensor(out)
            if y is None or not (y.is_floating_point() or y.is_complex()) or y.numel() == 0:
                return None
            n = self.calls.get(name, 0)
            self.calls[name] = n + 1
            rec_name = name if n == 0 else f"{name}#{n + 1}"
            x = first_tensor(args)
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
            batch_dim: int | None = 0
            if kind == "recurrent":
                batch_dim = self._recurrent_batch_dim(mod, out, y)
            self._record(rec_name, mod, kind, x, y, batch_dim=batch_dim)
            if kind == "linear":
                self._track(y, self.records[-1])
            elif kind == "recurrent":
                self._defer(self.records[-1], mod, args)
            return new_out  # None keeps the module's output

        return hook

    @staticmethod
    def _recurrent_batch_dim(mod: nn.Module, out: Any, y: Tensor) -> int | None:
        """Where the samples of a recurrent layer's output are: (T, N, H) unless batch_first;
        none in a PackedSequence's data (steps of every sample) or an unbatched call."""
        if isinstance(out, nn.utils.rnn.PackedSequence):
            return None
        if isinstance(mod, nn.RNNBase):
            return None if y.dim() < 3 else (0 if mod.batch_first else 1)
        return 0 if y.dim() == 2 else None

    @torch.no_grad()
    def _defer(self, rec: LayerStats, mod: nn.Module, args: tuple) -> None:
        """Keep at most ``k`` samples of a recurrent layer's input for :meth:`measure_recurrent`."""
        if isinstance(mod, nn.RNNBase):
            x = _batch_first_input(mod, args[0] if args else None)
            if x is not None:
                self.pending.append((rec, mod, (x[: self.k].detach().clone(),)))
            return
        def cut(t: Any) -> Any:
            if isinstance(t, tuple):
                return tuple(cut(u) for u in t)
            if isinstance(t, Tensor):
                return (t[: self.k] if t.dim() == 2 else t).detach().clone()
            return t
        self.pending.append((rec, mod, tuple(cut(a) for a in args)))

    def measure_recurrent(self) -> None:
        """Gate saturation and the gradient through time of the recurrent layers seen
        (:mod:`.recurrent`); a layer this cannot unroll keeps its plain output statistics."""
        for rec, mod, args in self.pending:
            try:
                if isinstance(mod, nn.RNNBase):
                    sat, ratio, steps = _probe(mod, args[0])
                    rec.time_grad_ratio, rec.time_steps = ratio, steps
                else:
                    sat = _cell_saturation(mod, args)
            except (RuntimeError, TypeError, ValueError, AttributeError):  # a custom subclass
                continue
            if sat is not None:
                rec.saturated = sat
        self.pending.clear()

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
                nl: tuple[str, float | None] | None = None, batch_dim: int | None = 0) -> None:
        yd = y.detach()
        yf = yd.float() if not yd.is_complex() else yd.abs().float()
        cdim = self._cdim(mod, kind, yf)
        # a few passes, none allocating a tensor the size of the output (a language model's
        # logits are the largest tensor of its forward), and no Welford reduction: torch's
        # var_mean is 5-10x slower than var plus mean. Per channel only means are needed:
        # mean_c Var[x_c] = E[x^2] - mean_c E[x_c]^2 (equal counts per channel).
        others = tuple(d for d in range(yf.dim()) if d != cdim)
        cmean = yf.mean(dim=others) if others else yf.reshape(-1)
        mean = yf.mean()
        var = torch.var(yf, correction=0) if yf.numel() > 1 else torch.zeros((), device=yf.device)
        sq_mean = float((cmean * cmean).mean())
        finite = math.isfinite(float(mean)) and math.isfinite(float(var))
        if not finite:  # NaN/inf propagate into mean/var; only an overflow can mislead: check exactly
            finite = bool(torch.isfinite(yf).all())
        lo_hi = torch.aminmax(yf) if yf.numel() else None
        rec = LayerStats(
            name=name,
            type=type(mod).__name__ if mod is not None else f"F.{nl[0] if nl else '?'}",
            kind=kind,
            shape=list(yf.shape),
            mean=float(mean),
            std=float(var.sqrt()),
            max_abs=max(-float(lo_hi.min), float(lo_hi.max)) if lo_hi is not None else 0.0,
            sq_mean=sq_mean,
            chan_var=max(float(var) + float(mean) ** 2 - sq_mean, 0.0),
            finite=finite,
        )
        if kind == "activation":
            nl, prm = nl if nl is not None else _nonlinearity(mod)
            rec.nonlinearity = nl
            if nl in _RELU_FAMILY:
                alive = (yf.amax(dim=others) if others else yf.reshape(-1)) > 0
                rec.dead = float(1.0 - alive.float().mean())
            elif nl == "tanh":
                rec.saturated = float((yf.abs() > _TANH_SAT).float().mean())
            elif nl == "sigmoid":
                rec.saturated = float(((yf < _SIGMOID_SAT) | (yf > 1 - _SIGMOID_SAT)).float().mean())
            if self.last is not None and self.last.kind == "linear" and self.last.next_act is None:
                self.last.next_act = nl
                self.last.next_act_param = prm
        if kind == "recurrent":
            # what bounds the output: tanh (h = o * tanh(c) for an LSTM), ReLU for RNN(nonlinearity='relu');
            # an LSTM with proj_size projects h linearly
            if getattr(mod, "proj_size", 0):
                rec.nonlinearity = None
            else:
                rec.nonlinearity = "relu" if getattr(mod, "nonlinearity", "tanh") == "relu" else "tanh"
        if kind == "linear":
            if x is not None and (x.is_floating_point()):
                xf = x.detach().float()
                rec.in_sq = float(torch.linalg.vector_norm(xf)) ** 2 / max(xf.numel(), 1)
            if self.last is not None and self.last.kind == "activation":
                rec.prev_act = self.last.nonlinearity
            rec.after_norm = self.last is not None and self.last.kind == "norm"
        ys = yf.movedim(batch_dim, 0) if batch_dim is not None and yf.dim() > batch_dim else None
        if ys is not None and ys.shape[0] >= 2 and finite:
            s = ys[: self.k].reshape(min(self.k, ys.shape[0]), -1)
            gram = s @ s.T  # one product; the norms are its diagonal (no normalized copy of s)
            sq = gram.diagonal()
            ok = sq > 0
            if int(ok.sum()) >= 2:
                if bool(torch.isfinite(gram).all()):
                    nrm = sq[ok].sqrt()
                    g = gram[ok][:, ok] / (nrm[:, None] * nrm[None, :])
                else:  # squares overflow float32: normalize first
                    norms = s.norm(dim=1)
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
                vals = _hist_sample(yf.reshape(-1), self.hist_idx).clamp(lo, hi)  # outliers are counted in the edge bins
                rec.hist = [int(c) for c in torch.histc(vals, bins=_BINS, min=lo, max=hi).tolist()]
                rec.hist_range = [float(lo), float(hi)]
        self.records.append(rec)
        self.last, self.last_cdim = rec, cdim
        if self.grads and y.requires_grad:
            def ghook(g, rec=rec):
                gf = g.detach().float()
                rec.grad_std = float(gf.std(correction=0)) if gf.numel() else None
            y.register_hook(ghook)
