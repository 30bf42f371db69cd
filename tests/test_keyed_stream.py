"""Keyed stream definition: Philox known answers, key derivation, frozen golden values.

CHANGING ANY EXPECTED VALUE IN THIS FILE REQUIRES BUMPING
``torchinit.keyed.STREAM_VERSION`` (and documenting the change in
docs/keyed-stream.md): users rely on a (seed, path, spec) giving the same
weights forever.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from torchinit import specs as S
from torchinit.keyed import STREAM_VERSION, Key, philox4x32, sample, set_backend
from torchinit.keyed import backend as B

BACKENDS = ["reference"] + (["native"] if B.native_available() else [])


@pytest.fixture(params=BACKENDS)
def backend(request):
    old = B.get_backend()
    set_backend(request.param)
    yield request.param
    set_backend(old)


# Random123 kat_vectors (philox4x32 10): counter[4], key[2] -> output[4]
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_stream_version():
    assert STREAM_VERSION == 1
    if B.native_available():
        assert B.native_module().STREAM_VERSION == STREAM_VERSION


@pytest.mark.parametrize("ctr,key,out", KAT)
def test_philox_known_answers_reference(ctr, key, out):
    assert philox4x32(ctr, key) == out


@pytest.mark.skipif(not B.native_available(), reason="native kernel not built")
@pytest.mark.parametrize("ctr,key,out", KAT)
def test_philox_known_answers_native(ctr, key, out):
    assert B.native_module().philox(*ctr, *key) == out


# (seed, path) -> Philox key (k0, k1): blake2b-64, person b"torchinit-key-v1"
GOLDEN_KEYS = [
    ((0, ""), (133516017, 3364371494)),
    ((2024, "golden"), (2535241973, 1546389926)),
    ((2**64 - 1, "encoder.layers.3.attn.q_proj.weight"), (3194579375, 664954929)),
    ((1, "é/ü"), (648452460, 1312399854)),
]


@pytest.mark.parametrize("args,pk", GOLDEN_KEYS)
def test_key_derivation_golden(args, pk):
    assert Key(*args).philox_key == pk


def test_key_derivation_is_stable_across_processes_and_hash_seeds():
    import os

    code = "from torchinit.keyed import Key; print(Key(2024, 'golden').philox_key, hash('x'))"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    pk, h = r.stdout.rsplit(" ", 1)
    assert int(h) != hash("x")  # the child really hashed differently
    assert pk == str(GOLDEN_KEYS[1][1])


def test_key_child_and_identity():
    k = Key(3)
    assert k.child("a").child("b") == Key(3, "a.b")
    assert k.child("a").path == "a" and k.child("a").seed == 3
    assert hash(Key(3, "a.b")) == hash(k.child("a").child("b"))
    assert Key(3, "a") != Key(4, "a") and Key(3, "a").philox_key != Key(3, "b").philox_key
    with pytest.raises(AttributeError, match="immutable"):
        k.seed = 4  # type: ignore[misc]
    import pickle

    assert pickle.loads(pickle.dumps(Key(5, "x"))) == Key(5, "x")


# Frozen values for Key(2024, "golden"): elements 0..3 of a (4,) tensor, and elements
# 10**12 - 3, 10**12 - 2 of a (10**12,) tensor (drawn alone, nothing else computed).
GOLDEN = {
    ("uniform", torch.float32): ([0.21200895309448242, 0.49944794178009033, -0.34251606464385986, -0.35538482666015625],
                                 [0.7555615901947021, 0.28433775901794434]),
    ("uniform", torch.float64): ([0.21200903120903458, -0.34251604400467706, -0.6212047165926573, 0.5623538651904636],
                                 [0.8557681262689569, -0.13104999822185492]),
    ("uniform", torch.bfloat16): ([0.2119140625, 0.5, -0.341796875, -0.35546875], [0.75390625, 0.28515625]),
    ("uniform", torch.float16): ([0.2120361328125, 0.49951171875, -0.342529296875, -0.35546875],
                                 [0.75537109375, 0.284423828125]),
    ("normal", torch.float32): ([1.2480601072311401, 0.6753585338592529, -0.4433896243572235, -0.46125558018684387],
                                [0.31131431460380554, 1.0706254243850708]),
    ("normal", torch.float64): ([1.248060147735054, -0.44338960142235795, -0.880118194892423, 0.5793487683911364],
                                [0.18176375970123068, -0.16499235199902548]),
    ("normal", torch.bfloat16): ([1.25, 0.67578125, -0.443359375, -0.4609375], [0.310546875, 1.0703125]),
    ("normal", torch.float16): ([1.248046875, 0.67529296875, -0.443359375, -0.461181640625],
                                [0.311279296875, 1.0703125]),
    ("trunc", torch.float32): ([0.2564059793949127, 0.6383020877838135, -0.4219403862953186, -0.43882906436920166],
                               [1.0829817056655884, 0.34698906540870667]),
    ("trunc", torch.float64): ([0.256405895990835, -0.42194039215762136, -0.8290780172717549, 0.7335330396752635],
                               [1.3310591487578265, -0.15742132092040143]),
    ("trunc", torch.bfloat16): ([0.255859375, 0.63671875, -0.421875, -0.439453125], [1.0859375, 0.34765625]),
    ("trunc", torch.float16): ([0.25634765625, 0.63818359375, -0.421875, -0.438720703125],
                               [1.0830078125, 0.346923828125]),
    ("trunc_tail", torch.float32): ([-0.3354649543762207, -0.4038512706756592, -0.15167999267578125,
                                     -0.14606618881225586], [-0.455974817276001, -0.3538672924041748]),
    ("trunc_tail", torch.float64): ([-0.3354648138284295, -0.15167948071633885, -0.003315618815401322,
                                     -0.4173158872683125], [-0.4746177827522473, -0.23308805578408665]),
    ("trunc_tail", torch.bfloat16): ([-0.3359375, -0.404296875, -0.1513671875, -0.146484375],
                                     [-0.455078125, -0.353515625]),
    ("trunc_tail", torch.float16): ([-0.33544921875, -0.40380859375, -0.1517333984375, -0.1461181640625],
                                    [-0.4560546875, -0.353759765625]),
}
GOLDEN_SPECS = {
    "uniform": S.Uniform(-1, 1),
    "normal": S.Normal(0, 1),
    "trunc": S.TruncatedNormal(0, 1, -2, 2),
    "trunc_tail": S.TruncatedNormal(-3, 1, -0.5, 0.5),
}


@pytest.mark.parametrize("name,dtype", sorted(GOLDEN, key=str))
def test_golden_values(backend, name, dtype, same_bits):
    head, far = GOLDEN[(name, dtype)]
    spec, key = GOLDEN_SPECS[name], Key(2024, "golden")
    same_bits(sample(spec, key, (4,), dtype=dtype), torch.tensor(head, dtype=dtype))
    n = 10**12
    same_bits(sample(spec, key, (n,), offsets=(n - 3,), sizes=(2,), dtype=dtype), torch.tensor(far, dtype=dtype))


def test_low_precision_is_the_float32_value_rounded_once(same_bits):
    key = Key(1, "round")
    for spec in GOLDEN_SPECS.values():
        x32 = sample(spec, key, (5000,))
        for dt in (torch.bfloat16, torch.float16):
            got = sample(spec, key, (5000,), dtype=dt)
            if isinstance(spec, S.Normal):
                same_bits(got, x32.to(dt))
            else:  # bounded: rounding, then clamped to representable values inside the bounds
                lo, hi = spec.bounds
                ref = x32.to(dt)
                ok = (ref >= lo) & (ref <= hi)
                same_bits(got[ok], ref[ok])
                assert bool(((got >= lo) & (got <= hi)).all())


@pytest.mark.parametrize("wide", [False, True], ids=["float32", "float64"])
def test_transform_accuracy(wide):
    """The stream's own log, sqrt and inverse normal CDF against scipy (double)."""
    import numpy as np

    special = pytest.importorskip("scipy.special")
    from torchinit.keyed import reference as R

    C = R._C64 if wide else R._C32
    dt = C.dtype
    t = torch.logspace(-300 if wide else -37, math.log10(0.5), 20000, dtype=torch.float64).to(dt)
    t = t[t <= 0.5]
    q = t - 0.5
    z = R._ppnd(q, R._log(t, C), q.abs() <= C.split1, C).double().numpy()
    ref = special.ndtri(t.double().numpy())
    assert (np.abs(z - ref) / np.maximum(np.abs(ref), 1e-3)).max() < (2e-15 if wide else 1e-6)
    lg, lref = R._log(t, C).double().numpy(), np.log(t.double().numpy())
    assert (np.abs(lg - lref) / np.abs(lref)).max() < (5e-16 if wide else 2e-7)
    x = torch.logspace(-30, 30, 10000, dtype=dt)
    s, sref = R._sqrt(x, C).double().numpy(), np.sqrt(x.double().numpy())
    assert (np.abs(s - sref) / sref).max() < (1e-15 if wide else 5e-7)


