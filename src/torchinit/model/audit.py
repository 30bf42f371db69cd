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
* ``mode.raise_if_incomplete()``: ``RuntimeError`` naming every missing tensor.

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

__all__ = ["InitAudit", "TensorAudit", "AuditReport", "IncompleteInitError"]


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
                 f"{len(self.conflicting)} written with conflicting specs"]
        for t in self.tensors:
            if t.name in self.missing:
                lines.append(f"  MISSING  {t.name}: never written (holds uninitialized memory)")
                continue
            ws = "; ".join(f"{fn}({what}) x{n}" if n > 1 else f"{fn}({what})" for (fn, what), n in t.writes.items())
            std = ""
            if t.promised_std is not None and t.measured_std is not None:
                std = f"  std {t.measured_std:.4g}{' (local shard)' if t.local else ''} vs promised {t.promised_std:.4g}"
            flag = "CONFLICT " if t.conflicting else "ok       "
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

    def _replaced(self) -> set[str]:
        """Names whose tensor the code replaced by assignment (``self.freqs = compute()``,
        ``module.weight = nn.Parameter(...)``): a new, computed tensor, not garbage."""
        if self.model is None:
            return set()
        now = dict(self.model.named_parameters(remove_duplicate=False))
        now.update(self.model.named_buffers(remove_duplicate=False))
        return {n for n, t in self.tensors if n in now and now[n] is not t}

    def record(self, name: str, how: str, what: Any = None, *, whole: bool = True) -> None:
        e = self.entries.setdefault(name, TensorAudit(name))
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

    def raise_if_incomplete(self) -> None:
        missing = self.missing()
        if missing:
            raise IncompleteInitError(
                f"init code left {len(missing)} tensor(s) unwritten: {', '.join(map(repr, missing))}; after "
                "to_empty() they hold uninitialized memory. Initialize them in the model's init code (or with "
                "torchinit.init_model(model, policy, seed=..., only=...))")

    def report(self) -> AuditReport:
        out = []
        replaced = self._replaced()
        for name, t in self.tensors:
            e = self.entries.get(name) or TensorAudit(name)
            if name in replaced:
                e.writes[("assigned", "a new tensor")] = 1
            e.promised_std = _promised_std(e.spec, t)
            e.measured_std, e.local = _measured_std(t) if e.promised_std is not None else (None, False)
            out.append(e)
        return AuditReport(out, self.missing())


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
