"""Route a model's OWN init code through the keyed engine.

Many models initialize themselves in code we do not own: torch layers'
``reset_parameters``, ``nn.MultiheadAttention._reset_parameters``, Hugging Face's
``_init_weights``, a user's ``net.apply(weights_init)``. Inside
:func:`keyed_init_mode` that code runs unchanged, but every random draw that lands
in a parameter or buffer of the model comes from the keyed engine with the key
``Key(seed).child(qualified_name)``:

* ``torch.nn.init.*`` (``uniform_``, ``normal_``, ``trunc_normal_``,
  ``xavier_*``, ``kaiming_*``, ``orthogonal_``, ``sparse_``): temporarily wrapped
  in ``torch.nn.init`` and in ``transformers.initialization`` (and, for the ones
  that dispatch to torch-function modes, also caught by the ``TorchFunctionMode``
  when called through a reference taken earlier); the spec is computed from the
  call's arguments exactly as torch computes it;
* in-place sampling methods of tensors (``t.uniform_()``, ``t.normal_()``),
  including writes through ``.data`` and through views: the target is found by
  its storage (``untyped_storage().data_ptr()``), so ``p.data``, ``p.detach()``
  and ``p[3:5]`` are all attributed to ``p``.

Every write into a model tensor is recorded (``RoutingLog.written``) and, for the names in
``protect``, skipped, whatever form the call takes: in-place methods and functions
(``p.fill_(0)``, ``p[0] = 1``, ``torch.fill_(input=p, value=0)``), ``torch.nn.init``
functions given the tensor by keyword (``constant_(tensor=p, val=0)``, which torch hands
the mode with no positional argument), ``inplace=True`` functionals, ``out=p`` and
``p.data = x``.

A write to the WHOLE tensor fills it exactly as ``torchinit.fill_(p, spec,
key=Key(seed).child(name))`` would: the model's own init and a policy with the
same spec give bitwise the same values. A write to a rectangular box of it (basic
slicing, ``p[i]``, ``p[:, :k]``) gets the values of that box of the whole keyed
tensor.

Deterministic fallback: every other random operation (random factories such as
``torch.randn``, the temporaries of ``orthogonal_``, ``bernoulli_``, non-box views,
tensors outside the model) runs with torch's own algorithm on the CPU generator
seeded with ``blake2b(f"{seed}/{scope}/~fallback/{n}")``, where ``scope`` is the
qualified name of the target tensor if there is one, else of the module whose
code is running, and ``n`` counts such calls in that scope. The global RNG state
is saved and restored around it, so routed code never consumes the global RNG.
Results therefore depend only on (seed, names, the code), not on other modules.
Not thread-safe: ``torch.nn.init`` attributes are patched for the duration.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..core import specs as S

__all__ = ["KeyedInitMode", "keyed_init_mode"]


_INIT_RANDOM = ("uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                "kaiming_normal_", "orthogonal_", "sparse_")
_TORCH_INIT = {n: getattr(torch.nn.init, n) for n in _INIT_RANDOM}
_SIGS = {n: inspect.signature(f) for n, f in _TORCH_INIT.items()}

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
    return None


@dataclass
class _Target:
    name: str
    base: Tensor
    box: tuple[tuple[int, ...], tuple[int, ...]] | None  # (offsets, sizes) or None when full
    full: bool


@dataclass
class RoutingLog:
    """What a routed run did: per tensor name, the specs drawn for it (whole-tensor
    writes), the names written through region/fallback draws, and fallback counts."""

    specs: dict[str, list[S.Spec]] = field(default_factory=dict)
    regions: dict[str, int] = field(default_factory=dict)
    fallback: dict[str, int] = field(default_factory=dict)
    #: names of the model tensors the routed code wrote into (draws, fills, copies, in-place ops)
    written: set[str] = field(default_factory=set)


class KeyedInitMode(TorchFunctionMode):
    """The ``TorchFunctionMode`` behind :func:`keyed_init_mode` (see the module docstring)."""

    def __init__(self, model: nn.Module, seed: int, protect: set[str] | None = None):
        super().__init__()
        #: names of model tensors the routed code must not change (its writes to them are skipped)
        self.protect = set(protect) if protect else set()
        # the range of Key(seed): checked here, before the routed code runs and writes anything
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be a non-negative int below 2**64, got {seed!r}")
        self.model = model
        self.seed = seed
        self.scope = ""
        self.log = RoutingLog()
        self._busy = False
        self._counters: dict[str, int] = {}
        self._index: dict[int, list[tuple[str, Tensor]]] = {}
        seen: set[int] = set()
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t is None or id(t) in seen or t.is_meta or t.numel() == 0:
                continue
            seen.add(id(t))
            self._index.setdefault(t.untyped_storage().data_ptr(), []).append((name, t))

    # -- keys -------------------------------------------------------------------
    def key(self, name: str):
        from ..engines.keyed import Key

        return Key(self.seed).child(name)

    def _fallback_seed(self, scope: str) -> int:
        n = self._counters.get(scope, 0)
        self._counters[scope] = n + 1
        self.log.fallback[scope] = n + 1
        return _derived_seed(self.seed, f"{scope}/~fallback/{n}")

    def _run_fallback(self, scope: str, func: Callable, args, kwargs):
        devices = set()
        for a in list(args) + list(kwargs.values()):
            dev = a.device if isinstance(a, Tensor) else (a if isinstance(a, torch.device) else None)
            if isinstance(a, str) and a.startswith("cuda"):
                dev = torch.device(a)
            if dev is not None and dev.type == "cuda":
                devices.add(dev.index if dev.index is not None else torch.cuda.current_device())
        # fork the CPU generator and those of the CUDA devices involved: the global state is restored
        with torch.random.fork_rng(devices=sorted(devices)):
            seed = self._fallback_seed(scope)
            torch.random.default_generator.manual_seed(seed)
            for i in devices:
                torch.cuda.default_generators[i].manual_seed(seed)
            return func(*args, **kwargs)

    # -- attribution --------------------------------------------------------------
    def attribute(self, t: Any) -> _Target | None:
        """The model tensor that ``t`` (a parameter, its ``.data``, or a view) writes into."""
        if not isinstance(t, Tensor) or t.is_meta or t.numel() == 0:
            return None
        try:
            ptr = t.untyped_storage().data_ptr()
        except Exception:  # tensor subclasses without a plain storage (DTensor, fakes, ...)
            return None
        for name, base in self._index.get(ptr, ()):
            if base.dtype != t.dtype:
                continue
            if (t.storage_offset() == base.storage_offset() and tuple(t.shape) == tuple(base.shape)
                    and t.stride() == base.stride()):
                return _Target(name, base, None, True)
            box = _box_of(t, base)
            if box is not None:
                return _Target(name, base, box, False)
            lo, hi = base.storage_offset(), base.storage_offset() + base.numel()
            if lo <= t.storage_offset() < hi:
                return _Target(name, base, None, False)
        return None

    # -- filling ------------------------------------------------------------------
    def _fill(self, t: Tensor, spec: S.Spec, target: _Target, fallback: Callable[[], Any]) -> Tensor:
        from ..engines.keyed import fill_ as keyed_fill_

        key = self.key(target.name)
        with torch.no_grad():
            if target.full:
                spec = spec.checked()
                spec.check_shape(tuple(t.shape))
                keyed_fill_(t, spec, key)
                self.log.specs.setdefault(target.name, []).append(spec)
                return t
            if target.box is not None and not spec.needs_whole_tensor:
                from ..engines.keyed import sample

                offsets, sizes = target.box
                vals = sample(spec.checked(), key, tuple(target.base.shape), offsets=offsets, sizes=sizes,
                              dtype=t.dtype, device=t.device)
                t.copy_(vals.reshape(t.shape))
                self.log.regions[target.name] = self.log.regions.get(target.name, 0) + 1
                return t
        return fallback()

    def handle_init(self, name: str, original: Callable, args: tuple, kwargs: dict) -> Tensor:
        """Route one ``torch.nn.init.<name>(...)`` call."""
        bound = _SIGS[name].bind(*args, **kwargs)
        bound.apply_defaults()
        a = dict(bound.arguments)
        t = a["tensor"]
        if isinstance(t, Tensor) and t.is_meta:
            return t  # nothing to write (see _dispatch)
        target = self.attribute(t)
        scope = target.name if target is not None else (self.scope or "<model>")

        def fallback():
            return self._run_fallback(scope, original, args, kwargs)

        if target is None:
            return fallback()
        if target.name in self.protect:
            return t
        self.log.written.add(target.name)
        try:
            spec = _spec_of_init(name, tuple(t.shape), a)
        except (TypeError, ValueError):
            spec = None
        if spec is None:
            return fallback()  # let torch raise its own error / handle the edge case
        return self._fill(t, spec, target, fallback)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._busy:
            return func(*args, **kwargs)
        self._busy = True
        try:
            return self._dispatch(func, args, kwargs)
        finally:
            self._busy = False

    def _dispatch(self, func, args, kwargs):
        name = getattr(func, "__name__", None)
        if name in _SIGS and (getattr(func, "__torchinit_routed__", False)
                              or getattr(func, "__module__", "") in ("torch.nn.init", "transformers.initialization")):
            # torch.nn.init's own functions hand the mode the function they find under their name
            # in torch.nn.init at call time, which is our wrapper while the mode is on (a call
            # through a reference taken before it was patched ends up here)
            return self.handle_init(name, _TORCH_INIT[name], args, kwargs)  # meta, protect, written: there
        dest = _destination(func, args, kwargs)
        target = None
        if dest is not None:
            tensors, skipped = dest
            if not _is_data_setter(func) and any(t.is_meta for t in tensors):
                # a write into a meta tensor (one that materialize allocates in a later batch)
                # stores nothing; skipping it avoids torch's slow meta decompositions and the
                # fallback RNG
                return skipped
            attributed = [self.attribute(t) for t in tensors]
            found = [f for f in attributed if f is not None]
            if any(f.name in self.protect for f in found):
                return skipped
            for f in found:
                self.log.written.add(f.name)
            target = attributed[0]  # once: the sampling branches below reuse it
        if func is torch.Tensor.uniform_ or func is torch.Tensor.normal_:
            t = dest[0][0] if dest is not None else (args[0] if args else None)
            scope = target.name if target is not None else (self.scope or "<model>")

            def fallback():
                return self._run_fallback(scope, func, args, kwargs)

            if target is None or not isinstance(t, Tensor):
                return fallback()
            rest = list(args[1:])
            try:
                if func is torch.Tensor.uniform_:
                    lo = rest[0] if len(rest) > 0 else kwargs.get("from", 0.0)
                    hi = rest[1] if len(rest) > 1 else kwargs.get("to", 1.0)
                    spec = S.Uniform(float(lo), float(hi))
                else:
                    mean = rest[0] if len(rest) > 0 else kwargs.get("mean", 0.0)
                    std = rest[1] if len(rest) > 1 else kwargs.get("std", 1.0)
                    spec = S.Normal(float(mean), float(std))
            except (TypeError, ValueError):
                return fallback()
            return self._fill(t, spec, target, fallback)
        if func in _RANDOM_METHODS or func in _RANDOM_FACTORIES:
            # an in-place method's target (or a factory's out=) names the scope when it is the model's
            scope = target.name if target is not None else (self.scope or "<model>")
            return self._run_fallback(scope, func, args, kwargs)
        return func(*args, **kwargs)


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


def _box_of(t: Tensor, base: Tensor) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(offsets, sizes) when ``t`` is a rectangular box of contiguous ``base``, else None."""
    if not base.is_contiguous() or base.dim() == 0:
        return None
    delta = t.storage_offset() - base.storage_offset()
    if delta < 0 or delta >= base.numel():
        return None
    shape, strides = tuple(base.shape), base.stride()
    idx = []
    rem = delta
    for st in strides:
        q, rem = divmod(rem, st) if st > 0 else (0, rem)
        idx.append(q)
    if rem != 0 or any(i >= s for i, s in zip(idx, shape)):
        return None
    sizes = [1] * len(shape)
    d = 0
    for size, st in zip(t.shape, t.stride()):
        if size == 1:
            continue
        while d < len(shape) and not (strides[d] == st and shape[d] > 1):
            d += 1
        if d == len(shape) or idx[d] + size > shape[d]:
            return None
        sizes[d] = size
        d += 1
    if math.prod(sizes) != t.numel():
        return None
    return tuple(idx), tuple(sizes)