# More frozen values for Key(2024, "golden"), elements ``idx`` of a (32,) tensor: the
# inverse CDF's tail branch (normal), its far branch r > 5 (trunc_deep), the asymptotic
# log Phi below -30 and the log-ratio cap of 44 (trunc_far), and both sides of the
# tail-mode threshold Pb = 0.075 (trunc_tail_edge: Pb = 0.0735, tail mode;
# trunc_central_edge: reflected, Pb = 0.0764, central mode).
GOLDEN_MORE_SPECS = {
    "normal_tail": S.Normal(0.5, 2.0),
    "trunc_deep": S.TruncatedNormal(0, 1, -9, -7),
    "trunc_far": S.TruncatedNormal(0, 1, -40, -38),
    "trunc_tail_edge": S.TruncatedNormal(0, 1, -4, -1.45),
    "trunc_central_edge": S.TruncatedNormal(0, 1, 1.43, 4),
}
GOLDEN_MORE = {
    ("normal_tail", torch.float32): [-2.664524793624878, -3.2582390308380127, 3.9141488075256348, -3.049844741821289],
    ("normal_tail", torch.float64): [-3.2582391332389204, 3.9141497015506794, -3.0498449543604207, -2.8441575816226945],
    ("normal_tail", torch.bfloat16): [-2.671875, -3.265625, 3.921875, -3.046875],
    ("normal_tail", torch.float16): [-2.6640625, -3.2578125, 3.9140625, -3.05078125],
    ("trunc_deep", torch.float32): [-7.069838523864746, -7.040245056152344, -7.154226779937744, -7.156938552856445],
    ("trunc_deep", torch.float64): [-7.069838204109627, -7.154227143888086, -7.229496741898648, -7.034517286847202],
    ("trunc_deep", torch.bfloat16): [-7.0625, -7.03125, -7.15625, -7.15625],
    ("trunc_deep", torch.float16): [-7.0703125, -7.0390625, -7.15234375, -7.15625],
    ("trunc_far", torch.float32): [-38.01316833496094, -38.00757598876953, -38.02924728393555, -38.02976608276367],
    ("trunc_far", torch.float64): [-38.01316934479108, -38.029244374967554, -38.04373162466882, -38.00649373386765],
    ("trunc_far", torch.bfloat16): [-38.0, -38.0, -38.0, -38.0],
    ("trunc_far", torch.float16): [-38.0, -38.0, -38.03125, -38.03125],
    ("trunc_tail_edge", torch.float32): [-1.699935793876648, -1.5969842672348022, -1.9739551544189453,
                                         -1.9823416471481323],
    ("trunc_tail_edge", torch.float64): [-1.6999353679329046, -1.9739552844964874, -2.198635054741068,
                                         -1.5765783232314259],
    ("trunc_tail_edge", torch.bfloat16): [-1.703125, -1.59375, -1.9765625, -1.984375],
    ("trunc_tail_edge", torch.float16): [-1.7001953125, -1.5966796875, -1.9736328125, -1.982421875],
    ("trunc_central_edge", torch.float32): [1.6819826364517212, 1.5782355070114136, 1.957855224609375,
                                            1.9662928581237793],
    ("trunc_central_edge", torch.float64): [1.681982879516819, 1.9578551315508934, 2.183818483664229,
                                            1.5576641911003983],
    ("trunc_central_edge", torch.bfloat16): [1.6796875, 1.578125, 1.9609375, 1.96875],
    ("trunc_central_edge", torch.float16): [1.681640625, 1.578125, 1.9580078125, 1.9658203125],
}


