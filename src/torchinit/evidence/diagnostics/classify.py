"""How diagnostics classify modules and calls: layer kinds, nonlinearities, the ops that sum or pass a layer's output through."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.gains import auto_gain
from ...model.activations import activation_of_module

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
    "tanh": "Tanh", "sigmoid": "Sigmoid", "gelu_tanh": "GELU (tanh)",
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


def _kind(module: nn.Module) -> str | None:
    """'linear' (Linear/Conv/Bilinear/other leaf with a >=2-D weight), 'embedding',
    'attention', 'recurrent' (RNN/GRU/LSTM and their cells), 'norm', 'activation' or
    None (not recorded)."""
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        return "recurrent"
    if isinstance(module, nn.MultiheadAttention):
        return "attention"
    if isinstance(module, _NORM_TYPES):
        return "norm"
    if type(module) in _ACTIVATIONS or isinstance(module, tuple(_ACTIVATIONS)):
        return "activation"
    if _library_activation(module) is not None:
        return "activation"
    if isinstance(module, (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)):
        return "linear"
    w = getattr(module, "weight", None)
    if isinstance(w, Tensor) and w.dim() >= 2 and not list(module.children()):
        return "linear"
    return None


def _library_activation(module: nn.Module) -> tuple[str, float | None] | None:
    """A leaf activation module of another library (Hugging Face's ``NewGELUActivation``,
    ``GELUActivation``, timm's ``GELUTanh``...), as plans detect them; a container is never one."""
    if isinstance(module, tuple(_ACTIVATIONS)) or next(iter(module.children()), None) is not None:
        return None
    return activation_of_module(module)


def _nonlinearity(module: nn.Module) -> tuple[str, float | None]:
    for cls in type(module).__mro__:
        if cls in _ACTIVATIONS:
            name = _ACTIVATIONS[cls]
            break
    else:
        found = _library_activation(module)
        return found if found is not None else ("unknown", None)
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
