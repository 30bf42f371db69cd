"""Keyed engine API: argument validation (before writing), keys, backends, delegation."""

from __future__ import annotations

import sys
import os
import warnings

import pytest
import torch

import torchinit
from torchinit import specs as S
from torchinit.keyed import Key, fill_, fill_region_, sample, set_backend, set_chunk_size, set_num_threads
from torchinit.keyed import backend as B


@pytest.mark.parametrize(
    "args,exc,msg",
    [
        ((-1,), ValueError, r"Key: seed must be in \[0, 2\*\*64\), got -1"),
        ((2**64,), ValueError, r"Key: seed must be in \[0, 2\*\*64\), got 18446744073709551616"),
        ((1.0,), TypeError, r"Key: seed must be an int in \[0, 2\*\*64\), got float 1.0"),
        ((True,), TypeError, r"Key: seed must be an int in \[0, 2\*\*64\), got bool True"),
        (("3",), TypeError, r"Key: seed must be an int in \[0, 2\*\*64\), got str '3'"),
        ((3, 5), TypeError, r"Key: path must be a str, got int 5"),
        ((3, None), TypeError, r"Key: path must be a str, got NoneType None"),
        ((3, "\ud800"), ValueError, r"Key: path must be encodable as UTF-8"),
    ],
)
def test_invalid_keys(args, exc, msg):
    with pytest.raises(exc, match=msg):
        Key(*args)


def test_key_accepts_integer_like_seeds_and_child_errors():
    import numpy as np

    assert Key(np.uint64(2**64 - 1)) == Key(2**64 - 1)
    assert Key(torch.tensor(7)) == Key(7)
    with pytest.raises(TypeError, match="Key.child: name must be a str, got int 3"):
        Key(1).child(3)
    with pytest.raises(ValueError, match="Key.child: name must be a non-empty string"):
        Key(1).child("")
    assert repr(Key(1)) == "Key(1)" and repr(Key(1, "a.b")) == "Key(1, 'a.b')"


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64], ids=str)
def test_non_float_tensors_raise_a_type_error_naming_the_dtype_before_writing(dtype):
    t = torch.zeros(3, 4, dtype=dtype)
    before = t.clone()
    with pytest.raises(TypeError, match=f"dtype {dtype}"):
        fill_(t, S.Normal(0, 1), Key(0))
    with pytest.raises(TypeError, match=f"dtype {dtype}"):
        torchinit.normal_(t, key=Key(0))
    with pytest.raises(TypeError, match=f"dtype {dtype}"):
        torchinit.kaiming_uniform_(t, key=Key(0))
    assert torch.equal(t, before)
    with pytest.raises(TypeError, match=f"^keyed engine: dtype {dtype}; key= fills floating-point"):
        sample(S.Normal(0, 1), Key(0), (3,), dtype=dtype)


def test_bad_arguments():
    t = torch.zeros(4, 5)
    with pytest.raises(TypeError, match="key must be a torchinit.Key, got int 3"):
        fill_(t, S.Normal(0, 1), 3)
    with pytest.raises(TypeError, match="spec must be a torchinit.specs.Spec, got str 'normal'"):
        fill_(t, "normal", Key(0))
    with pytest.raises(ValueError, match=r"box outside the global shape in dim 1: offset 3 \+ size 5 > 7"):
        fill_region_(t, S.Normal(0, 1), Key(0), (4, 7), (0, 3))
    with pytest.raises(ValueError, match=r"out has 2 dimensions but global_shape \(20,\) has 1"):
        fill_region_(t, S.Normal(0, 1), Key(0), (20,), (0,))
    with pytest.raises(TypeError, match="offsets must be a sequence of ints"):
        fill_region_(t, S.Normal(0, 1), Key(0), (4, 5), (0.5, 0))
    with pytest.raises(ValueError, match="Only tensors with 2 dimensions are supported"):
        fill_region_(torch.zeros(3), S.Eye(), Key(0), (3,), (0,))
    with pytest.raises(ValueError, match=r"Normal: std must be >= 0, got -1"):
        torchinit.normal_(t, std=-1.0, key=Key(0))
    with pytest.raises(ValueError, match=r"no torch.bfloat16 value lies in \[a, b\]"):
        sample(S.TruncatedNormal(0, 1, 1.001, 1.002), Key(0), (3,), dtype=torch.bfloat16)
    assert bool((t == 0).all())  # nothing was written by any failed call


