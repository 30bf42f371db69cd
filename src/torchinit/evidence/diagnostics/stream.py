"""The residual stream: the std of what flows between the blocks of a residual network.

A transformer's weight layers alternate between widening (``c_attn``, ``c_fc``) and
branch-ending projections that are small by design (``c_proj``): plotted by depth they
make a sawtooth that says nothing about the model's health. What matters is the stream
``x + attn(ln(x)) + mlp(ln(x))`` between the blocks: its std should neither collapse nor
grow without bound with depth. A *block* is the innermost module that contains a layer
ending a residual branch (``LayerStats.residual``) and returns a tensor of its input's
shape that is not that layer's output (so ``attn``, whose output is ``c_proj``'s, is a
branch, and the ``Block`` around it, returning the sum, is a block).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...model.calls import first_tensor
from .classify import _kind
from .report import LayerStats


def _std(t: Tensor) -> float:
    return float(t.detach().float().std(correction=0)) if t.numel() > 1 else 0.0


class _Stream:
    """Forward hooks on the containers of ``model`` (not the leaves the recorder measures):
    the std of the input and output of each call whose output has the input's shape and
    is not a tracked layer output. ``owner(t)`` is the recorder's: the layer ``t`` is the
    output of (through dropout), or None."""

    def __init__(self, model: nn.Module, owner: Any) -> None:
        self.model, self.owner = model, owner
        self.handles: list[Any] = []
        self.calls: list[tuple[str, float, float]] = []  # (module, input std, output std), in completion order

    def attach(self) -> None:
        for name, m in self.model.named_modules():
            if not name or _kind(m) is not None or next(m.children(), None) is None:
                continue  # the model itself, the recorded layers, leaves
            self.handles.append(m.register_forward_hook(self._hook(name), with_kwargs=True))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _hook(self, name: str):
        @torch.no_grad()
        def hook(mod, args, kwargs, out):
            # the input: the first tensor argument (a block called as block(hidden_states=x) has it in kwargs)
            x, y = first_tensor(args), first_tensor(out)
            if x is None and kwargs:
                x = first_tensor(list(kwargs.values()))
            if not (isinstance(x, Tensor) and isinstance(y, Tensor) and x.is_floating_point()
                    and y.is_floating_point() and x.shape == y.shape and y.numel() > 1):
                return None
            if self.owner(y) is not None:  # a branch: its output is a layer's output
                return None
            try:
                self.calls.append((name, _std(x), _std(y)))
            except Exception:  # a statistic must never break the model's forward
                pass
            return None

        return hook

    def result(self, records: list[LayerStats]) -> list[dict[str, Any]] | None:
        """``[{"name", "std"}, ...]``: the stream entering the first block, then after each
        block call, in forward order; None when the model has fewer than 2 blocks."""
        ends = {r.name.split("#")[0] for r in records if r.residual and r.kind == "linear"}
        names = {n for n, _, _ in self.calls if any(e.startswith(n + ".") for e in ends)}
        # innermost: a container whose descendant is a block is not one itself (the Sequential of blocks)
        blocks = {n for n in names if not any(o.startswith(n + ".") for o in names)}
        calls = [c for c in self.calls if c[0] in blocks]
        if len(calls) < 2:
            return None
        first = calls[0]
        return [{"name": f"{first[0]} (input)", "std": first[1]}] + [{"name": n, "std": s} for n, _, s in calls]