@pytest.mark.parametrize("name,dtype", sorted(GOLDEN_MORE, key=str))
def test_golden_values_of_every_branch(backend, name, dtype, same_bits):
    spec = GOLDEN_MORE_SPECS[name]
    idx = [0, 1, 2, 3]
    if name == "normal_tail":  # elements whose |z| > 1.44 (|q| > 0.425: the tail branch)
        idx = [5, 7, 12, 13] if dtype == torch.float64 else [5, 10, 14, 24]
    got = sample(spec, Key(2024, "golden"), (32,), dtype=dtype)[idx]
    same_bits(got, torch.tensor(GOLDEN_MORE[(name, dtype)], dtype=dtype))
    if name == "normal_tail":
        assert bool(((got.double() - 0.5).abs() / 2.0 > 1.44).all())
    from torchinit.keyed import engine as E

    if isinstance(spec, S.TruncatedNormal):  # the mode each case is meant to exercise
        mode = E.trunc_constants(spec.mean_, spec.std_, spec.a, spec.b)[0]
        assert mode == (0 if name == "trunc_central_edge" else 1)


# Zero positions of Sparse(0.4, 1.0) on a (7, 5) tensor from Key(2024, "golden"): the
# rows zeroed in each column (k = ceil(0.4 * 7) = 3).
GOLDEN_SPARSE_ZERO_ROWS = [[1, 4, 6], [3, 4, 6], [3, 5, 6], [1, 3, 6], [0, 5, 6]]