def test_returns_input_and_handles_edge_shapes(same_bits):
    t = torch.empty(0, 3)
    assert fill_(t, S.Normal(0, 1), Key(0)) is t
    m = torch.empty(4, 4, device="meta")
    assert fill_(m, S.Normal(0, 1), Key(0)) is m
    s = torch.empty(())
    fill_(s, S.Normal(0, 1), Key(0))
    same_bits(s.reshape(1), sample(S.Normal(0, 1), Key(0), (1,)))
    p = torch.nn.Parameter(torch.empty(3, 3))
    version = p._version
    fill_(p, S.Uniform(-1, 1), Key(0))
    assert p.requires_grad and p.grad_fn is None and bool((p.abs() <= 1).all())
    assert p._version > version  # autograd sees the in-place write
    # constant/uniform degenerate specs
    u = sample(S.Uniform(0.1, 0.1), Key(0), (5,), dtype=torch.bfloat16)
    assert bool((u == torch.tensor(0.1, dtype=torch.bfloat16)).all())


def test_dtensor_is_delegated_to_sharding(monkeypatch):
    calls = []
    import torchinit.engines.keyed.fill as fill_mod

    monkeypatch.setattr(fill_mod, "shard_fill_", lambda t, spec, key: calls.append((t, spec, key)) or t)

    class DTensor:  # stands in for torch.distributed.tensor.DTensor (matched by class name)
        pass

    d = DTensor()
    assert fill_(d, S.Normal(0, 1), Key(1)) is d
    assert calls == [(d, S.Normal(0, 1), Key(1))]
    with pytest.raises(TypeError, match="key must be a torchinit.Key"):
        fill_(d, S.Normal(0, 1), "k")


def test_backend_controls(monkeypatch):
    with pytest.raises(ValueError, match="set_backend: name must be 'native' or 'reference', got 'gpu'"):
        set_backend("gpu")
    with pytest.raises(ValueError, match="set_num_threads: n must be a positive int or None, got 0"):
        set_num_threads(0)
    with pytest.raises(ValueError, match="set_chunk_size: n must be a positive int, got -5"):
        set_chunk_size(-5)
    monkeypatch.setenv("TORCHINIT_BACKEND", "fast")
    with pytest.raises(ValueError, match="TORCHINIT_BACKEND must be 'native' or 'reference', got 'fast'"):
        B._initial_backend()
    monkeypatch.setenv("TORCHINIT_BACKEND", "reference")
    assert B._initial_backend() == "reference"
    set_num_threads(None)
    assert B.get_num_threads() == torch.get_num_threads()


