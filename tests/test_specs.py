"""Spec math: stds and bounds of every preset against their formulas, JAX
variance-scaling semantics, truncated-normal moments, and dict round trips."""

from __future__ import annotations

import json
import math

import pytest
import scipy.stats as st
import torch
from scipy.integrate import quad

import torchinit
from torchinit import specs as S
from torchinit.fans import Fans, compute_fans

SHAPES = [(64, 32), (256, 128, 3, 3), (16, 8, 5), (12, 6, 3, 2, 2), (7, 300)]


def _fans(shape):
    r = math.prod(shape[2:])
    return shape[1] * r, shape[0] * r


# ---------------------------------------------------------------------------
# presets against their formulas
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("nonlinearity, a, gain", [
    ("relu", 0, math.sqrt(2)),
    ("leaky_relu", 0, math.sqrt(2)),
    ("leaky_relu", 0.2, math.sqrt(2 / 1.04)),
    ("leaky_relu", math.sqrt(5), math.sqrt(1 / 3)),
    ("tanh", 0, 5 / 3),
    ("linear", 0, 1.0),
    ("selu", 0, 0.75),
])
def test_kaiming_std_and_bound(shape, mode, nonlinearity, a, gain):
    fan_in, fan_out = _fans(shape)
    fan = fan_in if mode == "fan_in" else fan_out
    std = gain / math.sqrt(fan)
    n = S.kaiming(shape, a, mode, nonlinearity, "normal")
    u = S.kaiming(shape, a, mode, nonlinearity, "uniform")
    assert isinstance(n, S.Normal) and isinstance(u, S.Uniform)
    assert n.mean == 0 and n.std == pytest.approx(std, rel=1e-14)
    assert u.bounds == pytest.approx((-math.sqrt(3) * std, math.sqrt(3) * std), rel=1e-14)
    assert u.std == pytest.approx(std, rel=1e-14)  # (high - low) / sqrt(12)
    t = S.kaiming(shape, a, mode, nonlinearity, "truncated_normal")
    assert t.std == pytest.approx(std, rel=1e-12)


def test_kaiming_sqrt5_is_one_over_sqrt_fan_in():
    # the default of nn.Linear / nn.ConvNd: U(+-1/sqrt(fan_in)), variance 1/(3 fan_in)
    u = S.kaiming((20, 48, 3), math.sqrt(5), "fan_in", "leaky_relu", "uniform")
    assert u.high == pytest.approx(1 / math.sqrt(144), rel=1e-14)
    assert u.std ** 2 == pytest.approx(1 / (3 * 144), rel=1e-13)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gain", [1.0, 5 / 3, math.sqrt(2)])
def test_xavier_std_and_bound(shape, gain):
    fan_in, fan_out = _fans(shape)
    std = gain * math.sqrt(2 / (fan_in + fan_out))
    assert S.xavier(shape, gain, "normal").std == pytest.approx(std, rel=1e-14)
    u = S.xavier(shape, gain, "uniform")
    assert u.high == pytest.approx(gain * math.sqrt(6 / (fan_in + fan_out)), rel=1e-14)
    assert u.low == -u.high


@pytest.mark.parametrize("shape", SHAPES)
def test_lecun(shape):
    fan_in, _ = _fans(shape)
    t = S.lecun(shape)
    assert isinstance(t, S.TruncatedNormal)
    assert t.std == pytest.approx(1 / math.sqrt(fan_in), rel=1e-12)
    s = 1 / math.sqrt(fan_in) / S.TRUNC_STD_CORRECTION
    assert t.bounds == pytest.approx((-2 * s, 2 * s), rel=1e-14)
    u = S.lecun(shape, "uniform")
    assert u.high == pytest.approx(math.sqrt(3 / fan_in), rel=1e-14)
    assert S.lecun(shape, "normal").std == pytest.approx(1 / math.sqrt(fan_in), rel=1e-14)


