"""Public initializers.

Drop-ins for every ``torch.nn.init`` function (same signatures, same results,
same generator consumption, same errors) plus what torch lacks. Each one is a
thin preset: it computes a :mod:`~torchinit.specs` spec from the shape, fans and
gain, then hands it to an engine:

* no ``key``: the torch engine (bitwise ``torch.nn.init``);
* ``key=torchinit.Key(...)``: the keyed engine, where every value is a pure
  function of (key, logical element index, spec).
"""

from __future__ import annotations

import functools
import math
import operator
import warnings
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from .core import specs as S
from .core.fans import Fans
from .core.gains import calculate_gain
from .core.gate_specs import OrthogonalPerGate
from .engines.argcheck import (
    check_keyed_overflow,
    check_torch_overflow,
    first_nonfinite,
    is_real,
    refuse_far_truncation,
    refuse_nonfinite,
    refuse_trunc_garbage,
    throwaway_generator,
)
from .engines.torch_engine import torch_fill_

if TYPE_CHECKING:  # pragma: no cover
    from .engines.keyed import Key

__all__ = [
    "calculate_gain",
    "uniform_",
    "normal_",
    "trunc_normal_",
    "trunc_normal_std_units_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
    "variance_scaling_",
    "lecun_uniform_",
    "lecun_normal_",
    "delta_orthogonal_",
    "orthogonal_per_gate_",
    "lstm_forget_bias_",
    "fill_",
]
#: torch.nn.init's deprecated names without the trailing underscore (defined at the end)
_DEPRECATED_NAMES = ("uniform", "normal", "constant", "eye", "dirac", "xavier_uniform", "xavier_normal",
                     "kaiming_uniform", "kaiming_normal", "orthogonal", "sparse")
__all__ += _DEPRECATED_NAMES


def fill_(
    tensor: Tensor,
    spec: S.Spec,
    *,
    generator: torch.Generator | None = None,
    key: "Key | None" = None,
) -> Tensor:
    """Fill ``tensor`` in place with ``spec`` using the torch engine or, with ``key``, the keyed engine.

    Both engines refuse a shape the spec cannot fill (``spec.check_shape``) before writing."""
    if not isinstance(spec, S.Spec):  # a dict failed with "'dict' object has no attribute 'check_shape'"
        raise TypeError(f"fill_: spec must be a torchinit spec (for a dict: spec_from_dict), got {type(spec).__name__}")
    return _fill(tensor, spec, generator, key, type(spec).__name__)


def _fill(tensor: Tensor, spec: S.Spec, generator: torch.Generator | None, key: "Key | None", fn: str,
          origin: str = "") -> Tensor:
    """:func:`fill_`, naming the drop-in ``fn`` (and ``origin``: the argument a std came from) when
    the keyed engine refuses a spec that overflows the dtype."""
    if key is None:
        spec.check_shape(tuple(tensor.shape))
        check_torch_overflow(fn, tensor, spec, origin=origin)
        return torch_fill_(tensor, spec, generator)
    if generator is not None:
        raise ValueError("pass either generator= (torch engine) or key= (keyed engine), not both")
    spec = spec.checked()
    spec.check_shape(tuple(tensor.shape))
    check_keyed_overflow(fn, tensor, spec, origin=origin)
    from .engines.keyed import fill_ as keyed_fill_

    return keyed_fill_(tensor, spec, key)


def _require_float(tensor: Tensor, fn: str) -> None:
    # Complex tensors are refused too: their variance would be split between the real
    # and imaginary parts (uniform/normal double it; truncation fails in torch's `<`).
    if not tensor.is_floating_point():
        raise TypeError(f"{fn}: expected a real floating-point tensor, got dtype {tensor.dtype}")


