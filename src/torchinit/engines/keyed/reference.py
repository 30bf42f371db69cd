"""Reference backend: keyed stream version 1 in plain torch tensor operations.

Runs on any torch device (CPU, CUDA, ...). 32-bit unsigned arithmetic is
emulated in int64 tensors; the 32x32->64-bit Philox products use 16-bit limbs so
that no intermediate overflows int64. Floating-point transforms use one torch
operation per IEEE operation (+, -, *, /, sqrt, comparisons, selects), so each
is rounded exactly once, as in the C kernel compiled with -ffp-contract=off.

This module is the executable specification that ``_native.c`` must match bit
for bit (tests/test_keyed_backends.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from . import _constants as K

if TYPE_CHECKING:  # pragma: no cover
    from .engine import KernelParams

__all__ = ["philox4x32", "reference_box", "box_indices"]

_MASK32 = 0xFFFFFFFF
#: elements per piece (bounds temporary memory of the reference backend)
PIECE = 1 << 20


def _mulhilo(m: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit halves of m * x for a 32-bit constant m and int64 tensor x in [0, 2^32)."""
    mh, ml = m >> 16, m & 0xFFFF
    xh, xl = x >> 16, x & 0xFFFF
    t = xl * ml
    mid = xl * mh + xh * ml  # < 2^33
    lo_full = t + ((mid & 0xFFFF) << 16)  # < 2^33
    lo = lo_full & _MASK32
    hi = xh * mh + (mid >> 16) + (lo_full >> 32)
    return hi, lo