def test_presets_bitwise_equal_to_torch_arithmetic():
    # the torch engine relies on these being exactly torch's floats
    shape = (256, 128, 3, 3)
    fan_in, fan_out = 128 * 9, 256 * 9
    std = math.sqrt(2.0) / math.sqrt(fan_in)
    assert S.kaiming(shape, 0, "fan_in", "relu", "normal").std == std
    assert S.kaiming(shape, 0, "fan_in", "relu", "uniform").high == math.sqrt(3.0) * std
    xs = 1.0 * math.sqrt(2.0 / float(fan_in + fan_out))
    assert S.xavier(shape, 1.0, "normal").std == xs
    assert S.xavier(shape, 1.0, "uniform").high == math.sqrt(3.0) * xs


def test_what_std_would_kaiming_normal_give_without_drawing(restore_rng):
    # The example: the std kaiming_normal_ would give a (256, 128, 3, 3) weight.
    state = torch.get_rng_state()
    spec = S.kaiming((256, 128, 3, 3), nonlinearity="relu", distribution="normal")
    assert torch.equal(torch.get_rng_state(), state), "asking must not draw"
    assert spec.std == pytest.approx(math.sqrt(2 / (128 * 3 * 3)), rel=1e-15)
    assert spec.describe() == "Normal(mean=0, std=0.0416667)"
    # and it is what kaiming_normal_ then draws
    w = torchinit.kaiming_normal_(torch.empty(256, 128, 3, 3), nonlinearity="relu",
                                  generator=torch.Generator().manual_seed(0))
    assert w.std().item() == pytest.approx(spec.std, rel=0.01)


# ---------------------------------------------------------------------------
# JAX variance scaling
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", S.MODES)
@pytest.mark.parametrize("distribution", S.DISTRIBUTIONS)
@pytest.mark.parametrize("scale", [1.0, 2.0, 0.1])
def test_variance_scaling_semantics(mode, distribution, scale):
    shape = (48, 20, 3, 3)
    fan_in, fan_out = 20 * 9, 48 * 9
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2,
         "fan_geo_avg": math.sqrt(fan_in * fan_out)}[mode]
    var = scale / n
    spec = S.variance_scaling(shape, scale, mode, distribution)
    assert spec.mean == pytest.approx(0.0, abs=1e-15)
    assert spec.std ** 2 == pytest.approx(var, rel=1e-12)
    if distribution == "uniform":
        assert spec.bounds == pytest.approx((-math.sqrt(3 * var), math.sqrt(3 * var)), rel=1e-14)
    elif distribution == "normal":
        assert isinstance(spec, S.Normal) and spec.bounds is None
    else:
        # JAX: N(0, s^2) truncated at +-2 s, s = sqrt(var) / 0.87962566103423978
        s = math.sqrt(var) / 0.87962566103423978
        assert spec.std_ == pytest.approx(s, rel=1e-14)
        assert spec.bounds == pytest.approx((-2 * s, 2 * s), rel=1e-14)
        assert spec.alpha == pytest.approx(-2.0, rel=1e-14) and spec.beta == pytest.approx(2.0, rel=1e-14)


def test_trunc_correction_constant():
    assert S.TRUNC_STD_CORRECTION == pytest.approx(st.truncnorm(-2, 2).std(), rel=1e-15)
    assert S.TruncatedNormal(0, 1, -2, 2).std == pytest.approx(S.TRUNC_STD_CORRECTION, rel=1e-14)


@pytest.mark.parametrize("mode", S.MODES)
def test_truncated_normal_variance_is_scale_over_fan_empirically(mode):
    # 2 * 10^5 draws: the sample variance lands within 1.5% of scale / n (about 5 sigma of
    # slack for the sampling error, while forgetting the 0.8796 correction is off by 23%)
    w = torch.empty(200, 1000, dtype=torch.float64)
    torchinit.variance_scaling_(w, 2.0, mode, generator=torch.Generator().manual_seed(1))
    n = Fans(1000, 200).select(mode)
    assert w.var().item() == pytest.approx(2.0 / n, rel=0.015)
    s = math.sqrt(2.0 / n) / S.TRUNC_STD_CORRECTION
    assert w.abs().max().item() <= 2 * s