def _check_keyed_scale(fn: str, name: str, value: object, key: "Key | None") -> None:
    """With ``key=``, refuse a non-finite or negative ``gain`` / nan ``a`` under the drop-in's
    own argument name (the keyed engine would refuse the spec built from it, naming the
    spec's fields: "Uniform: low must be <= high"). The torch engine keeps torch's errors."""
    if key is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # other types: the spec check / calculate_gain raises
    if name == "a" and math.isnan(value):
        raise ValueError(f"{fn}: a must not be nan, got a={value}")
    if name == "gain" and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{fn}: gain must be finite and >= 0, got gain={value}")


# ---------------------------------------------------------------------------
# torch.nn.init drop-ins
# ---------------------------------------------------------------------------

def uniform_(
    tensor: Tensor,
    a: float = 0.0,
    b: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    key: "Key | None" = None,
) -> Tensor:
    r"""Fill with :math:`\mathcal{U}(a, b)`. Drop-in for ``torch.nn.init.uniform_``."""
    if has_torch_function_variadic(tensor):
        kw = {} if key is None else {"key": key}
        return handle_torch_function(uniform_, (tensor,), tensor=tensor, a=a, b=b, generator=generator, **kw)
    if key is not None and is_real(a) and is_real(b) and math.isfinite(a) and math.isfinite(b) and a <= b:
        check_keyed_overflow("uniform_", tensor, S.Uniform(a, b), {"low": "a", "high": "b"})
    if key is None:  # torch: "from is out of bounds" / "to is out of bounds", naming neither
        refuse_nonfinite("uniform_", tensor, first_nonfinite(a=a, b=b),
                          lambda x: x.uniform_(0.0, 1.0, generator=throwaway_generator(x)))
    return fill_(tensor, S.Uniform._unchecked(low=a, high=b), generator=generator, key=key)


def normal_(
    tensor: Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    key: "Key | None" = None,
) -> Tensor:
    r"""Fill with :math:`\mathcal{N}(\text{mean}, \text{std}^2)`. Drop-in for ``torch.nn.init.normal_``."""
    if has_torch_function_variadic(tensor):
        kw = {} if key is None else {"key": key}
        return handle_torch_function(
            normal_, (tensor,), tensor=tensor, mean=mean, std=std, generator=generator, **kw
        )
    if key is None:  # torch fills nan/inf (mean nan/inf, std inf) or fails on std >= 0 (std nan / -inf)
        refuse_nonfinite("normal_", tensor, first_nonfinite(mean=mean, std=std),
                          lambda x: x.normal_(0.0, 1.0, generator=throwaway_generator(x)))
    return _fill(tensor, S.Normal._unchecked(mean_=mean, std_=std), generator, key, "normal_")


def trunc_normal_(
    tensor: Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
    generator: torch.Generator | None = None,
    *,
    key: "Key | None" = None,
) -> Tensor:
    r"""Truncated normal with ABSOLUTE bounds: N(mean, std^2) restricted to [a, b].

    Drop-in for ``torch.nn.init.trunc_normal_``: ``a`` and ``b`` are values, not
    multiples of ``std``. ``trunc_normal_(w, std=0.02)`` keeps the default bounds
    [-2, 2], i.e. 100 standard deviations: effectively no truncation. For bounds
    in standard units (JAX, ``timm.trunc_normal_tf_``) use
    :func:`trunc_normal_std_units_`.
    """
    if key is None and tensor.is_floating_point():  # a nan bound: torch's uniform_ fails naming neither
        refuse_nonfinite("trunc_normal_", tensor, first_nonfinite(**{n: v for n, v in (("a", a), ("b", b))
                                                              if is_real(v) and math.isnan(v)}),
                          lambda x: x.uniform_(0.0, 1.0, generator=throwaway_generator(x)))
    refuse_trunc_garbage(tensor, mean, std, a, b)
    return _fill(tensor, S.TruncatedNormal._unchecked(mean_=mean, std_=std, a=a, b=b), generator, key, "trunc_normal_")


