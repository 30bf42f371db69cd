"""The init audit: which of a model's tensors its init code wrote, how, and how often.

:func:`torchinit.keyed_init_mode` and :func:`torchinit.track_init` record every write
the code makes into the model's parameters and buffers (draws, fills, copies, other
in-place ops, through ``.data`` or views). After the code ran:

* ``mode.missing()``: qualified names of tensors never written. After ``to_empty()``
  they hold whatever was in memory (the NaN-loss bug class of a forgotten tensor).
* ``mode.report()``: per tensor, each distinct write (function, spec or value) and
  how many times it happened; tensors written more than once with DIFFERENT specs
  are flagged (the later write silently replaced the earlier one); the std the last
  whole-tensor write promised next to the std measured in the tensor.
* ``mode.partial()``: tensors written only in part (``w[:4].zero_()`` and nothing else),
  with how many of their elements no write covered.
* ``mode.raise_if_incomplete()``: ``RuntimeError`` naming every missing or partial tensor.

Coverage is tracked per element: a write that covers the whole tensor costs nothing; the
first partial write allocates a boolean mask the size of the tensor (its local shard on
a sharded model), and each partial write marks its box, index or strided view in it.

On sharded models each rank audits its own shards (no communication); names are the
global qualified names and the measured std is that of the rank's local shard.
Zero-element tensors, tensors still on the meta device and tensors the code replaced by
assignment (``self.freqs_cis = self._precompute_freqs_cis()``) hold no garbage: they are
never reported missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core import specs as S
from ..core.gate_specs import OrthogonalPerGate, gate_block_std
from .routing_shards import box_regions, index_box

__all__ = ["InitAudit", "TensorAudit", "AuditReport", "IncompleteInitError", "RoutingLog"]


@dataclass
class RoutingLog:
    """What a routed run did: per tensor name, the specs drawn for it (whole-tensor
    writes), the names written through region/fallback draws, and fallback counts."""

    specs: dict[str, list[S.Spec]] = field(default_factory=dict)
    regions: dict[str, int] = field(default_factory=dict)
    fallback: dict[str, int] = field(default_factory=dict)
    #: names of the model tensors the routed code wrote into (draws, fills, copies, in-place ops)
    written: set[str] = field(default_factory=set)


class IncompleteInitError(RuntimeError):
    """Init code left some of the model's tensors unwritten."""


@dataclass
class TensorAudit:
    """What the init code did to one tensor."""

    name: str
    #: each distinct write as (function, spec description or value) -> times it happened, in first-seen order
    writes: dict[tuple[str, str], int] = field(default_factory=dict)
    #: the spec of the last write that covered the whole tensor (None: not a spec write)
    spec: S.Spec | None = None
    #: distinct specs of whole-tensor writes, in order
    specs: list[S.Spec] = field(default_factory=list)
    promised_std: float | None = None
    measured_std: float | None = None
    #: True when the measured std is that of this rank's local shard of a DTensor
    local: bool = False
    #: elements (of this rank's shard, on a sharded model) that no write covered
    unwritten: int = 0

    @property
    def count(self) -> int:
        return sum(self.writes.values())

    @property
    def conflicting(self) -> bool:
        """Written more than once with different specs (the last one won)."""
        return len(self.specs) > 1


@dataclass
class AuditReport:
    """The audit's result: one :class:`TensorAudit` per tensor, ``missing`` names."""

    tensors: list[TensorAudit]
    missing: list[str]
    #: name -> number of elements never written, for tensors written only in part
    partial: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> TensorAudit:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def conflicting(self) -> list[str]:
        return [t.name for t in self.tensors if t.conflicting]

    def __str__(self) -> str:
        lines = [f"init audit: {len(self.tensors)} tensors, {len(self.missing)} never written, "
                 f"{len(self.partial)} written in part, {len(self.conflicting)} written with conflicting specs"]
        for t in self.tensors:
            if t.name in self.missing:
                lines.append(f"  MISSING  {t.name}: never written (holds uninitialized memory)")
                continue
            ws = "; ".join(f"{fn}({what}) x{n}" if n > 1 else f"{fn}({what})" for (fn, what), n in t.writes.items())
            std = ""
            if t.promised_std is not None and t.measured_std is not None:
                std = f"  std {t.measured_std:.4g}{' (local shard)' if t.local else ''} vs promised {t.promised_std:.4g}"
            flag = "CONFLICT " if t.conflicting else "ok       "
            if t.name in self.partial:
                flag = "PARTIAL  "
                ws += f"; {self.partial[t.name]} element(s) never written (hold uninitialized memory)"
            lines.append(f"  {flag}{t.name}: {ws}{std}")
        return "\n".join(lines)


def _describe(what: Any) -> str:
    if isinstance(what, S.Spec):
        return what.describe()
    return "" if what is None else str(what)