def test_golden_sparse_zero_positions(backend, same_bits):
    key = Key(2024, "golden")
    w = sample(S.Sparse(0.4, 1.0), key, (7, 5))
    assert [(w[:, c] == 0).nonzero().flatten().tolist() for c in range(5)] == GOLDEN_SPARSE_ZERO_ROWS
    nz = w != 0
    same_bits(w[nz], sample(S.Normal(0, 1.0), key, (7, 5))[nz])  # the values: the keyed normal fill


# ---------------------------------------------------------------------------------------
# An independent implementation of docs/keyed-stream.md, sections 2-6, in Python ints and
# numpy scalars (float32 / float64 arithmetic, one rounding per operation), element by
# element: the backends must follow the document, not only each other.
# ---------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def _doc_philox(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & _M32, p1 & _M32, ((p0 >> 32) ^ c3 ^ k1) & _M32, p0 & _M32
        k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
    return c0, c1, c2, c3


def test_doc_philox_known_answers():
    for ctr, key, out in KAT:
        assert _doc_philox(ctr, key) == out


def _doc_word(pk, j, sub=0):
    block = 8 * (j >> 5) + (j & 7)
    return _doc_philox((block & _M32, block >> 32, sub, 0), pk)[(j >> 3) & 3]


class _DocArith:
    def __init__(self, wide):
        import numpy as np

        from torchinit.keyed import _constants as K

        self.np, self.wide = np, wide
        self.F = F = np.float64 if wide else np.float32
        self.U = np.uint64 if wide else np.uint32
        P = K.PPND16 if wide else K.PPND7
        self.P = {name: [F(v) for v in P[name]] for name in "ABCDEF"}
        self.L = [F(2.0 / (2 * k + 1)) for k in range(12 if wide else 6)]
        self.ln2_hi = F(6.93147180369123816490e-01 if wide else 0.693145751953125)
        self.ln2_lo = F(1.90821492927058770002e-10 if wide else 1.42860682030941723212e-06)
        self.tiny = F(2.0**-1022 if wide else 2.0**-126)

    def h(self, c, x):
        acc = c[-1]
        for ci in reversed(c[:-1]):
            acc = acc * x
            acc = acc + ci
        return acc

    def bits(self, x):
        return int(self.np.array(x, dtype=self.F).view(self.U)[()])

    def from_bits(self, b):
        return self.np.array(b, dtype=self.U).view(self.F)[()]

    def sqrt(self, x):
        F = self.F
        magic, steps = (0x5FE6EB50C7B537A9, 4) if self.wide else (0x5F3759DF, 3)
        y = self.from_bits(magic - (self.bits(x) >> 1))
        h = F(0.5) * x
        for _ in range(steps):
            y = y * (F(1.5) - h * (y * y))
        return x * y

    def log(self, x):
        F = self.F
        b = self.bits(x)
        if self.wide:
            e, m = ((b >> 52) & 0x7FF) - 1023, self.from_bits((b & ((1 << 52) - 1)) | 0x3FF0000000000000)
        else:
            e, m = ((b >> 23) & 0xFF) - 127, self.from_bits((b & 0x7FFFFF) | 0x3F800000)
        if m > F(1.4142135623730951):
            m, e = m * F(0.5), e + 1
        s = (m - F(1)) / (m + F(1))
        z = s * s
        p = self.h(self.L, z)
        return F(e) * self.ln2_hi + (F(e) * self.ln2_lo + s * p)

    def ppnd_tail(self, q, log_t):
        F, P = self.F, self.P
        r = self.sqrt(max(-log_t, self.tiny))
        if r > F(5):
            s = r - F(5)
            num, den = self.h(P["E"], s), self.h(P["F"], s)
        else:
            s = r - F(1.6)
            num, den = self.h(P["C"], s), self.h(P["D"], s)
        return (-num if q < 0 else num) / den

    def ppnd(self, q, t):
        F, P = self.F, self.P
        if abs(q) <= F(0.425):
            r = F(0.180625) - q * q
            return (q * self.h(P["A"], r)) / self.h(P["B"], r)
        return self.ppnd_tail(q, self.log(t))


