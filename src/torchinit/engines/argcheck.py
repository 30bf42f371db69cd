"""Argument checks of the drop-ins (:mod:`torchinit.initializers`): a nan/inf argument is
refused before writing with a ``ValueError`` naming it (torch either writes nan/inf/zeros or
fails with an error that does not name it), except where torch would raise for the same call
whatever that argument's value (an integer dtype, no half-precision QR: found by running
torch's first steps with finite stand-ins on a one-element scratch tensor with a throwaway
generator), so that torch's own error is kept; and normal / uniform specs whose values
overflow the tensor's dtype."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..core import specs as S
from ..core.truncation import truncation_problem

__all__ = ["is_real", "first_nonfinite", "refuse_nonfinite", "throwaway_generator", "check_keyed_overflow",
           "check_torch_overflow", "refuse_trunc_garbage", "refuse_far_truncation"]


def is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def first_nonfinite(**args: object) -> "tuple[str, float] | None":
    """The first ``(name, value)`` of ``args`` that is a real nan or +-inf, else None."""
    for name, value in args.items():
        if is_real(value) and not math.isfinite(value):
            return name, value  # type: ignore[return-value]
    return None


def refuse_nonfinite(fn: str, tensor: Tensor, bad: "tuple[str, float] | None", probe: Callable[[Tensor], object],
                      fills: str | None = None) -> None:
    """Raise ``ValueError`` naming the argument ``bad = (name, value)`` (a nan/inf: torch fills
    nan/inf, or raises an error that does not name it) before anything is written. ``probe``
    runs torch's own first steps, with finite stand-ins for ``bad``, on a one-element scratch
    tensor: where torch raises whatever the value (an integer dtype, no half-precision QR), its
    error is kept, for parity. ``fills``: what torch would write, when it writes."""
    if bad is None:
        return
    scratch = tensor.new_empty(1)
    try:  # a throwaway generator: probing must not move any RNG
        probe(scratch)
    except (RuntimeError, NotImplementedError, TypeError, ValueError, ArithmeticError):
        return
    name, value = bad
    why = f" (torch.nn.init would fill {fills})" if fills else ""
    raise ValueError(f"{fn}: {name} must be finite, got {name}={value}{why}")


def check_torch_overflow(fn: str, tensor: Tensor, spec: S.Spec, origin: str = "") -> None:
    """The torch engine's :func:`check_keyed_overflow` for normal and truncated normal specs
    with real, finite arguments (torch draws them in the tensor's dtype: ``normal_`` in
    float32 with mean 1e300, or in float16 with std 1e5, writes inf). Other arguments are
    left to the drop-ins' own checks and torch's errors."""
    if not isinstance(spec, (S.Normal, S.TruncatedNormal)):
        return
    nums = [spec.mean_, spec.std_] + ([spec.a, spec.b] if isinstance(spec, S.TruncatedNormal) else [])
    if all(is_real(v) for v in nums) and math.isfinite(spec.mean_) and math.isfinite(spec.std_) and spec.std_ >= 0:
        check_keyed_overflow(fn, tensor, spec, origin=origin)


def throwaway_generator(t: Tensor) -> "torch.Generator | None":
    return None if t.is_meta else torch.Generator(device=t.device)


def check_keyed_overflow(fn: str, tensor: Tensor, spec: S.Spec, names: "dict[str, str] | None" = None,
                          origin: str = "") -> None:
    """With ``key=``: refuse, naming the argument, a spec whose values overflow ``tensor``'s
    dtype (``normal_`` in float16 with std 1e5 would write inf; bounds past the dtype's range
    would pile values up at its largest finite value). A normal counts up to 6 std from its
    mean (probability 2e-9 beyond)."""
    if not tensor.is_floating_point():
        return
    big = torch.finfo(tensor.dtype).max
    names = names or {}
    what: tuple[str, float] | None = None
    if isinstance(spec, S.Uniform):
        for f, v in (("low", spec.low), ("high", spec.high)):
            if abs(v) > big:
                what = (names.get(f, f), v)
                break
    elif isinstance(spec, (S.Normal, S.TruncatedNormal)):
        lo, hi = spec.mean_ - 6 * spec.std_, spec.mean_ + 6 * spec.std_
        if isinstance(spec, S.TruncatedNormal):
            lo, hi = max(lo, spec.a), min(hi, spec.b)
        if abs(spec.mean_) > big and lo <= spec.mean_ <= hi:
            what = (names.get("mean", "mean"), spec.mean_)
        elif max(abs(lo), abs(hi)) > big:
            what = (names.get("std", "std"), spec.std_)
    if what is not None:
        raise ValueError(f"{fn}: {what[0]}={what[1]:g}{origin} overflows {tensor.dtype} (largest finite value {big:g}): "
                         f"{spec!r} would write inf or values clamped to +-{big:g}; scale it down or use a "
                         f"wider dtype")


def refuse_far_truncation(fn: str, mean: float, std: float, a: float, b: float, *, std_units: bool = False) -> None:
    """Refuse, naming ``fn``, an interval too far from the mean for any engine to draw
    (:func:`~torchinit.core.truncation.truncation_problem`; ``std_units``: ``a``, ``b`` are
    ``lower``, ``upper``). Arguments that are not finite reals with std > 0, a < b pass: the
    caller's other checks name them."""
    if all(is_real(x) and math.isfinite(x) for x in (mean, std, a, b)) and std > 0 and a < b:
        problem = truncation_problem(mean, std, a, b, std_units=std_units)
        if problem:
            raise ValueError(f"{fn}: {problem}")