def test_variance_scaling_layouts_and_fans():
    # x@w layout: (in, out); the same as torch layout on the transposed shape
    a = S.variance_scaling((30, 10), 1.0, "fan_in", "normal", layout="x@w")
    b = S.variance_scaling((10, 30), 1.0, "fan_in", "normal")
    assert a.std == b.std == pytest.approx(1 / math.sqrt(30))
    # explicit fans win over the shape
    c = S.variance_scaling((3, 3), 1.0, "fan_out", "normal", fans=Fans(5, 50))
    assert c.std == pytest.approx(1 / math.sqrt(50))
    # grouped conv: fan_out divided by groups
    d = S.variance_scaling((8, 2, 3, 3), 1.0, "fan_out", "normal", layout="conv", groups=4)
    assert d.std == pytest.approx(1 / math.sqrt(2 * 9))
    assert compute_fans((8, 2, 3, 3), "conv", groups=4) == Fans(18, 18, 9)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"mode": "fan_sum"}, ValueError, r"Invalid `mode` argument: 'fan_sum'; use one of fan_in, fan_out, fan_avg, fan_geo_avg"),
    ({"distribution": "normal_truncated"}, ValueError, r"Invalid `distribution` argument: 'normal_truncated'"),
    ({"scale": 0.0}, ValueError, r"variance_scaling: scale must be positive, got 0.0"),
    ({"scale": -2}, ValueError, r"variance_scaling: scale must be positive, got -2"),
    ({"scale": float("inf")}, ValueError, r"variance_scaling: scale must be finite, got inf"),
    ({"scale": None}, TypeError, r"variance_scaling: scale must be a real number, got None"),
    ({"layout": "oihw"}, ValueError, r"unknown layout 'oihw'"),
])
def test_variance_scaling_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        S.variance_scaling((4, 3), **kwargs)


def test_from_std_and_scaled_std():
    f = Fans(100, 400)
    assert S.scaled_std(f, "fan_in", 2.0) == 2.0 / math.sqrt(100)
    assert S.scaled_std(f, "fan_out") == 1 / math.sqrt(400)
    assert S.scaled_std(f, "fan_avg") == math.sqrt(2.0 / 500)
    assert S.scaled_std(f, "fan_geo_avg") == pytest.approx(1 / math.sqrt(200))
    assert S.from_std(0.5, "uniform", mean=1.0).bounds == pytest.approx((1 - math.sqrt(0.75), 1 + math.sqrt(0.75)))
    with pytest.raises(ValueError, match=r"Invalid `distribution` argument: 'cauchy'"):
        S.from_std(1.0, "cauchy")
    with pytest.raises(ValueError, match=r"Mode fan_max not supported"):
        S.scaled_std(f, "fan_max")


def test_kaiming_spec_errors_match_torch():
    with pytest.raises(ValueError, match=r"Mode fan_avg not supported, please use one of \['fan_in', 'fan_out'\]"):
        S.kaiming((4, 3), mode="fan_avg")
    with pytest.raises(ValueError, match="Unsupported nonlinearity gelu"):
        S.kaiming((4, 3), nonlinearity="gelu")
    # validated by default; the drop-ins pass check=False so torch raises its own error
    with pytest.raises(ValueError, match="Uniform: low must be finite, got nan"):
        S.kaiming((4, 3), float("nan"))
    assert S.xavier((4, 3), -1.0, check=False).low > 0


# ---------------------------------------------------------------------------
# truncated normal moments
# ---------------------------------------------------------------------------