def trunc_normal_std_units_(
    tensor: Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    lower: float = -2.0,
    upper: float = 2.0,
    generator: torch.Generator | None = None,
    *,
    key: "Key | None" = None,
) -> Tensor:
    r"""Truncated normal with bounds in STANDARD UNITS: N(mean, std^2) restricted to
    ``[mean + lower * std, mean + upper * std]`` (the JAX / ``timm.trunc_normal_tf_``
    convention: ``std=0.02`` with the default ``lower=-2, upper=2`` truncates at +-0.04).
    The argument names differ from :func:`trunc_normal_` on purpose, so the two cannot be confused."""
    _require_float(tensor, "trunc_normal_std_units_")
    for name, v in (("mean", mean), ("std", std)):  # before the bounds arithmetic uses them
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"trunc_normal_std_units_: {name} must be a real number, got {v!r}")
    for name, v in (("lower", lower), ("upper", upper)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"trunc_normal_std_units_: {name} must be a finite number, got {v!r}")
    if not lower < upper:
        raise ValueError(f"trunc_normal_std_units_: need lower < upper (standard units), got lower={lower}, upper={upper}")
    refuse_far_truncation("trunc_normal_std_units_", mean, std, lower, upper, std_units=True)
    spec = S.TruncatedNormal(mean, std, mean + lower * std, mean + upper * std)
    return _fill(tensor, spec, generator, key, "trunc_normal_std_units_")


def constant_(tensor: Tensor, val: float) -> Tensor:
    r"""Fill with the constant ``val``. Drop-in for ``torch.nn.init.constant_``."""
    if has_torch_function_variadic(tensor):
        return handle_torch_function(constant_, (tensor,), tensor=tensor, val=val)
    return torch_fill_(tensor, S.Constant._unchecked(value=val))


def ones_(tensor: Tensor) -> Tensor:
    """Fill with 1. Drop-in for ``torch.nn.init.ones_``."""
    return torch_fill_(tensor, S.Constant._unchecked(value=1.0))


def zeros_(tensor: Tensor) -> Tensor:
    """Fill with 0. Drop-in for ``torch.nn.init.zeros_``."""
    with torch.no_grad():
        return tensor.zero_()


def eye_(tensor: Tensor) -> Tensor:
    """Identity matrix (2-D only). Drop-in for ``torch.nn.init.eye_``."""
    spec = S.Eye()
    spec.check_shape(tuple(tensor.shape))
    return torch_fill_(tensor, spec)


def dirac_(tensor: Tensor, groups: int = 1) -> Tensor:
    """Dirac delta (3/4/5-D): preserves the input channels of a conv, per group.

    Zeros except ``w[g * out/groups + d, d, *centre] = 1`` for each group ``g`` and
    ``d < min(out/groups, in)``, ``centre = size(2:) // 2``. Drop-in for ``torch.nn.init.dirac_``.
    """
    spec = S.Dirac._unchecked(groups=groups)  # torch's own errors (groups=0: ZeroDivisionError)
    if tensor.ndimension() not in (3, 4, 5):
        raise ValueError("Only tensors with 3, 4, or 5 dimensions are supported")
    spec.check_shape(tuple(tensor.shape))
    if tensor.is_meta and not isinstance(groups, int):
        return tensor  # torch returns before using groups as a count
    # A non-integer (2.0): torch zeroes the tensor, then raises this TypeError from
    # range(groups); raise it before writing.
    if operator.index(groups) < 0:
        # torch accepts a negative divisor of dim 0 and writes all zeros: refuse it.
        raise ValueError(f"dirac_: groups must be a positive int, got groups={groups}")
    return torch_fill_(tensor, spec)


def xavier_uniform_(
    tensor: Tensor,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    key: "Key | None" = None,
) -> Tensor:
    r"""Glorot uniform: :math:`\mathcal{U}(-a, a)`, :math:`a = \text{gain}\sqrt{6/(\text{fan\_in}+\text{fan\_out})}`.

    Drop-in for ``torch.nn.init.xavier_uniform_`` (torch's fan convention).
    """
    _check_keyed_scale("xavier_uniform_", "gain", gain, key)
    if key is None:  # torch: "from is out of bounds", not naming gain
        refuse_nonfinite("xavier_uniform_", tensor, first_nonfinite(gain=gain),
                          lambda x: (S.xavier(tensor.shape, 1.0, "uniform", check=False),
                                     x.uniform_(0.0, 1.0, generator=throwaway_generator(x))))
    return _fill(tensor, S.xavier(tensor.shape, gain, "uniform", check=False), generator, key, "xavier_uniform_",
                 f" (from gain={gain})")


