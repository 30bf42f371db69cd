"""Property tests (hypothesis): random shapes, dtypes and arguments either work
(same bits as torch for the drop-ins, values inside the spec's bounds, shape and
dtype kept) or raise a clear error, and a failed call never changes the tensor."""

from __future__ import annotations

import inspect
import math
import warnings

import torch
import torch.nn.init as tinit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchinit
from torchinit import specs as S

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.complex64]
ERRORS = (ValueError, TypeError, RuntimeError, NotImplementedError, ZeroDivisionError, OverflowError, IndexError)

shapes = st.lists(st.integers(0, 6), min_size=0, max_size=5).map(tuple)
dtypes = st.sampled_from(DTYPES)
reals = st.one_of(
    st.floats(-3, 3, allow_nan=False),
    st.integers(-3, 3),
    st.sampled_from([0.0, -0.0, 1e-30, 1e30, -1e30, float("nan"), float("inf"), -float("inf")]),
)
positive = st.one_of(st.floats(1e-3, 3), st.sampled_from([0.0, -1.0, float("nan"), 1e-30]))


def _tensor(shape, dtype):
    n = math.prod(shape)
    return (torch.arange(n, dtype=torch.float64).reshape(shape) * 0.37 - 1).to(dtype)


def _bits(t):
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


