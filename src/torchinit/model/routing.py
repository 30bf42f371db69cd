"""Route a model's OWN init code through the keyed engine.

Many models initialize themselves in code we do not own: torch layers'
``reset_parameters``, ``nn.MultiheadAttention._reset_parameters``, Hugging Face's
``_init_weights``, a user's ``net.apply(weights_init)``. Inside
:func:`keyed_init_mode` that code runs unchanged, but every random draw that lands
in a parameter or buffer of the model comes from the keyed engine with the key
``Key(seed).child(qualified_name)``:

* ``torch.nn.init.*`` (``uniform_``, ``normal_``, ``trunc_normal_``,
  ``xavier_*``, ``kaiming_*``, ``orthogonal_``, ``sparse_``, and the deterministic
  ``dirac_``, so that a DTensor gets its shard in one write): temporarily wrapped
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
import inspect
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..core import specs as S
from ..engines.dtensor import is_dtensor
from .audit import AuditReport, InitAudit, RoutingLog
from .writes import (_RANDOM_FACTORIES, _RANDOM_METHODS, _constant_of, _derived_seed, _destination,
                     _is_data_setter, _sampling_spec, _spec_of_init)
from .routing_shards import (ShardWriteError, _box_of, box_regions, check_mode_model, copy_into_dtensor_,
                             dtensor_regions, fill_dtensor_, global_index, index_box, parametrized_outputs,
                             storage_key, whole_tensor_fallback_)

__all__ = ["KeyedInitMode", "keyed_init_mode", "track_init"]


_INIT_RANDOM = ("uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                "kaiming_normal_", "orthogonal_", "sparse_")
#: deterministic, routed so that a DTensor gets its shard from global indices in one write
_INIT_STRUCTURED = ("dirac_",)
_INIT_ROUTED = _INIT_RANDOM + _INIT_STRUCTURED
_TORCH_INIT = {n: getattr(torch.nn.init, n) for n in _INIT_ROUTED}
_SIGS = {n: inspect.signature(f) for n, f in _TORCH_INIT.items()}

@dataclass
class _Target:
    name: str
    base: Tensor
    box: tuple[tuple[int, ...], tuple[int, ...]] | None  # (offsets, sizes) or None when full
    full: bool
    #: DTensor targets: the parts of the base's local tensor written, with their global offsets
    regions: list | None = None
    #: DTensor targets: what was written as an index of the global tensor (None: not known locally)
    gindex: tuple | None = None
    #: the written DTensor does not share the base's storage (a slice that DTensor redistributed):
    #: the write is redirected into the base's local regions
    redirect: bool = False


class KeyedInitMode(TorchFunctionMode):
    """The ``TorchFunctionMode`` behind :func:`keyed_init_mode` (see the module docstring)."""

    def __init__(self, model: nn.Module, seed: int, protect: set[str] | None = None, *, route: bool = True):
        super().__init__()
        #: False: only audit the writes (:func:`track_init`), everything runs on torch's RNG
        self.route = route
        #: names of model tensors the routed code must not change (its writes to them are skipped)
        self.protect = set(protect) if protect else set()
        # the range of Key(seed): checked here, before the routed code runs and writes anything
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be a non-negative int below 2**64, got {seed!r}")
        check_mode_model(model, "keyed_init_mode" if route else "track_init")
        self.model = model
        self.seed = seed
        self.scope = ""
        self.log = RoutingLog()
        self._busy = False
        self._counters: dict[str, int] = {}
        self._computed: dict[int, Any] = {}  # weights computed by parametrizations (parametrized_outputs)
        self._index: dict[int, list[tuple[str, Tensor]]] = {}
        self._by_id: dict[int, tuple[str, Tensor]] = {}  # DTensors by identity (an empty shard has no storage)
        # id(DTensor slice) -> (weakref to the slice, name, base, global index, offsets, sizes); weak: a
        # redistributed slice is a full copy, which the table must not keep alive
        self._views: dict[int, tuple] = {}
        seen: set[int] = set()
        named: list[tuple[str, Tensor]] = []
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            named.append((name, t))
            if t.is_meta:
                continue
            if is_dtensor(t):
                self._by_id[id(t)] = (name, t)
            elif t.numel() == 0:
                continue
            ptr = storage_key(t)
            if ptr is not None:
                self._index.setdefault(ptr, []).append((name, t))
        #: every write into the model's tensors (see :mod:`torchinit.model.audit`)
        self.audit = InitAudit(named, model)
        self._all_ids = {id(t) for _, t in named}

    # -- audit --------------------------------------------------------------------
    def missing(self) -> list[str]:
        """Qualified names of the model's (allocated, non-empty) tensors the code never wrote."""
        return self.audit.missing()

    def report(self) -> AuditReport:
        """Per tensor: what wrote it and how often, conflicting specs, measured vs promised std."""
        return self.audit.report()

    def partial(self) -> dict[str, int]:
        """Tensors the code wrote only in part: qualified name -> elements never written."""
        return self.audit.partial()

    def raise_if_incomplete(self) -> None:
        """Raise ``IncompleteInitError`` naming every tensor the code never wrote or wrote in part."""
        self.audit.raise_if_incomplete()

    def _record(self, target: _Target, how: str, what: Any = None, t: Any = None, args: tuple = ()) -> None:
        self.log.written.add(target.name)
        # w[index] = v writes the part of w that index selects (the audit marks it element by element)
        index = args[1] if how == "__setitem__" and target.full and len(args) == 3 else None
        self.audit.record(target.name, how, what, whole=target.full and how != "__setitem__", base=target.base,
                          view=t if isinstance(t, Tensor) else None, box=target.box, regions=target.regions,
                          index=index)

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
        if not isinstance(t, Tensor) or t.is_meta:
            return None
        if is_dtensor(t):
            return self._attribute_dtensor(t)
        if t.numel() == 0:
            return None
        ptr = storage_key(t)
        for name, base in self._index.get(ptr, ()) if ptr is not None else ():
            if is_dtensor(base):
                continue
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

    def _attribute_dtensor(self, t: Tensor) -> _Target | None:
        hit = self._by_id.get(id(t))
        cands = [hit] if hit is not None and hit[1] is t else []
        ptr = storage_key(t)
        cands += [c for c in self._index.get(ptr, ()) if is_dtensor(c[1])] if ptr is not None else []
        for name, base in cands:
            found = dtensor_regions(t, base)
            if found is not None:
                return _Target(name, base, None, found[1], regions=found[0],
                               gindex=global_index(t, found[0], found[1]))
        view = self._views.get(id(t))
        if view is not None and view[0]() is t:
            _, name, base, gindex, offs, sizes = view
            return _Target(name, base, None, False, regions=box_regions(base, offs, sizes), gindex=gindex,
                           redirect=True)
        return None

    def _note_view(self, t: Tensor, index: Any, res: Any) -> None:
        """Remember where ``t[index]`` of a model DTensor sits globally: slicing a sharded dim
        gives a redistributed copy (torch would lose a write into it); writes into it go to
        the model's shards instead."""
        target = self.attribute(t)
        if target is None or target.regions is None or not target.full or not is_dtensor(res):
            return
        if storage_key(res) is not None and storage_key(res) == storage_key(t):
            return  # a local view: found by its storage
        box = index_box(index, tuple(target.base.shape))
        if box is not None:
            self._views[id(res)] = (weakref.ref(res), target.name, target.base, *box)

    def _redirected_write(self, func, args, kwargs, t: Tensor, target: _Target) -> Tensor:
        """A non-random in-place op on a redistributed slice, applied to the shards it covers."""
        others = [a for a in list(args[1:]) + list(kwargs.values()) if isinstance(a, Tensor)]
        if func is torch.Tensor.copy_ and len(others) == 1:
            src = others[0]
            if is_dtensor(src):
                if not all(type(p).__name__ == "Replicate" for p in src.placements):
                    raise ShardWriteError(f"{target.name!r}: copy_ of a sharded DTensor into a slice of it")
                src = src._local_tensor
            copy_into_dtensor_(target.base, target.regions, target.gindex, t, src, target.name)
            return t
        if others:
            raise ShardWriteError(
                f"{target.name!r}: {getattr(func, '__name__', func)} with tensor arguments on a slice across "
                "sharded dimensions cannot be applied to the shards; write the slice with fill_/zero_/copy_ or "
                "a torch.nn.init function")
        local = target.base._local_tensor
        for sl, _ in target.regions:
            func(local[sl], *args[1:], **kwargs)
        return t

    def _setitem(self, args, target: _Target) -> None:
        """``w[index] = value`` on a model DTensor: each rank writes its part of the box (DTensor
        would redistribute a slice across a sharded dim)."""
        t, index, value = args
        box = index_box(index, tuple(target.base.shape))
        if box is None:
            raise ShardWriteError(f"{target.name!r}: w[index] = value on a sharded tensor supports ints and step-1 "
                                  f"slices only, got {index!r}")
        gindex, offs, sizes = box
        regions = box_regions(target.base, offs, sizes)
        if isinstance(value, Tensor) and is_dtensor(value):
            if not all(type(p).__name__ == "Replicate" for p in value.placements):
                raise ShardWriteError(f"{target.name!r}: w[index] = a sharded DTensor")
            value = value._local_tensor
        if not isinstance(value, Tensor):
            value = torch.tensor(value)
        shape = tuple(n for i, n in zip(gindex, sizes) if not isinstance(i, int))
        copy_into_dtensor_(target.base, regions, gindex, shape, value, target.name)

    def _outside(self, t: Any, what: str, scope: str = "") -> bool:
        """A random draw into a tensor that is not the model's: refused (before it writes) for
        DTensors (torch's per-rank RNG would make them depend on the sharding) and Parameters
        (another model's weights would silently get unkeyed values). True: a sharded weight a
        parametrization computed, whose write is lost as in one process: skipped, counted."""
        if not isinstance(t, Tensor) or t.numel() == 0 or id(t) in self._all_ids:
            return False  # nothing to write, or the model's own (an empty tensor is in no index)
        if is_dtensor(t) and (ref := self._computed.get(id(t))) is not None and ref() is t:
            if self.route:
                self._fallback_seed(scope)  # the draw one process makes: the scope's counter in step
            return True
        if is_dtensor(t) or isinstance(t, nn.Parameter):
            kind = "DTensor" if is_dtensor(t) else "Parameter"
            mode = "keyed_init_mode" if self.route else "track_init"
            raise ShardWriteError(
                f"{mode}: {what} writes into a {kind} of shape {tuple(t.shape)} that is not a parameter or buffer of "
                f"the model given to {mode} (nor a view of one whose place is known on this rank); pass the model "
                f"that owns it, or initialize it outside the mode")
        return False

    def _fallback_on(self, scope: str, func: Callable, args, kwargs, t: Any, target: _Target | None):
        """Run ``func`` unkeyed (seeded fallback); a DTensor target is computed whole on every rank."""
        if target is None:
            if self._outside(t, getattr(func, "__name__", "this call"), scope):
                return t
            return self._run_fallback(scope, func, args, kwargs)
        if target.regions is None:
            return self._run_fallback(scope, func, args, kwargs)

        def run(x):
            a2 = [x if a is t else a for a in args]
            k2 = {k: (x if v is t else v) for k, v in kwargs.items()}
            return self._run_fallback(scope, func, a2, k2)

        run.__name__ = getattr(func, "__name__", "init code")
        if not whole_tensor_fallback_(t, target.base, target.regions, target.gindex, target.name, run):
            self._fallback_seed(scope)  # nothing held here: keep the scope's counter in step with other ranks
        return t

    # -- filling ------------------------------------------------------------------
    def _fill(self, t: Tensor, spec: S.Spec, target: _Target, fallback: Callable[[], Any]) -> Tensor:
        from ..engines.keyed import fill_ as keyed_fill_

        key = self.key(target.name)
        with torch.no_grad():
            if target.regions is not None and (target.full or not spec.needs_whole_tensor):
                spec = spec.checked()
                fill_dtensor_(target.base, target.regions, spec, key)
                if target.full:
                    self.log.specs.setdefault(target.name, []).append(spec)
                else:
                    self.log.regions[target.name] = self.log.regions.get(target.name, 0) + 1
                return t
            if target.regions is not None:
                return fallback()
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
        if target is None:
            if is_dtensor(t) and t._local_tensor.numel() == 0:
                return t  # an alias of an empty shard: nothing to write on this rank
            if name in _INIT_STRUCTURED:  # no RNG: torch's code, no fallback seed used
                return original(*args, **kwargs)
            if self._outside(t, f"torch.nn.init.{name}", scope):
                return t
            return self._run_fallback(scope, original, args, kwargs) if self.route else original(*args, **kwargs)
        if target.name in self.protect:
            return t
        try:
            spec = _spec_of_init(name, tuple(t.shape), a)
        except (TypeError, ValueError):
            spec = None
        self._record(target, name, spec, t)
        if not self.route:
            return original(*args, **kwargs)

        def fallback():
            return self._fallback_on(scope, original, args, kwargs, t, target)

        if spec is None:
            return fallback()  # let torch raise its own error / handle the edge case
        if not spec.random and not (target.full and target.regions is not None):
            return self._structured_view(t, target, original, args, kwargs)
        return self._fill(t, spec, target, fallback)

    def _structured_view(self, t: Tensor, target: _Target, original: Callable, args, kwargs) -> Tensor:
        """``dirac_`` into a plain tensor or into a view: torch's values for the view's own
        shape (not a box of the whole tensor's); no RNG, so no fallback seed is used. A view
        of a DTensor: every rank computes it on a full-size temporary and keeps its part."""
        if target.regions is None:
            return original(*args, **kwargs)

        def run(x):
            return original(*[x if a is t else a for a in args], **{k: (x if v is t else v) for k, v in kwargs.items()})

        whole_tensor_fallback_(t, target.base, target.regions, target.gindex, target.name, run)
        return t

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
        if name == "__getitem__" and len(args) == 2 and is_dtensor(args[0]):
            res = func(*args, **kwargs)
            self._note_view(args[0], args[1], res)
            return res
        dest = _destination(func, args, kwargs)
        target = None
        sampling = func is torch.Tensor.uniform_ or func is torch.Tensor.normal_
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
            for t, f in zip(tensors, attributed):
                if f is None and is_dtensor(t) and not _is_data_setter(func):
                    if t._local_tensor.numel() == 0:
                        return skipped  # an alias of an empty shard: nothing to write on this rank
                    self._outside(t, name or "this write")
                elif f is None and (func in _RANDOM_METHODS or sampling):
                    self._outside(t, name or "this draw")
            spec_now = None if sampling else _constant_of(name, args, kwargs)
            for t, f in zip(tensors, attributed):
                if f is not None and not sampling:
                    self._record(f, name or "write", spec_now, t, args)
            target = attributed[0]  # once: the sampling branches below reuse it
        if not self.route:
            if sampling and target is not None:
                self._record(target, name, _sampling_spec(func, args, kwargs), dest[0][0])
            return func(*args, **kwargs)
        if target is not None and target.regions is not None:
            t0 = dest[0][0]
            if target.redirect and not sampling and func not in _RANDOM_METHODS:
                return self._redirected_write(func, args, kwargs, t0, target)
            if name == "__setitem__" and target.full and len(args) == 3:
                return self._setitem(args, target)
            if func is torch.Tensor.copy_ and len(args) > 1 and isinstance(args[1], Tensor) and not is_dtensor(args[1]):
                copy_into_dtensor_(target.base, target.regions, target.gindex, t0, args[1], target.name)
                return t0
            if func is torch.eye and target.full and t0.dim() == 2:  # torch.nn.init.eye_ (out=)
                fill_dtensor_(target.base, target.regions, S.Eye(), self.key(target.name))
                return t0
        if sampling:
            t = dest[0][0] if dest is not None else (args[0] if args else None)
            scope = target.name if target is not None else (self.scope or "<model>")

            def fallback():
                return self._fallback_on(scope, func, args, kwargs, t, target)

            spec = _sampling_spec(func, args, kwargs)
            if target is not None:
                self._record(target, name, spec, t)
            if target is None or not isinstance(t, Tensor) or spec is None:
                return fallback()
            return self._fill(t, spec, target, fallback)
        if func in _RANDOM_METHODS:
            # an in-place method's target names the scope when it is the model's
            scope = target.name if target is not None else (self.scope or "<model>")
            return self._fallback_on(scope, func, args, kwargs, dest[0][0] if dest else None, target)
        if func in _RANDOM_FACTORIES:
            for a in list(args) + list(kwargs.values()):
                if is_dtensor(a):
                    raise ShardWriteError(
                        f"keyed_init_mode: {name}() on a DTensor of shape {tuple(a.shape)}: torch's DTensor RNG gives "
                        f"values that depend on the sharding; draw into the model's tensor itself (p.normal_(), "
                        f"torch.nn.init.*) or build the values from plain tensors")
            # a factory's out= names the scope when it is the model's
            scope = target.name if target is not None else (self.scope or "<model>")
            return self._run_fallback(scope, func, args, kwargs)
        return func(*args, **kwargs)


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
    with _patched_init(mode), parametrized_outputs(model, mode._computed), mode, torch.no_grad():
        yield mode