def refuse_trunc_garbage(tensor: Tensor, mean: float, std: float, a: float, b: float) -> None:
    """Refuse, before writing, the arguments torch's trunc_normal_ accepts but turns into
    garbage: a negative std (sampled as |std|), a nan std or a non-finite mean (both give
    U(a, b)). Where torch itself raises for them, its own error is kept: torch draws
    normal_(mean, std) when more than 30% of the mass lies in [a, b] (it rejects std < 0),
    and otherwise starts with uniform_(a, b) (it rejects bad bounds and integer dtypes).
    Also refused: finite bounds more than 40 std from the mean, which torch rejection-samples
    slowly or (older torch) clamps to a bound (:func:`refuse_far_truncation`).
    """
    nums = (mean, std, a, b)
    if tensor.is_complex() or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in nums
    ):
        return
    if tensor.is_floating_point() and all(map(math.isfinite, nums)) and std > 0 and a < b:
        # torch accepts an interval too far out to draw: slowly (rejection) or piled up at a bound
        refuse_far_truncation("trunc_normal_", mean, std, a, b)
        return
    if not (std < 0 or math.isnan(std) or std == math.inf or not math.isfinite(mean)):
        return
    cdf = lambda x: (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0  # noqa: E731
    try:
        if cdf((b - mean) / std) - cdf((a - mean) / std) > 0.3:
            return  # torch's normal_ raises
    except ArithmeticError:
        return  # torch raises the same computing this (std == 0)
    # a meta tensor: torch returns before sampling, and the same arguments are refused as on CPU
    device = torch.device("cpu") if tensor.is_meta else tensor.device
    try:  # a throwaway generator: probing the bounds must not move any RNG
        tensor.new_empty(1, device=device).uniform_(a, b, generator=torch.Generator(device=device))
    except (RuntimeError, NotImplementedError):
        return  # torch's uniform_ raises
    if std < 0 or math.isnan(std):
        raise ValueError(f"trunc_normal_: std must be positive, got std={std}")
    if std == math.inf:  # torch returns U(a, b)
        raise ValueError(f"trunc_normal_: std must be finite, got std={std}")
    raise ValueError(f"trunc_normal_: mean must be finite, got mean={mean}")