def test_missing_native_kernel_warns_once_and_uses_reference(monkeypatch, same_bits):
    expected = sample(S.Normal(0, 1), Key(0), (40,))
    monkeypatch.setattr(B, "_native", None)
    monkeypatch.setattr(B, "_native_error", "ImportError: simulated")
    monkeypatch.setattr(B, "_backend", None)
    monkeypatch.setattr(B, "_warned", False)
    monkeypatch.delenv("TORCHINIT_BACKEND", raising=False)
    with pytest.warns(RuntimeWarning, match="native keyed-engine kernel is not available .*simulated"):
        got = sample(S.Normal(0, 1), Key(0), (40,))
    same_bits(got, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample(S.Normal(0, 1), Key(0), (40,))  # no second warning
    with pytest.raises(RuntimeError, match=r"set_backend\('native'\): the native kernel is not available"):
        set_backend("native")


def test_native_kernel_is_built():
    """pip install builds the C kernel; only an explicit TORCHINIT_NO_NATIVE=1 build skips it."""
    import os

    if os.environ.get("TORCHINIT_NO_NATIVE") == "1":
        pytest.skip("built without the native kernel on purpose")
    assert B.native_available(), f"native keyed kernel failed to load: {B._native_error}"


def test_public_exports():
    assert torchinit.Key is Key
    assert "Key" in torchinit.__all__
    for name in ("Key", "fill_", "fill_region_", "sample", "STREAM_VERSION", "set_num_threads", "set_backend"):
        assert hasattr(torchinit.keyed, name) and name in torchinit.keyed.__all__


def test_float8_is_refused_before_writing():
    import pytest
    import torch
    import torchinit

    t = torch.zeros(4, dtype=torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"dtype torch.float8_e4m3fn; key= fills floating-point tensors only"):
        torchinit.normal_(t, key=torchinit.Key(0))
    assert (t.float() == 0).all()


def test_global_shapes_with_more_than_int64_elements_are_refused():
    out = torch.zeros(2, 3)
    for gshape, off in [((2**32, 2**32), (2**32 - 2, 0)), ((2**62, 2, 3), (0, 0, 0)), ((2**63, 3), (0, 0))]:
        with pytest.raises(ValueError, match=r"global_shape .* elements, more than 2\*\*63 - 1"):
            fill_region_(out if len(gshape) == 2 else out[None], S.Normal(0, 1), Key(0), gshape, off)
        with pytest.raises(ValueError, match=r"more than 2\*\*63 - 1"):
            sample(S.Normal(0, 1), Key(0), gshape, offsets=off, sizes=(1,) * len(gshape))
    assert bool((out == 0).all())
    assert sample(S.Normal(0, 1), Key(0), (2**63 - 1,), offsets=(2**63 - 4,), sizes=(3,)).shape == (3,)


def test_offsets_and_shapes_must_be_ints():
    import numpy as np

    with pytest.raises(TypeError, match=r"offsets must be a sequence of ints, got \(1.0, 0\)"):
        fill_region_(torch.zeros(2, 2), S.Normal(0, 1), Key(0), (4, 4), (1.0, 0))
    with pytest.raises(TypeError, match="global_shape must be a sequence of ints"):
        sample(S.Normal(0, 1), Key(0), (4.0,))
    assert sample(S.Normal(0, 1), Key(0), (np.int64(4), torch.tensor(2))).shape == (4, 2)


@pytest.mark.parametrize(
    "make",
    [lambda z: z[:4].view(1, 4).expand(3, 4), lambda z: z.as_strided((4, 2), (0, 1)),
     lambda z: z.as_strided((3, 3), (1, 1)), lambda z: z.as_strided((2, 3), (2, 1))],
    ids=["expand", "zero_stride", "as_strided_overlap", "as_strided_partial"],
)
@pytest.mark.parametrize("spec", [S.Normal(0, 1), S.Uniform(-1, 1), S.Constant(2.0), S.Eye(), S.Sparse(0.5, 1.0)], ids=repr)
def test_overlapping_memory_is_refused_before_writing(make, spec, restore_backend):
    for backend in ["reference"] + (["native"] if B.native_available() else []):
        set_backend(backend)
        z = torch.zeros(16)
        with pytest.raises(ValueError, match=r"out \(shape .*\) has overlapping memory"):
            fill_(make(z), spec, Key(0))
        assert bool((z == 0).all())


def test_exotic_non_overlapping_layouts_are_filled(same_bits):
    z = torch.zeros(8)
    t = z.as_strided((3, 2), (2, 3))  # offsets 0 3 2 5 4 7: interleaved, but all distinct
    fill_(t, S.Normal(0, 1), Key(0))
    same_bits(t.contiguous(), sample(S.Normal(0, 1), Key(0), (3, 2)))
    assert z[1] == 0 and z[6] == 0


def test_inference_tensors_are_filled_only_in_inference_mode(restore_backend, same_bits):
    for backend in ["reference"] + (["native"] if B.native_available() else []):
        set_backend(backend)
        for spec in (S.Normal(0, 1), S.Constant(3.0)):
            with torch.inference_mode():
                t = torch.zeros(3, 4)
            with pytest.raises(RuntimeError, match=r"out is an inference tensor .* only inside torch.inference_mode"):
                fill_(t, spec, Key(0))
            assert bool((t == 0).all())  # refused before writing, on every backend
            with torch.inference_mode():
                fill_(t, spec, Key(0))
            same_bits(t.clone(), sample(spec, Key(0), (3, 4)))


@pytest.mark.skipif(not B.native_available(), reason="native kernel not built")
def test_huge_chunk_sizes_and_thread_counts_still_fill(restore_backend, same_bits):
    set_backend("native")
    ref = sample(S.Normal(0, 1), Key(0), (100, 7))
    for chunk in (2**62, 2**63 - 1):  # (total + chunk - 1) overflowed int64: nothing was written
        for threads in (1, 3, 2**31 - 1):
            set_chunk_size(chunk)
            set_num_threads(threads)
            t = torch.full((100, 7), 7.0)
            fill_(t, S.Normal(0, 1), Key(0))
            same_bits(t, ref)
    # beyond the kernel's C types: refused by the setters, not by every later fill
    with pytest.raises(ValueError, match=r"set_chunk_size: n must be a positive int, got 9223372036854775808 \(at most"):
        set_chunk_size(2**63)
    with pytest.raises(ValueError, match=r"set_num_threads: n must be a positive int or None, got 2147483648 \(at most"):
        set_num_threads(2**31)


@pytest.mark.parametrize(
    "spec,dtype",
    [(S.Uniform(-3e38, 3e38), torch.float32), (S.Uniform(-3e38, 3e38), torch.bfloat16),
     (S.Uniform(-1.7e308, 1.7e308), torch.float64), (S.Normal(0, 1e39), torch.float16),
     (S.TruncatedNormal(0, 1e39, -1e39, 1e39), torch.float32)],
    ids=str,
)
def test_constants_that_overflow_the_compute_precision_raise(spec, dtype, restore_backend):
    """Uniform(-3e38, 3e38) in float32 has high - low = inf: every value would be high (or nan)."""
    for backend in ["reference"] + (["native"] if B.native_available() else []):
        set_backend(backend)
        t = torch.zeros(50, dtype=dtype)
        with pytest.raises(ValueError, match=r"cannot be filled into .* are not finite in float(32|64)"):
            fill_(t, spec, Key(0))
        assert bool((t == 0).all())
    wide = sample(S.Uniform(-3e38, 3e38), Key(0), (1000,), dtype=torch.float64)  # fine in float64
    assert wide.min() < -1e38 and wide.max() > 1e38


def test_key_refuses_bool_and_non_integer_tensors_with_its_own_message():
    for seed in (torch.tensor(True), torch.tensor(3.0), torch.tensor([1, 2])):
        with pytest.raises(TypeError, match=r"Key: seed must be an int in \[0, 2\*\*64\), got Tensor"):
            Key(seed)


def test_unbuilt_extension_warning_says_so_and_points_at_user_code(tmp_path):
    # an install where pip could not compile the kernel: the package without the .so
    import shutil
    import subprocess

    pkg = tmp_path / "torchinit"
    shutil.copytree(os.path.dirname(torchinit.__file__), pkg,
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    script = tmp_path / "user_code.py"
    script.write_text("import torch, torchinit\n"
                      "torchinit.keyed.fill_(torch.empty(8), torchinit.specs.Normal(0, 1), torchinit.Key(0))\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("TORCHINIT_BACKEND", None)
    r = subprocess.run([sys.executable, "-W", "always", str(script)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("RuntimeWarning") == 1
    assert "user_code.py:2: RuntimeWarning" in r.stderr  # the user's line, not torchinit's
    assert "C extension was not built when torchinit was installed" in r.stderr


_DEFAULT_DEVICE_SCRIPT = r"""
import sys, torch
torch.set_default_device("meta")  # before the import: module constants must not land on meta
import torchinit
from torchinit import specs as S
from torchinit.keyed import Key, fill_
k = Key(0, "w")
calls = [
    lambda t: torchinit.sparse_(t, 0.3, key=k),                   # the sort keys' word buffer
    lambda t: torchinit.xavier_normal_(t.t(), key=k),             # a non-contiguous target's scratch
    lambda t: fill_(t.t(), S.Normal(0, 1), k),
    lambda t: torchinit.trunc_normal_(t.t(), 0, 0.02, -0.03, 0.03, key=k),  # the bounds' float32 rounding
    lambda t: torchinit.dirac_(t.view(6, 5, 1), 2),
]
for i, call in enumerate(calls):
    torch.set_default_device(None)
    ref = torch.zeros(6, 5)
    call(ref)
    torch.set_default_device("meta")
    out = torch.zeros(6, 5, device="cpu")
    call(out)
    assert out.device.type == "cpu" and torch.equal(out, ref), i
print("same values")
"""


def test_keyed_fills_ignore_the_default_device():
    # torch.set_default_device("meta") (or `with torch.device(...)`) made the engine's scratch
    # buffers meta tensors: the native kernel wrote through their null pointer (segmentation
    # fault), the bounds' rounding failed (".item() cannot be called on meta tensors"), and so
    # did `import torchinit`. A fresh process: before the fix it crashed.
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # this torchinit
    r = subprocess.run([sys.executable, "-c", _DEFAULT_DEVICE_SCRIPT], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.strip() == "same values"
