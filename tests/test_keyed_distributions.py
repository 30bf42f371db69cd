"""Keyed engine distributions: KS tests for every distribution and dtype, torch's own
trunc_normal_ test cases, bounds, pile-up, unique values, sparse and orthogonal structure,
and every random drop-in with ``key=``."""

from __future__ import annotations

import math
import random

import pytest
import torch

import torchinit
from torchinit import specs as S
from torchinit.keyed import Key, fill_, sample

stats = pytest.importorskip("scipy.stats")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
N = 20_000
P_MIN = 1e-3  # fixed keys: each KS test is deterministic; the threshold only guards the design


def _scipy_dist(spec):
    if isinstance(spec, S.Uniform):
        return stats.uniform(spec.low, spec.high - spec.low)
    if isinstance(spec, S.Normal):
        return stats.norm(spec.mean_, spec.std_)
    if isinstance(spec, S.TruncatedNormal):
        return stats.truncnorm(spec.alpha, spec.beta, loc=spec.mean_, scale=spec.std_)
    raise TypeError(spec)


def _ks(x: torch.Tensor, spec) -> float:
    """Goodness of fit p-value. float32/float64: Kolmogorov-Smirnov. float16/bfloat16: a
    chi-square test on bins whose edges are rounding midpoints of the dtype, so the
    probability of each bin is exactly the continuous mass between its edges."""
    if x.dtype in (torch.float32, torch.float64):
        return stats.kstest(x.double().reshape(-1).numpy(), _scipy_dist(spec).cdf).pvalue
    import numpy as np

    d = _scipy_dist(spec)
    qs = d.ppf(np.linspace(0.02, 0.98, 40))
    v = torch.tensor(qs, dtype=torch.float64).to(x.dtype)
    up = torch.nextafter(v, torch.full_like(v, math.inf))
    edges = np.unique((v.double() + up.double()).numpy() / 2)
    probs = np.diff(np.concatenate([[0.0], d.cdf(edges), [1.0]]))
    vals = x.double().reshape(-1).numpy()
    counts = np.bincount(np.searchsorted(edges, vals), minlength=len(edges) + 1)
    keep = probs * vals.size >= 5
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(probs[keep], probs[~keep].sum()) * vals.size
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