def xavier_normal_(
    tensor: Tensor,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    key: "Key | None" = None,
) -> Tensor:
    r"""Glorot normal: :math:`\mathcal{N}(0, \text{std}^2)`, :math:`\text{std} = \text{gain}\sqrt{2/(\text{fan\_in}+\text{fan\_out})}`.

    Drop-in for ``torch.nn.init.xavier_normal_``.
    """
    _check_keyed_scale("xavier_normal_", "gain", gain, key)
    spec = S.xavier(tensor.shape, gain, "normal", check=False)
    if key is None:  # gain=inf: torch fills +-inf; nan / -inf: it fails on std >= 0, not naming gain
        refuse_nonfinite("xavier_normal_", tensor, first_nonfinite(gain=gain),
                          lambda x: x.normal_(0.0, 1.0, generator=throwaway_generator(x)))
    return _fill(tensor, spec, generator, key, "xavier_normal_", f" (from gain={gain})")


def _kaiming(tensor, a, mode, nonlinearity, generator, key, distribution):
    if 0 in tensor.shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=3)
        return tensor
    _check_keyed_scale(f"kaiming_{distribution}_", "a", a, key)
    spec = S.kaiming(tensor.shape, a, mode, nonlinearity, distribution, check=False)
    if nonlinearity == "leaky_relu" and key is None:
        # a=+-inf: gain sqrt(2 / (1 + a^2)) = 0, torch writes all zeros; a=nan: a nan bound / std, on which
        # torch fails naming neither (torch's dtype errors win: the probe)
        refuse_nonfinite(f"kaiming_{distribution}_", tensor, first_nonfinite(a=a),
                          lambda x: x.uniform_(0.0, 1.0, generator=throwaway_generator(x)) if distribution == "uniform"
                          else x.normal_(0.0, 1.0, generator=throwaway_generator(x)),
                          "zeros: gain sqrt(2 / (1 + a^2)) = 0" if is_real(a) and math.isinf(a) else None)
    return _fill(tensor, spec, generator, key, f"kaiming_{distribution}_")


def kaiming_uniform_(
    tensor: Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
    *,
    key: "Key | None" = None,
) -> Tensor:
    r"""He uniform: :math:`\mathcal{U}(-b, b)`, :math:`b = \text{gain}\sqrt{3/\text{fan\_mode}}`.

    Drop-in for ``torch.nn.init.kaiming_uniform_``. Trap kept for parity: the
    default ``nonlinearity='leaky_relu'`` with ``a=0`` is ReLU's gain sqrt(2);
    torch's layers call it with ``a=sqrt(5)``, giving U(+-1/sqrt(fan_in)).
    """
    if has_torch_function_variadic(tensor):
        kw = {} if key is None else {"key": key}
        return handle_torch_function(
            kaiming_uniform_, (tensor,), tensor=tensor, a=a, mode=mode,
            nonlinearity=nonlinearity, generator=generator, **kw,
        )
    return _kaiming(tensor, a, mode, nonlinearity, generator, key, "uniform")


def kaiming_normal_(
    tensor: Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
    *,
    key: "Key | None" = None,
) -> Tensor:
    r"""He normal: :math:`\mathcal{N}(0, \text{std}^2)`, :math:`\text{std} = \text{gain}/\sqrt{\text{fan\_mode}}`.

    Drop-in for ``torch.nn.init.kaiming_normal_``.
    """
    return _kaiming(tensor, a, mode, nonlinearity, generator, key, "normal")


