"""The keyed engine: fill specs from (key, logical element index), any region, any backend.

Public entry points (re-exported by :mod:`torchinit.keyed`): :func:`fill_`,
:func:`fill_region_`, :func:`sample`. The stream is specified in
docs/keyed-stream.md.
"""

from __future__ import annotations

import functools
import math
import operator
import struct
import threading
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ...core import specs as S
from ...core.gate_specs import GateConstant, OrthogonalPerGate
from ..structured import _dirac_, _gate_constant_
from . import _constants as K
from . import backend as B
from .key import Key
from .reference import reference_box

__all__ = ["fill_region_", "sample", "kernel_params", "KernelParams", "raw_words"]


_DT_CODE = {
    torch.float32: K.DT_F32,
    torch.float64: K.DT_F64,
    torch.float16: K.DT_F16,
    torch.bfloat16: K.DT_BF16,
}
_ELEMENTWISE = (S.Uniform, S.Normal, S.TruncatedNormal)


@dataclass(frozen=True)
class KernelParams:
    """Everything the kernels need for one elementwise spec and output dtype.

    ``c`` are four constants in the compute precision (float32 values for
    float32/float16/bfloat16 outputs, float64 for float64 outputs):
    uniform ``(low, high - low, 0, 0)``; normal ``(mean, std, 0, 0)``; truncated
    normal ``(mean, s * std, base, span)`` with ``s = +-1`` (reflection) and
    ``mode`` 0 (central, q-space) or 1 (tail, log-space). ``lo, hi`` are the clamp
    bounds (values representable in the output dtype) when ``clamp``.
    """

    kind: int
    mode: int
    clamp: bool
    k0: int
    k1: int
    sub: int
    c: tuple[float, float, float, float]
    lo: float
    hi: float


# ----------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------

def _check_key(key) -> Key:
    if not isinstance(key, Key):
        raise TypeError(f"key must be a torchinit.Key, got {type(key).__name__} {key!r}")
    return key


@functools.lru_cache(maxsize=4096)
def _checked_cached(spec: S.Spec, text: str) -> S.Spec:
    # keyed by the repr too: equal specs may differ in the sign of a zero (-0.0 == 0.0)
    return spec.checked()


def checked_spec(spec) -> S.Spec:
    """``spec.checked()``, cached per distinct spec (a model repeats a few specs); TypeError for a non-spec."""
    if not isinstance(spec, S.Spec):
        raise TypeError(f"spec must be a torchinit.specs.Spec, got {type(spec).__name__} {spec!r}")
    try:
        return _checked_cached(spec, repr(spec))
    except TypeError as exc:  # unhashable field values: validate without the cache
        if "unhashable" not in str(exc):
            raise
        return spec.checked()


_KEYED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_dtype(dtype: torch.dtype, what: str = "tensor") -> None:
    # float8 and other exotic floats are refused: the stream's bound clamping and
    # rounding rules (docs/keyed-stream.md, section 6) are defined for these four only.
    if dtype not in _KEYED_DTYPES:
        subject = f"dtype {dtype}" if what == "dtype" else f"{what} has dtype {dtype}"
        raise TypeError(
            f"keyed engine: {subject}; key= fills floating-point tensors only "
            "(float16, bfloat16, float32, float64)"
        )


def _norm_shape(name: str, v) -> tuple[int, ...]:
    try:
        items = tuple(v)
        # operator.index: ints and integer scalars (numpy, 0-d torch) only, never 2.0
        out = tuple(operator.index(x) for x in items)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {v!r}") from None
    for orig in items:
        if isinstance(orig, bool):
            raise TypeError(f"{name} must be a sequence of ints, got {v!r}")
    return out


_MAX_NUMEL = 2**63 - 1


def _check_box(global_shape, offsets, sizes) -> None:
    if not (len(global_shape) == len(offsets) == len(sizes)):
        raise ValueError(
            f"global_shape {tuple(global_shape)}, offsets {tuple(offsets)} and box sizes {tuple(sizes)} "
            "need the same number of dimensions"
        )
    for d, (g, o, s) in enumerate(zip(global_shape, offsets, sizes)):
        if g < 0 or o < 0 or s < 0 or o + s > g:
            raise ValueError(
                f"box outside the global shape in dim {d}: offset {o} + size {s} > {g} "
                f"(global_shape {tuple(global_shape)}, offsets {tuple(offsets)}, sizes {tuple(sizes)})"
            )
    if math.prod(global_shape) > _MAX_NUMEL:
        # element indices (and the kernels' strides) are int64
        raise ValueError(
            f"global_shape {tuple(global_shape)} has {math.prod(global_shape)} elements, "
            f"more than 2**63 - 1"
        )


