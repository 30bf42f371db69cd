"""Bitwise parity of the torchinit drop-ins with the installed ``torch.nn.init``.

For every drop-in we call torch's function and ours on identical tensors with
identical RNG state (an explicit ``generator=`` or the global RNG), then demand:
the same bits (NaN-aware, signed zeros included), the same returned object,
the same generator state and global RNG state afterwards, the same warnings, and
for inputs torch rejects, the same exception type and message.
"""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch
import torch.nn.init as tinit

import torchinit

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPE_IDS = ["f32", "f64", "f16", "bf16"]

RANDOM = {
    "uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_",
    "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
}

SHAPES_ND = [(6, 5), (5, 9), (4, 3, 5), (8, 4, 3, 3), (4, 2, 3, 2, 2)]
SHAPES_2D = [(6, 5), (5, 9)]
SHAPES_CONV = [(4, 3, 5), (8, 4, 3, 3), (4, 2, 3, 2, 2), (6, 2, 3)]

# name -> (shapes, [(label, kwargs), ...])
CASES = {
    "uniform_": (SHAPES_ND, [("default", {}), ("ab", {"a": -0.5, "b": 2.0})]),
    "normal_": (SHAPES_ND, [("default", {}), ("mean_std", {"mean": 0.3, "std": 2.0})]),
    "trunc_normal_": (SHAPES_ND, [
        ("default", {}),
        ("std0.02", {"std": 0.02}),
        # mass inside [a, b] <= 0.3: torch's uniform-proposal branch
        ("tail", {"mean": 0.0, "std": 1.0, "a": 1.5, "b": 3.0}),
        ("asym", {"mean": 1.0, "std": 0.5, "a": -1.0, "b": 0.5}),
        # a == b: torch writes the constant a (the limit of the distribution): kept
        ("a_eq_b", {"mean": 0.0, "std": 1.0, "a": 0.5, "b": 0.5}),
    ]),
    "constant_": (SHAPES_ND, [("0.3", {"val": 0.3}), ("-2", {"val": -2})]),
    "ones_": (SHAPES_ND, [("default", {})]),
    "zeros_": (SHAPES_ND, [("default", {})]),
    "eye_": (SHAPES_2D, [("default", {})]),
    "dirac_": (SHAPES_CONV, [("default", {}), ("groups2", {"groups": 2})]),
    # gain 0 gives U(-0.0, 0.0): torch writes -0.0, the signed zero must match
    "xavier_uniform_": (SHAPES_ND, [("default", {}), ("tanh", {"gain": 5.0 / 3}), ("gain0", {"gain": 0.0})]),
    "xavier_normal_": (SHAPES_ND, [("default", {}), ("tanh", {"gain": 5.0 / 3})]),
    "kaiming_uniform_": (SHAPES_ND, [
        ("default", {}),
        ("sqrt5", {"a": math.sqrt(5)}),
        ("fan_out_relu", {"mode": "fan_out", "nonlinearity": "relu"}),
        ("FAN_IN_upper", {"mode": "FAN_IN"}),
    ]),
    "kaiming_normal_": (SHAPES_ND, [
        ("default", {}),
        ("leaky_fan_out", {"a": 0.2, "mode": "fan_out"}),
        ("tanh", {"nonlinearity": "tanh"}),
    ]),
    "orthogonal_": (SHAPES_ND, [("default", {}), ("gain2", {"gain": 2.0})]),
    "sparse_": (SHAPES_2D, [("0.3", {"sparsity": 0.3}), ("0.5_std", {"sparsity": 0.5, "std": 0.1})]),
}


def _run(fn, tensor, kwargs):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            out, exc = fn(tensor, **kwargs), None
        except Exception as e:  # noqa: BLE001 - compared below
            out, exc = None, e
    return out, exc, [(w.category, str(w.message)) for w in rec]


