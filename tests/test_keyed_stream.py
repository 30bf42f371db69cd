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