def orthogonal_(
    tensor: Tensor,
    gain: float = 1,
    generator: torch.Generator | None = None,
    *,
    key: "Key | None" = None,
) -> Tensor:
    """(Semi-)orthogonal matrix of the tensor flattened to (size(0), -1), times ``gain``
    (Saxe et al. 2013): Haar distributed, each element with std gain / sqrt(max(rows, cols)).
    Drop-in for ``torch.nn.init.orthogonal_``."""
    if tensor.ndimension() < 2:
        raise ValueError("Only tensors with 2 or more dimensions are supported")
    if key is None and is_real(gain) and not math.isfinite(gain):  # torch fills nan / +-inf
        refuse_nonfinite("orthogonal_", tensor, ("gain", gain),
                          lambda x: torch.linalg.qr(x.new_empty(1, 1).normal_(0, 1, generator=throwaway_generator(x))))
    return fill_(tensor, S.Orthogonal._unchecked(gain=gain), generator=generator, key=key)


def sparse_(
    tensor: Tensor,
    sparsity: float,
    std: float = 0.01,
    generator: torch.Generator | None = None,
    *,
    key: "Key | None" = None,
) -> Tensor:
    """N(0, std^2) with ``ceil(sparsity * rows)`` zeros per column (Martens 2010).

    Drop-in for ``torch.nn.init.sparse_``. Trap kept for parity in the torch
    engine: the zero positions come from the GLOBAL RNG (``torch.randperm``),
    whatever ``generator`` is. The keyed engine draws them from the key.
    Unlike torch, a sparsity outside [0, 1] is refused before anything is written.
    """
    if tensor.ndimension() != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    # A finite real sparsity outside [0, 1] is accepted by torch and zeroes every
    # entry (> 1) or all but a few (< 0): refuse it. Other bad values (nan, inf, so
    # large that sparsity * rows overflows, str) are left to torch's own errors, for
    # parity; True counts as 1, as in torch.
    s = float(sparsity) if isinstance(sparsity, Tensor) and sparsity.numel() == 1 else sparsity
    if (isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s * tensor.shape[0])
            and not 0.0 <= s <= 1.0):  # s * rows = inf: torch's math.ceil raises OverflowError
        try:  # torch's normal_(0, std) comes first and rejects a bad std / dtype: keep its error
            if not tensor.is_meta:
                tensor.new_empty(1).normal_(0, std, generator=torch.Generator(device=tensor.device))
        except (RuntimeError, NotImplementedError, TypeError):
            pass
        else:
            raise ValueError(f"sparse_: sparsity must be in [0, 1], got {sparsity}")
    if key is None:  # std=inf: torch fills +-inf; nan sparsity / std, -inf std: it fails naming neither
        refuse_nonfinite("sparse_", tensor, first_nonfinite(sparsity=s, std=std),
                          lambda x: x.normal_(0.0, 1.0, generator=throwaway_generator(x)))
    spec = S.Sparse._unchecked(sparsity=sparsity, std_=std)
    return fill_(tensor, spec, generator=generator, key=key)


# ---------------------------------------------------------------------------
# What torch lacks
# ---------------------------------------------------------------------------

