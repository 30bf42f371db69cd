"""Keyed engine invariances: threads, chunk sizes, regions, memory layouts, backends."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from torchinit import specs as S
from torchinit.keyed import Key, fill_, fill_region_, sample, set_backend, set_chunk_size, set_num_threads
from torchinit.keyed import backend as B

native_only = pytest.mark.skipif(not B.native_available(), reason="native kernel not built")

ELEMENTWISE = [
    S.Uniform(-0.5, 2.0),
    S.Normal(0.1, 3.0),
    S.TruncatedNormal(0.0, 1.0, -2.0, 2.0),
    S.TruncatedNormal(-3.0, 1.0, -0.5, 0.5),  # deep upper tail -> reflected, tail mode
    S.TruncatedNormal(1.0, 0.5, 1.2, 1.21),  # narrow, central mode
]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
KEY = Key(11, "inv")


@native_only
@pytest.mark.parametrize("spec", ELEMENTWISE, ids=repr)
def test_threads_and_chunk_sizes_do_not_change_values(spec, restore_backend, same_bits):
    set_backend("native")
    shape = (257, 1031)
    set_num_threads(1)
    set_chunk_size(1 << 16)
    ref = {dt: sample(spec, KEY, shape, dtype=dt) for dt in DTYPES}
    for threads, chunk in [(2, 1 << 16), (3, 1000), (7, 1), (4, 777), (16, 4096)]:
        set_num_threads(threads)
        set_chunk_size(chunk)
        for dt in DTYPES:
            same_bits(sample(spec, KEY, shape, dtype=dt), ref[dt])


@pytest.mark.parametrize("spec", ELEMENTWISE[:3], ids=repr)
def test_any_region_equals_the_slice_of_the_full_fill(spec, restore_backend, same_bits):
    gshape = (13, 37, 29)
    rng = random.Random(0)
    for backend in ["reference"] + (["native"] if B.native_available() else []):
        set_backend(backend)
        for dt in (torch.float32, torch.float64, torch.bfloat16):
            full = sample(spec, KEY, gshape, dtype=dt)
            boxes = [((0, 0, 0), gshape), ((5, 0, 0), (3, 37, 29)), ((0, 0, 7), (13, 37, 1)),
                     ((0, 11, 0), (13, 1, 29)), ((12, 36, 28), (1, 1, 1))]
            for _ in range(6):
                off = tuple(rng.randrange(g) for g in gshape)
                size = tuple(rng.randrange(1, g - o + 1) for g, o in zip(gshape, off))
                boxes.append((off, size))
            for off, size in boxes:
                sl = tuple(slice(o, o + s) for o, s in zip(off, size))
                got = sample(spec, KEY, gshape, offsets=off, sizes=size, dtype=dt)
                same_bits(got, full[sl].contiguous())
                out = torch.empty(size, dtype=dt)
                assert fill_region_(out, spec, KEY, gshape, off) is out
                same_bits(out, full[sl].contiguous())


BACKENDS = ["reference"] + (["native"] if B.native_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", [ELEMENTWISE[1], ELEMENTWISE[0], ELEMENTWISE[3], S.Sparse(0.3, 1.0), S.Orthogonal(1.5),
                                  S.Eye(), S.Constant(0.25)], ids=repr)
def test_contiguous_noncontiguous_and_channels_last_get_the_same_values(spec, backend, restore_backend, same_bits):
    set_backend(backend)
    shape = (6, 10) if not isinstance(spec, S.Orthogonal) else (8, 5)
    base = torch.empty(shape)
    fill_(base, spec, KEY)
    t = torch.empty(shape[::-1]).t()  # non-contiguous view of the same logical shape
    assert not t.is_contiguous()
    fill_(t, spec, KEY)
    same_bits(t.contiguous(), base)
    big = torch.zeros(shape[0], shape[1] * 2)
    fill_(big[:, ::2], spec, KEY)
    same_bits(big[:, ::2].contiguous(), base)
    assert bool((big[:, 1::2] == 0).all())  # nothing written outside the view


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last(backend, restore_backend, same_bits):
    set_backend("reference")  # the reference of every backend's layouts: a contiguous reference fill
    spec = S.TruncatedNormal(0, 0.02, -0.04, 0.04)
    for dt in DTYPES:
        ref = sample(spec, KEY, (4, 3, 5, 5), dtype=dt)
        set_backend(backend)
        w = torch.empty(4, 3, 5, 5, dtype=dt).to(memory_format=torch.channels_last)
        fill_(w, spec, KEY)
        assert w.is_contiguous(memory_format=torch.channels_last)
        same_bits(w.contiguous(), ref)
        # a strided view into a larger buffer: each backend writes the view only
        big = torch.zeros(4, 3, 5, 10, dtype=dt)
        fill_(big[..., 1::2], spec, KEY)
        same_bits(big[..., 1::2].contiguous(), ref)
        assert bool((big[..., ::2] == 0).all())
        set_backend("reference")


def test_regions_of_sparse_and_orthogonal_equal_slices(same_bits):
    for spec, gshape in [(S.Sparse(0.4, 0.1), (23, 17)), (S.Orthogonal(1.0), (9, 14)),
                         (S.DeltaOrthogonal(2.0), (6, 4, 3, 3)), (S.Dirac(2), (4, 3, 3)), (S.Eye(), (5, 7))]:
        full = sample(spec, KEY, gshape)
        off = tuple(g // 3 for g in gshape)
        size = tuple(g - o - (1 if g - o > 1 else 0) for g, o in zip(gshape, off))
        sl = tuple(slice(o, o + s) for o, s in zip(off, size))
        same_bits(sample(spec, KEY, gshape, offsets=off, sizes=size), full[sl].contiguous())


def _shapes():
    rng = random.Random(5)
    out = [(1,), (7,), (31,), (33,), (1, 1), (3, 65), (2, 3, 4, 5), (1000,), ()]
    for _ in range(4):
        out.append(tuple(rng.randrange(1, 40) for _ in range(rng.randrange(1, 4))))
    return out


@native_only
def test_native_and_reference_backends_are_bit_identical(restore_backend, same_bits):
    specs = ELEMENTWISE + [S.TruncatedNormal(0, 1, -40, -38), S.TruncatedNormal(0, 1, 3, 1e6),
                           S.TruncatedNormal(5, 1e-3, 4.9, 4.9605), S.Uniform(2, 2), S.Normal(-1, 0.0),
                           S.TruncatedNormal(0, 1, -1e-4, 1e-4), S.Normal(0, 1e5), S.Uniform(-1e-6, 1e-6),
                           S.Normal(0, 1e-7)]  # float16 overflow to inf and subnormals
    rng = random.Random(1)
    for spec, dt in itertools.product(specs, DTYPES):
        key = Key(rng.randrange(2**64), f"p{rng.randrange(100)}")
        for shape in _shapes()[:6] + [(3, 65)]:
            off = tuple(rng.randrange(g) for g in shape)
            size = tuple(rng.randrange(1, g - o + 1) for g, o in zip(shape, off))
            got = {}
            for backend in ("native", "reference"):
                set_backend(backend)
                got[backend] = sample(spec, key, shape, offsets=off, sizes=size, dtype=dt)
            same_bits(got["native"], got["reference"])
    # large offsets: counter words above 2**32 and lanes at every position
    for dt in DTYPES:
        got = {}
        for backend in ("native", "reference"):
            set_backend(backend)
            got[backend] = sample(S.Normal(0, 1), KEY, (2**36, 3), offsets=(2**34 - 5, 0), sizes=(11, 3), dtype=dt)
        same_bits(got["native"], got["reference"])


@native_only
def test_backends_agree_on_large_fills_of_each_distribution(restore_backend, same_bits):
    for spec in ELEMENTWISE[:4]:
        for dt in (torch.float32, torch.float64):
            set_backend("native")
            a = sample(spec, KEY, (8_000,), dtype=dt)
            set_backend("reference")
            b = sample(spec, KEY, (8_000,), dtype=dt)
            same_bits(a, b)


@native_only
def test_direct_uniform_path_matches_reference(restore_backend, same_bits):
    """The native kernel writes whole 32-element groups of uniform / raw-bits outputs
    straight from the Philox registers (non-temporal stores from 16 MiB up), with a
    folded scale and a clamp it skips when provably idle: rows that start mid-group,
    outputs misaligned for 32-byte stores, bounds that do bind, a scale too small to
    fold, large outputs."""
    specs = [S.Uniform(-0.5, 2.0), S.Uniform(0.1, 0.3), S.Uniform(1.0, 2.0), S.Uniform(0.0, 1e-38),
             S.Uniform(-3.0, -3.0), S.Uniform(-1e30, 1e30)]
    boxes = [((4, 200), (1, 3), (3, 197)), ((70,), (5,), (64,)), ((3, 33), (0, 0), (3, 33)),
             ((2**36, 3), (2**34 - 5, 0), (50, 3))]
    for spec, dt, (g, o, sz) in itertools.product(specs, (torch.float32, torch.bfloat16), boxes):
        got = {}
        for backend in ("native", "reference"):
            set_backend(backend)
            got[backend] = sample(spec, KEY, g, offsets=o, sizes=sz, dtype=dt)
        same_bits(got["native"], got["reference"])
    # just over 16 MiB: non-temporal stores, each row at a different alignment
    _same_across_backends_large(same_bits, [S.Uniform(-0.5, 2.0), S.Uniform(0.1, 0.3)])


def _same_across_backends_large(same_bits, specs):
    for spec in specs:
        for dt, rows in ((torch.float32, 1025), (torch.bfloat16, 2049)):
            got = {}
            for backend in ("native", "reference"):
                set_backend(backend)
                got[backend] = sample(spec, KEY, (rows, 4100), offsets=(0, 1), sizes=(rows, 4099), dtype=dt)
            same_bits(got["native"], got["reference"])


@native_only
def test_staged_normal_path_matches_reference_on_large_outputs(restore_backend, same_bits):
    """The normals' last stage writes large outputs with non-temporal stores where the
    batch is 32-byte aligned and plainly elsewhere."""
    _same_across_backends_large(same_bits, [S.Normal(0.1, 3.0), S.TruncatedNormal(0.0, 1.0, -2.0, 2.0)])


@native_only
def test_orthogonal_and_sparse_identical_across_backends(restore_backend, same_bits):
    for spec, shape in [(S.Sparse(0.25, 0.5), (20, 30)), (S.Orthogonal(1.0), (12, 7))]:
        set_backend("native")
        a = sample(spec, KEY, shape)
        set_backend("reference")
        b = sample(spec, KEY, shape)
        same_bits(a, b)


@pytest.mark.parametrize("backend", ["reference"] + (["native"] if B.native_available() else []))
def test_float64_words_beyond_int64_in_sparse_boxes(backend, restore_backend, same_bits):
    """float64 element i uses words 2i and 2i + 1, which pass 2**63 for i >= 2**62: a box of
    narrow columns of a huge tensor (indices far apart) gets them from the definition."""
    from torchinit.keyed import philox4x32

    set_backend(backend)
    k0, k1 = KEY.philox_key

    def word(j):  # docs/keyed-stream.md, section 3
        block = 8 * (j >> 5) + (j & 7)
        return philox4x32([block & 0xFFFFFFFF, block >> 32, 0, 0], [k0, k1])[(j >> 3) & 3]

    gshape, off = (4, 2**61 - 1), (0, 5)
    got = sample(S.Uniform(0, 1), KEY, gshape, offsets=off, sizes=(4, 2), dtype=torch.float64)
    want = torch.tensor([[((word(2 * i) << 20) | (word(2 * i + 1) >> 12)) * 2.0**-52
                          for i in (r * gshape[1] + c for c in (5, 6))] for r in range(4)], dtype=torch.float64)
    same_bits(got, want)
    for spec in (S.Normal(0, 1), S.TruncatedNormal(0, 1, -2, 2)):  # each row alone: dense indices
        rows = [sample(spec, KEY, gshape, offsets=(r, 5), sizes=(1, 2), dtype=torch.float64) for r in range(4)]
        same_bits(sample(spec, KEY, gshape, offsets=off, sizes=(4, 2), dtype=torch.float64), torch.cat(rows))


def test_neg_bit_views_get_the_logical_values(restore_backend, same_bits):
    for backend in ["reference"] + (["native"] if B.native_available() else []):
        set_backend(backend)
        t = torch._neg_view(torch.zeros(5, 7))
        assert t.is_neg() and t.is_contiguous()
        fill_(t, S.Uniform(0.5, 1.0), KEY)
        same_bits(t.resolve_neg(), sample(S.Uniform(0.5, 1.0), KEY, (5, 7)))


@native_only
def test_native_fill_from_a_thread_with_a_small_stack():
    """A kernel batch takes about 170 KiB of stack: from a Python thread started after
    threading.stack_size(128 KiB) the kernel hands the work to its own threads (it used to
    overflow the caller's stack and crash)."""
    import subprocess
    import sys

    code = """
import threading, torch
from torchinit import specs as S
from torchinit.keyed import Key, fill_, set_backend, set_num_threads
set_backend("native")
threading.stack_size(128 * 1024)
out = []
def work():
    for threads in (1, 2):
        set_num_threads(threads)
        for dt in (torch.float32, torch.float64, torch.bfloat16):
            for spec in (S.Normal(0, 1), S.TruncatedNormal(-3, 1, -0.5, 0.5), S.Uniform(-1, 1)):
                t = torch.empty(5000, dtype=dt)
                fill_(t, spec, Key(3, "stack"))
                out.append(float(t.double().sum()))
th = threading.Thread(target=work)
th.start()
th.join()
print(repr(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    want = []
    for _ in (1, 2):
        for dt in (torch.float32, torch.float64, torch.bfloat16):
            for spec in (S.Normal(0, 1), S.TruncatedNormal(-3, 1, -0.5, 0.5), S.Uniform(-1, 1)):
                want.append(float(sample(spec, Key(3, "stack"), (5000,), dtype=dt).double().sum()))
    assert eval(proc.stdout.strip()) == want


_QR_CODE = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
import torchinit
from torchinit import Key
h = hashlib.sha256()
for shape, fn in [((256, 256), torchinit.orthogonal_), ((96, 300), torchinit.orthogonal_),
                  ((128, 64, 3, 3), torchinit.delta_orthogonal_)]:
    for dtype in (torch.float32, torch.float64):
        w = fn(torch.empty(shape, dtype=dtype), key=Key(0).child("w"))
        h.update(w.numpy().tobytes())
assert torch.get_num_threads() == int(sys.argv[1])  # the QR's one thread is restored
print(h.hexdigest())
"""


def test_keyed_orthogonal_is_independent_of_the_thread_count():
    """Issue 19: LAPACK's QR splits its work (and its rounding) by the thread count, so
    keyed orthogonal_ differed between 1 and 2 threads. Fresh processes at 1, 2 and 4
    torch threads give the same bits (the keyed engine factors on one thread)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.pop(var, None)
    digests = []
    for threads in (1, 2, 4):
        proc = subprocess.run([sys.executable, "-c", _QR_CODE, str(threads)], capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(proc.stdout.strip())
    assert digests[0] == digests[1] == digests[2], digests


def test_keyed_orthogonal_from_threads_restores_the_thread_count():
    # concurrent keyed QRs (one lock) each give the single-thread bits and leave the count as it was
    import threading

    torch_threads = torch.get_num_threads()
    ref = sample(S.Orthogonal(1.0), Key(5, "w"), (64, 64))
    out: list = []
    workers = [threading.Thread(target=lambda: out.append(sample(S.Orthogonal(1.0), Key(5, "w"), (64, 64))))
               for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(out) == 4 and all(torch.equal(o, ref) for o in out)
    assert torch.get_num_threads() == torch_threads