@contextlib.contextmanager
def _patched_init(mode: KeyedInitMode) -> Iterator[None]:
    """``torch.nn.init``'s random functions (and transformers' table of them) go through ``mode``."""
    patched: list[tuple[Any, str, Any]] = []
    try:
        for name in _INIT_ROUTED:
            cur = getattr(torch.nn.init, name)
            if not getattr(cur, "__torchinit_routed__", False):
                patched.append((torch.nn.init, name, cur))
                setattr(torch.nn.init, name, _wrap_init(mode, name, _TORCH_INIT[name]))
        hf = sys.modules.get("transformers.initialization")
        table = getattr(hf, "TORCH_INIT_FUNCTIONS", None) if hf is not None else None
        if isinstance(table, dict):
            for name in _INIT_ROUTED:
                if name in table:
                    patched.append((table, name, table[name]))
                    table[name] = _wrap_init(mode, name, _TORCH_INIT[name])
        yield
    finally:
        for obj, name, orig in reversed(patched):
            if isinstance(obj, dict):
                obj[name] = orig
            else:
                setattr(obj, name, orig)


@contextlib.contextmanager
def track_init(model: nn.Module) -> Iterator[KeyedInitMode]:
    """Audit init code that runs on torch's own RNG: nothing is keyed, no value changes.

    >>> import torch, torchinit
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    >>> with torchinit.track_init(net) as audit:
    ...     net[0].reset_parameters()
    >>> audit.missing()
    ['1.weight', '1.bias']

    Every write into ``model``'s tensors is recorded as under :func:`keyed_init_mode`
    (``missing()``, ``report()``, ``raise_if_incomplete()``; see
    :mod:`torchinit.model.audit`), on sharded models too (each rank its shards, global
    names). A random draw into a Parameter or DTensor that is not ``model``'s raises
    before it writes. Not thread-safe (``torch.nn.init`` is patched meanwhile).
    """
    mode = KeyedInitMode(model, 0, route=False)
    with _patched_init(mode), parametrized_outputs(model, mode._computed), mode:
        yield mode
