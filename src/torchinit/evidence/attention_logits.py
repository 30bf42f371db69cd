"""Attention logits for the coordinate check: the RMS of the pre-softmax scores
``q @ k^T * scale`` of every attention call in a forward pass.

muP scales attention logits by ``1/head_dim`` instead of ``1/sqrt(head_dim)``; init and
learning rates cannot do it, and a missing ``1/d`` shows in no layer's output (the
softmax and the output projection absorb it), only in the logits, which grow like
``sqrt(head_dim)`` once training has correlated ``q`` and ``k``. :class:`LogitRecorder`
measures them where the common implementations compute them:

* ``F.scaled_dot_product_attention`` (a ``TorchFunctionMode``): ``q @ k^T * scale``
  recomputed (``scale`` as passed, else ``1/sqrt(q.size(-1))``) on at most
  :data:`_HEADS` heads x :data:`_QUERIES` queries x :data:`_KEYS` keys, evenly spaced;
  the pairs ``is_causal`` or a boolean mask rule out are left out, a float mask is added
  (its ``-inf`` left out), as the softmax sees them.
* ``F.softmax`` / ``torch.softmax`` over the last dim inside a module whose class name
  contains "Attention" (Hugging Face eager attention, hand-written attention): its input,
  subsampled the same way, without the entries a mask sent to ``-inf`` or to the dtype's
  minimum (Hugging Face's masked value); a finite additive bias (ALiBi) counts.
* ``nn.MultiheadAttention`` (a forward pre-hook; its functional forward hides both of the
  above): the scores recomputed from its query and key inputs and ``in_proj`` weights,
  with its scale ``1/sqrt(head_dim)``, over every query-key pair (its masks, ``bias_k``
  and ``add_zero_attn`` keys are not applied).

The record of an attention call is named after the innermost running module whose class
name contains "Attention" (else the innermost running module) plus ``":logits"``; several
calls in one module pool their squares. Deterministic: no randomness, fixed subsamples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["GROUP", "SUFFIX", "LogitRecorder"]

#: suffix of a logits record's name, and the layer group the coordinate check files it under
SUFFIX = ":logits"
GROUP = "attention logits"
_HEADS, _QUERIES, _KEYS = 8, 64, 256  # the subsample: enough for an RMS, cheap next to the attention itself
_SDPA = F.scaled_dot_product_attention
_SOFTMAX = (F.softmax, torch.softmax, torch.Tensor.softmax)
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _spaced(n: int, k: int) -> Tensor | None:
    """At most ``k`` evenly spaced indices of ``range(n)`` (None: all of them)."""
    if n <= k:
        return None
    return torch.linspace(0, n - 1, k).round().long().unique()


def _take(t: Tensor, dim: int, k: int) -> Tensor:
    idx = _spaced(t.shape[dim], k)
    return t if idx is None else t.index_select(dim, idx.to(t.device))


def _sample(t: Tensor, idx: tuple[Tensor | None, Tensor | None, Tensor | None]) -> Tensor:
    for dim, i in enumerate(idx):
        if i is not None:
            t = t.index_select(dim, i.to(t.device))
    return t


def _scores(q: Tensor, k: Tensor, scale: float, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """``q @ k^T * scale`` (plus a float ``mask``) on the subsample, as (heads, queries, keys);
    the pairs a boolean ``mask`` or ``causal`` rules out are -inf (SDPA's conventions)."""
    q, k = q.detach(), k.detach()
    if q.dim() >= 3 and k.dim() >= 3 and k.shape[-3] != q.shape[-3] and q.shape[-3] % k.shape[-3] == 0:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)  # grouped-query attention
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    L, S = q.shape[-2], k.shape[-2]
    q = q.expand(*lead, *q.shape[-2:]).reshape(-1, L, q.shape[-1])
    k = k.expand(*lead, *k.shape[-2:]).reshape(-1, S, k.shape[-1])
    idx = (_spaced(q.shape[0], _HEADS), _spaced(L, _QUERIES), _spaced(S, _KEYS))
    s = torch.bmm(_sample(q, idx[:2]).float(), _sample(k, (idx[0], idx[2])).float().transpose(1, 2)) * scale
    if causal:  # is_causal: query i sees keys j <= i (top-left aligned)
        qi = torch.arange(L, device=s.device) if idx[1] is None else idx[1].to(s.device)
        kj = torch.arange(S, device=s.device) if idx[2] is None else idx[2].to(s.device)
        s = s.masked_fill(kj[None, :] > qi[:, None], -math.inf)
    if mask is not None:
        m = _sample(mask.detach().expand(*lead, L, S).reshape(-1, L, S), idx)
        s = s.masked_fill(~m, -math.inf) if m.dtype == torch.bool else s + m.float()
    return s


def _sq(s: Tensor, floor: float = torch.finfo(torch.float32).min / 2) -> tuple[float, int]:
    """Sum of squares and count of the scores a mask left in (finite, above ``floor``)."""
    kept = s[torch.isfinite(s) & (s > floor)]
    return kept.pow(2).sum().item(), kept.numel()