def _call(fn, t, kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(t, **kw), None
        except ERRORS as e:
            return None, e


DROP_IN_ARGS = {
    "uniform_": st.fixed_dictionaries({"a": reals, "b": reals}),
    "normal_": st.fixed_dictionaries({"mean": reals, "std": reals}),
    "trunc_normal_": st.fixed_dictionaries({"mean": reals, "std": positive, "a": reals, "b": reals}),
    "constant_": st.fixed_dictionaries({"val": reals}),
    "ones_": st.just({}),
    "zeros_": st.just({}),
    "eye_": st.just({}),
    "dirac_": st.fixed_dictionaries({"groups": st.integers(-2, 4)}),
    "xavier_uniform_": st.fixed_dictionaries({"gain": reals}),
    "xavier_normal_": st.fixed_dictionaries({"gain": reals}),
    "kaiming_uniform_": st.fixed_dictionaries({
        "a": reals, "mode": st.sampled_from(["fan_in", "fan_out", "FAN_OUT", "fan_avg"]),
        "nonlinearity": st.sampled_from(["leaky_relu", "relu", "tanh", "selu", "gelu"])}),
    "kaiming_normal_": st.fixed_dictionaries({
        "a": reals, "mode": st.sampled_from(["fan_in", "fan_out"]),
        "nonlinearity": st.sampled_from(["leaky_relu", "relu", "linear"])}),
    "orthogonal_": st.fixed_dictionaries({"gain": reals}),
    "sparse_": st.fixed_dictionaries({"sparsity": st.one_of(st.floats(-0.5, 1.5), st.just(float("nan"))),
                                      "std": positive}),
}

# Inputs torch accepts and we refuse (documented in docs/initializers.md)
def _stricter(name, kw):
    # nan / inf arguments torch turns into nan / inf (or all-zero) values (issue 19)
    inf = float("inf")
    if name == "normal_":
        return kw["std"] == inf or not math.isfinite(kw["mean"])
    if name == "xavier_normal_":
        return kw["gain"] == inf
    if name == "orthogonal_":
        return not math.isfinite(kw["gain"])
    if name in ("kaiming_uniform_", "kaiming_normal_"):
        return kw["nonlinearity"] == "leaky_relu" and math.isinf(kw["a"])
    if name == "sparse_" and kw["std"] == inf:
        return True
    if name == "trunc_normal_":
        if all(math.isfinite(kw[k]) for k in ("mean", "std", "a", "b")) and kw["std"] > 0 and kw["a"] < kw["b"]:
            # an interval more than 40 std from the mean (torch: rejection sampling that nearly never accepts)
            return max(kw["a"] - kw["mean"], kw["mean"] - kw["b"]) / kw["std"] > 40
        return kw["std"] < 0 or math.isnan(kw["std"]) or kw["std"] == inf or not math.isfinite(kw["mean"])
    if name == "sparse_":
        s = kw["sparsity"]
        return math.isfinite(s) and not 0 <= s <= 1
    if name == "dirac_":
        return kw["groups"] < 0
    return False


def _names_nonfinite(kw, exc):
    """``exc`` is our ValueError naming a nan/inf argument of ``kw``."""
    return isinstance(exc, ValueError) and any(
        isinstance(v, float) and not math.isfinite(v)
        and str(exc).split(" (")[0].endswith(f"{k} must be finite, got {k}={v}")
        for k, v in kw.items())


def _overflow(exc):
    # finite arguments whose normal values overflow the dtype (6 std from the mean): torch writes inf
    return " overflows torch." in str(exc)


@SETTINGS
@given(name=st.sampled_from(sorted(DROP_IN_ARGS)), shape=shapes, dtype=dtypes, data=st.data())
def test_drop_ins_match_torch_or_refuse_clearly(name, shape, dtype, data):
    kw = data.draw(DROP_IN_ARGS[name], label="kwargs")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    outcomes = []
    for mod in (tinit, torchinit):
        t = _tensor(shape, dtype)
        before = t.clone()
        k = dict(kw)
        if "generator" in inspect.signature(getattr(tinit, name)).parameters:
            k["generator"] = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        out, exc = _call(getattr(mod, name), t, k)
        if exc is not None:
            assert str(exc), "errors must say what is wrong"
            # (torch itself writes, then fails, for complex trunc_normal_: only ours is held to it)
            assert mod is tinit or _same(t, before), f"{name} raised {exc!r} after writing"
        else:
            assert out is t and t.shape == shape and t.dtype == dtype
        outcomes.append((t, exc, torch.get_rng_state()))
    (t_ref, e_ref, rng_ref), (t_ours, e_ours, rng_ours) = outcomes
    if e_ours is not None and e_ref is None:
        assert isinstance(e_ours, ValueError) and (_stricter(name, kw) or _overflow(e_ours)), \
            f"only documented refusals: {e_ours!r}"
        return
    if e_ours is not None and _names_nonfinite(kw, e_ours):
        return  # torch fails too, with an error that does not name the argument (issue 19)
    assert type(e_ours) is type(e_ref) and str(e_ours) == str(e_ref)
    if e_ours is None:
        assert _same(t_ours, t_ref)
        assert torch.equal(rng_ours, rng_ref)
        if name == "trunc_normal_" and not t_ours.is_complex():
            lo = torch.tensor(kw["a"], dtype=torch.float64).to(dtype).item()
            hi = torch.tensor(kw["b"], dtype=torch.float64).to(dtype).item()
            vals = t_ours.double()
            assert ((vals >= lo) & (vals <= hi)).all()


# --- extras: clear error or values inside the spec ---------------------------------

EXTRA_ARGS = {
    "variance_scaling_": st.fixed_dictionaries({
        "scale": st.one_of(st.floats(0.01, 4), st.sampled_from([0, -1.0, float("nan"), True])),
        "mode": st.sampled_from(list(S.MODES) + ["fan_max"]),
        "distribution": st.sampled_from(list(S.DISTRIBUTIONS) + ["gaussian"]),
        "layout": st.sampled_from(["torch", "x@w", "conv", "conv_transpose"]),
        "groups": st.integers(1, 3),
    }),
    "lecun_uniform_": st.fixed_dictionaries({"layout": st.sampled_from(["torch", "x@w"])}),
    "lecun_normal_": st.fixed_dictionaries({"layout": st.sampled_from(["torch", "conv"]), "groups": st.integers(1, 2)}),
    "trunc_normal_std_units_": st.fixed_dictionaries({"mean": reals, "std": positive, "lower": reals, "upper": reals}),
    "delta_orthogonal_": st.fixed_dictionaries({"gain": reals}),
}


def _expected_bounds(name, t, kw):
    """Closed bounds every value must lie in, from the same spec the function builds."""
    if name == "trunc_normal_std_units_":
        spec = S.TruncatedNormal(kw["mean"], kw["std"], kw["mean"] + kw["lower"] * kw["std"],
                                 kw["mean"] + kw["upper"] * kw["std"])
    elif name == "delta_orthogonal_":
        g = abs(kw["gain"])
        return -g, g
    else:
        layout = kw.get("layout", "torch")
        groups = kw.get("groups", 1)
        scale, mode, dist = {
            "variance_scaling_": (kw.get("scale"), kw.get("mode"), kw.get("distribution")),
            "lecun_uniform_": (1.0, "fan_in", "uniform"),
            "lecun_normal_": (1.0, "fan_in", "truncated_normal"),
        }[name]
        spec = S.variance_scaling(tuple(t.shape), scale, mode, dist, layout=layout, groups=groups)
    return spec.bounds


@SETTINGS
@given(name=st.sampled_from(sorted(EXTRA_ARGS)), shape=shapes, dtype=dtypes, data=st.data())
def test_extras_work_or_refuse_without_writing(name, shape, dtype, data):
    kw = data.draw(EXTRA_ARGS[name], label="kwargs")
    t = _tensor(shape, dtype)
    before = t.clone()
    out, exc = _call(getattr(torchinit, name), t, dict(kw, generator=torch.Generator().manual_seed(0)))
    if exc is not None:
        # (RuntimeError: torch's own, e.g. "from is out of bounds for c10::Half" for bounds
        # outside the dtype's range)
        assert isinstance(exc, (ValueError, TypeError, NotImplementedError, RuntimeError)), repr(exc)
        assert str(exc)
        assert _same(t, before), f"{name} raised {exc!r} after writing"
        if not dtype.is_floating_point:
            assert isinstance(exc, TypeError) and "floating-point" in str(exc)
        return
    assert out is t and t.shape == shape and t.dtype == dtype and dtype.is_floating_point
    if t.numel() == 0:
        return
    bounds = _expected_bounds(name, t, kw)
    vals = t.double()
    if bounds is None:
        assert vals.isfinite().all()
    else:
        # bounds rounded to the dtype (a bound past fp16's range rounds to inf, like the values)
        lo = torch.tensor(bounds[0], dtype=torch.float64).to(dtype).double()
        hi = torch.tensor(bounds[1], dtype=torch.float64).to(dtype).double()
        assert ((vals >= lo) & (vals <= hi)).all(), (bounds, vals.min(), vals.max())
        if lo.isfinite() and hi.isfinite():
            assert vals.isfinite().all()


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=5).map(tuple),
       dtype=st.sampled_from([torch.float32, torch.float64]),
       gain=st.floats(0.1, 3))