#: tensors with an unusual layout up to this many elements get the exact overlap test
_EXACT_OVERLAP_MAX = 1 << 24


def _has_internal_overlap(t: Tensor) -> bool:
    """Whether two elements of ``t`` share a memory location (expand(), as_strided())."""
    if t.is_contiguous() or t.numel() <= 1:
        return False
    dims = sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz > 1)
    reach = 0  # largest offset the smaller-stride dims reach
    for st, sz in dims:
        if st <= reach:
            break
        reach += st * (sz - 1)
    else:
        return False  # each stride exceeds everything below it: offsets are unique
    if t.numel() > _EXACT_OVERLAP_MAX:
        return True  # cannot cheaply prove otherwise: refuse rather than risk garbage
    offs = torch.zeros((), dtype=torch.int64, device="cpu")
    for st, sz in dims:
        offs = (offs.unsqueeze(-1) + torch.arange(sz, dtype=torch.int64, device="cpu") * st).reshape(-1)
    return int(torch.unique(offs).numel()) != int(offs.numel())


def _check_writable(out: Tensor) -> None:
    if out.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(
            "out is an inference tensor (created under torch.inference_mode()); in-place fills "
            "of it are allowed only inside torch.inference_mode(): fill it there, or clone() it first"
        )
    if _has_internal_overlap(out):
        raise ValueError(
            f"out (shape {tuple(out.shape)}, strides {tuple(out.stride())}) has overlapping memory: "
            "several elements share one memory location (expand(), as_strided() with zero or "
            "small strides), so they cannot hold different values; fill a clone() instead"
        )


# ----------------------------------------------------------------------------------
# host-side constants
# ----------------------------------------------------------------------------------

