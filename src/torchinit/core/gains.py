"""Gains: the factor that keeps activation variance constant through a nonlinearity.

``calculate_gain`` is bit-for-bit ``torch.nn.init.calculate_gain`` (same return
values, types and errors). ``second_moment_gain`` extends it to activations torch
does not list (GELU, SiLU, Mish, ELU, ...) with a principled rule,
``g = 1 / sqrt(E[f(z)^2])`` for ``z ~ N(0, 1)``, which gives exactly sqrt(2)
for ReLU (torch's value) and sqrt(2 / (1 + a^2)) for leaky ReLU.
"""

from __future__ import annotations

import math

__all__ = ["calculate_gain", "second_moment_gain", "auto_gain", "TORCH_NONLINEARITIES"]

_LINEAR_FNS = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
)

#: Names accepted by ``calculate_gain`` (torch's list).
TORCH_NONLINEARITIES = _LINEAR_FNS + ("sigmoid", "tanh", "relu", "leaky_relu", "selu")


def calculate_gain(nonlinearity: str, param: int | float | None = None) -> float:
    r"""Recommended gain for a nonlinearity (identical to ``torch.nn.init.calculate_gain``).

    ================= ==========================================
    nonlinearity      gain
    ================= ==========================================
    linear, conv*     1
    sigmoid           1
    tanh              5/3
    relu              sqrt(2)
    leaky_relu        sqrt(2 / (1 + negative_slope^2)), slope 0.01 if ``param`` is None
    selu              3/4 (torch's empirical choice; use 'linear', i.e. LeCun, for
                      self-normalizing networks)
    ================= ==========================================

    Raises ``ValueError("Unsupported nonlinearity ...")`` for other names and
    ``ValueError("negative_slope ... not a valid number")`` for a bool or
    non-numeric ``param``, exactly like torch.
    """
    if nonlinearity in _LINEAR_FNS or nonlinearity == "sigmoid":
        return 1  # torch returns the int 1 here; keep the type for parity
    elif nonlinearity == "tanh":
        return 5.0 / 3
    elif nonlinearity == "relu":
        return math.sqrt(2.0)
    elif nonlinearity == "leaky_relu":
        if param is None:
            negative_slope = 0.01
        elif (not isinstance(param, bool) and isinstance(param, int)) or isinstance(param, float):
            # True/False are ints: torch rejects them as slopes.
            negative_slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + negative_slope**2))
    elif nonlinearity == "selu":
        return 3.0 / 4
    else:
        raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


# 1 / sqrt(E[f(z)^2]), z ~ N(0,1), computed by adaptive quadrature (scipy.integrate.quad,
# checked in tests/test_gains.py). Used for activations torch has no gain for.
_SECOND_MOMENT = {
    "gelu": 0.4252214826,  # gain 1.533530
    "gelu_tanh": 0.4251937110,  # gain 1.533581
    "silu": 0.3557755198,  # gain 1.676532
    "mish": 0.4523421924,  # gain 1.486848
    "elu": 0.6449454175,  # alpha = 1, gain 1.245198
    "softplus": 0.9212459089,  # gain 1.041867
    "hardswish": 0.3315673751,  # gain 1.736657
}


def second_moment_gain(nonlinearity: str, param: float | None = None) -> float:
    """Gain ``1/sqrt(E[f(z)^2])`` for ``z ~ N(0, 1)``; torch's values where torch has one.

    For names in :data:`TORCH_NONLINEARITIES` this returns ``calculate_gain``
    (so tanh stays 5/3 and selu 3/4). For GELU, SiLU/Swish, Mish, ELU, softplus
    and hardswish it returns the second-moment gain: the std that keeps the
    mean square of the activation equal to that of its input, the same
    criterion that yields sqrt(2) for ReLU.
    """
    name = nonlinearity.lower()
    if name in TORCH_NONLINEARITIES:
        return float(calculate_gain(name, param))
    if name in ("identity", "none"):
        return 1.0
    if name == "swish":
        name = "silu"
    if name not in _SECOND_MOMENT:
        known = sorted(set(TORCH_NONLINEARITIES) | set(_SECOND_MOMENT) | {"identity", "swish"})
        raise ValueError(f"Unsupported nonlinearity {nonlinearity!r}; known: {', '.join(known)}")
    return 1.0 / math.sqrt(_SECOND_MOMENT[name])


def auto_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain torchinit uses for a detected nonlinearity (presets with
    ``nonlinearity="auto"``, and what ``diagnose`` expects a layer to have):
    torch's values, second-moment gains for GELU/SiLU/Mish/..., and 1 for SELU
    (LeCun init keeps SELU networks self-normalizing, Klambauer et al. 2017)."""
    if nonlinearity == "selu":
        return 1.0
    return second_moment_gain(nonlinearity, param)