def check_parity(name, make, kwargs=None, *, use_generator=True, seed=0, same_bits=None):
    """Run torch's and torchinit's ``name`` on fresh ``make()`` tensors; assert parity.

    Returns the torchinit tensor (for further checks).
    """
    results = []
    for mod in (tinit, torchinit):
        t = make()
        kw = dict(kwargs or {})
        gen = None
        if use_generator and name in RANDOM:
            gen = torch.Generator().manual_seed(seed + 12345)
            kw["generator"] = gen
        torch.manual_seed(seed)  # sparse_ permutes with the global RNG even with a generator
        out, exc, warns = _run(getattr(mod, name), t, kw)
        results.append({
            "t": t, "out": out, "exc": exc, "warns": warns,
            "gen": None if gen is None else gen.get_state(), "rng": torch.get_rng_state(),
        })
    ref, got = results
    assert got["warns"] == ref["warns"]
    if ref["exc"] is not None or got["exc"] is not None:
        assert type(got["exc"]) is type(ref["exc"]), (ref["exc"], got["exc"])
        assert str(got["exc"]) == str(ref["exc"])
        # ours is left untouched (torch writes before failing on complex trunc_normal_)
        ref["t"] = make()
    else:
        assert got["out"] is got["t"], "must return the tensor it was given"
        assert ref["out"] is ref["t"]
    same_bits(got["t"], ref["t"])
    if got["t"]._base is not None:  # a view: nothing outside it may change either
        same_bits(got["t"]._base, ref["t"]._base)
    if ref["gen"] is not None:
        assert torch.equal(got["gen"], ref["gen"]), "explicit generator left in a different state"
    assert torch.equal(got["rng"], ref["rng"]), "global RNG left in a different state"
    return got["t"]


def _params():
    for name, (shapes, variants) in CASES.items():
        for label, kw in variants:
            for shape in shapes:
                for dt, dtid in zip(DTYPES, DTYPE_IDS):
                    gens = (True, False) if name in RANDOM else (False,)
                    for g in gens:
                        yield pytest.param(
                            name, kw, shape, dt, g,
                            id=f"{name}-{label}-{'x'.join(map(str, shape))}-{dtid}-{'gen' if g else 'global'}",
                        )