def _f32(x: float) -> float:
    """x rounded to nearest-even float32 (inf on overflow), as a Python float."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return float(torch.tensor(x, dtype=torch.float64, device="cpu").to(torch.float32).item())


def _rep_ceil(v: float, dtype: torch.dtype) -> float:
    """Smallest value of ``dtype`` >= v."""
    t = torch.tensor(v, dtype=torch.float64, device="cpu").to(dtype)
    if float(t) < v:
        t = torch.nextafter(t, torch.tensor(math.inf, dtype=dtype, device="cpu"))
    return float(t)


def _rep_floor(v: float, dtype: torch.dtype) -> float:
    """Largest value of ``dtype`` <= v."""
    t = torch.tensor(v, dtype=torch.float64, device="cpu").to(dtype)
    if float(t) > v:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype, device="cpu"))
    return float(t)


#: Tail mode caps log(Phi(beta)/Phi(alpha)) at this: mass below Phi(beta) e^-44 is ignored (< 1e-19).
_TAIL_LOG_RATIO_CAP = 44.0
#: Interval entirely below this lower-tail probability -> tail (log-space) mode.
_TAIL_MODE_P = 0.075


def trunc_constants(mean: float, std: float, a: float, b: float) -> tuple[int, tuple[float, float, float, float]]:
    """(mode, (c0, c1, c2, c3)) in double for TruncatedNormal(mean, std, a, b)."""
    alpha = (a - mean) / std
    beta = (b - mean) / std
    sgn = 1.0
    if alpha + beta > 0.0:  # reflect so that the interval lies mostly in the lower half
        alpha, beta = -beta, -alpha
        sgn = -1.0
    pb = 0.5 * math.erfc(-beta / math.sqrt(2.0))
    if pb <= _TAIL_MODE_P:
        la, lb = S._log_ndtr(alpha), S._log_ndtr(beta)
        d = min(lb - la, _TAIL_LOG_RATIO_CAP)
        return 1, (mean, sgn * std, lb - d, math.expm1(d))
    ea, eb = math.erf(alpha / math.sqrt(2.0)), math.erf(beta / math.sqrt(2.0))
    return 0, (mean, sgn * std, 0.5 * ea, 0.5 * (eb - ea))


def kernel_params(spec: S.Spec, key: Key, dtype: torch.dtype, sub: int = K.SUBSTREAM_VALUES) -> KernelParams:
    """The kernel constants for an elementwise spec filled into ``dtype``."""
    kind, mode, clamp, c, lo, hi = _spec_constants(spec, dtype)
    k0, k1 = key.philox_key
    return KernelParams(kind, mode, clamp, k0, k1, sub, c, lo, hi)


@functools.lru_cache(maxsize=4096)
def _spec_constants(spec: S.Spec, dtype: torch.dtype):
    wide = dtype == torch.float64
    rnd = float if wide else _f32
    clamp, lo, hi, mode = False, 0.0, 0.0, 0
    if isinstance(spec, S.Uniform):
        kind = K.KIND_UNIFORM
        c = (spec.low, spec.high - spec.low, 0.0, 0.0)
        lo, hi = _rep_ceil(spec.low, dtype), _rep_floor(spec.high, dtype)
        clamp = lo <= hi  # no value of dtype in [low, high] (degenerate): plain rounding
    elif isinstance(spec, S.Normal):
        kind = K.KIND_NORMAL
        c = (spec.mean_, spec.std_, 0.0, 0.0)
    elif isinstance(spec, S.TruncatedNormal):
        kind = K.KIND_TRUNC
        mode, c = trunc_constants(spec.mean_, spec.std_, spec.a, spec.b)
        lo, hi = _rep_ceil(spec.a, dtype), _rep_floor(spec.b, dtype)
        if lo > hi:
            raise ValueError(
                f"TruncatedNormal: no {dtype} value lies in [a, b] = [{spec.a!r}, {spec.b!r}]; "
                "widen the bounds or use a wider dtype"
            )
        clamp = True
    else:  # pragma: no cover - callers dispatch
        raise TypeError(f"kernel_params: {type(spec).__name__} is not an elementwise spec")
    # "+ 0.0" turns -0.0 into +0.0: equal specs (0.0 == -0.0) must give identical bits
    c = tuple(rnd(float(v)) + 0.0 for v in c)
    if not all(math.isfinite(v) for v in c):
        # e.g. Uniform(-3e38, 3e38): high - low overflows float32, and c0 + inf * u is +-inf or nan
        names = "(low, high - low)" if kind == K.KIND_UNIFORM else "(mean, std)"
        raise ValueError(
            f"{spec!r} cannot be filled into {dtype}: its constants {names} = "
            f"{tuple(c[:2])} are not finite in {'float64' if wide else 'float32'}, the compute "
            f"precision; narrow the parameters{'' if wide else ' or use a float64 tensor'}"
        )
    return kind, mode, clamp, c, lo + 0.0, hi + 0.0


# ----------------------------------------------------------------------------------
# elementwise boxes
# ----------------------------------------------------------------------------------

def _collapse(gshape, offsets, sizes):
    """Merge trailing dimensions that the box covers completely (same indices, fewer rows)."""
    g, o, s = list(gshape) or [1], list(offsets) or [0], list(sizes) or [1]
    while len(g) > 1 and o[-1] == 0 and s[-1] == g[-1]:
        n = g.pop()
        o.pop()
        s.pop()
        g[-1] *= n
        o[-1] *= n
        s[-1] *= n
    return g, o, s


def _native_fill_(out: Tensor, kp: KernelParams, dt_code: int, gshape, offsets, sizes) -> None:
    if out.device.type != "cpu" or not out.is_contiguous():  # the kernel writes through the raw pointer
        raise RuntimeError(f"internal error: the native kernel writes contiguous CPU memory, got {out.device}")
    g, o, s = _collapse(gshape, offsets, sizes)
    total = max(1, math.prod(s))
    # values never depend on these; clamped (the kernel uses at most 256 threads and one
    # chunk of the whole box at most) so that no chunk/thread arithmetic can overflow
    chunk = min(B.get_chunk_size(), total)
    threads = min(B.get_num_threads(), 256)
    B.native_module().fill(
        out.data_ptr(), dt_code, kp.kind, kp.mode, int(kp.clamp), kp.k0, kp.k1, kp.sub,
        kp.c, kp.lo, kp.hi, g, o, s, threads, chunk, B.get_prefault(),
    )


def _use_native(device: torch.device) -> bool:
    return device.type == "cpu" and B.get_backend() == "native"


def _direct(out: Tensor) -> bool:
    # a neg-bit view (torch._neg_view) reads its memory negated: write it through copy_
    return out.is_contiguous() and not out.is_neg()


def native_writes_in_place(spec: S.Spec, out: Tensor) -> bool:
    """Whether :func:`fill_region_` writes ``out`` for ``spec`` through the native kernel's
    raw pointer (uniform, normal, truncated normal into a contiguous CPU tensor): then a
    fill under :func:`~torchinit.engines.keyed.backend.prefaulting` faults its pages in itself."""
    return isinstance(spec, _ELEMENTWISE) and _use_native(out.device) and _direct(out)


def fill_checked_(out: Tensor, spec: S.Spec, key: Key) -> Tensor:
    """:func:`fill_region_` of the whole of ``out`` (not a DTensor) for a ``spec`` the caller
    has checked (``checked_spec``, returned) against ``out``'s shape, as ``apply_plan``'s
    validated entries are: for the elementwise specs only the checks on the tensor itself run
    again (the others take :func:`fill_region_`). Same values, same errors; a fraction of the
    Python time per tensor (a model has hundreds of small ones)."""
    shape = tuple(out.shape)
    if not isinstance(spec, _ELEMENTWISE):
        return fill_region_(out, spec, key, shape, (0,) * len(shape))
    _check_dtype(out.dtype, "out")
    _check_writable(out)
    if out.numel() == 0 or out.is_meta:
        return out
    with torch.no_grad():
        return _elementwise_region_(out, spec, key, shape, (0,) * len(shape))


def _elementwise_region_(out: Tensor, spec: S.Spec, key: Key, gshape, offsets) -> Tensor:
    sizes = tuple(out.shape)
    compute = out.dtype  # one of _KEYED_DTYPES, each a kernel output type (checked by fill_region_)
    kp = kernel_params(spec, key, compute)
    direct = _direct(out)
    if _use_native(out.device):
        # device="cpu" whatever torch.set_default_device / a `with torch.device(...)` says: the
        # kernel writes through the raw pointer (a meta or CUDA buffer there crashed the process)
        target = out if direct else torch.empty(sizes, dtype=compute, device="cpu")
        _native_fill_(target, kp, _DT_CODE[compute], gshape, offsets, sizes)
        if target is out:  # written through the raw pointer: tell autograd it changed
            _bump_version(out)
    else:
        target = reference_box(kp, gshape or (1,), offsets or (0,), sizes or (1,), compute, out.device).view(sizes)
    if target is not out:
        out.copy_(target)
    return out


def _bump_version(t: Tensor) -> None:
    inc = getattr(getattr(torch.autograd, "graph", None), "increment_version", None)
    if inc is not None:
        inc(t)


def raw_words(key: Key, sub: int, global_shape: Sequence[int], offsets: Sequence[int], sizes: Sequence[int],
              device: torch.device | str = "cpu") -> Tensor:
    """Raw 32-bit stream words (int64 tensor of the box shape) of sub-stream ``sub``.

    Word of element i is word ``W[i]`` of docs/keyed-stream.md section 3 (the float32
    layout: lane ``(i >> 3) & 3`` of Philox block ``8 (i >> 5) + (i & 7)``).
    """
    k0, k1 = key.philox_key
    kp = KernelParams(K.KIND_BITS, 0, False, k0, k1, sub, (0.0, 0.0, 0.0, 0.0), 0.0, 0.0)
    device = torch.device(device)
    sizes = tuple(sizes)
    if _use_native(device):
        buf = torch.empty(sizes, dtype=torch.int32, device="cpu")  # raw pointer: CPU whatever the default device
        if buf.numel():
            _native_fill_(buf, kp, K.DT_U32, global_shape, offsets, sizes)
        return buf.to(torch.int64) & 0xFFFFFFFF
    return reference_box(kp, global_shape or (1,), offsets or (0,), sizes or (1,), torch.float32, device).view(sizes)


# ----------------------------------------------------------------------------------
# whole-tensor specs
# ----------------------------------------------------------------------------------

def _slices(offsets, sizes):
    return tuple(slice(o, o + s) for o, s in zip(offsets, sizes))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


#: One QR at a time may change torch's thread count (a process-wide setting).
_QR_LOCK = threading.Lock()


def _qr_one_thread(g: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.qr(g)`` on one CPU thread: LAPACK's blocked QR (MKL, OpenBLAS) splits its
    work by the thread count, and the rounding with it, so a 256x256 Q differed between 1 and
    2 threads; one thread gives the same bits whatever the process's thread count (torchrun's
    one thread per rank included). The count is restored afterwards, under a lock so that
    concurrent QRs do not restore each other's setting. Other devices run as they are."""
    if g.device.type != "cpu":
        return torch.linalg.qr(g)
    with _QR_LOCK:
        threads = torch.get_num_threads()
        if threads == 1:
            return torch.linalg.qr(g)
        torch.set_num_threads(1)
        try:
            return torch.linalg.qr(g)
        finally:
            torch.set_num_threads(threads)