def variance_scaling_(
    tensor: Tensor,
    scale: float = 1.0,
    mode: str = "fan_in",
    distribution: str = "truncated_normal",
    *,
    layout: str = "torch",
    groups: int = 1,
    fans: Fans | None = None,
    generator: torch.Generator | None = None,
    key: "Key | None" = None,
) -> Tensor:
    r"""JAX ``variance_scaling``: values with variance exactly ``scale / n``.

    ``n`` = fan_in, fan_out, (fan_in + fan_out) / 2 or sqrt(fan_in * fan_out) by
    ``mode``. Distributions:

    * ``"truncated_normal"``: N(0, s^2) truncated to [-2 s, 2 s] with
      s = sqrt(scale / n) / 0.87962566103423978 (so the variance is scale / n);
    * ``"normal"``: N(0, scale / n);
    * ``"uniform"``: U(-sqrt(3 scale / n), sqrt(3 scale / n)).

    Fans follow ``layout`` (``"torch"``: (out, in, *k); ``"x@w"``: (..., in, out);
    ``"conv"`` / ``"conv_transpose"`` with ``groups``) or are given as ``fans``.
    Presets: ``scale=2, mode="fan_in"`` is He; ``scale=1, "fan_avg"`` Glorot;
    ``scale=1, "fan_in"`` LeCun.
    """
    _require_float(tensor, "variance_scaling_")
    spec = S.variance_scaling(tensor.shape, scale, mode, distribution, layout=layout, groups=groups, fans=fans)
    if tensor.numel() == 0:
        return tensor
    return _fill(tensor, spec, generator, key, "variance_scaling_", f" (from scale={scale})")


def lecun_uniform_(
    tensor: Tensor,
    *,
    layout: str = "torch",
    groups: int = 1,
    generator: torch.Generator | None = None,
    key: "Key | None" = None,
) -> Tensor:
    r"""LeCun uniform: :math:`\mathcal{U}(-\sqrt{3/\text{fan\_in}}, \sqrt{3/\text{fan\_in}})`."""
    return variance_scaling_(tensor, 1.0, "fan_in", "uniform", layout=layout, groups=groups,
                             generator=generator, key=key)


def lecun_normal_(
    tensor: Tensor,
    *,
    layout: str = "torch",
    groups: int = 1,
    generator: torch.Generator | None = None,
    key: "Key | None" = None,
) -> Tensor:
    r"""LeCun normal (JAX semantics): truncated normal with variance exactly ``1/fan_in``.

    N(0, s^2) truncated to [-2 s, 2 s], s = 1 / (sqrt(fan_in) * 0.87962566103423978).

    The right choice for SELU self-normalizing networks (Klambauer et al. 2017).
    """
    return variance_scaling_(tensor, 1.0, "fan_in", "truncated_normal", layout=layout, groups=groups,
                             generator=generator, key=key)


def delta_orthogonal_(
    tensor: Tensor,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    key: "Key | None" = None,
) -> Tensor:
    """Delta-orthogonal init (Xiao et al. 2018) for a 3/4/5-D conv weight (out, in, *k).

    Zeros everywhere except the spatial centre ``(k - 1) // 2`` of each kernel
    dimension (JAX's convention; the middle for odd ``k``), which holds a random
    (out, in) matrix with orthonormal columns times ``gain``: with stride 1 and
    ``padding="same"`` (torch pads ``(k - 1) // 2`` on the left) the conv starts
    as an orthogonal 1x1 map, so signal norms are preserved exactly at any depth
    (dynamical isometry), even kernels included. Needs ``out >= in``.
    """
    _require_float(tensor, "delta_orthogonal_")
    spec = S.DeltaOrthogonal(gain)
    spec.check_shape(tuple(tensor.shape))
    return fill_(tensor, spec, generator=generator, key=key)


def orthogonal_per_gate_(
    tensor: Tensor,
    gates: int,
    gain: float = 1,
    generator: torch.Generator | None = None,
    *,
    key: "Key | None" = None,
) -> Tensor:
    r"""Orthogonal init of a recurrent weight, one independent block per gate.

    ``tensor`` (flattened to ``(rows, cols)``; an RNN's ``weight_hh_l*`` is ``(gates * H, H)``:
    LSTM 4 gates i, f, g, o; GRU 3, r, z, n; RNN 1) is split along dim 0 into ``gates`` blocks
    of ``H = rows / gates`` rows; block ``g`` becomes a Haar (semi-)orthogonal ``(H, cols)``
    matrix times ``gain``: :math:`W_g W_g^\top = \text{gain}^2 I_H` for every gate (if
    ``H <= cols``), element std ``gain / sqrt(max(H, cols))``. (``orthogonal_`` on the stacked
    matrix gives orthonormal columns of length 4H instead: no gate block is orthogonal.)
    Without ``key``: the blocks in gate order from ``generator`` (the values of
    ``torch.nn.init.orthogonal_`` on each block in turn); with ``key``: block ``g`` from
    ``key.child(f"gate{g}")``, the same on any thread count.
    """
    _require_float(tensor, "orthogonal_per_gate_")
    spec = OrthogonalPerGate(gates, gain)
    spec.check_shape(tuple(tensor.shape))
    return fill_(tensor, spec, generator=generator, key=key)