def _doc_log_phi(x):
    if x > -30:
        return math.log(math.erfc(-x / math.sqrt(2)) / 2)
    x2 = x * x
    return (-x2 / 2 - math.log(-x) - math.log(2 * math.pi) / 2
            + math.log(1 - 1 / x2 + 3 / x2**2 - 15 / x2**3 + 105 / x2**4))


def _doc_values(spec, pk, indices, wide):
    """Elements ``indices`` of the keyed fill of ``spec`` (float32 or float64 output)."""
    np = __import__("numpy")
    A = _DocArith(wide)
    F = A.F

    def fl(v):  # a host constant rounded once to the compute precision, -0.0 -> +0.0
        return F(v) + F(0)

    def rep_bounds(lo, hi):
        lo_t, hi_t = F(lo), F(hi)
        if lo_t < lo:
            lo_t = np.nextafter(lo_t, F(np.inf))
        if hi_t > hi:
            hi_t = np.nextafter(hi_t, F(-np.inf))
        return lo_t + F(0), hi_t + F(0)

    if isinstance(spec, S.TruncatedNormal):
        alpha, beta, sgn = (spec.a - spec.mean_) / spec.std_, (spec.b - spec.mean_) / spec.std_, 1.0
        if alpha + beta > 0:
            alpha, beta, sgn = -beta, -alpha, -1.0
        tail = math.erfc(-beta / math.sqrt(2)) / 2 <= 0.075
        if tail:
            la, lb = _doc_log_phi(alpha), _doc_log_phi(beta)
            d = min(lb - la, 44)
            c2, c3 = lb - d, math.expm1(d)
        else:
            c2 = math.erf(alpha / math.sqrt(2)) / 2
            c3 = (math.erf(beta / math.sqrt(2)) - math.erf(alpha / math.sqrt(2))) / 2
        c0, c1, c2, c3 = fl(spec.mean_), fl(sgn * spec.std_), fl(c2), fl(c3)
    out = []
    for i in indices:
        w0, w1 = (_doc_word(pk, 2 * i), _doc_word(pk, 2 * i + 1)) if wide else (_doc_word(pk, i), None)
        if isinstance(spec, S.Uniform):
            u = F((w0 << 20) | (w1 >> 12)) * F(2.0**-52) if wide else F(w0 >> 8) * F(2.0**-24)
            x = fl(spec.low) + fl(spec.high - spec.low) * u
            lo_t, hi_t = rep_bounds(spec.low, spec.high)
            if lo_t <= hi_t:
                x = min(max(x, lo_t), hi_t)
        elif isinstance(spec, S.Normal):
            if wide:
                t = (F(((w0 & 0x7FFFFFFF) << 21) | (w1 >> 11)) + F(0.5)) * F(2.0**-53)
            else:
                m = w0 & 0x7FFFFFFF
                t = (F(m >> 7) * F(128) + (F(m & 127) + F(0.5))) * F(2.0**-32)
            z = A.ppnd(t - F(0.5), t)
            x = fl(spec.mean_) + fl(spec.std_) * (-z if w0 >> 31 else z)
        else:
            u = ((F((w0 << 20) | (w1 >> 12)) + F(0.5)) * F(2.0**-52) if wide
                 else (F(w0 >> 9) + F(0.5)) * F(2.0**-23))
            if tail:
                z = A.ppnd_tail(F(-0.5), c2 + A.log(F(1) + u * c3))
            else:
                q = c2 + u * c3
                z = A.ppnd(q, max(F(0.5) - abs(q), A.tiny))
            lo_t, hi_t = rep_bounds(spec.a, spec.b)
            x = min(max(c0 + c1 * z, lo_t), hi_t)
        out.append(float(x))
    return out