def _orthonormal(rows: int, cols: int, key: Key, dtype: torch.dtype, device) -> Tensor:
    """Haar (rows, cols) semi-orthogonal matrix from the keyed N(0,1) matrix, torch's QR recipe
    (the QR on one thread: :func:`_qr_one_thread`)."""
    g = sample(S.Normal(0.0, 1.0), key, (rows, cols), dtype=dtype, device=device)
    if rows < cols:
        g = g.t()
    q, r = _qr_one_thread(g)
    q = q * torch.diag(r, 0).sign()
    if rows < cols:
        q = q.t()
    return q


def _full_values(spec: S.Spec, key: Key, gshape, dtype: torch.dtype, device) -> Tensor:
    """The whole tensor for specs whose elements depend on each other (or deterministic ones)."""
    cd = _compute_dtype(dtype)
    if isinstance(spec, S.Orthogonal):
        rows = gshape[0]
        cols = math.prod(gshape) // rows if rows else 0
        if rows == 0 or cols == 0:
            return torch.zeros(gshape, dtype=cd, device=device)
        return (_orthonormal(rows, cols, key, cd, device) * spec.gain).reshape(gshape)
    if isinstance(spec, S.DeltaOrthogonal):
        full = torch.zeros(gshape, dtype=cd, device=device)
        if full.numel() == 0:
            return full
        q = _orthonormal(gshape[0], gshape[1], key, cd, device)
        centre = tuple((k - 1) // 2 for k in gshape[2:])  # padding="same"'s left pad (torch engine)
        full[(slice(None), slice(None)) + centre] = q * spec.gain
        return full
    if isinstance(spec, OrthogonalPerGate):
        # block g from the child key "gate{g}": each gate a pure function of (key, g)
        rows = gshape[0]
        h, cols = rows // spec.gates, (math.prod(gshape) // rows if rows else 0)
        if h == 0 or cols == 0:
            return torch.zeros(gshape, dtype=cd, device=device)
        blocks = [_orthonormal(h, cols, key.child(f"gate{g}"), cd, device) for g in range(spec.gates)]
        return (torch.cat(blocks) * spec.gain).reshape(gshape)
    if isinstance(spec, GateConstant):
        return _gate_constant_(torch.empty(gshape, dtype=dtype, device=device), spec.values)
    if isinstance(spec, S.Dirac):
        return _dirac_(torch.zeros(gshape, dtype=dtype, device=device), spec.groups)
    raise TypeError(f"the keyed engine cannot fill spec {spec!r}")  # pragma: no cover


def _sparse_region_(out: Tensor, spec: S.Sparse, key: Key, gshape, offsets) -> Tensor:
    rows, cols = gshape
    r0, c0 = offsets
    rs, cs = out.shape
    _elementwise_region_(out, S.Normal(0.0, spec.std_), key, gshape, offsets)
    k = math.ceil(spec.sparsity * rows)
    if k == 0:
        return out
    if k >= rows:
        return out.zero_()
    words = raw_words(key, K.SUBSTREAM_SPARSE, (rows, cols), (0, c0), (rows, cs), device=out.device)
    row = torch.arange(rows, dtype=torch.int64, device=out.device).unsqueeze(1)
    order = ((words - 2**31) << 32) + row  # unique sort keys: (word, row)
    idx = torch.topk(order, k, dim=0, largest=False, sorted=False).indices
    mask = torch.zeros((rows, cs), dtype=torch.bool, device=out.device).scatter_(0, idx, True)
    return out.masked_fill_(mask[r0:r0 + rs], 0)


def _dirac_region_(out: Tensor, groups: int, gshape, offsets) -> Tensor:
    """The box of the Dirac tensor at ``offsets``: zeros, and a one at each
    ``(g * out/groups + d, d, *centre)`` inside it (a function of the global index alone,
    no full-size temporary)."""
    per_group = gshape[0] // groups
    n = min(per_group, gshape[1])
    out.zero_()
    if n == 0:
        return out
    d = torch.arange(n, dtype=torch.int64, device="cpu").repeat(groups)
    row = torch.arange(groups, dtype=torch.int64, device="cpu").repeat_interleave(n) * per_group + d
    idx = [row, d] + [torch.full_like(d, k // 2) for k in gshape[2:]]
    inside = torch.ones_like(d, dtype=torch.bool)
    for i, o, s in zip(idx, offsets, out.shape):
        inside &= (i >= o) & (i < o + s)
    local = tuple((i[inside] - o).to(out.device) for i, o in zip(idx, offsets))
    out[local] = 1
    return out


def _eye_region_(out: Tensor, offsets) -> Tensor:
    rs, cs = out.shape
    i = torch.arange(offsets[0], offsets[0] + rs, device=out.device).unsqueeze(1)
    j = torch.arange(offsets[1], offsets[1] + cs, device=out.device).unsqueeze(0)
    return out.copy_(i == j)


# ----------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------

def fill_region_(out: Tensor, spec: S.Spec, key: Key, global_shape: Sequence[int], offsets: Sequence[int]) -> Tensor:
    r"""Fill ``out`` with the box ``[offsets, offsets + out.shape)`` of the keyed fill of a
    tensor of ``global_shape``; returns ``out``.

    For Uniform, Normal and TruncatedNormal element ``x`` with logical row-major
    index ``i = sum_d (offsets[d] + j_d) * stride_d`` of the global tensor gets
    ``value(key, i, spec)``: exactly what :func:`fill_` writes there, whatever
    the box, thread count or backend. Eye and Dirac write the box from its global
    indices. Orthogonal, OrthogonalPerGate and DeltaOrthogonal compute the whole
    tensor (Gaussian draw + QR) and copy the box; Sparse draws the zero
    positions of the box's columns only (all rows of those columns).
    """
    _check_key(key)
    spec = checked_spec(spec)
    if not isinstance(out, Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    _check_dtype(out.dtype, "out")
    gshape = _norm_shape("global_shape", global_shape)
    offs = _norm_shape("offsets", offsets)
    if out.dim() != len(gshape):
        raise ValueError(
            f"out has {out.dim()} dimensions but global_shape {gshape} has {len(gshape)}"
        )
    _check_box(gshape, offs, tuple(out.shape))
    spec.check_shape(gshape)
    _check_writable(out)
    with torch.no_grad():
        if out.numel() == 0 or out.is_meta:
            return out
        if isinstance(spec, _ELEMENTWISE):
            return _elementwise_region_(out, spec, key, gshape, offs)
        if isinstance(spec, S.Sparse):
            return _sparse_region_(out, spec, key, gshape, offs)
        if isinstance(spec, S.Constant):
            return out.fill_(spec.value)
        if isinstance(spec, S.Eye):
            return _eye_region_(out, offs)
        if isinstance(spec, S.Dirac):
            return _dirac_region_(out, spec.groups, gshape, offs)
        full = _full_values(spec, key, gshape, out.dtype, out.device)
        return out.copy_(full[_slices(offs, out.shape)])


def sample(
    spec: S.Spec,
    key: Key,
    global_shape: Sequence[int],
    *,
    offsets: Sequence[int] | None = None,
    sizes: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """A new tensor holding the box ``[offsets, offsets + sizes)`` of the keyed fill of
    ``global_shape`` (defaults: the whole tensor)."""
    gshape = _norm_shape("global_shape", global_shape)
    offs = (0,) * len(gshape) if offsets is None else _norm_shape("offsets", offsets)
    if sizes is None:
        if len(offs) != len(gshape):
            _check_box(gshape, offs, gshape)
        sz = tuple(g - o for g, o in zip(gshape, offs))
    else:
        sz = _norm_shape("sizes", sizes)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    _check_dtype(dtype, "dtype")
    _check_box(gshape, offs, sz)
    out = torch.empty(sz, dtype=dtype, device=device)
    return fill_region_(out, spec, key, gshape, offs)