def test_orthogonal_property(shape, dtype, gain):
    w = torchinit.orthogonal_(torch.empty(shape, dtype=dtype), gain, generator=torch.Generator().manual_seed(1))
    m = w.reshape(shape[0], -1).double()
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    eye = gain**2 * torch.eye(gram.shape[0], dtype=torch.float64)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(gram, eye, rtol=0, atol=tol * max(1.0, gain**2))


@SETTINGS
@given(spec=st.one_of(
    st.builds(S.Uniform, st.floats(-5, 0), st.floats(0, 5)),
    st.builds(S.Normal, st.floats(-5, 5), st.floats(0, 5)),
    st.builds(lambda m, s, lo, w: S.TruncatedNormal(m, s, lo, lo + w),
              st.floats(-5, 5), st.floats(1e-3, 5), st.floats(-20, 20), st.floats(1e-3, 20)),
    st.builds(S.Constant, st.floats(-5, 5)),
    st.builds(S.Sparse, st.floats(0, 1), st.floats(0, 1)),
    st.builds(S.Orthogonal, st.floats(-3, 3)),
    st.builds(S.Dirac, st.integers(1, 4)),
))
def test_spec_dict_round_trip(spec):
    back = S.spec_from_dict(spec.to_dict())
    assert back == spec and back.to_dict() == spec.to_dict()
    if spec.bounds is not None and spec.mean is not None:
        assert spec.bounds[0] <= spec.mean <= spec.bounds[1]
    if spec.std is not None:
        assert spec.std >= 0 and math.isfinite(spec.std)