def _quad_moments(a, b):
    # reference by quadrature of exp(-(x^2 - c^2)/2), c the bound nearer 0 (no underflow)
    c = a if abs(a) < abs(b) else b
    f = lambda x: math.exp(-(x * x - c * c) / 2)  # noqa: E731
    z = quad(f, a, b, epsabs=0, epsrel=1e-13, limit=200)[0]
    m = quad(lambda x: x * f(x), a, b, epsabs=1e-14 * z, epsrel=1e-13, limit=200)[0] / z
    v = quad(lambda x: (x - m) ** 2 * f(x), a, b, epsabs=0, epsrel=1e-13, limit=200)[0] / z
    return m, math.sqrt(v)


@pytest.mark.parametrize("a, b, tol", [
    (-2, 2, 1e-12), (1.5, 3, 1e-12), (-3, 50, 1e-12), (0.5, 0.6, 1e-10), (-0.3, 5, 1e-12),
    (8, 10, 1e-9), (-10, -8, 1e-9), (29.9, 30.1, 1e-6), (-40, -39, 1e-6), (39, 40, 1e-5),
])
def test_truncated_normal_moments(a, b, tol):
    # includes far tails, where cdf(b) - cdf(a) cancels to 0 in double precision
    m, s = _quad_moments(a, b)
    for mean, std in [(0.0, 1.0), (0.3, 2.0)]:
        spec = S.TruncatedNormal(mean, std, mean + a * std, mean + b * std)
        assert spec.mean == pytest.approx(mean + std * m, rel=1e-12, abs=1e-13)
        assert spec.std == pytest.approx(std * s, rel=tol)
        assert spec.a <= spec.mean <= spec.b


def test_truncated_normal_degenerate_intervals_stay_inside_bounds():
    for a, b in [(39.9, 39.9000001), (39, 40), (-41, -40), (0, 1e-9), (0, 1e-310), (-1e-300, 1e-300)]:
        spec = S.TruncatedNormal(0, 1, a, b)
        assert a <= spec.mean <= b
        assert 0 <= spec.std <= (b - a) / 2
    # a very narrow interval is nearly uniform
    spec = S.TruncatedNormal(0, 1, 0.5, 0.5 + 1e-9)
    assert spec.std == pytest.approx(1e-9 / math.sqrt(12), rel=1e-6)


_FAR = ("starts {d} std from the mean (mean={m}, std={s}), beyond the 40 std up to which the engines draw a "
        "truncated normal faithfully: it holds a probability of about {p}, and the values would pile up at the bound")
_ABSOLUTE = (". a and b are absolute values: for bounds in standard units use a = mean + lower * std, "
             "b = mean + upper * std")


@pytest.mark.parametrize("mean, std, a, b, depth, p", [
    (0, 0.02, 3, 4, 150, "1e-4889"),  # bounds in std units given as absolute values
    (0, 1, 100, 100.0000001, 100, "1e-2179"), (0, 1, -1e6 - 1, -1e6, "1e+06", "1e-217147240959"),
    (5, 1e-3, -1e-6, 1e-6, 5000, "1e-5428683"), (0, 1, 40.000001, 41, 40, "1e-350"),
])
def test_truncation_beyond_40_std_is_refused_naming_the_bounds(mean, std, a, b, depth, p):
    # the keyed engine's inverse CDF loses precision there (values at the bound), torch's
    # rejection sampler nearly never accepts: refused wherever a TruncatedNormal is built
    with pytest.raises(ValueError) as err:
        S.TruncatedNormal(mean, std, a, b)
    assert str(err.value) == (f"TruncatedNormal: [a, b] = [{a:g}, {b:g}] "
                              + _FAR.format(d=depth, m=f"{mean:g}", s=f"{std:g}", p=p) + _ABSOLUTE)


def test_legitimate_tail_truncations_are_kept():
    # up to 40 std out, wide or narrow, on either side (the golden stream's [-40, -38] included)
    for a, b in [(40, 41), (-41, -40), (3, 1e9), (-1e9, -39.5), (8, 9), (0.5, 0.5 + 1e-9), (-1e-300, 1e-300)]:
        assert S.TruncatedNormal(0, 1, a, b).b == b
    assert S.TruncatedNormal(0, 0.02, 0.79, 0.8).alpha == pytest.approx(39.5)


