"""Gains: calculate_gain is torch's (values, types, errors); second_moment_gain's
constants are 1/sqrt(E[f(z)^2]) for z ~ N(0, 1), checked by quadrature."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torch.nn.init as tinit
from scipy.integrate import quad

from torchinit import calculate_gain, second_moment_gain
from torchinit.gains import TORCH_NONLINEARITIES


def _outcome(fn, *args):
    try:
        r = fn(*args)
        return ("ok", type(r), r)
    except Exception as e:  # noqa: BLE001
        return (type(e), str(e))


@pytest.mark.parametrize("nonlinearity", list(TORCH_NONLINEARITIES) + [
    "gelu", "ReLU", "Tanh", "", None, "identity", "leaky-relu", 3, "silu",
])
@pytest.mark.parametrize("param", [
    None, 0, 0.01, 0.2, 1, -1, 2.5, True, False, "0.1", torch.tensor(0.2), [0.1], 1 + 0j,
])
def test_calculate_gain_parity(nonlinearity, param):
    # values and types where torch succeeds; exception types and messages where it fails
    # (bool, str, tensor, list and complex slopes are rejected for leaky_relu only)
    assert _outcome(calculate_gain, nonlinearity, param) == _outcome(tinit.calculate_gain, nonlinearity, param)


def test_calculate_gain_table():
    assert calculate_gain("linear") == 1 and type(calculate_gain("conv2d")) is int
    assert calculate_gain("sigmoid") == 1
    assert calculate_gain("tanh") == 5 / 3
    assert calculate_gain("relu") == math.sqrt(2)
    assert calculate_gain("leaky_relu") == math.sqrt(2 / (1 + 0.01**2))
    assert calculate_gain("leaky_relu", math.sqrt(5)) == math.sqrt(1 / 3)
    assert calculate_gain("selu") == 0.75
    with pytest.raises(ValueError, match="^negative_slope True not a valid number$"):
        calculate_gain("leaky_relu", True)
    with pytest.raises(ValueError, match="^Unsupported nonlinearity gelu$"):
        calculate_gain("gelu")


# --- second-moment gains ----------------------------------------------------------

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "elu": F.elu,
    "softplus": F.softplus,
    "hardswish": F.hardswish,
    "relu": F.relu,
    "identity": lambda x: x,
}


def _second_moment(f) -> float:
    def integrand(z: float) -> float:
        v = f(torch.tensor(z, dtype=torch.float64)).item()
        return v * v * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

    # piecewise activations (relu, hardswish at +-3) get their kinks as breakpoints
    return sum(quad(integrand, lo, hi, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
               for lo, hi in [(-12, -3), (-3, 0), (0, 3), (3, 12)])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_second_moment_gain_by_quadrature(name):
    expected = 1 / math.sqrt(_second_moment(ACTIVATIONS[name]))
    assert second_moment_gain(name) == pytest.approx(expected, rel=1e-6, abs=0)


def test_second_moment_rule_reproduces_torch_for_rectifiers():
    # the same criterion gives torch's sqrt(2) for ReLU and sqrt(2/(1+a^2)) for leaky ReLU
    assert 1 / math.sqrt(_second_moment(F.relu)) == pytest.approx(math.sqrt(2), rel=1e-9)
    for a in (0.01, 0.2, math.sqrt(5)):
        m2 = _second_moment(lambda x, a=a: F.leaky_relu(x, a))
        assert 1 / math.sqrt(m2) == pytest.approx(calculate_gain("leaky_relu", a), rel=1e-9)
        assert second_moment_gain("leaky_relu", a) == calculate_gain("leaky_relu", a)


def test_second_moment_gain_names():
    assert second_moment_gain("tanh") == 5 / 3  # torch's value kept for torch's names
    assert second_moment_gain("selu") == 0.75
    assert type(second_moment_gain("linear")) is float
    assert second_moment_gain("GELU") == second_moment_gain("gelu")
    assert second_moment_gain("swish") == second_moment_gain("silu")
    assert second_moment_gain("none") == second_moment_gain("identity") == 1.0
    with pytest.raises(ValueError, match=r"Unsupported nonlinearity 'softsign'; known: .*gelu.*hardswish.*mish.*silu.*swish"):
        second_moment_gain("softsign")