DOC_SPECS = [
    *GOLDEN_SPECS.values(), *GOLDEN_MORE_SPECS.values(),
    S.Uniform(-0.3, 0.7), S.Uniform(0.1, 0.3), S.TruncatedNormal(0, 0.02, -0.04, 0.04),
    S.TruncatedNormal(1, 0.5, -1, 0.5),
]


@pytest.mark.parametrize("wide", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("spec", DOC_SPECS, ids=repr)
def test_backends_follow_the_documented_definition(backend, spec, wide, same_bits):
    dtype = torch.float64 if wide else torch.float32
    key = Key(7, f"doc.{spec!r}")
    n = 2**41
    for offset in (0, 2**40 - 9):  # a block counter above 2**32 (c1 != 0) in the second box
        idx = range(offset, offset + 40)
        got = sample(spec, key, (n,), offsets=(offset,), sizes=(40,), dtype=dtype)
        same_bits(got, torch.tensor(_doc_values(spec, key.philox_key, idx, wide), dtype=dtype))


def test_doc_sparse_zero_positions(backend):
    """Section 7: in each column the k rows with the smallest (W_1[r * cols + c], r) are zeroed."""
    key, rows, cols = Key(3, "doc.sparse"), 9, 13
    for sparsity in (0.1, 0.5, 0.9):
        k = math.ceil(sparsity * rows)
        w = sample(S.Sparse(sparsity, 1.0), key, (rows, cols))
        for c in range(cols):
            order = sorted(range(rows), key=lambda r: (_doc_word(key.philox_key, r * cols + c, sub=1), r))
            assert sorted((w[:, c] == 0).nonzero().flatten().tolist()) == sorted(order[:k]), (sparsity, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_doc_orthogonal_is_torch_qr_of_the_keyed_gaussian(backend, dtype, same_bits, one_thread):
    """Section 7: the Gaussian matrix is the keyed Normal(0, 1) fill of (rows, cols), transposed
    if rows < cols, then Q * sign(diag(R)), transposed back, times gain, reshaped."""
    key = Key(2024, "golden")
    for shape, gain in [((5, 8), 1.0), ((8, 5), 2.0), ((4, 2, 3), 0.5), ((6, 6), 1.5)]:
        rows = shape[0]
        cols = math.prod(shape) // rows
        g = sample(S.Normal(0, 1), key, (rows, cols), dtype=dtype)
        if rows < cols:
            g = g.t()
        q, r = torch.linalg.qr(g)
        q = q * torch.diag(r, 0).sign()
        if rows < cols:
            q = q.t()
        same_bits(sample(S.Orthogonal(gain), key, shape, dtype=dtype), (q * gain).reshape(shape))
    # DeltaOrthogonal: the same from the (out, in) Gaussian, at the spatial centre
    w = sample(S.DeltaOrthogonal(2.0), key, (6, 4, 3, 3), dtype=dtype)
    ortho = sample(S.Orthogonal(2.0), key, (6, 4), dtype=dtype)
    same_bits(w[:, :, 1, 1], ortho)
    w[:, :, 1, 1] = 0
    assert bool((w == 0).all())