def test_trunc_std_units_spec_conversion():
    # trunc_normal_std_units_ converts to absolute bounds before building the spec
    w = torchinit.trunc_normal_std_units_(torch.empty(20000), mean=0.5, std=0.02, lower=-1, upper=3,
                                          generator=torch.Generator().manual_seed(0))
    assert w.min().item() >= 0.5 - 0.02 and w.max().item() <= 0.5 + 0.06


# ---------------------------------------------------------------------------
# other specs
# ---------------------------------------------------------------------------

def test_simple_spec_moments():
    u = S.Uniform(-1.0, 3.0)
    assert (u.mean, u.std, u.bounds) == (1.0, pytest.approx(4 / math.sqrt(12)), (-1.0, 3.0))
    n = S.Normal(0.5, 2.0)
    assert (n.mean, n.std, n.bounds) == (0.5, 2.0, None)
    c = S.Constant(3)
    assert (c.mean, c.std, c.bounds) == (3.0, 0.0, (3.0, 3.0))
    assert S.Sparse(0.2, 0.1).std == 0.1
    for spec in (S.Eye(), S.Dirac(2), S.Orthogonal(2.0), S.DeltaOrthogonal()):
        assert spec.mean is None and spec.std is None and spec.bounds is None
    assert [s.random for s in (u, n, c, S.Eye(), S.Dirac(), S.Orthogonal(), S.DeltaOrthogonal(), S.Sparse())] == [
        True, True, False, False, False, True, True, True]
    assert [s.needs_whole_tensor for s in (u, n, S.Orthogonal(), S.DeltaOrthogonal(), S.Sparse())] == [
        False, False, True, True, True]


@pytest.mark.parametrize("spec, good, bad, match", [
    (S.Eye(), (3, 4), (3, 4, 5), "Only tensors with 2 dimensions are supported"),
    (S.Dirac(2), (4, 3, 3), (5, 3, 3), "dim 0 must be divisible by groups"),
    (S.Dirac(), (4, 3, 3, 3, 3), (4, 3), r"Only tensors with 3, 4, or 5 dimensions are supported"),
    (S.Orthogonal(), (4, 3, 3), (4,), "Only tensors with 2 or more dimensions are supported"),
    (S.DeltaOrthogonal(), (4, 3, 3), (3, 4, 3), r"out_channels >= in_channels"),
    (S.Sparse(), (4, 3), (4, 3, 1), "Only tensors with 2 dimensions are supported"),
])
def test_check_shape(spec, good, bad, match):
    spec.check_shape(good)
    with pytest.raises(ValueError, match=match):
        spec.check_shape(bad)


# ---------------------------------------------------------------------------
# dict round trips
# ---------------------------------------------------------------------------

EXAMPLES = [
    S.Uniform(-0.25, 0.5), S.Normal(0.1, 0.02), S.TruncatedNormal(0.0, 0.02, -0.04, 0.04),
    S.Constant(0.5), S.Constant(-3), S.Eye(), S.Dirac(3), S.Orthogonal(1.4142135623730951),
    S.DeltaOrthogonal(2.0), S.Sparse(0.25, 0.05),
    S.kaiming((256, 128, 3, 3), nonlinearity="relu", distribution="normal"),
    S.variance_scaling((64, 32), 2.0, "fan_avg", "truncated_normal"),
]


def test_examples_cover_every_exported_spec_kind():
    exported = {getattr(S, n) for n in S.__all__}
    kinds = {c.kind for c in exported if isinstance(c, type) and issubclass(c, S.Spec) and c is not S.Spec}
    assert kinds == {type(e).kind for e in EXAMPLES}


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda s: s.describe())
def test_dict_round_trip(spec):
    d = spec.to_dict()
    assert d["kind"] == type(spec).kind
    back = S.spec_from_dict(d)
    assert type(back) is type(spec) and back == spec
    assert back.to_dict() == d
    # plain data: survives JSON
    again = torchinit.spec_from_dict(json.loads(json.dumps(d)))
    assert again == spec and again.std == spec.std and again.bounds == spec.bounds
    assert spec.checked() == spec