CASES = [
    S.Uniform(-1, 1), S.Uniform(0, 1e-3), S.Uniform(5, 6),
    S.Normal(0, 1), S.Normal(3, 0.01), S.Normal(-2, 10),
    S.TruncatedNormal(0, 1, -2, 2),
    S.TruncatedNormal(-3, 1, -0.5, 0.5),  # interval deep in the upper tail
    S.TruncatedNormal(0, 1, 2.5, 10),  # upper tail, wide
    S.TruncatedNormal(0, 1, -9, -6),  # far lower tail
    S.TruncatedNormal(0, 1, -0.01, 0.01),  # narrow interval
    S.TruncatedNormal(0.5, 0.02, -2, 2),  # small std, bounds effectively at infinity
    S.TruncatedNormal(0, 0.02, -0.04, 0.04),  # JAX-style +-2 std
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec", CASES, ids=repr)
def test_ks_every_distribution_and_dtype(spec, dtype):
    key = Key(99, f"ks.{spec!r}.{dtype}")
    x = sample(spec, key, (N,), dtype=dtype)
    assert x.dtype == dtype and bool(torch.isfinite(x).all())
    if spec.bounds is not None:
        lo, hi = spec.bounds
        assert float(x.min()) >= lo and float(x.max()) <= hi
    assert _ks(x, spec) > P_MIN


def test_torch_trunc_normal_random_cases():
    """torch's test_trunc_normal: random mean in [-3, 3], std in [0.01, 1], a in [mean-2std, mean],
    b in [mean, mean+2std]; n-d tensors."""
    rng = random.Random(42)
    for i in range(8):
        mean = rng.uniform(-3, 3)
        std = rng.uniform(0.01, 1)
        a = rng.uniform(mean - 2 * std, mean)
        b = rng.uniform(mean, mean + 2 * std)
        shape = [(9000,), (90, 100), (10, 9, 10, 10)][i % 3]
        w = torch.empty(shape)
        torchinit.trunc_normal_(w, mean=mean, std=std, a=a, b=b, key=Key(i, "tn"))
        assert float(w.min()) >= a and float(w.max()) <= b
        assert _ks(w, S.TruncatedNormal(mean, std, a, b)) > P_MIN


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_near_bounds_has_no_pile_up(dtype):
    n = 100_000
    for spec in [S.TruncatedNormal(0, 1, -2, 2), S.TruncatedNormal(0, 0.5, 0.3, 0.9), S.TruncatedNormal(1, 1, -1.7, 1.1)]:
        x = sample(spec, Key(5, "pile"), (n,), dtype=dtype)
        d = _scipy_dist(spec)
        for bound, side in ((spec.a, -1), (spec.b, 1)):
            rep = torch.tensor(bound, dtype=torch.float64).to(dtype)
            inside = rep if (float(rep) - bound) * side <= 0 else torch.nextafter(rep, torch.tensor(-side * math.inf, dtype=dtype))
            nb = torch.nextafter(inside, torch.tensor(-side * math.inf, dtype=dtype))
            mid = (float(inside) + float(nb)) / 2  # values rounding to the edge value
            mass = abs(d.cdf(bound) - d.cdf(mid))
            hits = int((x == inside).sum())
            assert hits <= 3 * n * mass + 10, (spec, bound, hits, n * mass)
        assert float(x.min()) >= spec.a and float(x.max()) <= spec.b


def test_unique_values():
    n = 100_000
    # 23 random bits per truncated-normal draw: about n^2 / 2^24 = 600 birthday collisions
    x = sample(S.TruncatedNormal(0, 1, -2, 2), Key(1, "u"), (n,))
    assert torch.unique(x).numel() > 0.99 * n
    x = sample(S.TruncatedNormal(0, 1, -1e-4, 1e-4), Key(1, "u"), (n,))
    assert torch.unique(x).numel() > 0.99 * n
    x = sample(S.TruncatedNormal(0, 1, -2, 2), Key(1, "u"), (n,), dtype=torch.bfloat16)
    assert torch.unique(x).numel() > 1000
    x = sample(S.Normal(0, 1), Key(1, "u"), (n,))
    assert torch.unique(x).numel() > 0.995 * n


def test_small_std_has_no_outliers():
    # torch <= 2.10's erfinv recipe produced huge outliers for small std in float32
    for std in (1e-2, 1e-4, 1e-6):
        x = sample(S.TruncatedNormal(0, std, -2, 2), Key(3, "small"), (200_000,))
        assert float(x.abs().max()) < 6.5 * std
        assert abs(float(x.std()) / std - 1) < 0.02


def test_normal_tails_reach_beyond_five_sigma():
    x = sample(S.Normal(0, 1), Key(4, "tails"), (2_000_000,))
    assert 4.5 < float(x.abs().max()) < 6.5
    assert abs(float((x.abs() > 3).double().mean()) - 2 * stats.norm.sf(3)) < 4e-4


def test_sparse_structure_and_values():
    rows, cols = 50, 400
    for sparsity in (0.0, 0.1, 0.33, 1.0):
        w = torch.empty(rows, cols)
        torchinit.sparse_(w, sparsity, std=0.5, key=Key(2, "sp"))
        k = math.ceil(sparsity * rows)
        assert bool(((w == 0).sum(0) == k).all())
        if 0 < k < rows:
            nz = w[w != 0]
            assert _ks(nz, S.Normal(0, 0.5)) > P_MIN
            pos = (w == 0).t().float()
            assert torch.unique(pos, dim=0).shape[0] > cols * 0.9  # columns choose different rows
            # every row is zeroed about equally often (positions uniform over rows)
            per_row = (w == 0).sum(1).double()
            assert stats.chisquare(per_row.numpy()).pvalue > P_MIN


def test_orthogonal_properties():
    for shape, gain in [((30, 20), 1.0), ((20, 30), 2.0), ((16, 4, 3, 3), 0.5)]:
        w = torch.empty(shape)
        torchinit.orthogonal_(w, gain=gain, key=Key(8, "o"))
        m = w.reshape(shape[0], -1).double()
        small = min(m.shape)
        g = m.t() @ m if m.shape[0] >= m.shape[1] else m @ m.t()
        assert torch.allclose(g, gain**2 * torch.eye(small, dtype=torch.float64), atol=1e-5)
    for dt in (torch.bfloat16, torch.float16, torch.float64):
        w = torch.empty(12, 8, dtype=dt)
        torchinit.orthogonal_(w, key=Key(8, "o"))
        assert w.dtype == dt and torch.allclose(w.double().t() @ w.double(), torch.eye(8, dtype=torch.float64), atol=3e-2)
    # Haar: entries of a large orthogonal matrix times sqrt(n) are about N(0, 1)
    w = torch.empty(200, 200)
    torchinit.orthogonal_(w, key=Key(9, "haar"))
    assert _ks(w * math.sqrt(200), S.Normal(0, 1)) > P_MIN
    d = torch.empty(8, 5, 3, 3)
    torchinit.delta_orthogonal_(d, gain=2.0, key=Key(1, "d"))
    c = d[:, :, 1, 1].double()
    assert torch.allclose(c.t() @ c, 4 * torch.eye(5, dtype=torch.float64), atol=1e-5)
    assert float(d.abs().sum()) == pytest.approx(float(c.abs().sum()))


def _dropin_cases():
    w = lambda: torch.empty(64, 300)  # noqa: E731
    return [
        ("uniform_", lambda t, k: torchinit.uniform_(t, -0.3, 0.7, key=k), lambda t: S.Uniform(-0.3, 0.7)),
        ("normal_", lambda t, k: torchinit.normal_(t, 0.2, 0.05, key=k), lambda t: S.Normal(0.2, 0.05)),
        ("trunc_normal_", lambda t, k: torchinit.trunc_normal_(t, std=0.02, a=-0.03, b=0.05, key=k),
         lambda t: S.TruncatedNormal(0, 0.02, -0.03, 0.05)),
        ("trunc_normal_std_units_", lambda t, k: torchinit.trunc_normal_std_units_(t, std=0.02, key=k),
         lambda t: S.TruncatedNormal(0, 0.02, -0.04, 0.04)),
        ("xavier_uniform_", lambda t, k: torchinit.xavier_uniform_(t, key=k), lambda t: S.xavier(t.shape, 1.0, "uniform")),
        ("xavier_normal_", lambda t, k: torchinit.xavier_normal_(t, gain=2.0, key=k),
         lambda t: S.xavier(t.shape, 2.0, "normal")),
        ("kaiming_uniform_", lambda t, k: torchinit.kaiming_uniform_(t, a=math.sqrt(5), key=k),
         lambda t: S.kaiming(t.shape, math.sqrt(5), "fan_in", "leaky_relu", "uniform")),
        ("kaiming_normal_", lambda t, k: torchinit.kaiming_normal_(t, mode="fan_out", nonlinearity="relu", key=k),
         lambda t: S.kaiming(t.shape, 0, "fan_out", "relu", "normal")),
        ("variance_scaling_", lambda t, k: torchinit.variance_scaling_(t, 2.0, "fan_avg", "truncated_normal", key=k),
         lambda t: S.variance_scaling(t.shape, 2.0, "fan_avg", "truncated_normal")),
        ("variance_scaling_u", lambda t, k: torchinit.variance_scaling_(t, 1.0, "fan_geo_avg", "uniform", key=k),
         lambda t: S.variance_scaling(t.shape, 1.0, "fan_geo_avg", "uniform")),
        ("lecun_uniform_", lambda t, k: torchinit.lecun_uniform_(t, key=k), lambda t: S.lecun(t.shape, "uniform")),
        ("lecun_normal_", lambda t, k: torchinit.lecun_normal_(t, key=k), lambda t: S.lecun(t.shape)),
    ], w


@pytest.mark.parametrize("name", [c[0] for c in _dropin_cases()[0]])
def test_every_random_dropin_accepts_key_and_follows_its_spec(name, same_bits):
    cases, make = _dropin_cases()
    _, call, spec_of = next(c for c in cases if c[0] == name)
    key = Key(123, f"dropin.{name}")
    t = make()
    assert call(t, key) is t
    spec = spec_of(t)
    assert _ks(t, spec) > P_MIN
    # same as filling the spec directly, reproducible, and different for another key
    same_bits(t, sample(spec, key, t.shape))
    t2 = make()
    call(t2, key)
    same_bits(t2, t)
    t3 = make()
    call(t3, key.child("other"))
    assert not torch.equal(t3, t)


def test_keyed_dropins_ignore_and_keep_the_global_rng(same_bits, restore_rng):
    torch.manual_seed(0)
    state = torch.get_rng_state()
    w = torch.empty(10, 10)
    torchinit.kaiming_normal_(w, key=Key(0, "w"))
    torchinit.sparse_(w, 0.5, key=Key(0, "w"))
    torchinit.orthogonal_(w, key=Key(0, "w"))
    same_bits(torch.get_rng_state(), state)


def test_fill_with_all_specs_on_all_float_dtypes():
    key = Key(0, "all")
    for spec, shape in [(S.Constant(1.5), (3, 4)), (S.Eye(), (3, 4)), (S.Dirac(1), (4, 4, 3)),
                        (S.Orthogonal(), (4, 6)), (S.DeltaOrthogonal(), (6, 4, 3)), (S.Sparse(0.5, 1.0), (6, 4))]:
        for dt in DTYPES:
            t = torch.full(shape, float("nan"), dtype=dt)
            fill_(t, spec, key)
            assert bool(torch.isfinite(t).all()), (spec, dt)
    t = torch.empty(3, 4)
    fill_(t, S.Eye(), key)
    assert torch.equal(t, torch.eye(3, 4))
