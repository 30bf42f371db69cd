"""What counts as a weight layer, an activation and a "transparent" operation (one that passes a
layer's output on unchanged in kind: norms, dropout, pooling, reshapes, residual ``+``, gating
``*``): the vocabulary nonlinearity detection (:mod:`.nonlinearity`, :mod:`.forward_flow`) shares;
and which layer is a model's output layer (:func:`output_layer`, the ``"@output_head"`` selector)."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["Detection", "is_weight_layer", "activation_of_module", "activation_of_call", "transparent_module", "output_layer",
           "TRANSPARENT_FUNCS", "TRANSPARENT_METHODS"]


@dataclass(frozen=True)
class Detection:
    """The activation found after one layer.

    ``nonlinearity``: a gain name ("relu", "leaky_relu", "gelu", "linear", ...);
    ``param``: its parameter (leaky slope) or None; ``source``: "fx", "hooks" or
    "order"; ``via``: what was found (``"layers.1 (ReLU)"``, ``"F.gelu"``, ``"output"``).
    """

    nonlinearity: str
    param: float | None
    source: str
    via: str

    def describe(self) -> str:
        return f"{self.source}: {self.via}"


def output_layer(model: nn.Module) -> nn.Module | None:
    """The module ``model`` names as its output layer through ``get_output_embeddings()``
    (Hugging Face's API: ``lm_head``, BERT's ``cls.predictions.decoder``, Whisper's
    ``proj_out``); None for a model without that method or without a head."""
    get = getattr(model, "get_output_embeddings", None)
    if not callable(get):
        return None
    try:
        head = get()
    except (NotImplementedError, AttributeError):  # backbones without a head say so this way
        return None
    return head if isinstance(head, nn.Module) else None


def is_weight_layer(m: nn.Module) -> bool:
    """Linear, ConvNd / ConvTransposeNd, Bilinear, or Hugging Face's ``Conv1D``."""
    return isinstance(m, (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear)) or type(m).__name__ == "Conv1D"


_TRANSPARENT_MODULES: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.dropout._DropoutNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.ZeroPad2d,
)
if hasattr(nn, "RMSNorm"):
    _TRANSPARENT_MODULES = _TRANSPARENT_MODULES + (nn.RMSNorm,)


def transparent_module(m: nn.Module) -> bool:
    n = type(m).__name__
    return isinstance(m, _TRANSPARENT_MODULES) or n.endswith(("LayerNorm", "RMSNorm", "Dropout"))


_ACT_BY_NAME = {
    "relu": "relu", "relu_": "relu", "relu6": "relu", "hardtanh": None,
    "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
    "selu": "selu", "selu_": "selu", "gelu": "gelu", "silu": "silu", "silu_": "silu", "mish": "mish",
    "elu": "elu", "elu_": "elu", "softplus": "softplus", "hardswish": "hardswish", "hardswish_": "hardswish",
    "leaky_relu": "leaky_relu", "leaky_relu_": "leaky_relu",
}


#: Activation modules without a parameter that matters, and the nonlinearity each is.
_PLAIN_ACTIVATIONS = (
    ((nn.ReLU, nn.ReLU6), "relu"), (nn.Tanh, "tanh"), (nn.Sigmoid, "sigmoid"), (nn.SELU, "selu"),
    (nn.SiLU, "silu"), (nn.Mish, "mish"), (nn.ELU, "elu"), (nn.Softplus, "softplus"), (nn.Hardswish, "hardswish"),
)


def activation_of_module(m: nn.Module) -> tuple[str, float | None] | None:
    """``(nonlinearity, param)`` for an activation module, None for anything else."""
    for cls, act in _PLAIN_ACTIVATIONS:
        if isinstance(m, cls):
            return (act, None)
    if isinstance(m, nn.LeakyReLU):
        return ("leaky_relu", float(m.negative_slope))
    if isinstance(m, nn.PReLU):
        return ("leaky_relu", float(m.init) if hasattr(m, "init") else float(m.weight.detach().mean()))
    if isinstance(m, nn.GELU):
        return ("gelu_tanh" if m.approximate == "tanh" else "gelu", None)
    name = type(m).__name__.lower()
    if list(m.parameters(recurse=False)):
        return None
    if "gelu" in name:
        return ("gelu_tanh" if ("new" in name or "fast" in name or "tanh" in name) else "gelu", None)
    if "silu" in name or "swish" in name:
        return ("silu", None)
    if "mish" in name:
        return ("mish", None)
    if name in ("relu", "reluactivation", "relusquaredactivation"):
        return ("relu", None)
    return None


def activation_of_call(name: str, args: tuple, kwargs: Mapping[str, Any]) -> tuple[str, float | None] | None:
    act = _ACT_BY_NAME.get(name)
    if act is None:
        return None
    if act == "leaky_relu":
        slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
        return ("leaky_relu", float(slope) if isinstance(slope, (int, float)) else 0.01)
    if act == "gelu" and kwargs.get("approximate", "none") == "tanh":
        return ("gelu_tanh", None)
    return (act, None)


TRANSPARENT_FUNCS = {
    operator.add, operator.iadd, operator.sub, operator.mul, operator.imul, operator.getitem, operator.neg,
    operator.truediv, torch.add, torch.mul, torch.cat, torch.flatten, torch.reshape, torch.transpose,
    torch.permute, torch.squeeze, torch.unsqueeze, torch.nn.functional.dropout, torch.nn.functional.pad,
    torch.nn.functional.layer_norm, torch.nn.functional.batch_norm, torch.nn.functional.group_norm,
    torch.nn.functional.max_pool1d, torch.nn.functional.max_pool2d, torch.nn.functional.max_pool3d,
    torch.nn.functional.avg_pool1d, torch.nn.functional.avg_pool2d, torch.nn.functional.avg_pool3d,
    torch.nn.functional.adaptive_avg_pool1d, torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.adaptive_avg_pool3d, torch.nn.functional.adaptive_max_pool2d,
    torch.nn.functional.interpolate, torch.chunk, torch.split, torch.mean,
}
TRANSPARENT_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "add", "add_",
    "mul", "mul_", "__getitem__", "expand", "expand_as", "mean", "clone", "float", "to", "type_as", "chunk",
    "split", "view_as", "reshape_as", "sub", "neg", "div",
}
