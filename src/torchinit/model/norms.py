"""Norm layers whose ``weight`` is an offset from 1: ``y = norm(x) * (1 + weight)``.

Gemma's ``GemmaRMSNorm`` (and Gemma 2/3, Qwen3-Next, Nemotron's ``LayerNorm1P``...) store
the scale as ``weight`` and multiply by ``1 + weight``; their constructor gives ``weight``
zeros, the identity. A norm rule's ``ones`` there scales every normalized activation by 2.
:func:`scales_by_one_plus_weight` finds such a layer by what it does, not by its name: its
``forward`` runs once on a small CPU input with ``weight`` 0 and then 1 (every other tensor
0) on a shallow copy of the module (no hooks, the module's own tensors untouched, so a meta
or sharded module works the same). A plain scale gives 0 with ``weight`` 0; a ``1 + weight``
scale gives the normalized input, and twice that with ``weight`` 1.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["scales_by_one_plus_weight"]

#: torch's own norms' ``forward``s scale by ``weight`` itself (a subclass overriding ``forward``,
#: Nemotron's ``LayerNorm1P``: ``F.layer_norm(x, ..., self.weight + 1, ...)``, is probed)
_TORCH_FORWARDS = tuple(c.forward for c in (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
                                            getattr(nn, "RMSNorm", nn.LayerNorm)))


def _probe(mod: nn.Module, n: int) -> bool:
    probe = copy.copy(mod)  # shallow: new tensor dicts below, the module's own are never touched
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, n, generator=gen, device="cpu")  # explicit: plan may run under torch.device("meta")

    def run(w: float) -> torch.Tensor:
        probe.__dict__["_parameters"] = {
            k: (None if v is None else torch.full(tuple(v.shape), w if k == "weight" else 0.0, device="cpu"))
            for k, v in mod._parameters.items()}
        probe.__dict__["_buffers"] = {
            k: (None if v is None else torch.zeros(tuple(v.shape), dtype=v.dtype, device="cpu")) for k, v in mod._buffers.items()}
        out = type(mod).forward(probe, x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise TypeError("not a norm's output")
        return out.float()

    with torch.no_grad():
        y0 = run(0.0)
        if not bool(torch.isfinite(y0).all()) or float(y0.abs().max()) < 1e-3:
            return False
        y1 = run(1.0)
    return bool(torch.allclose(y1, 2 * y0, rtol=1e-3, atol=1e-4))


def scales_by_one_plus_weight(mod: nn.Module) -> bool:
    """Whether ``mod`` multiplies its normalized input by ``1 + mod.weight`` (so its identity
    ``weight`` is 0, not 1). False for torch's norms (BatchNorm and InstanceNorm, and LayerNorm,
    GroupNorm, RMSNorm unless a subclass overrides ``forward``), modules with children, a ``weight`` that
    is not 1-D, and any module whose ``forward`` cannot run on a ``(2, 3, n)`` float input."""
    w = mod._parameters.get("weight")
    if (w is None or w.dim() != 1 or isinstance(mod, nn.modules.batchnorm._NormBase)
            or type(mod).forward in _TORCH_FORWARDS or next(mod.children(), None) is not None):
        return False
    try:  # per module, not per class: a class may take its offset from its config
        return _probe(mod, int(w.shape[0]))
    except Exception:  # noqa: BLE001 - a forward that needs more than one tensor: not such a norm
        return False