def test_dict_uses_public_names():
    assert S.Normal(0.0, 2.0).to_dict() == {"kind": "normal", "mean": 0.0, "std": 2.0}
    assert S.TruncatedNormal(0, 1, -2, 2).to_dict() == {"kind": "truncated_normal", "mean": 0.0, "std": 1.0, "a": -2.0, "b": 2.0}
    assert S.Sparse(0.1, 0.01).to_dict() == {"kind": "sparse", "sparsity": 0.1, "std": 0.01}
    assert S.Uniform(-1, 1).to_dict() == {"kind": "uniform", "low": -1.0, "high": 1.0}


@pytest.mark.parametrize("d, exc, match", [
    ([("kind", "normal")], ValueError, r"a spec dict needs a 'kind' key"),
    ({"mean": 0.0}, ValueError, r"a spec dict needs a 'kind' key, got \{'mean': 0.0\}"),
    ({"kind": "gaussian"}, ValueError,
     r"unknown spec kind 'gaussian'; known kinds: .*constant.*normal.*truncated_normal.*uniform"),
    ({"kind": "spec"}, ValueError, r"unknown spec kind 'spec'"),
    ({"kind": "normal", "sigma": 1.0}, ValueError, r"spec 'normal' has no field\(s\) \['sigma'\]; fields: \['mean', 'std'\]"),
    ({"kind": "normal", "std": -1.0}, ValueError, r"Normal: std must be >= 0, got -1.0"),
    ({"kind": "normal", "std": "1"}, TypeError, r"Normal: std must be a real number, got '1'"),
    ({"kind": "uniform", "low": 1.0, "high": 0.0}, ValueError, r"Uniform: low must be <= high, got low=1.0 > high=0.0"),
    ({"kind": "uniform", "low": float("nan")}, ValueError, r"Uniform: low must be finite, got nan"),
    ({"kind": "truncated_normal", "a": 1.0, "b": 1.0}, ValueError, r"TruncatedNormal: need a < b, got a=1.0, b=1.0"),
    ({"kind": "truncated_normal", "std": 0}, ValueError, r"TruncatedNormal: std must be > 0, got 0"),
    ({"kind": "sparse", "sparsity": 1.5}, ValueError, r"sparse_: sparsity must be in \[0, 1\], got 1.5"),
    ({"kind": "sparse", "std": -0.1}, ValueError, r"sparse_: std must be >= 0, got -0.1"),
    ({"kind": "constant", "value": "one"}, TypeError, r"Constant: value must be a real number, got 'one'"),
    ({"kind": "constant", "value": True}, TypeError, r"Constant: value must be a real number, got True"),
    ({"kind": "orthogonal", "gain": float("inf")}, ValueError, r"Orthogonal: gain must be finite, got inf"),
    # a negative groups made both engines write all zeros; 0 and 2.0 failed mid-write
    ({"kind": "dirac", "groups": -2}, ValueError, r"Dirac: groups must be a positive int, got -2"),
    ({"kind": "dirac", "groups": 0}, ValueError, r"Dirac: groups must be a positive int, got 0"),
    ({"kind": "dirac", "groups": 2.0}, ValueError, r"Dirac: groups must be a positive int, got 2.0"),
    ({"kind": "dirac", "groups": True}, ValueError, r"Dirac: groups must be a positive int, got True"),
])
def test_bad_dicts(d, exc, match):
    with pytest.raises(exc, match=match):
        S.spec_from_dict(d)


def test_checked_validates_unchecked_specs():
    with pytest.raises(ValueError, match="Normal: std must be >= 0"):
        S.Normal._unchecked(mean_=0.0, std_=-1.0).checked()
