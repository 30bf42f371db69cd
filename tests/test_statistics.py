"""Statistics: every random initializer (torch engine) draws from the distribution
its spec names, by scipy's Kolmogorov-Smirnov test with fixed seeds, plus the
exact algebraic properties of the orthogonal ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
import torch
import torch.nn.functional as F

import torchinit
from torchinit import specs as S

P_MIN = 1e-3  # fixed seeds: deterministic; a wrong scale or shape gives p ~ 1e-10 or less


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _scipy_dist(spec: S.Spec):
    if isinstance(spec, S.Uniform):
        return st.uniform(loc=spec.low, scale=spec.high - spec.low)
    if isinstance(spec, S.Normal):
        return st.norm(loc=spec.mean, scale=spec.std)
    if isinstance(spec, S.TruncatedNormal):
        return st.truncnorm(spec.alpha, spec.beta, loc=spec.mean_, scale=spec.std_)
    raise TypeError(spec)


def _ks(sample: torch.Tensor, dist) -> float:
    return st.kstest(sample.detach().double().reshape(-1).numpy(), dist.cdf).pvalue


SHAPE = (96, 48, 3, 3)  # fan_in 432, fan_out 864, 41472 values
FAN_IN, FAN_OUT = 48 * 9, 96 * 9

DROP_INS = [
    ("uniform", lambda g: torchinit.uniform_(torch.empty(SHAPE), -0.3, 0.7, generator=g), st.uniform(-0.3, 1.0)),
    ("normal", lambda g: torchinit.normal_(torch.empty(SHAPE), 0.2, 0.05, generator=g), st.norm(0.2, 0.05)),
    ("trunc_normal_default", lambda g: torchinit.trunc_normal_(torch.empty(SHAPE), generator=g),
     st.truncnorm(-2, 2)),
    # (torch's uniform-proposal branch: ~15 draws per value, so a smaller sample)
    ("trunc_normal_tail", lambda g: torchinit.trunc_normal_(torch.empty(8000), 0.0, 1.0, 1.5, 3.0, generator=g),
     st.truncnorm(1.5, 3.0)),
    ("trunc_normal_abs_bounds", lambda g: torchinit.trunc_normal_(torch.empty(SHAPE), 0.1, 0.02, 0.09, 0.2, generator=g),
     st.truncnorm(-0.5, 5.0, loc=0.1, scale=0.02)),
    ("xavier_uniform", lambda g: torchinit.xavier_uniform_(torch.empty(SHAPE), generator=g),
     st.uniform(-math.sqrt(6 / (FAN_IN + FAN_OUT)), 2 * math.sqrt(6 / (FAN_IN + FAN_OUT)))),
    ("xavier_normal_tanh", lambda g: torchinit.xavier_normal_(torch.empty(SHAPE), 5 / 3, generator=g),
     st.norm(0, 5 / 3 * math.sqrt(2 / (FAN_IN + FAN_OUT)))),
    ("kaiming_uniform_sqrt5", lambda g: torchinit.kaiming_uniform_(torch.empty(SHAPE), math.sqrt(5), generator=g),
     st.uniform(-1 / math.sqrt(FAN_IN), 2 / math.sqrt(FAN_IN))),
    ("kaiming_normal_fan_out", lambda g: torchinit.kaiming_normal_(torch.empty(SHAPE), mode="fan_out", nonlinearity="relu", generator=g),
     st.norm(0, math.sqrt(2 / FAN_OUT))),
    ("lecun_uniform", lambda g: torchinit.lecun_uniform_(torch.empty(SHAPE), generator=g),
     st.uniform(-math.sqrt(3 / FAN_IN), 2 * math.sqrt(3 / FAN_IN))),
    ("lecun_normal", lambda g: torchinit.lecun_normal_(torch.empty(SHAPE), generator=g),
     st.truncnorm(-2, 2, scale=1 / math.sqrt(FAN_IN) / 0.87962566103423978)),
    ("trunc_normal_std_units", lambda g: torchinit.trunc_normal_std_units_(torch.empty(SHAPE), 0.5, 0.02, -1.0, 3.0, generator=g),
     st.truncnorm(-1.0, 3.0, loc=0.5, scale=0.02)),
    ("lecun_uniform_x@w", lambda g: torchinit.lecun_uniform_(torch.empty(3, 3, 48, 96), layout="x@w", generator=g),
     st.uniform(-math.sqrt(3 / FAN_IN), 2 * math.sqrt(3 / FAN_IN))),
]


@pytest.mark.parametrize("draw, dist", [pytest.param(*c[1:], id=c[0]) for c in DROP_INS])
def test_ks(draw, dist):
    w = draw(_gen(11))
    assert _ks(w, dist) > P_MIN


@pytest.mark.parametrize("mode", S.MODES)
@pytest.mark.parametrize("distribution", S.DISTRIBUTIONS)
def test_ks_variance_scaling(mode, distribution):
    scale = 2.0
    n = {"fan_in": FAN_IN, "fan_out": FAN_OUT, "fan_avg": (FAN_IN + FAN_OUT) / 2,
         "fan_geo_avg": math.sqrt(FAN_IN * FAN_OUT)}[mode]
    std = math.sqrt(scale / n)
    dist = {
        "uniform": st.uniform(-math.sqrt(3) * std, 2 * math.sqrt(3) * std),
        "normal": st.norm(0, std),
        "truncated_normal": st.truncnorm(-2, 2, scale=std / 0.87962566103423978),
    }[distribution]
    w = torchinit.variance_scaling_(torch.empty(SHAPE), scale, mode, distribution, generator=_gen(5))
    assert _ks(w, dist) > P_MIN
    assert dist.std() == pytest.approx(std, rel=1e-12)  # the variance is exactly scale / n


def test_ks_has_power():
    # the same test rejects a 10% error in the std (or the 0.8796 truncation correction
    # forgotten): these tests can fail
    w = torchinit.kaiming_normal_(torch.empty(SHAPE), nonlinearity="relu", generator=_gen(11))
    assert _ks(w, st.norm(0, math.sqrt(2 / FAN_IN))) > P_MIN
    assert _ks(w, st.norm(0, 1.1 * math.sqrt(2 / FAN_IN))) < 1e-6
    w = torchinit.lecun_normal_(torch.empty(SHAPE), generator=_gen(11))
    assert _ks(w, st.truncnorm(-2, 2, scale=1 / math.sqrt(FAN_IN))) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ks_low_precision_stays_in_bounds(dtype):
    # trunc_normal_ in fp16 / bf16: none outside the bounds (rounded to the dtype, as torch
    # rounds them), none piled at the bounds (the old erfinv + clamp did that)
    w = torchinit.trunc_normal_(torch.empty(SHAPE, dtype=dtype), std=0.02, a=-0.04, b=0.04, generator=_gen(3))
    bound = torch.tensor(0.04, dtype=dtype).item()
    assert w.float().abs().max().item() <= bound
    assert (w.float().abs() == bound).float().mean().item() < 0.01


def test_sparse_statistics():
    rows, cols = 200, 150
    w = torchinit.sparse_(torch.empty(rows, cols), 0.3, std=0.05, generator=_gen(2))
    zeros = (w == 0).sum(0)
    assert (zeros == math.ceil(0.3 * rows)).all()
    assert _ks(w[w != 0], st.norm(0, 0.05)) > P_MIN


# --- orthogonal -------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 8), (5, 12), (12, 5), (6, 3, 3, 3), (30, 2, 2)])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal_rows_or_columns_orthonormal(shape, gain):
    w = torchinit.orthogonal_(torch.empty(shape, dtype=torch.float64), gain, generator=_gen(0))
    m = w.reshape(shape[0], -1)
    rows, cols = m.shape
    gram = m @ m.T if rows <= cols else m.T @ m
    torch.testing.assert_close(gram, gain**2 * torch.eye(min(rows, cols), dtype=torch.float64), rtol=0, atol=1e-12)


def test_orthogonal_is_haar():
    # For Haar-random Q in O(n), Q[0, 0]^2 ~ Beta(1/2, (n-1)/2) and the sign is fair; QR
    # without torch's sign(diag R) correction fails both.
    n, reps = 3, 600
    g = _gen(9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny QRs: LAPACK threads on a busy machine cost ~8 ms a call
    try:
        first = np.array([torchinit.orthogonal_(torch.empty(n, n, dtype=torch.float64), generator=g)[0, 0].item()
                          for _ in range(reps)])
    finally:
        torch.set_num_threads(threads)
    assert st.kstest(first**2, st.beta(0.5, (n - 1) / 2).cdf).pvalue > P_MIN
    assert st.binomtest(int((first > 0).sum()), reps).pvalue > P_MIN


@pytest.mark.parametrize("shape", [(8, 5, 3, 3), (5, 5, 3), (6, 4, 3, 3, 3), (4, 4, 2, 4)])
@pytest.mark.parametrize("gain", [1.0, math.sqrt(2)])
def test_delta_orthogonal(shape, gain):
    w = torchinit.delta_orthogonal_(torch.empty(shape, dtype=torch.float64), gain, generator=_gen(1))
    centre = (slice(None), slice(None)) + tuple((k - 1) // 2 for k in shape[2:])  # JAX's convention
    q = w[centre]
    torch.testing.assert_close(q.T @ q, gain**2 * torch.eye(shape[1], dtype=torch.float64), rtol=0, atol=1e-12)
    rest = w.clone()
    rest[centre] = 0
    assert (rest == 0).all(), "zero everywhere but the spatial centre"


def test_delta_orthogonal_conv_is_an_isometry():
    # stride 1, padding k//2: the conv maps every pixel's channel vector by the orthogonal Q,
    # so ||conv(x)|| = gain * ||x|| exactly, at any depth
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, bias=False).double()
    torchinit.delta_orthogonal_(conv.weight, 1.7, generator=_gen(4))
    assert conv.weight.grad_fn is None
    x = torch.randn(2, 16, 10, 10, dtype=torch.float64, generator=_gen(5))
    y = x
    for _ in range(20):
        y = conv(y) / 1.7
    torch.testing.assert_close(y.norm(), x.norm(), rtol=1e-10, atol=0)
    torch.testing.assert_close(F.conv2d(x, conv.weight, padding=1).norm(), 1.7 * x.norm(), rtol=1e-12, atol=0)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_same_padding_pads_k_minus_1_over_2_on_the_left():
    # what the (k - 1) // 2 centre relies on: for an even kernel torch's padding="same"
    # puts (k - 1) // 2 zeros on the left and the rest on the right
    x = torch.arange(6, dtype=torch.float64).view(1, 1, 6)
    for k in (2, 3, 4, 5):
        for c in range(k):
            w = torch.zeros(1, 1, k, dtype=torch.float64)
            w[0, 0, c] = 1
            y = F.conv1d(x, w, padding="same")
            assert torch.equal(y, x) == (c == (k - 1) // 2), (k, c)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("engine", ["torch", "keyed"])
@pytest.mark.parametrize("k", [4, 2, 3])
def test_delta_orthogonal_same_padding_preserves_norm_through_depth(engine, k):
    # issue 15: with the centre at k // 2 a 4x4 kernel shifted the image by one pixel per
    # layer and the norm fell to 0.16 of the input's after 10 'same' convs
    from torchinit import Key

    x = torch.randn(2, 8, 9, 9, dtype=torch.float64, generator=_gen(7))
    y = x
    for i in range(10):
        w = torch.empty(8, 8, k, k, dtype=torch.float64)
        if engine == "torch":
            torchinit.delta_orthogonal_(w, generator=_gen(10 + i))
        else:
            torchinit.delta_orthogonal_(w, key=Key(3).child(f"conv{i}"))
        y = F.conv2d(y, w, padding="same")
    torch.testing.assert_close(y.norm(), x.norm(), rtol=1e-10, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_delta_orthogonal_low_precision_factors_in_float32(dtype):
    # QR has no half-precision kernel: the matrix is drawn and factored in float32, rounded once
    w = torchinit.delta_orthogonal_(torch.ones(6, 4, 3, dtype=dtype), 2.0, generator=_gen(3))
    ref = torchinit.delta_orthogonal_(torch.ones(6, 4, 3), 2.0, generator=_gen(3))
    assert w.dtype == dtype
    assert torch.equal(w, ref.to(dtype))
    q = w[:, :, 1].float()
    torch.testing.assert_close(q.T @ q, 4 * torch.eye(4), rtol=0, atol=0.05)
    with pytest.raises(NotImplementedError, match="geqrf"):  # the drop-in keeps torch's behaviour
        torchinit.orthogonal_(torch.ones(4, 4, dtype=dtype))