def _softmax_input_sq(x: Tensor) -> tuple[float, int]:
    """Sum of squares and count of a softmax input on the subsample, masked entries left out."""
    x = x.detach()
    floor = torch.finfo(x.dtype).min / 2  # Hugging Face masks with the dtype's minimum (+ the score)
    x = x.reshape(-1, *x.shape[-2:])
    x = _sample(x, (_spaced(x.shape[0], _HEADS), _spaced(x.shape[1], _QUERIES), _spaced(x.shape[2], _KEYS)))
    return _sq(x.float(), floor)


def _mha_scores(mod: nn.MultiheadAttention, query: Tensor, key: Tensor) -> Tensor:
    """An ``nn.MultiheadAttention``'s scores (batch * heads, queries, keys) on the subsample,
    from its inputs and ``in_proj`` weights; its masks are not applied."""
    if mod.batch_first and query.dim() == 3:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    query, key = _take(query.detach(), 0, _QUERIES), _take(key.detach(), 0, _KEYS)  # (L, [B,] E)
    e, h = mod.embed_dim, mod.num_heads
    if mod._qkv_same_embed_dim:
        wq, wk = mod.in_proj_weight[:e], mod.in_proj_weight[e:2 * e]
    else:
        wq, wk = mod.q_proj_weight, mod.k_proj_weight
    bq = bk = None
    if mod.in_proj_bias is not None:
        bq, bk = mod.in_proj_bias[:e], mod.in_proj_bias[e:2 * e]
    q = F.linear(query.float(), wq.detach().float(), None if bq is None else bq.detach().float())
    k = F.linear(key.float(), wk.detach().float(), None if bk is None else bk.detach().float())
    hd = e // h
    if q.dim() == 2:  # unbatched: (L, E)
        q, k = q.unsqueeze(1), k.unsqueeze(1)
    # (L, B, E) -> (B * H, L, hd), as its functional forward lays out the heads
    q = q.reshape(q.shape[0], -1, hd).transpose(0, 1)
    k = k.reshape(k.shape[0], -1, hd).transpose(0, 1)
    return _scores(q, k, hd ** -0.5)


def _sdpa_scores(args: tuple, kwargs: dict) -> Tensor:
    """The scores of an ``F.scaled_dot_product_attention`` call, its mask applied."""
    bound = dict(zip(_SDPA_ARGS, args), **kwargs)
    q, scale = bound["query"], bound.get("scale")
    return _scores(q, bound["key"], (1.0 / math.sqrt(q.shape[-1])) if scale is None else float(scale),
                   mask=bound.get("attn_mask"), causal=bool(bound.get("is_causal", False)))


def _is_attention(mod: nn.Module) -> bool:
    return "attention" in type(mod).__name__.lower()


class LogitRecorder(TorchFunctionMode):
    """Records the attention logits' squares of ``model``'s forward passes while entered.

    ``sums[name] = [sum of squares, count]``; :meth:`rms` gives each record's RMS and
    :meth:`clear` starts the next pass. :meth:`close` removes the module hooks.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.sums: dict[str, list[float]] = {}
        self._stack: list[tuple[str, bool]] = []  # (name, is attention) of the running modules
        self._hooks: list[Any] = []
        for name, mod in model.named_modules():
            label = name or type(model).__name__
            self._hooks.append(mod.register_forward_pre_hook(self._enter(label, _is_attention(mod))))
            self._hooks.append(mod.register_forward_hook(self._leave, always_call=True))
            if isinstance(mod, nn.MultiheadAttention):
                self._hooks.append(mod.register_forward_pre_hook(self._mha(label), with_kwargs=True))

    def _enter(self, label: str, attn: bool) -> Callable:
        def hook(mod, args):
            self._stack.append((label, attn))
        return hook

    def _leave(self, mod, args, out) -> None:
        if self._stack:
            self._stack.pop()

    def _mha(self, label: str) -> Callable:
        def hook(mod, args, kwargs):
            query = args[0] if args else kwargs.get("query")
            key = args[1] if len(args) > 1 else kwargs.get("key")
            if isinstance(query, Tensor) and isinstance(key, Tensor) and not query.is_nested:
                self._add(label, _sq(_mha_scores(mod, query, key)))
        return hook

    def _add(self, label: str, sq: tuple[float, int]) -> None:
        if sq[1] == 0:
            return
        acc = self.sums.setdefault(label + SUFFIX, [0.0, 0])
        acc[0] += sq[0]
        acc[1] += sq[1]

    def _owner(self, attention_only: bool) -> str | None:
        for label, attn in reversed(self._stack):
            if attn:
                return label
        return None if attention_only or not self._stack else self._stack[-1][0]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SDPA:
            owner = self._owner(attention_only=False)
            if owner is not None:
                self._add(owner, _sq(_sdpa_scores(args, kwargs)))
        elif func in _SOFTMAX:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            x = args[0] if args else kwargs.get("input")
            owner = self._owner(attention_only=True)
            if (owner is not None and isinstance(x, Tensor) and x.is_floating_point() and x.dim() >= 2
                    and isinstance(dim, int)
                    and dim in (-1, x.dim() - 1)):
                self._add(owner, _softmax_input_sq(x))
        return func(*args, **kwargs)

    def rms(self) -> dict[str, float]:
        return {n: math.sqrt(s / c) for n, (s, c) in self.sums.items()}

    def clear(self) -> None:
        self.sums.clear()
        self._stack.clear()

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
