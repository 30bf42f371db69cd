"""How torchinit calls a model with example inputs (a tensor, a tuple or a mapping) and finds the tensor in what it returns."""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

__all__ = ["call_model", "first_tensor"]


def first_tensor(x: Any) -> Tensor | None:
    """The tensor a model's output stands for: itself, ``logits`` or
    ``last_hidden_state`` of a mapping (Hugging Face outputs), else the first tensor found."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, Mapping):
        for k in ("logits", "last_hidden_state"):
            if isinstance(x.get(k), Tensor):
                return x[k]
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        for v in x:
            t = first_tensor(v)
            if t is not None:
                return t
    return None


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping, ``model(*inputs)`` for a tuple/list, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)