class InitAudit:
    """Records writes per tensor name (the mode calls :meth:`record`)."""

    def __init__(self, tensors: list[tuple[str, Tensor]], model: Any = None):
        #: (canonical name, tensor) for every distinct tensor of the model, in model order
        self.tensors = tensors
        self.model = model
        self.entries: dict[str, TensorAudit] = {}
        #: name -> bool mask of the elements written so far (the local shard's shape); None: all of them
        self._covered: dict[str, Tensor | None] = {}

    def _replaced(self) -> set[str]:
        """Names whose tensor the code replaced by assignment (``self.freqs = compute()``,
        ``module.weight = nn.Parameter(...)``): a new, computed tensor, not garbage."""
        if self.model is None:
            return set()
        now = dict(self.model.named_parameters(remove_duplicate=False))
        now.update(self.model.named_buffers(remove_duplicate=False))
        return {n for n, t in self.tensors if n in now and now[n] is not t}

    def record(self, name: str, how: str, what: Any = None, *, whole: bool = True, base: Tensor | None = None,
               view: Tensor | None = None, box: tuple | None = None, regions: list | None = None,
               index: Any = None) -> None:
        """One write into tensor ``name``. ``whole=False``: it wrote the part of ``base`` that
        ``index`` (``base[index] = v``), else ``regions`` (a DTensor's local slices), else ``box``
        (offsets, sizes), else the strided ``view`` of ``base``'s storage selects."""
        e = self.entries.setdefault(name, TensorAudit(name))
        if whole or base is None:
            self._covered[name] = None
        elif name not in self._covered or self._covered[name] is not None:
            local = base._local_tensor if regions is not None else base
            mask = self._covered.get(name)
            if mask is None:
                mask = torch.zeros(tuple(local.shape), dtype=torch.bool, device=local.device)
            _mark(mask, base, local, view, box, regions, index)  # O(part): whether all is covered is asked later
            self._covered[name] = mask
        key = (how, _describe(what))
        e.writes[key] = e.writes.get(key, 0) + 1
        spec = what if isinstance(what, S.Spec) else None
        if whole:
            e.spec = spec
            if spec is not None and spec not in e.specs:
                e.specs.append(spec)

    def missing(self) -> list[str]:
        """Qualified names of the tensors no recorded write touched (allocated, non-empty ones)."""
        replaced = self._replaced()
        return [n for n, t in self.tensors
                if n not in self.entries and n not in replaced and not t.is_meta and t.numel() > 0]

    def partial(self) -> dict[str, int]:
        """Tensors written only in part: qualified name -> number of elements no write covered
        (on a sharded model: of this rank's shard)."""
        replaced = self._replaced()
        out = {}
        for n, m in self._covered.items():
            if m is not None and n not in replaced:
                left = int(m.numel() - m.sum())
                if left:
                    out[n] = left
                else:
                    self._covered[n] = None  # covered after all: free the mask
        return out

    def raise_if_incomplete(self) -> None:
        missing, partial = self.missing(), self.partial()
        if missing or partial:
            what = []
            if missing:
                what.append(f"left {len(missing)} tensor(s) unwritten: {', '.join(map(repr, missing))}")
            if partial:
                what.append(f"wrote {len(partial)} tensor(s) only in part: "
                            + ", ".join(f"{n!r} ({k} element(s) unwritten)" for n, k in partial.items()))
            raise IncompleteInitError(
                f"init code {'; '.join(what)}; after to_empty() unwritten elements hold uninitialized memory. "
                "Initialize them in the model's init code (or with "
                "torchinit.init_model(model, policy, seed=..., only=...))")

    def report(self) -> AuditReport:
        out = []
        replaced = self._replaced()
        partial = self.partial()
        for name, t in self.tensors:
            e = self.entries.get(name) or TensorAudit(name)
            if name in replaced:
                e.writes[("assigned", "a new tensor")] = 1
            e.promised_std = _promised_std(e.spec, t)
            e.measured_std, e.local = _measured_std(t) if e.promised_std is not None else (None, False)
            e.unwritten = partial.get(name, 0)
            out.append(e)
        return AuditReport(out, self.missing(), partial)


def _extent(t: Tensor) -> int:
    """Storage elements from ``t``'s first to its last element, inclusive."""
    return 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) if t.numel() else 0


def _mark(mask: Tensor, base: Tensor, local: Tensor, view: Tensor | None, box: tuple | None,
          regions: list | None, index: Any) -> None:
    """Set the elements of ``mask`` (shaped like ``local``) that a partial write covered."""
    if regions is not None:  # a DTensor: the local slices written
        if index is not None:
            found = index_box(index, tuple(base.shape))
            if found is None:  # an index the routed write refuses on shards; track_init lets torch run it
                mask.fill_(True)
                return
            regions = box_regions(base, found[1], found[2])
        for sl, _ in regions:
            mask[sl] = True
    elif index is not None:  # base[index] = value: the same index on the mask selects the same elements
        try:
            mask[index] = True
        except (IndexError, RuntimeError, TypeError):  # an index only base accepts: count it whole, as before
            mask.fill_(True)
    elif box is not None:
        offsets, sizes = box
        mask[tuple(slice(o, o + n) for o, n in zip(offsets, sizes))] = True
    elif view is not None and view.numel():  # any other view of base's storage: mark it in a storage-sized scratch
        off = view.storage_offset() - local.storage_offset()
        scratch = torch.zeros(max(_extent(local), off + _extent(view)), dtype=torch.bool, device=mask.device)
        scratch.as_strided(tuple(view.shape), view.stride(), off).fill_(True)
        mask |= scratch.as_strided(tuple(local.shape), local.stride(), 0)


def _promised_std(spec: S.Spec | None, t: Tensor) -> float | None:
    if spec is None:
        return None
    if isinstance(spec, S.Orthogonal) and t.dim() >= 2:  # unit-norm rows or columns: std = gain / sqrt(max dim)
        rows, cols = t.shape[0], math.prod(t.shape[1:])
        return float(spec.gain) / math.sqrt(max(rows, cols)) if rows and cols else None
    if isinstance(spec, OrthogonalPerGate):
        return gate_block_std(spec, tuple(t.shape))
    std = spec.std
    return float(std) if std is not None else None


def _measured_std(t: Tensor) -> tuple[float | None, bool]:
    from ..engines.dtensor import is_dtensor

    local = is_dtensor(t)
    x = t._local_tensor if local else t
    if x.is_meta or x.numel() < 2:
        return None, local
    with torch.no_grad():
        return float(x.detach().double().std()), local
