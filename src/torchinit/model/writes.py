"""What a torch call writes: the tensors an in-place function, method, ``out=`` or
``.data`` assignment writes into, and the spec or constant it writes (for routing and
the init audit). Pure functions of the call; no state."""

from __future__ import annotations

import hashlib
import inspect
import math
from typing import Any

import torch
from torch import Tensor

from ..core import specs as S

def _sampling_spec(func, args, kwargs) -> S.Spec | None:
    """The spec of ``t.uniform_(...)`` / ``t.normal_(...)`` (None: arguments torch must judge)."""
    rest = list(args[1:])
    try:
        if func is torch.Tensor.uniform_:
            lo = rest[0] if len(rest) > 0 else kwargs.get("from", 0.0)
            hi = rest[1] if len(rest) > 1 else kwargs.get("to", 1.0)
            return S.Uniform(float(lo), float(hi))
        mean = rest[0] if len(rest) > 0 else kwargs.get("mean", 0.0)
        std = rest[1] if len(rest) > 1 else kwargs.get("std", 1.0)
        return S.Normal(float(mean), float(std))
    except (TypeError, ValueError):
        return None


def _constant_of(name: str | None, args, kwargs) -> S.Spec | None:
    """The constant a fill writes (``fill_``, ``constant_``, ``zero_``...), for the audit."""
    if name in ("zero_", "zeros_"):
        return S.Constant(0.0)
    if name == "ones_":
        return S.Constant(1.0)
    if name in ("fill_", "constant_"):
        v = args[1] if len(args) > 1 else kwargs.get("value", kwargs.get("val"))
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return S.Constant(float(v))
    return None


#: in-place by name (trailing underscore) but no write to the tensor's values
_NOT_WRITES = frozenset({"requires_grad_", "share_memory_"})
#: keyword names under which a function takes the tensor it writes in place: torch.nn.init's
#: ``tensor``, torch's functions ``input`` (``torch.fill_(input=w, value=0)``); tensor methods
#: (``self``) take it positionally only
_TENSOR_KEYWORDS = ("tensor", "input", "self")
_SIGNATURES: dict[Any, inspect.Signature | None] = {}


def _signature(func) -> inspect.Signature | None:
    try:
        return _SIGNATURES[func]
    except KeyError:
        pass
    except TypeError:  # unhashable
        return None
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a text signature
        sig = None
    _SIGNATURES[func] = sig
    return sig


def _is_data_setter(func) -> bool:
    """``t.data = x`` (replaces the tensor's values; seen as ``data.__set__``)."""
    return getattr(func, "__name__", None) == "__set__" and getattr(func, "__self__", None) is _DATA_DESCRIPTOR


_DATA_DESCRIPTOR = torch._C.TensorBase.__dict__.get("data")


def _destination(func, args: tuple, kwargs: dict) -> tuple[list[Tensor], Any] | None:
    """The tensors a call writes into, and what to return when the write is skipped; None
    when it writes none. Covers in-place functions and methods (``name_``, ``__setitem__``,
    ``inplace=True``) whatever the form their tensor is passed in (``w.fill_(0)``,
    ``torch.fill_(input=w, value=0)``, ``torch.nn.init.constant_(tensor=w, val=0)``, which
    torch hands the mode with no positional argument at all), ``torch._foreach_*_`` lists,
    ``out=`` and ``t.data = x``."""
    name = getattr(func, "__name__", None) or ""
    if _is_data_setter(func):
        return ([args[0]], None) if args and isinstance(args[0], Tensor) else None
    inplace = name == "__setitem__" or (name.endswith("_") and not name.startswith("__") and name not in _NOT_WRITES)
    sig = None
    if not inplace and "inplace" in kwargs:
        inplace = kwargs["inplace"] is True
    elif not inplace and getattr(func, "__module__", "") == "torch.nn.functional":
        sig = _signature(func)  # F.relu(x, True), F.dropout(x, 0.5, True, True)
        if sig is not None and "inplace" in sig.parameters:
            try:
                inplace = sig.bind(*args, **kwargs).arguments.get("inplace") is True
            except TypeError:
                inplace = False
    tensors: list[Tensor] = []
    skipped: Any = None
    if inplace:
        t = args[0] if args else None
        if t is None:
            sig = sig or _signature(func)
            first = next(iter(sig.parameters), None) if sig is not None else None
            for k in ((first,) if first else ()) + _TENSOR_KEYWORDS:
                if k in kwargs:
                    t = kwargs[k]
                    break
        if isinstance(t, Tensor):
            tensors.append(t)
            skipped = t
        elif isinstance(t, (list, tuple)) and name.startswith("_foreach_"):  # torch._foreach_mul_([w, b], 0.5)
            tensors.extend(x for x in t if isinstance(x, Tensor))  # these return None
    out = kwargs.get("out")
    if isinstance(out, Tensor):
        outs = [out]
    elif isinstance(out, (tuple, list)):  # torch.max(x, 0, out=(values, indices))
        outs = [o for o in out if isinstance(o, Tensor)]
    else:
        outs = []
    if outs:
        tensors.extend(outs)
        if skipped is None:
            skipped = out
    return (tensors, skipped) if tensors else None


def _spec_of_init(name: str, shape: tuple[int, ...], a: dict[str, Any]) -> S.Spec | None:
    """The spec torch's ``torch.nn.init.<name>`` would draw for a tensor of ``shape``."""
    if name == "uniform_":
        return S.Uniform(a["a"], a["b"])
    if name == "normal_":
        return S.Normal(a["mean"], a["std"])
    if name == "trunc_normal_":
        return S.TruncatedNormal(a["mean"], a["std"], a["a"], a["b"])
    if name in ("xavier_uniform_", "xavier_normal_"):
        return S.xavier(shape, a["gain"], "uniform" if name == "xavier_uniform_" else "normal")
    if name in ("kaiming_uniform_", "kaiming_normal_"):
        if 0 in shape:
            return None
        return S.kaiming(shape, a["a"], a["mode"], a["nonlinearity"],
                         "uniform" if name == "kaiming_uniform_" else "normal")
    if name == "orthogonal_":
        return S.Orthogonal(a["gain"]) if len(shape) >= 2 else None
    if name == "sparse_":
        return S.Sparse(a["sparsity"], a["std"]) if len(shape) == 2 else None
    if name == "dirac_":  # torch's own errors (groups=0, 2.0, shape) come from its code: None
        spec = S.Dirac(a["groups"])
        spec.check_shape(shape)
        return spec
    return None


#: torch calls that draw from torch's RNG: routed to a seed derived from the tensor's name
_RANDOM_METHODS = {
    torch.Tensor.bernoulli_, torch.Tensor.random_, torch.Tensor.exponential_, torch.Tensor.geometric_,
    torch.Tensor.log_normal_, torch.Tensor.cauchy_,
}
_RANDOM_FACTORIES = {
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.rand_like, torch.randn_like, torch.randint_like,
    torch.normal, torch.bernoulli, torch.multinomial, torch.poisson, torch.Tensor.bernoulli, torch.Tensor.multinomial,
}


def _derived_seed(seed: int, path: str) -> int:
    h = hashlib.blake2b(f"{seed}/{path}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)