def philox4x32(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: int, k1: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-10 on int64 tensors holding 32-bit counter words; key (k0, k1) as ints."""
    for _ in range(K.PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(K.PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(K.PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + K.PHILOX_W0) & _MASK32
        k1 = (k1 + K.PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def box_indices(global_shape: Sequence[int], offsets: Sequence[int], sizes: Sequence[int],
                device: torch.device | str) -> Tensor:
    """Global row-major indices (int64, flattened) of the box ``offsets + [0, sizes)``."""
    idx = torch.zeros((), dtype=torch.int64, device=device)
    stride = 1
    for d in range(len(global_shape) - 1, -1, -1):
        ar = torch.arange(offsets[d], offsets[d] + sizes[d], dtype=torch.int64, device=device) * stride
        shape = [1] * len(global_shape)
        shape[d] = sizes[d]
        idx = idx + ar.view(shape)
        stride *= global_shape[d]
    return idx.reshape(-1)


def _word_values(group: Tensor, within: Tensor, k0: int, k1: int, sub: int) -> Tensor:
    """Stream word j = 32 group + within (0 <= within < 32): lane (j >> 3) & 3 of Philox
    block 8 (j >> 5) + (j & 7). The word index is passed split so that it may exceed int64
    (float64 elements i >= 2**62 use words 2i, 2i + 1 >= 2**63)."""
    block = (group << 3) | (within & 7)
    lane = within >> 3
    c0 = block & _MASK32
    c1 = block >> 32
    c2 = torch.full_like(block, sub)
    c3 = torch.zeros_like(block)
    x0, x1, x2, x3 = philox4x32(c0, c1, c2, c3, k0, k1)
    return torch.where(lane == 0, x0, torch.where(lane == 1, x1, torch.where(lane == 2, x2, x3)))


def _word_range(j0: int, j1: int, k0: int, k1: int, sub: int, device) -> Tensor:
    """Words j0 <= j < j1, computing each Philox block once (whole 32-word groups)."""
    g0, g1 = j0 >> 5, ((j1 - 1) >> 5) + 1
    block = torch.arange(8 * g0, 8 * g1, dtype=torch.int64, device=device)
    c0 = block & _MASK32
    c1 = block >> 32
    c2 = torch.full_like(block, sub)
    c3 = torch.zeros_like(block)
    x = torch.stack(philox4x32(c0, c1, c2, c3, k0, k1))  # (4, 8 * groups): lane, block
    words = x.view(4, g1 - g0, 8).transpose(0, 1).reshape(-1)  # group-major, lane, block
    return words[j0 - 32 * g0: j1 - 32 * g0]


def _words(idx: Tensor, wide: bool, k0: int, k1: int, sub: int) -> tuple[Tensor, Tensor | None]:
    """The 32-bit words of elements ``idx``: word i (float32 path) or words 2i, 2i+1 (float64 path).

    When the indices are dense in their range (whole tensors, rows, boxes of wide
    rows), every Philox block of the range is computed once and words are gathered;
    otherwise each word computes its own block. Both give the same words.
    """
    n = idx.numel()
    if n:
        lo, hi = int(idx[0]), int(idx[-1])  # box indices increase
        w = 2 if wide else 1
        span = w * (hi - lo + 1)
        if span <= 4 * w * n + 64:
            words = _word_range(w * lo, w * (hi + 1), k0, k1, sub, idx.device)
            if wide:
                rel = 2 * (idx - lo)
                return words[rel], words[rel + 1]
            return words[idx - lo], None
    if wide:  # words 2i and 2i + 1: group i >> 4, within 2 (i & 15) (+ 1), never formed as 2i
        group, within = idx >> 4, (idx & 15) << 1
        return _word_values(group, within, k0, k1, sub), _word_values(group, within + 1, k0, k1, sub)
    return _word_values(idx >> 5, idx & 31, k0, k1, sub), None


def _f32(x: float) -> float:
    """x rounded to nearest-even float32 (as a Python float)."""
    return float(torch.tensor(x, dtype=torch.float64, device="cpu").to(torch.float32).item())


class _Consts:
    """The constants of one compute precision, as Python floats exactly representable in it."""

    def __init__(self, wide: bool):
        r = (lambda v: float(v)) if wide else _f32
        P = K.PPND16 if wide else K.PPND7
        self.A = [r(v) for v in P["A"]]
        self.B = [r(v) for v in P["B"]]
        self.C = [r(v) for v in P["C"]]
        self.D = [r(v) for v in P["D"]]
        self.E = [r(v) for v in P["E"]]
        self.F = [r(v) for v in P["F"]]
        n = K.LOG_TERMS_F64 if wide else K.LOG_TERMS_F32
        self.L = [r(v) for v in K.LOG_COEF[:n]]
        self.sqrt2 = r(K.SQRT2)
        self.ln2_hi = r(K.LN2_HI_F64 if wide else K.LN2_HI_F32)
        self.ln2_lo = r(K.LN2_LO_F64 if wide else K.LN2_LO_F32)
        self.split1 = r(K.PPND_SPLIT1)
        self.const1 = r(K.PPND_CONST1)
        self.const2 = r(K.PPND_CONST2)
        self.tiny = K.TINY_F64 if wide else K.TINY_F32
        self.wide = wide
        self.dtype = torch.float64 if wide else torch.float32


_C32 = _Consts(False)
_C64 = _Consts(True)


def _horner(coef: list[float], x: Tensor) -> Tensor:
    """coef[n] x^n + ... + coef[0], evaluated as ((coef[n] x + coef[n-1]) x + ...) + coef[0]."""
    acc = x * coef[-1]
    acc = acc + coef[-2]
    for c in reversed(coef[:-2]):
        acc = acc * x
        acc = acc + c
    return acc


def _log(x: Tensor, C: _Consts) -> Tensor:
    """Natural log of positive normal floats x (stream v1 definition)."""
    if C.wide:
        bits = x.view(torch.int64)
        e = ((bits >> 52) & 0x7FF) - 1023
        m = ((bits & ((1 << 52) - 1)) | 0x3FF0000000000000).view(torch.float64)
    else:
        bits = x.view(torch.int32).to(torch.int64)
        e = ((bits >> 23) & 0xFF) - 127
        m = ((bits & 0x7FFFFF) | 0x3F800000).to(torch.int32).view(torch.float32)
    big = m > C.sqrt2
    m = torch.where(big, m * 0.5, m)
    e = e + big.to(torch.int64)
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    p = _horner(C.L, z)
    ef = e.to(C.dtype)
    return ef * C.ln2_hi + (ef * C.ln2_lo + s * p)


def _sqrt(x: Tensor, C: _Consts) -> Tensor:
    """Square root by the stream's fixed recipe (x >= smallest normal): inverse-sqrt bit
    estimate, 3 (float32) / 4 (float64) Newton steps y <- y (1.5 - (x/2) y^2), then x y.
    (torch.sqrt is not correctly rounded on every CPU build, so the stream does not use it.)"""
    if C.wide:
        y = (0x5FE6EB50C7B537A9 - (x.view(torch.int64) >> 1)).view(torch.float64)
        steps = 4
    else:
        y = (0x5F3759DF - (x.view(torch.int32).to(torch.int64) >> 1)).to(torch.int32).view(torch.float32)
        steps = 3
    h = x * 0.5
    for _ in range(steps):
        y = y * (1.5 - h * (y * y))
    return x * y


def _ppnd(q: Tensor, l: Tensor, central: Tensor, C: _Consts) -> Tensor:
    """AS 241 inverse normal CDF given q = p - 1/2 and l = log(min(p, 1 - p))."""
    r = C.const1 - q * q
    nc = q * _horner(C.A, r)
    dc = _horner(C.B, r)
    nl = -l
    nl = torch.where(nl > C.tiny, nl, torch.full_like(nl, C.tiny))
    rr = _sqrt(nl, C)
    big = rr > 5.0
    s = torch.where(big, rr - 5.0, rr - C.const2)
    nt = torch.where(big, _horner(C.E, s), _horner(C.C, s))
    dt = torch.where(big, _horner(C.F, s), _horner(C.D, s))
    nt = torch.where(q < 0.0, -nt, nt)
    num = torch.where(central, nc, nt)
    den = torch.where(central, dc, dt)
    return num / den


def _transform(kp, w0: Tensor, w1: Tensor | None) -> Tensor:
    """Bits -> values in the compute precision (float32 or float64), before clamping."""
    wide = w1 is not None
    C = _C64 if wide else _C32
    F = C.dtype
    c0, c1, c2, c3 = kp.c
    if kp.kind == K.KIND_UNIFORM:
        if wide:
            u = ((w0 << 20) | (w1 >> 12)).to(F) * 2.0**-52
        else:
            u = (w0 >> 8).to(F) * 2.0**-24
        return c0 + c1 * u
    if kp.kind == K.KIND_NORMAL:
        if wide:
            m = ((w0 & 0x7FFFFFFF) << 21) | (w1 >> 11)
            t = (m.to(F) + 0.5) * 2.0**-53
        else:
            m = w0 & 0x7FFFFFFF
            t = ((m >> 7).to(F) * 128.0 + ((m & 127).to(F) + 0.5)) * 2.0**-32
        q = t - 0.5
        z = _ppnd(q, _log(t, C), q >= -C.split1, C)
        z = torch.where((w0 >> 31) == 1, -z, z)
        return c0 + c1 * z
    if kp.kind == K.KIND_TRUNC:
        if wide:
            u = (((w0 << 20) | (w1 >> 12)).to(F) + 0.5) * 2.0**-52
        else:
            u = ((w0 >> 9).to(F) + 0.5) * 2.0**-23
        if kp.mode == 0:
            q = c2 + u * c3
            aq = q.abs()
            t = 0.5 - aq
            t = torch.where(t > C.tiny, t, torch.full_like(t, C.tiny))
            z = _ppnd(q, _log(t, C), aq <= C.split1, C)
        else:
            v = 1.0 + u * c3
            l = c2 + _log(v, C)
            q = torch.full_like(v, -0.5)
            z = _ppnd(q, l, torch.zeros_like(v, dtype=torch.bool), C)
        return c0 + c1 * z
    raise ValueError(f"unknown kernel kind {kp.kind}")


def reference_box(kp: "KernelParams", global_shape: Sequence[int], offsets: Sequence[int], sizes: Sequence[int],
                  dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """The box ``offsets + [0, sizes)`` of the stream described by kernel params ``kp``.

    Returns a contiguous tensor of shape ``sizes`` and dtype ``dtype`` (int64 holding
    the raw 32-bit words for ``KIND_BITS``).
    """
    idx_all = box_indices(global_shape, offsets, sizes, device)
    n = idx_all.numel()
    out_dtype = torch.int64 if kp.kind == K.KIND_BITS else dtype
    out = torch.empty(n, dtype=out_dtype, device=device)
    wide = kp.kind != K.KIND_BITS and dtype == torch.float64
    k0, k1 = kp.k0, kp.k1
    for start in range(0, n, PIECE):
        idx = idx_all[start:start + PIECE]
        w0, w1 = _words(idx, wide, k0, k1, kp.sub)
        if kp.kind == K.KIND_BITS:
            out[start:start + PIECE] = w0
            continue
        x = _transform(kp, w0, w1)
        if kp.clamp:
            x = torch.clamp(x, kp.lo, kp.hi)
        out[start:start + PIECE] = x.to(dtype)
    return out.view(tuple(sizes))
