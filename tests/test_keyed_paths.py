"""Every native kernel path (portable C, AVX2, AVX-512 with BF16) gives the same bits.

Each path the machine has is forced in turn (``set_kernel_path``) and compared bit for bit
with the pure-torch reference backend (small boxes) and with the portable C path (boxes
large enough for the non-temporal stores, which the reference is too slow to check). A
path the CPU lacks is skipped with the missing CPU flags in the message.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from torchinit import specs as S
from torchinit.keyed import Key, fill_, fill_region_, set_backend, set_chunk_size, set_num_threads
from torchinit.keyed import backend as B

native_only = pytest.mark.skipif(not B.native_available(), reason="native kernel not built")
PATHS = ["portable", "avx2", "avx512"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
KEY = Key(2026, "paths")

SPECS = [
    S.Uniform(-1.0, 1.0),
    S.Uniform(0.25, 0.5),  # the clamp is a no-op: skipped by the direct uniform stores
    S.Normal(0.0, 1.0),
    S.Normal(-0.3, 0.02),
    S.TruncatedNormal(0.0, 1.0, -2.0, 2.0),  # central mode
    S.TruncatedNormal(0.0, 1.0, -0.1, 0.1),  # narrow: values pile at the bounds (clamp)
    S.TruncatedNormal(1.0, 0.5, 1.2, 1.21),
    S.TruncatedNormal(-3.0, 1.0, -0.5, 0.5),  # deep tail: tail mode
    # subnormal outputs: vcvtne2ps2bf16 reads subnormal float32 as 0, the stream rounds them
    S.Normal(0.0, 2.0**-124),
    S.Uniform(0.0, 1e-39),  # scale itself subnormal: the batch path, not the direct stores
]


def _path(name: str) -> None:
    missing = B.kernel_paths().get(name, ("native kernel",))
    if missing:
        pytest.skip(f"kernel path {name!r} not runnable here: the CPU lacks {', '.join(missing)}")
    B.set_kernel_path(name)


@pytest.fixture
def restore_path(restore_backend):
    p = B.get_kernel_path()
    yield
    B.set_kernel_path(p)


def _fill(path, spec, dt, gshape, offs, sizes):
    if path == "reference":
        set_backend("reference")
    else:
        set_backend("native")
        B.set_kernel_path(path)
    return fill_region_(torch.empty(sizes, dtype=dt), spec, KEY, gshape, offs)


# (global shape, offsets, sizes): starts and tails at every residue of the 16-lane and
# 32-word group structure, rows that start mid-group, and a box of several rows
BOXES = [
    ((1,), (0,), (1,)),
    ((100,), (0,), (15,)),
    ((100,), (1,), (17,)),
    ((1000,), (31,), (33,)),
    ((1000,), (7,), (64 + 5,)),
    ((5000,), (13,), (2048 + 2048 + 29,)),  # more than one batch (SEG = 2048)
    ((37, 1000), (3, 5), (20, 777)),
    ((4, 33, 65), (1, 2, 3), (2, 30, 61)),
    ((10**12,), (10**12 - 70,), (70,)),  # counters above 2**32 blocks
    ((2**35,), (2**34 - 300,), (600,)),  # the counter's high word changes at element 2**34
]


@native_only
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_path_matches_reference_bitwise(path, spec, restore_path, same_bits):
    _path(path)
    set_num_threads(1)
    for dt in DTYPES:
        for gshape, offs, sizes in BOXES:
            ref = _fill("reference", spec, dt, gshape, offs, sizes)
            got = _fill(path, spec, dt, gshape, offs, sizes)
            same_bits(got, ref)


# Uniform(a, a + 2**-102) with a = -2.5 * 2**-126: x = a + k 2**-126 for k = w >> 8, subnormal
# for k = 2, 3 only (2 in 2**24 elements); element SUBNORMAL_AT is one (found by a scan),
# inside whole 32-element groups, so the direct (register to memory) uniform stores write it
SUBNORMAL_UNIFORM = S.Uniform(-2.5 * 2.0**-126, -2.5 * 2.0**-126 + 2.0**-102)
SUBNORMAL_AT = 981855


def _subnormal(t):
    bits = t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32).to(torch.int64)
    mag, expo = (bits & 0x7FFF, 0x80) if t.dtype == torch.bfloat16 else (bits & 0x7FFFFFFF, 0x800000)
    return (mag > 0) & (mag < expo)


@native_only
@pytest.mark.parametrize("path", PATHS)
def test_subnormal_values_round_like_the_stream(path, restore_path, same_bits):
    """The subnormal cases are not vacuous (the stream's bfloat16 output has subnormals
    there, which vcvtne2ps2bf16 alone would flush to 0), and every path rounds them as the
    stream does."""
    _path(path)
    cases = [(SUBNORMAL_UNIFORM, (1 << 26,), (SUBNORMAL_AT - 100,), (300,)),
             (S.Normal(0.0, 2.0**-124), (5000,), (3,), (4000,))]
    for spec, gshape, offs, sizes in cases:
        for dt in (torch.float32, torch.bfloat16):
            ref = _fill("reference", spec, dt, gshape, offs, sizes)
            assert _subnormal(ref).any(), (spec, dt)
            same_bits(_fill(path, spec, dt, gshape, offs, sizes), ref)
    ref = _fill("reference", SUBNORMAL_UNIFORM, torch.float32, (1 << 26,), (SUBNORMAL_AT,), (1,))
    assert _subnormal(ref).all()


@native_only
def test_normal_tail_test_on_the_word_is_the_float_test():
    """The AVX-512 normal picks its tail elements (|q| > 0.425) by comparing the word's low
    31 bits with one integer found when the module loads; around it and at the ends, that
    is the float test of the stream (q = t - 1/2, t = ((m >> 7) 128 + (m & 127) + 1/2) 2^-32)."""
    lim = B.native_module().normal_tail_words()
    m = torch.cat([torch.arange(lim - 70000, lim + 70000), torch.tensor([0, 1, 2**31 - 2, 2**31 - 1])])
    t = (((m >> 7) * 128).to(torch.float32) + ((m & 127).to(torch.float32) + 0.5)) * 2.0**-32
    q = t - 0.5
    is_tail = q.abs() > torch.tensor(0.425, dtype=torch.float32)
    assert torch.equal(is_tail, m < lim)
    assert abs(lim / 2**31 - 0.15) < 1e-6  # t = m 2^-32 < 0.075: P(tail) = 0.15


def test_normal_tail_never_takes_the_far_branch():
    """The AVX-512 normal's tail stage has no r > 5 branch and no sign test (q < 0 always):
    its smallest t is 2^-33 (m = 0), where r = 4.78 (the kernel's comment: the largest r of
    every tail word, checked exhaustively). Here through the stream's float32 recipe on the
    smallest words and a sweep of all the tail words."""
    from torchinit.keyed import reference as R

    C = R._C32
    m = torch.cat([torch.arange(0, 1 << 16), torch.arange(0, 2**31, 997)])
    t = (((m >> 7) * 128).to(torch.float32) + ((m & 127).to(torch.float32) + 0.5)) * 2.0**-32
    q = t - 0.5
    tail = q.abs() > torch.tensor(0.425, dtype=torch.float32)
    rr = R._sqrt(-R._log(t[tail], C), C)
    assert bool((q[tail] < 0).all())
    assert float(rr.max()) < 4.79 and float(rr[0]) == float(rr.max())  # m = 0: the largest


# On each side of the bound below which the AVX-512 bfloat16 stores check every vector for
# subnormal values (vcvtne2ps2bf16 reads them as 0): scales and means whose values are never
# subnormal (the check is skipped) and ones just past it (the check runs)
NEAR_SUBNORMAL = [
    S.Normal(0.0, 2.0**-92),  # |x| >= 2^-92 |z| >= 2^-125: no check
    S.Normal(0.0, 2.0**-93),
    S.Normal(2.0**-103, 2.0**-69),  # both terms on the 2^-126 grid: no check
    S.Normal(2.0**-104, 2.0**-69),
    S.Uniform(-(2.0**-103), 2.0**-103),
    S.Uniform(-(2.0**-105), 2.0**-104),
    S.TruncatedNormal(0.0, 2.0**-40, -(2.0**-40), 2.0**-40),
    S.TruncatedNormal(0.0, 2.0**-80, -(2.0**-79), 2.0**-79),
]


@native_only
@pytest.mark.parametrize("spec", NEAR_SUBNORMAL, ids=repr)
def test_bfloat16_near_the_subnormal_bound(spec, restore_path, same_bits):
    _path("avx512")
    set_num_threads(1)
    box = ((1 << 21,), (5,), ((1 << 20) + 3,))
    ref = _fill("reference", spec, torch.bfloat16, *box)
    same_bits(_fill("avx512", spec, torch.bfloat16, *box), ref)


@native_only
@pytest.mark.parametrize("path", ["avx2", "avx512"])
def test_path_matches_portable_on_large_outputs(path, restore_path, same_bits):
    """Outputs of 16 MiB and more take the non-temporal stores (aligned and, through a
    one-element offset view, unaligned), with 2 threads and odd chunks."""
    _path(path)
    n = (1 << 22) + 77  # > 16 MiB as float32
    set_num_threads(2)
    set_chunk_size(1_000_003)
    for spec in (S.Uniform(-2.0, 2.0), S.Normal(0.0, 1.0), S.TruncatedNormal(0.0, 1.0, -2.0, 2.0)):
        for dt in (torch.float32, torch.bfloat16):
            for start in (0, 1):
                out = {}
                for p in ("portable", path):
                    B.set_kernel_path(p)
                    buf = torch.empty(n + 1, dtype=dt)
                    fill_(buf[start:start + n], spec, KEY)
                    out[p] = buf[start:start + n]
                same_bits(out[path], out["portable"])


# The AVX-512 bfloat16 shortcut (mean 0): the transform with fused multiply-adds, each value
# kept only where its float32 pattern is more than a margin from a bfloat16 rounding tie, the
# others recomputed with the stream's recipe. Specs with clamps (narrow truncations), a -0.0
# mean, the tail of the truncated normal; outputs above 16 MiB (which the other variants stream).
SHORTCUT = [
    S.Normal(0.0, 0.02),
    S.Normal(-0.0, 3.0),
    S.TruncatedNormal(0.0, 0.02, -0.04, 0.04),
    S.TruncatedNormal(0.0, 1.0, -0.1, 0.1),
    S.TruncatedNormal(0.0, 1.0, -3.0, 3.0),
]


@native_only
def test_bfloat16_shortcut_bound_covers_every_input():
    """The shortcut is exact if the fused transform is within BF16_FAST_ULPS float32 ulps of
    the stream's at every input (then a kept value is at most 2 BF16_FAST_ULPS + 1 patterns
    from the stream's, on the same side of every tie): the kernel sweeps every float input of
    the central branch (|q| <= 0.425) and of the tail branch (t in [2^-126, 0.075])."""
    swept = B.native_module().fused_max_ulp()
    if swept is None:
        pytest.skip("this CPU has no AVX-512 path, the only one with the shortcut")
    worst, ulps, margin = swept
    assert worst <= ulps
    assert margin >= 2 * ulps + 1


@native_only
@pytest.mark.parametrize("spec", SHORTCUT, ids=repr)
def test_bfloat16_shortcut_matches_portable_near_ties(spec, restore_path, same_bits):
    _path("avx512")
    set_num_threads(2)
    set_chunk_size(1_000_003)
    n = (1 << 23) + 1001  # bfloat16 above 16 MiB, 2 threads, odd chunks
    B.set_kernel_path("portable")
    f32 = fill_(torch.empty(n), spec, KEY)
    low = f32.view(torch.int32) & 0xFFFF
    # values the shortcut recomputes (within its margin of a tie): the path is exercised
    assert int(((low - 0x8000).abs() <= 16).sum()) > 200
    ref = fill_(torch.empty(n, dtype=torch.bfloat16), spec, KEY)
    B.set_kernel_path("avx512")
    same_bits(fill_(torch.empty(n, dtype=torch.bfloat16), spec, KEY), ref)


@native_only
def test_set_kernel_path_errors_and_query(restore_path, monkeypatch):
    best = [p for p in PATHS if not B.kernel_paths()[p]][-1]
    B.set_kernel_path(None)
    assert B.get_kernel_path() == best
    B.set_kernel_path("portable")
    assert B.get_kernel_path() == "portable"
    with pytest.raises(ValueError, match=r"set_kernel_path must be one of portable, avx2, avx512, got 'sse'"):
        B.set_kernel_path("sse")
    assert B.get_kernel_path() == "portable"  # untouched by the failed call

    class NoAvx512:  # a CPU without AVX-512 BF16, as the kernel reports it
        def __getattr__(self, name):
            return getattr(B.native_module(), name)

        def paths(self):
            return {"portable": (), "avx2": (), "avx512": ("avx512bf16",)}

    monkeypatch.setattr(B, "_native", NoAvx512())
    with pytest.raises(RuntimeError, match=r"set_kernel_path='avx512': this CPU lacks avx512bf16 "
                                           r"\(paths it has: portable, avx2\)"):
        B.set_kernel_path("avx512")


@native_only
@pytest.mark.parametrize("value", ["portable", "avx2", "avx512", "bogus"])
def test_environment_variable_forces_the_path(value):
    code = "from torchinit.keyed import backend as B; print(B.get_kernel_path())"
    env = dict(os.environ, TORCHINIT_KERNEL=value)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if value == "bogus":
        assert r.returncode != 0
        assert "TORCHINIT_KERNEL must be one of portable, avx2, avx512, got 'bogus'" in r.stderr
        return
    missing = B.kernel_paths()[value]
    if missing:
        assert r.returncode != 0 and f"this CPU lacks {', '.join(missing)}" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == value
