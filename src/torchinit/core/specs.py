"""Specs: WHAT distribution a tensor gets, separate from HOW values are drawn.

A spec is a small frozen dataclass (``Uniform(low, high)``, ``Normal(mean, std)``,
``TruncatedNormal(mean, std, a, b)``, ``Constant``, ``Eye``, ``Dirac``,
``Orthogonal``, ``DeltaOrthogonal``, ``Sparse``). Engines fill specs: the torch
engine (bitwise ``torch.nn.init``) and the keyed engine (Philox, by name).
Policies produce specs, diagnostics compare measurements with ``spec.std``.

Every named initializer derives from one core, :func:`scaled_std` +
:func:`from_std` (as JAX derives glorot/he/lecun from ``variance_scaling``):

    std = gain / sqrt(fan)           (mode fan_in / fan_out / fan_geo_avg)
    std = gain * sqrt(2 / (fan_in + fan_out))   (mode fan_avg)

    uniform:            U(-sqrt(3) std, sqrt(3) std)
    normal:             N(0, std^2)
    truncated_normal:   N(0, s^2) truncated to [-2 s, 2 s], s = std / 0.87962566103423978
                        so that the variance after truncation is exactly std^2.

The arithmetic order matches torch's so that torch-engine results are bitwise
identical to ``torch.nn.init``.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Sequence

from .fans import Fans, compute_fans
from .gains import calculate_gain
from .truncation import _LOG_SQRT_2PI, truncation_problem
from .truncation import log_ndtr as _log_ndtr

__all__ = [
    "Spec",
    "Uniform",
    "Normal",
    "TruncatedNormal",
    "Constant",
    "Eye",
    "Dirac",
    "Orthogonal",
    "DeltaOrthogonal",
    "Sparse",
    "spec_from_dict",
    "scaled_std",
    "from_std",
    "variance_scaling",
    "kaiming",
    "xavier",
    "lecun",
    "TRUNC_STD_CORRECTION",
    "MODES",
    "DISTRIBUTIONS",
]

#: Std of N(0, 1) truncated to [-2, 2]; dividing by it restores unit variance (JAX).
TRUNC_STD_CORRECTION = 0.87962566103423978
MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")

_REGISTRY: dict[str, type[Spec]] = {}


def _finite(name: str, value: Any, cls: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{cls}: {name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{cls}: {name} must be finite, got {value}")
    return value


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _norm_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Spec:
    """Base class of all specs. Subclasses register under their ``kind``."""

    kind: ClassVar[str] = "spec"
    #: Whether filling consumes random numbers.
    random: ClassVar[bool] = False
    #: Whether a value depends on other elements (so a shard cannot be drawn alone).
    needs_whole_tensor: ClassVar[bool] = False

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _REGISTRY[cls.kind] = cls

    # -- theory -----------------------------------------------------------------
    @property
    def mean(self) -> float | None:
        """Mean of the marginal distribution of one element (None if shape-dependent)."""
        return None

    @property
    def std(self) -> float | None:
        """Std of the marginal distribution of one element (None if shape-dependent)."""
        return None

    @property
    def bounds(self) -> tuple[float, float] | None:
        """(low, high) that every value lies in, when the distribution is bounded."""
        return None

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise ValueError if this spec cannot fill a tensor of ``shape``."""

    @classmethod
    def _unchecked(cls, **values: Any) -> "Spec":
        """Build without validation (the torch engine lets torch raise its own errors)."""
        obj = object.__new__(cls)
        for k, v in values.items():
            object.__setattr__(obj, k, v)
        return obj

    def checked(self) -> "Spec":
        """This spec, validated (re-built through the public constructor)."""
        return spec_from_dict(self.to_dict())

    # -- serialization ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    def describe(self) -> str:
        args = ", ".join(f"{f.name}={getattr(self, f.name):.6g}" if isinstance(getattr(self, f.name), float)
                         else f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"{type(self).__name__}({args})"


@functools.lru_cache(maxsize=None)
def _ctor_params(cls: type) -> frozenset[str]:
    # inspect.signature costs ~100 us; keyed fills validate every spec through here.
    return frozenset(inspect.signature(cls).parameters)


def spec_from_dict(d: dict[str, Any]) -> Spec:
    """Inverse of :meth:`Spec.to_dict`."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"a spec dict needs a 'kind' key, got {d!r}")
    kind = d["kind"]
    cls = _REGISTRY.get(kind)
    if cls is None or cls is Spec:
        known = ", ".join(sorted(k for k in _REGISTRY if k != "spec"))
        raise ValueError(f"unknown spec kind {kind!r}; known kinds: {known}")
    names = _ctor_params(cls)
    extra = set(d) - names - {"kind"}
    if extra:
        raise ValueError(f"spec {kind!r} has no field(s) {sorted(extra)}; fields: {sorted(names)}")
    return cls(**{k: v for k, v in d.items() if k != "kind"})


@dataclass(frozen=True)
class Uniform(Spec):
    """U(low, high): every value in [low, high)."""

    kind: ClassVar[str] = "uniform"
    random: ClassVar[bool] = True
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self):
        lo, hi = _finite("low", self.low, "Uniform"), _finite("high", self.high, "Uniform")
        if lo > hi:
            raise ValueError(f"Uniform: low must be <= high, got low={lo} > high={hi}")
        object.__setattr__(self, "low", lo)
        object.__setattr__(self, "high", hi)

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    @property
    def std(self) -> float:
        return (self.high - self.low) / math.sqrt(12.0)

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.low, self.high)


@dataclass(frozen=True)
class Normal(Spec):
    """N(mean, std^2)."""

    kind: ClassVar[str] = "normal"
    random: ClassVar[bool] = True
    mean_: float = 0.0
    std_: float = 1.0

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        object.__setattr__(self, "mean_", _finite("mean", mean, "Normal"))
        object.__setattr__(self, "std_", _finite("std", std, "Normal"))
        if self.std_ < 0:
            raise ValueError(f"Normal: std must be >= 0, got {std}")

    @property
    def mean(self) -> float:
        return self.mean_

    @property
    def std(self) -> float:
        return self.std_

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean_, "std": self.std_}

    def describe(self) -> str:
        return f"Normal(mean={self.mean_:.6g}, std={self.std_:.6g})"

    __repr__ = describe


@dataclass(frozen=True)
class TruncatedNormal(Spec):
    """N(mean, std^2) conditioned on [a, b]; ``a`` and ``b`` are ABSOLUTE values.

    (Bounds in standard units, as JAX and ``trunc_normal_std_units_`` take them,
    are converted to absolute values before a spec is built: the spec has one
    convention only.)
    """

    kind: ClassVar[str] = "truncated_normal"
    random: ClassVar[bool] = True
    mean_: float = 0.0
    std_: float = 1.0
    a: float = -2.0
    b: float = 2.0

    def __init__(self, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
        c = "TruncatedNormal"
        object.__setattr__(self, "mean_", _finite("mean", mean, c))
        object.__setattr__(self, "std_", _finite("std", std, c))
        object.__setattr__(self, "a", _finite("a", a, c))
        object.__setattr__(self, "b", _finite("b", b, c))
        if self.std_ <= 0:
            raise ValueError(f"TruncatedNormal: std must be > 0, got {std}")
        if self.a >= self.b:
            raise ValueError(f"TruncatedNormal: need a < b, got a={self.a}, b={self.b}")
        problem = truncation_problem(self.mean_, self.std_, self.a, self.b)
        if problem:
            raise ValueError(f"TruncatedNormal: {problem}")

    @property
    def alpha(self) -> float:
        """Lower bound in standard units."""
        return (self.a - self.mean_) / self.std_

    @property
    def beta(self) -> float:
        """Upper bound in standard units."""
        return (self.b - self.mean_) / self.std_

    def _moments(self) -> tuple[float, float]:
        # Standard formulas, m = (pdf(al) - pdf(be)) / Z, var = 1 + (al pdf(al) - be pdf(be)) / Z - m^2,
        # evaluated in log space on the left tail (reflecting [al, be] if needed) so
        # that Z = cdf(be) - cdf(al) keeps its precision far from the mean.
        al, be = self.alpha, self.beta
        flip = al + be > 0
        if flip:
            al, be = -be, -al
        la, lb = _log_ndtr(al), _log_ndtr(be)
        d = -math.expm1(la - lb)
        if not d > 0.0:  # interval too narrow to resolve: effectively uniform on [a, b]
            return (self.a + self.b) / 2, (self.b - self.a) / math.sqrt(12.0)
        log_z = lb + math.log(d)
        pa = math.exp(-0.5 * al * al - _LOG_SQRT_2PI - log_z)  # pdf(al) / Z
        pb = math.exp(-0.5 * be * be - _LOG_SQRT_2PI - log_z)  # pdf(be) / Z
        m = pa - pb
        var = 1.0 + al * pa - be * pb - m * m
        if not (al <= m <= be and 0.0 <= var <= 0.25 * (be - al) ** 2):
            # cancellation far in the tail: there the density is exp(-|be| y) in the
            # distance y = be - x from the nearer bound (an exponential truncated to
            # [0, be - al]), exact up to O(1/be^2)
            lam, w = -be, be - al
            lw = lam * w
            if lw < 1e-3:
                ey, vy = w / 2 - lam * w * w / 12, w * w / 12 - lam**2 * w**4 / 720
            elif lw < 700:
                em = math.expm1(lw)
                ey, vy = 1 / lam - w / em, 1 / lam**2 - w * w / (em * -math.expm1(-lw))
            else:
                ey, vy = 1 / lam, 1 / lam**2
            m, var = be - ey, vy
        if flip:
            m = -m
        return self.mean_ + self.std_ * m, self.std_ * math.sqrt(max(var, 0.0))

    @property
    def mean(self) -> float:
        return self._moments()[0]

    @property
    def std(self) -> float:
        return self._moments()[1]

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.a, self.b)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean_, "std": self.std_, "a": self.a, "b": self.b}

    def describe(self) -> str:
        return f"TruncatedNormal(mean={self.mean_:.6g}, std={self.std_:.6g}, a={self.a:.6g}, b={self.b:.6g})"

    __repr__ = describe


@dataclass(frozen=True)
class Constant(Spec):
    """Every element equals ``value``."""

    kind: ClassVar[str] = "constant"
    value: float = 0.0

    def __post_init__(self):
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise TypeError(f"Constant: value must be a real number, got {self.value!r}")

    @property
    def mean(self) -> float:
        return float(self.value)

    @property
    def std(self) -> float:
        return 0.0

    @property
    def bounds(self) -> tuple[float, float]:
        return (float(self.value), float(self.value))


@dataclass(frozen=True)
class Eye(Spec):
    """Identity matrix (2-D): ``w[i, i] = 1``, zeros elsewhere."""

    kind: ClassVar[str] = "eye"

    def check_shape(self, shape: Sequence[int]) -> None:
        if len(shape) != 2:
            raise ValueError("Only tensors with 2 dimensions are supported")


@dataclass(frozen=True)
class Dirac(Spec):
    """Dirac delta for 3/4/5-D conv weights: identity at the kernel centre, per group."""

    kind: ClassVar[str] = "dirac"
    groups: int = 1

    def __post_init__(self):
        # a negative divisor of dim 0 would write all zeros; 0 or 2.0 fail mid-write
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
            raise ValueError(f"Dirac: groups must be a positive int, got {self.groups!r}")

    def check_shape(self, shape: Sequence[int]) -> None:
        if len(shape) not in (3, 4, 5):
            raise ValueError("Only tensors with 3, 4, or 5 dimensions are supported")
        if shape[0] % self.groups != 0:
            raise ValueError("dim 0 must be divisible by groups")


@dataclass(frozen=True)
class Orthogonal(Spec):
    """(Semi-)orthogonal matrix of the tensor flattened to (size(0), -1), times ``gain``.

    Rows (or columns, whichever are fewer) are orthonormal; Haar distributed.
    Each element has variance gain^2 / max(rows, cols).
    """

    kind: ClassVar[str] = "orthogonal"
    random: ClassVar[bool] = True
    needs_whole_tensor: ClassVar[bool] = True
    gain: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "gain", _finite("gain", self.gain, "Orthogonal"))

    def check_shape(self, shape: Sequence[int]) -> None:
        if len(shape) < 2:
            raise ValueError("Only tensors with 2 or more dimensions are supported")


@dataclass(frozen=True)
class DeltaOrthogonal(Spec):
    """Delta-orthogonal conv kernel (Xiao et al. 2018): zero everywhere except an
    orthogonal (out, in) matrix times ``gain`` at the spatial centre. Needs out >= in."""

    kind: ClassVar[str] = "delta_orthogonal"
    random: ClassVar[bool] = True
    needs_whole_tensor: ClassVar[bool] = True
    gain: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "gain", _finite("gain", self.gain, "DeltaOrthogonal"))

    def check_shape(self, shape: Sequence[int]) -> None:
        if len(shape) not in (3, 4, 5):
            raise ValueError(
                f"delta_orthogonal_ needs a 3-, 4- or 5-D conv weight (out, in, *kernel), got shape {tuple(shape)}"
            )
        if shape[0] < shape[1]:
            raise ValueError(
                f"delta_orthogonal_ needs out_channels >= in_channels for an orthogonal centre, "
                f"got shape {tuple(shape)} (out={shape[0]} < in={shape[1]})"
            )


@dataclass(frozen=True)
class Sparse(Spec):
    """Martens (2010): N(0, std^2), then ``ceil(sparsity * rows)`` zeros in every column."""

    kind: ClassVar[str] = "sparse"
    random: ClassVar[bool] = True
    needs_whole_tensor: ClassVar[bool] = True
    sparsity: float = 0.1
    std_: float = 0.01

    def __init__(self, sparsity: float = 0.1, std: float = 0.01):
        s = _finite("sparsity", sparsity, "Sparse")
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"sparse_: sparsity must be in [0, 1], got {sparsity}")
        sd = _finite("std", std, "Sparse")
        if sd < 0:
            raise ValueError(f"sparse_: std must be >= 0, got {std}")
        object.__setattr__(self, "sparsity", s)
        object.__setattr__(self, "std_", sd)

    @property
    def std(self) -> float:
        return self.std_

    def check_shape(self, shape: Sequence[int]) -> None:
        if len(shape) != 2:
            raise ValueError("Only tensors with 2 dimensions are supported")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "sparsity": self.sparsity, "std": self.std_}

    def describe(self) -> str:
        return f"Sparse(sparsity={self.sparsity:.6g}, std={self.std_:.6g})"

    __repr__ = describe


# ----------------------------------------------------------------------------------
# The variance-scaling core
# ----------------------------------------------------------------------------------

def scaled_std(fans: Fans, mode: str = "fan_in", gain: float = 1.0) -> float:
    """``gain / sqrt(fan)`` for the chosen mode (fan_avg: ``gain * sqrt(2/(fan_in+fan_out))``).

    Written in torch's arithmetic order so kaiming/xavier stds are bit-identical.
    """
    if mode == "fan_avg":
        return gain * math.sqrt(2.0 / float(fans.fan_in + fans.fan_out))
    return gain / math.sqrt(fans.select(mode))


def from_std(std: float, distribution: str, mean: float = 0.0, *, check: bool = True) -> Spec:
    """The spec with the given std for ``distribution`` (uniform / normal / truncated_normal).

    truncated_normal follows JAX: truncated at 2 standard units of the
    *untruncated* std ``s = std / 0.87962566103423978``, so the final std is ``std``.
    ``check=False`` builds uniform/normal specs unvalidated, for the torch engine
    drop-ins that must let torch raise its own errors (negative or nan gains).
    """
    if distribution == "uniform":
        bound = math.sqrt(3.0) * std
        # (-bound, bound) when mean == 0 keeps torch's signed zeros for bound == 0
        low, high = (-bound, bound) if mean == 0 else (mean - bound, mean + bound)
        return Uniform(low, high) if check else Uniform._unchecked(low=low, high=high)
    if distribution == "normal":
        return Normal(mean, std) if check else Normal._unchecked(mean_=mean, std_=std)
    if distribution == "truncated_normal":
        s = std / TRUNC_STD_CORRECTION
        return TruncatedNormal(mean, s, mean - 2.0 * s, mean + 2.0 * s)
    raise ValueError(
        f"Invalid `distribution` argument: {distribution!r}; use one of {', '.join(DISTRIBUTIONS)}"
    )


def _fans_of(shape, fans: Fans | None, layout: str, groups: int) -> Fans:
    if fans is not None and not isinstance(fans, Fans):  # a tuple failed later: "no attribute 'select'"
        raise TypeError(f"fans must be a torchinit.Fans (compute_fans, module_fans), got {type(fans).__name__}")
    grouped = isinstance(groups, int) and not isinstance(groups, bool) and groups > 1
    if fans is not None and (layout != "torch" or grouped):  # fans won: layout/groups were dropped silently
        raise ValueError(f"variance_scaling: give either fans or layout/groups, not both: got fans={fans}, "
                         f"layout={layout!r}, groups={groups}")
    if grouped and layout in ("torch", "x@w"):  # torch's and x@w's rules have no groups: it was ignored silently
        raise ValueError(f"variance_scaling: groups={groups} needs layout='conv' or 'conv_transpose' (layout {layout!r} has no groups)")
    return fans if fans is not None else compute_fans(shape, layout, groups=groups)


def variance_scaling(
    shape: Sequence[int],
    scale: float = 1.0,
    mode: str = "fan_in",
    distribution: str = "truncated_normal",
    *,
    layout: str = "torch",
    groups: int = 1,
    fans: Fans | None = None,
) -> Spec:
    """JAX ``variance_scaling``: a spec with variance ``scale / n``.

    n is fan_in, fan_out, (fan_in + fan_out)/2 or sqrt(fan_in * fan_out) by ``mode``;
    fans follow ``layout`` (default torch's ``(out, in, *kernel)``) unless given.
    """
    scale_f = _finite("scale", scale, "variance_scaling")
    if scale_f <= 0:
        raise ValueError(f"variance_scaling: scale must be positive, got {scale}")
    if mode not in MODES:
        raise ValueError(f"Invalid `mode` argument: {mode!r}; use one of {', '.join(MODES)}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"Invalid `distribution` argument: {distribution!r}; use one of {', '.join(DISTRIBUTIONS)}"
        )
    f = _fans_of(shape, fans, layout, groups)
    denom = f.select(mode)
    if denom <= 0:
        raise ValueError(f"variance_scaling: {mode} is 0 for shape {tuple(shape)}; nothing to scale")
    std = math.sqrt(scale_f / denom)
    return from_std(std, distribution)


def kaiming(
    shape: Sequence[int],
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    distribution: str = "uniform",
    *,
    layout: str = "torch",
    groups: int = 1,
    fans: Fans | None = None,
    check: bool = True,
) -> Spec:
    """He et al. 2015: ``std = gain(nonlinearity, a) / sqrt(fan_mode)``.

    Same checks and messages as torch (mode first, then nonlinearity).
    ``check=False``: see :func:`from_std`.
    """
    m = mode.lower()
    if m not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {m} not supported, please use one of ['fan_in', 'fan_out']")
    f = _fans_of(shape, fans, layout, groups)
    gain = calculate_gain(nonlinearity, a)
    return from_std(scaled_std(f, m, gain), distribution, check=check)


def xavier(
    shape: Sequence[int],
    gain: float = 1.0,
    distribution: str = "uniform",
    *,
    layout: str = "torch",
    groups: int = 1,
    fans: Fans | None = None,
    check: bool = True,
) -> Spec:
    """Glorot & Bengio 2010: ``std = gain * sqrt(2 / (fan_in + fan_out))``.

    ``check=False``: see :func:`from_std`.
    """
    f = _fans_of(shape, fans, layout, groups)
    return from_std(scaled_std(f, "fan_avg", gain), distribution, check=check)


def lecun(
    shape: Sequence[int],
    distribution: str = "truncated_normal",
    *,
    layout: str = "torch",
    groups: int = 1,
    fans: Fans | None = None,
) -> Spec:
    """LeCun: variance ``1 / fan_in`` (JAX's lecun_normal is truncated; the right init for SELU)."""
    return variance_scaling(shape, 1.0, "fan_in", distribution, layout=layout, groups=groups, fans=fans)