@pytest.mark.parametrize("name, kwargs, shape, dtype, use_generator", list(_params()))
def test_bitwise_parity(name, kwargs, shape, dtype, use_generator, same_bits):
    def make():
        # a recognisable pattern, so an untouched or partially written tensor shows up
        return torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape).to(dtype)

    check_parity(name, make, kwargs, use_generator=use_generator, seed=len(shape), same_bits=same_bits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_orthogonal_low_precision_raises_like_torch(dtype, same_bits):
    # torch has no QR for fp16/bf16: both raise the same NotImplementedError, tensor untouched
    with pytest.raises(NotImplementedError) as ours:
        torchinit.orthogonal_(torch.ones(4, 6, dtype=dtype))
    with pytest.raises(NotImplementedError) as theirs:
        tinit.orthogonal_(torch.ones(4, 6, dtype=dtype))
    assert str(ours.value) == str(theirs.value)
    t = torch.ones(4, 6, dtype=dtype)
    with pytest.raises(NotImplementedError):
        torchinit.orthogonal_(t)
    same_bits(t, torch.ones(4, 6, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64, torch.complex128],
                         ids=["i64", "i32", "bool", "c64", "c128"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_integer_and_complex_tensors_like_torch(name, dtype, same_bits):
    # torch accepts some (constant_, eye_, dirac_ on ints; uniform_/normal_/kaiming/xavier on
    # complex) and raises for others: every outcome, values or error, must be the same
    shapes, variants = CASES[name]
    for _, kw in variants:
        check_parity(name, lambda: torch.zeros(shapes[0], dtype=dtype), kw, same_bits=same_bits)


@pytest.mark.parametrize("make", [
    lambda: torch.zeros(3, 8, dtype=torch.complex64)[:, ::2],
    lambda: torch.zeros(4, 3, dtype=torch.complex128).t(),
    lambda: torch.zeros(3, 4, dtype=torch.complex64).conj(),
    lambda: torch.zeros(1, 4, dtype=torch.complex64).expand(3, 4),
], ids=["sliced", "transposed", "conj", "expanded"])
def test_complex_trunc_normal_views_like_torch(make, same_bits):
    # torch draws into the tensor then fails; ours fails the same way on a scratch tensor of
    # the same strides and conjugate bit: same error, same generator and global RNG state
    check_parity("trunc_normal_", make, {}, same_bits=same_bits)


# ---------------------------------------------------------------------------
# calculate_gain
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("nonlinearity", [
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu",
])
@pytest.mark.parametrize("param", [None, 0, 0.2, 1, -0.5, 3.0, math.sqrt(5)])
def test_calculate_gain_values_and_types(nonlinearity, param):
    ours = torchinit.calculate_gain(nonlinearity, param)
    theirs = tinit.calculate_gain(nonlinearity, param)
    assert type(ours) is type(theirs)
    assert ours == theirs


# ---------------------------------------------------------------------------
# zero-element tensors
# ---------------------------------------------------------------------------

ZERO_SHAPES = [(0, 4), (4, 0), (0, 0), (0, 3, 3), (3, 0, 2, 2), (2, 3, 0), (0, 0, 2, 2, 2)]


def _zero_params():
    for name, (shapes, variants) in CASES.items():
        ndims = {len(s) for s in shapes}
        for shape in ZERO_SHAPES:
            if len(shape) in ndims:
                for label, kw in variants[:1]:
                    yield pytest.param(name, kw, shape, id=f"{name}-{'x'.join(map(str, shape))}")


@pytest.mark.parametrize("name, kwargs, shape", list(_zero_params()))
def test_zero_element_parity(name, kwargs, shape, same_bits):
    check_parity(name, lambda: torch.empty(shape), kwargs, same_bits=same_bits)


def test_zero_element_rules_documented_in_torch():
    # kaiming warns and returns; xavier divides by zero on (0, 0): both kept.
    t = torch.empty(0, 4)
    with pytest.warns(UserWarning, match="Initializing zero-element tensors is a no-op"):
        assert torchinit.kaiming_uniform_(t) is t
    with pytest.warns(UserWarning, match="Initializing zero-element tensors is a no-op"):
        assert torchinit.kaiming_normal_(t, mode="not-even-checked") is t
    with pytest.raises(ZeroDivisionError, match="float division by zero"):
        torchinit.xavier_uniform_(torch.empty(0, 0))
    with pytest.raises(ZeroDivisionError, match="float division by zero"):
        torchinit.xavier_normal_(torch.empty(0, 0))


def test_kaiming_zero_element_warning_points_at_caller():
    # torch warns with stacklevel=2: the warning names the caller's file, as ours must.
    for fn in (torchinit.kaiming_uniform_, torchinit.kaiming_normal_):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            fn(torch.empty(3, 0))
        assert len(rec) == 1
        assert rec[0].filename == __file__


# ---------------------------------------------------------------------------
# non-contiguous views
# ---------------------------------------------------------------------------

def _transposed():
    return torch.arange(30.0).reshape(5, 6).t()


def _sliced_2d():
    return torch.arange(80.0).reshape(8, 10)[:, ::2]


def _sliced_4d():
    return torch.arange(8 * 4 * 3 * 6, dtype=torch.float32).reshape(8, 4, 3, 6)[..., ::2]


def _channels_last():
    return torch.arange(8 * 4 * 3 * 3, dtype=torch.float32).reshape(8, 4, 3, 3).to(
        memory_format=torch.channels_last
    )


def _narrow_3d():
    return torch.arange(6 * 4 * 5, dtype=torch.float64).reshape(6, 4, 5)[:, 1:3]


VIEWS = {"transposed": _transposed, "sliced2d": _sliced_2d, "sliced4d": _sliced_4d,
         "channels_last": _channels_last, "narrow3d": _narrow_3d}


def _view_params():
    for name, (shapes, variants) in CASES.items():
        ndims = {len(s) for s in shapes}
        for vname, make in VIEWS.items():
            t = make()
            if t.dim() in ndims:
                assert not t.is_contiguous()
                for label, kw in variants:
                    yield pytest.param(name, kw, make, id=f"{name}-{label}-{vname}")


@pytest.mark.parametrize("name, kwargs, make", list(_view_params()))
def test_non_contiguous_views(name, kwargs, make, same_bits):
    t = check_parity(name, make, kwargs, same_bits=same_bits)
    assert not t.is_contiguous()  # filled in place, strides kept


# ---------------------------------------------------------------------------
# tensors that require grad, meta tensors
# ---------------------------------------------------------------------------

def _rg_params():
    for name, (shapes, variants) in CASES.items():
        for shape in shapes[:3]:
            yield pytest.param(name, variants[-1][1], shape, id=f"{name}-{'x'.join(map(str, shape))}")


@pytest.mark.parametrize("name, kwargs, shape", list(_rg_params()))
def test_requires_grad_leaf_no_history(name, kwargs, shape, same_bits):
    def make():
        return torch.zeros(shape).requires_grad_(True)

    t = check_parity(name, make, kwargs, same_bits=same_bits)
    assert t.requires_grad and t.is_leaf
    assert t.grad_fn is None and t.grad is None
    # the parameter is still usable for training after init
    (t.sum() * 2).backward()
    assert torch.equal(t.grad, torch.full_like(t, 2.0))


@pytest.mark.parametrize("name", sorted(CASES))
def test_meta_tensors(name, same_bits):
    shapes, variants = CASES[name]
    for shape in shapes:
        for _, kw in variants:
            t = check_parity(name, lambda: torch.empty(shape, device="meta"), kw, same_bits=same_bits)
            assert t.is_meta and t.shape == shape


def test_meta_requires_grad_parameter():
    p = torch.nn.Parameter(torch.empty(16, 8, device="meta"))
    assert torchinit.kaiming_uniform_(p, a=math.sqrt(5)) is p
    assert torchinit.orthogonal_(p) is p and p.is_meta


# ---------------------------------------------------------------------------
# traps kept for parity
# ---------------------------------------------------------------------------

def test_sparse_ignores_generator_for_its_permutation(restore_rng):
    # torch's trap, kept: the zero pattern comes from the GLOBAL RNG, not `generator`.
    def draw(global_seed):
        torch.manual_seed(global_seed)
        g = torch.Generator().manual_seed(7)
        return torchinit.sparse_(torch.empty(20, 6), 0.5, generator=g)

    a, b = draw(0), draw(1)
    assert not torch.equal(a == 0, b == 0), "zero pattern should follow the global seed"
    nz = (a != 0) & (b != 0)
    assert torch.equal(a[nz], b[nz]), "non-zero values come from the explicit generator"
    assert ((a == 0).sum(0) == 10).all() and ((b == 0).sum(0) == 10).all()


def test_layer_default_is_kaiming_uniform_sqrt5(restore_rng):
    # nn.Linear's reset_parameters == kaiming_uniform_(w, a=sqrt(5)) == U(+-1/sqrt(fan_in))
    torch.manual_seed(3)
    lin = torch.nn.Linear(48, 20, bias=False)
    torch.manual_seed(3)
    w = torchinit.kaiming_uniform_(torch.empty(20, 48), a=math.sqrt(5))
    assert torch.equal(lin.weight.detach(), w)
    assert w.abs().max() <= 1 / math.sqrt(48)


# ---------------------------------------------------------------------------
# signatures
# ---------------------------------------------------------------------------

TORCH_PUBLIC = [n for n in tinit.__all__ if n.endswith("_")] + ["calculate_gain"]


@pytest.mark.parametrize("name", TORCH_PUBLIC)
def test_same_signature_as_torch(name):
    assert name in torchinit.__all__
    ours = inspect.signature(getattr(torchinit, name))
    theirs = inspect.signature(getattr(tinit, name))
    ours_params = [p for p in ours.parameters.values() if p.name != "key"]
    theirs_params = list(theirs.parameters.values())
    assert [p.name for p in ours_params] == [p.name for p in theirs_params]
    assert [p.kind for p in ours_params] == [p.kind for p in theirs_params]
    assert [p.default for p in ours_params] == [p.default for p in theirs_params]
    extra = [p for p in ours.parameters.values() if p.name == "key"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None for p in extra)


DEPRECATED = [n for n in tinit.__all__ if not n.endswith("_") and n != "calculate_gain"]


def test_every_public_torch_name_is_exported():
    assert DEPRECATED  # torch 2.13 still has the underscore-less names
    assert set(tinit.__all__) <= set(torchinit.__all__)


@pytest.mark.parametrize("name", DEPRECATED)
def test_deprecated_names_warn_then_act_like_the_underscore_function(name, same_bits):
    # torch.nn.init.xavier_uniform is xavier_uniform_ after a FutureWarning: so is ours
    shape = (4, 3, 3, 3) if name == "dirac" else (6, 5)
    kw = {"val": 0.5} if name == "constant" else {"sparsity": 0.5} if name == "sparse" else {}
    results = []
    for mod, fn in ((tinit, getattr(tinit, name)), (torchinit, getattr(torchinit, name))):
        t = torch.empty(shape)
        torch.manual_seed(3)
        with pytest.warns(FutureWarning, match=rf"`[\w.]+\.{name}` is now deprecated in favor of `[\w.]+\.{name}_`"):
            out = fn(t, **kw)
        assert out is t
        results.append(t)
    same_bits(results[1], results[0])
    assert getattr(torchinit, name).__name__ == name


def test_torch_function_dispatch_like_torch():
    # uniform_, normal_, constant_, kaiming_uniform_ call handle_torch_function in torch;
    # a tensor subclass sees our function (with the same keyword arguments).
    seen = []

    class Probe(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append((func, tuple(sorted((kwargs or {}).keys()))))
            return "handled"

    t = torch.zeros(3, 4).as_subclass(Probe)
    assert torchinit.uniform_(t) == "handled"
    assert torchinit.normal_(t) == "handled"
    assert torchinit.constant_(t, 1.0) == "handled"
    assert torchinit.kaiming_uniform_(t) == "handled"
    assert [f for f, _ in seen] == [torchinit.uniform_, torchinit.normal_, torchinit.constant_,
                                     torchinit.kaiming_uniform_]
    assert seen[0][1] == ("a", "b", "generator", "tensor")
    assert seen[3][1] == ("a", "generator", "mode", "nonlinearity", "tensor")