def _wrap_init(mode: KeyedInitMode, name: str, original: Callable) -> Callable:
    def routed(*args, **kwargs):
        if mode._busy:
            return original(*args, **kwargs)
        mode._busy = True
        try:
            return mode.handle_init(name, original, args, kwargs)
        finally:
            mode._busy = False

    routed.__name__ = name
    routed.__wrapped__ = original
    routed.__torchinit_routed__ = True
    return routed


@contextlib.contextmanager
def keyed_init_mode(model: nn.Module, seed: int, *, protect: set[str] | None = None) -> Iterator[KeyedInitMode]:
    """Run init code with every random draw into ``model``'s tensors keyed by name.

    >>> import torch, torchinit
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> def weights_init(m):
    ...     if isinstance(m, torch.nn.Linear):
    ...         torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    ...         torch.nn.init.zeros_(m.bias)
    >>> with torchinit.keyed_init_mode(net, seed=0):
    ...     _ = net.apply(weights_init)

    The same seed gives the same weights whatever the global RNG state, and a
    layer's values depend only on its name (see the module docstring).
    ``protect``: qualified names of tensors the code must leave alone (in-place
    writes to them, random or not, are skipped).
    """
    mode = KeyedInitMode(model, seed, protect)
    patched: list[tuple[Any, str, Any]] = []
    try:
        for name in _INIT_RANDOM:
            cur = getattr(torch.nn.init, name)
            if not getattr(cur, "__torchinit_routed__", False):
                patched.append((torch.nn.init, name, cur))
                setattr(torch.nn.init, name, _wrap_init(mode, name, _TORCH_INIT[name]))
        hf = sys.modules.get("transformers.initialization")
        table = getattr(hf, "TORCH_INIT_FUNCTIONS", None) if hf is not None else None
        if isinstance(table, dict):
            for name in _INIT_RANDOM:
                if name in table:
                    patched.append((table, name, table[name]))
                    table[name] = _wrap_init(mode, name, _TORCH_INIT[name])
        with mode, torch.no_grad():
            yield mode
    finally:
        for obj, name, orig in reversed(patched):
            if isinstance(obj, dict):
                obj[name] = orig
            else:
                setattr(obj, name, orig)