def lstm_forget_bias_(lstm_or_tensor: "torch.nn.Module | Tensor", value: float = 1.0) -> "torch.nn.Module | Tensor":
    r"""Set the forget-gate bias of an LSTM to ``value`` (Jozefowicz et al. 2015: 1), in place.

    torch computes :math:`f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf})`, gates
    stacked ``(i, f, g, o)``: the forget bias is ``bias_ih[H:2H] + bias_hh[H:2H]``. For an
    ``nn.LSTM`` (every layer and direction) or ``nn.LSTMCell``: ``bias_ih[H:2H] = value``,
    ``bias_hh[H:2H] = 0``, so the sum is exactly ``value``; for a 1-D ``4H`` tensor: its rows
    ``H:2H``. Other gates are left as they are. Returns its argument; checks before writing.
    """
    nn = torch.nn
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"lstm_forget_bias_: value must be a finite real number, got {value!r}")
    if isinstance(lstm_or_tensor, Tensor):
        t = lstm_or_tensor
        if t.dim() != 1 or t.shape[0] % 4 != 0 or not t.is_floating_point():
            raise ValueError(f"lstm_forget_bias_: expected an LSTM bias, a 1-D floating-point tensor of 4 * "
                             f"hidden_size elements (gates i, f, g, o), got shape {tuple(t.shape)}, dtype {t.dtype}")
        h = t.shape[0] // 4
        with torch.no_grad():
            t[h:2 * h].fill_(value)
        return t
    m = lstm_or_tensor
    if isinstance(m, nn.LSTM):
        suffixes = [f"_l{k}{d}" for k in range(m.num_layers) for d in (("", "_reverse") if m.bidirectional else ("",))]
    elif isinstance(m, nn.LSTMCell):
        suffixes = [""]
    else:
        raise TypeError(f"lstm_forget_bias_: expected an nn.LSTM, nn.LSTMCell or a bias tensor, got "
                        f"{type(m).__name__}")
    if not m.bias:
        raise ValueError(f"lstm_forget_bias_: the {type(m).__name__} was built with bias=False: it has no forget-gate "
                         "bias to set")
    h = m.hidden_size
    pairs = [(getattr(m, f"bias_ih{s}"), getattr(m, f"bias_hh{s}")) for s in suffixes]
    with torch.no_grad():
        for b_ih, b_hh in pairs:
            b_ih[h:2 * h].fill_(value)
            b_hh[h:2 * h].zero_()
    return m


def _deprecated_alias(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``torch.nn.init``'s deprecated names without the trailing underscore (``xavier_uniform``
    for ``xavier_uniform_``): the same call, after the same ``FutureWarning``, so old code
    that imports them from ``torch.nn.init`` also runs against torchinit."""
    new_name = fn.__name__
    old_name = new_name[:-1]

    @functools.wraps(fn)
    def alias(*args, **kwargs):
        warnings.warn(f"`torchinit.{old_name}` is now deprecated in favor of `torchinit.{new_name}`.",
                      FutureWarning, stacklevel=2)
        return fn(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = f"Deprecated alias of :func:`{new_name}` (as in ``torch.nn.init``): warns, then calls it."
    return alias


for _fn in (uniform_, normal_, constant_, eye_, dirac_, xavier_uniform_, xavier_normal_, kaiming_uniform_,
            kaiming_normal_, orthogonal_, sparse_):
    globals()[_fn.__name__[:-1]] = _deprecated_alias(_fn)
del _fn
