"""Plans: what every tensor of a model will get, decided before anything is written.

``plan(model, policy)`` matches the policy's rules against every parameter (and
every buffer a rule selects, such as BatchNorm running statistics) and resolves
each match to a :class:`PlanEntry`: the winning rule, the initializer and its
arguments, fans, gain, nonlinearity (and where it came from) and the resulting
:mod:`~torchinit.specs` spec (so its std and bounds). ``apply_plan`` validates the
whole plan against the model, then writes; ``init_model`` does both.

Engines:

* ``"keyed"``: each tensor is filled with ``Key(seed).child(qualified_name)``;
  values depend only on (seed, name, spec): re-running gives identical weights,
  and adding, removing or reordering layers leaves every other tensor unchanged.
* ``"torch"``: ``torch.manual_seed(seed)``, then torch's own sampling calls in the
  plan's order (the order of ``model.named_parameters()``), bitwise identical to
  the equivalent sequence of ``torch.nn.init`` calls.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import IO, Any, Literal, Mapping

from ..core import specs as S
from ..core.fans import Fans
from ..core.gate_specs import OrthogonalPerGate, gate_block_std
from .policy import INITIALIZERS

__all__ = ["PlanEntry", "Plan", "EngineName"]


ENGINES = ("keyed", "torch")
#: The engines' names, for signatures (IDEs complete them).
EngineName = Literal["keyed", "torch"]


@dataclass
class PlanEntry:
    """What one tensor gets. ``spec`` is None for entries that run module code
    (``initializer == "module"``) or are kept (``"keep"``)."""

    name: str
    module: str
    module_type: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    role: str
    rule: str | None
    rule_index: int | None
    initializer: str
    args: dict[str, Any] = field(default_factory=dict)
    spec: S.Spec | None = None
    fans: Fans | None = None
    gain: float | None = None
    nonlinearity: str | None = None
    nonlinearity_source: str | None = None
    matched_as: str | None = None
    overridden: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    zero_rows: tuple[int, ...] = ()
    code: tuple[tuple[str, str], ...] = ()
    observed: tuple[S.Spec, ...] = ()

    @property
    def std(self) -> float | None:
        """Std of the tensor's values under ``spec`` (None for module code). For the specs whose
        spread depends on the shape: orthogonal ``|gain| / sqrt(max(rows, cols))``, delta-orthogonal
        ``|gain| / sqrt(max(out, in) * k)``, sparse ``std * sqrt(1 - ceil(sparsity * rows) / rows)``."""
        if self.spec is None:
            return self.observed[-1].std if self.observed else None
        rows = self.shape[0] if self.shape else 0
        if isinstance(self.spec, S.Orthogonal) and len(self.shape) >= 2 and rows:
            cols = math.prod(self.shape) // rows
            return abs(self.spec.gain) / math.sqrt(max(rows, cols)) if cols else 0.0
        if isinstance(self.spec, OrthogonalPerGate):  # each gate block its own orthogonal matrix
            return gate_block_std(self.spec, self.shape)
        if isinstance(self.spec, S.DeltaOrthogonal) and len(self.shape) >= 3 and rows:
            # gain * Q at one kernel position: out * in values of mean square gain^2 / out in a tensor
            # of out * in * k
            k = math.prod(self.shape[2:])
            return abs(self.spec.gain) / math.sqrt(max(rows, self.shape[1]) * k) if k else 0.0
        if isinstance(self.spec, S.Sparse) and len(self.shape) == 2 and rows:
            # the tensor's std, not the non-zeros': ceil(sparsity * rows) zeros in every column
            zeros = min(rows, math.ceil(self.spec.sparsity * rows))
            return self.spec.std_ * math.sqrt((rows - zeros) / rows)
        return self.spec.std

    @property
    def bounds(self) -> tuple[float, float] | None:
        """``(low, high)`` support of the planned spec (or of the last observed one), None without a spec."""
        spec = self.spec if self.spec is not None else (self.observed[-1] if self.observed else None)
        return spec.bounds if spec is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict (:meth:`from_dict` inverts it)."""
        d = {
            "name": self.name, "module": self.module, "module_type": self.module_type, "kind": self.kind,
            "shape": list(self.shape), "dtype": self.dtype, "role": self.role, "rule": self.rule,
            "rule_index": self.rule_index, "initializer": self.initializer, "args": _jsonable(self.args),
            "spec": self.spec.to_dict() if self.spec is not None else None,
            "fans": self.fans.to_dict() if self.fans is not None else None,
            "gain": self.gain, "nonlinearity": self.nonlinearity,
            "nonlinearity_source": self.nonlinearity_source, "matched_as": self.matched_as,
            "overridden": list(self.overridden), "aliases": list(self.aliases),
            "zero_rows": list(self.zero_rows), "code": [list(c) for c in self.code],
            "std": self.std, "bounds": list(self.bounds) if self.bounds is not None else None,
        }
        if self.observed:
            d["observed"] = [s.to_dict() for s in self.observed]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PlanEntry":
        """Rebuild an entry from :meth:`to_dict`'s output (``ValueError`` naming the entry and
        the field that is missing or of the wrong type: a plan may come from a file)."""
        _check_entry_dict(d)
        return cls(
            name=d["name"], module=d["module"], module_type=d["module_type"], kind=d["kind"],
            shape=tuple(d["shape"]), dtype=d["dtype"], role=d["role"], rule=d.get("rule"),
            rule_index=d.get("rule_index"), initializer=d["initializer"], args=dict(d.get("args") or {}),
            spec=S.spec_from_dict(d["spec"]) if d.get("spec") else None,
            fans=Fans(**d["fans"]) if d.get("fans") else None, gain=d.get("gain"),
            nonlinearity=d.get("nonlinearity"), nonlinearity_source=d.get("nonlinearity_source"),
            matched_as=d.get("matched_as"), overridden=tuple(d.get("overridden") or ()),
            aliases=tuple(d.get("aliases") or ()), zero_rows=tuple(d.get("zero_rows") or ()),
            code=tuple(tuple(c) for c in d.get("code") or ()),
            observed=tuple(S.spec_from_dict(s) for s in d.get("observed") or ()),
        )


#: Fields an entry dict must have, with the types they may hold (``list`` for tuples in JSON).
_ENTRY_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,), "module": (str,), "module_type": (str,), "kind": (str,), "shape": (list, tuple),
    "dtype": (str,), "role": (str,), "initializer": (str,),
}
_ENTRY_OPTIONAL: dict[str, tuple[type, ...]] = {
    "rule": (str, type(None)), "rule_index": (int, type(None)), "args": (dict, type(None)),
    "spec": (dict, type(None)), "fans": (dict, type(None)), "gain": (int, float, type(None)),
    "nonlinearity": (str, type(None)), "nonlinearity_source": (str, type(None)), "matched_as": (str, type(None)),
    "overridden": (list, tuple, type(None)), "aliases": (list, tuple, type(None)),
    "zero_rows": (list, tuple, type(None)), "code": (list, tuple, type(None)),
    "observed": (list, tuple, type(None)),
}


def _check_entry_dict(d: Any) -> None:
    from .errors import _short

    if not isinstance(d, Mapping):
        raise ValueError(f"plan entry: expected a mapping, got {_short(d)}")
    name = d.get("name")
    where = f"plan entry {_short(name)}" if isinstance(name, str) else "plan entry"
    for k, types in _ENTRY_FIELDS.items():
        if k not in d:
            raise ValueError(f"{where}: missing field {k!r} (fields: {', '.join(_ENTRY_FIELDS)})")
    for k, types in {**_ENTRY_FIELDS, **_ENTRY_OPTIONAL}.items():
        v = d.get(k)
        if not isinstance(v, types) or isinstance(v, bool) and bool not in types:
            raise ValueError(f"{where}: field {k!r} must be {' or '.join(t.__name__ for t in types)}, got "
                             f"{_short(v)}")
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in d["shape"]):
        raise ValueError(f"{where}: field 'shape' must be a list of sizes, got {_short(d['shape'])}")
    for c in d.get("code") or ():
        if not isinstance(c, (list, tuple)) or len(c) != 2 or not all(isinstance(x, str) for x in c):
            raise ValueError(f"{where}: field 'code': each step must be [module path, method], got {_short(c)}")


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.4g}"


@dataclass
class Plan:
    """The resolved plan: ``entries`` in model order, plus what did not match.

    Prints as a table (``print(plan)``, or ``rich.print(plan)`` for colour);
    ``to_dict()``/``from_dict()`` and ``to_json()``/``from_json()`` round-trip.
    """

    entries: list[PlanEntry]
    policy: str = "custom"
    rules: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    unused_rules: list[str] = field(default_factory=list)
    shadowed_rules: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seed: int | None = None
    engine: str | None = None
    applied: bool = False

    # -- access -------------------------------------------------------------------
    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, name: str) -> PlanEntry:
        for e in self.entries:
            if e.name == name or name in e.aliases:
                return e
        raise KeyError(f"no plan entry for {name!r}")

    def __contains__(self, name: object) -> bool:
        return any(e.name == name or name in e.aliases for e in self.entries)

    @property
    def names(self) -> list[str]:
        """Qualified tensor names of the entries, in plan order."""
        return [e.name for e in self.entries]

    # -- serialization --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The plan as a JSON-ready dict (:meth:`from_dict` inverts it)."""
        return {
            "version": 1, "policy": self.policy, "rules": list(self.rules),
            "entries": [e.to_dict() for e in self.entries], "unmatched": list(self.unmatched),
            "unused_rules": list(self.unused_rules), "shadowed_rules": list(self.shadowed_rules),
            "notes": list(self.notes), "seed": self.seed, "engine": self.engine, "applied": self.applied,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
        """Rebuild a plan from :meth:`to_dict`'s output (raises ValueError without ``entries``)."""
        if not isinstance(d, Mapping) or not isinstance(d.get("entries"), (list, tuple)):
            raise ValueError("a plan dict needs an 'entries' list")
        entries = []
        for i, e in enumerate(d["entries"]):
            try:
                entries.append(PlanEntry.from_dict(e))
            except (TypeError, ValueError, KeyError) as exc:  # spec/fans dicts: their own errors
                msg = str(exc) if str(exc).startswith("plan entry") else f"plan entry: {exc}"
                raise ValueError(f"plan: entries[{i}]: {msg}") from None
        return cls(
            entries=entries, policy=d.get("policy", "custom"),
            rules=list(d.get("rules") or ()), unmatched=list(d.get("unmatched") or ()),
            unused_rules=list(d.get("unused_rules") or ()), shadowed_rules=list(d.get("shadowed_rules") or ()),
            notes=list(d.get("notes") or ()), seed=d.get("seed"), engine=d.get("engine"),
            applied=bool(d.get("applied", False)),
        )

    def to_json(self, **kw: Any) -> str:
        """JSON text of :meth:`to_dict` (``kw`` go to ``json.dumps``; indent 2 by default)."""
        kw.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        """Rebuild a plan from :meth:`to_json`'s output."""
        return cls.from_dict(json.loads(text))

    # -- display ---------------------------------------------------------------------
    def _init_text(self, e: PlanEntry) -> str:
        if e.initializer == "module":
            return "module: " + ", ".join(f"{(p + '.') if p else ''}{m}" if p != e.module else m for p, m in e.code)
        info = INITIALIZERS.get(e.initializer)
        shown = {}
        for k, v in e.args.items():
            default = info.args.get(k) if info is not None else None
            if k == "nonlinearity" and v == "auto":
                continue  # the nonlinearity column shows what was detected
            if k in ("layer", "n_layer") or v != default:
                shown[k] = v
        args = ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in shown.items()
                         if k not in ("spec",))
        text = f"{e.initializer}({args})" if args else e.initializer
        if e.zero_rows:
            text += f" + row {','.join(map(str, e.zero_rows))} zeroed"
        return text

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        title = f"torchinit plan: policy {self.policy!r}, {len(self.entries)} tensors"
        if self.applied:
            title += f" (applied: engine={self.engine}, seed={self.seed})"
        table = Table(title=title, show_lines=False, header_style="bold", expand=False)
        for col, kw in (("tensor", {"overflow": "fold"}), ("shape", {}), ("rule", {"overflow": "fold"}),
                        ("init", {"overflow": "fold"}), ("fan in/out", {"justify": "right"}),
                        ("gain", {"justify": "right"}), ("nonlinearity", {"overflow": "fold"}),
                        ("std", {"justify": "right"}), ("bounds", {"justify": "right"})):
            table.add_column(col, **kw)
        for e in self.entries:
            name = e.name + (f" (= {', '.join(e.aliases)})" if e.aliases else "")
            rule = e.rule or ""
            if e.overridden:
                rule += f" > {', '.join(r.split(' ')[0] for r in e.overridden)}"
            fans = f"{e.fans.fan_in}/{e.fans.fan_out}" if e.fans is not None else ""
            nl = ""
            if e.nonlinearity:
                nl = e.nonlinearity + (f" [{e.nonlinearity_source}]" if e.nonlinearity_source else "")
            b = e.bounds
            bounds = ""
            if b is not None:
                bounds = f"[{_fmt(b[0])}, {_fmt(b[1])}]" if b[0] != b[1] else f"= {_fmt(b[0])}"
            shape = "x".join(map(str, e.shape)) if e.shape else "()"
            if e.kind == "buffer":
                shape += " buf"
            table.add_row(*(Text(c) for c in (name, shape, rule, self._init_text(e), fans, _fmt(e.gain), nl,
                                              _fmt(e.std), bounds)))
        lines = [table]
        foot = []
        foot.append("precedence: highest priority wins, then the later rule; 'A > B' means rule A overrode B")
        if self.unmatched:
            foot.append(f"unmatched (left as they are): {', '.join(self.unmatched)}")
        if self.unused_rules:
            foot.append(f"rules that matched nothing: {', '.join(self.unused_rules)}")
        if self.shadowed_rules:
            foot.append(f"rules always overridden: {', '.join(self.shadowed_rules)}")
        foot.extend(self.notes)
        lines.extend(Text(f) for f in foot)
        return Group(*lines)

    def summary(self, width: int = 160) -> str:
        """One row per rule: how many tensors and elements it initializes, with what
        (the std range across its tensors). For models too big for the full table."""
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        groups: dict[str, list[PlanEntry]] = {}
        for e in self.entries:
            groups.setdefault(e.rule or "-", []).append(e)
        table = Table(title=f"torchinit plan summary: policy {self.policy!r}, {len(self.entries)} tensors",
                      header_style="bold")
        for col in ("rule", "init", "tensors", "elements", "std"):
            table.add_column(col, justify="right" if col in ("tensors", "elements", "std") else "left")
        for rule, es in groups.items():
            stds = [x for x in (e.std for e in es) if x is not None]
            std = "" if not stds else (_fmt(min(stds)) if min(stds) == max(stds) else
                                       f"{_fmt(min(stds))}..{_fmt(max(stds))}")
            inits = sorted({e.initializer for e in es})
            table.add_row(*(Text(c) for c in (rule, ", ".join(inits), str(len(es)),
                                              f"{sum(math.prod(e.shape) for e in es):,}", std)))
        buf = io.StringIO()
        con = Console(file=buf, width=width, color_system=None, force_terminal=False)
        con.print(table)
        if self.unmatched:
            con.print(Text(f"unmatched (left as they are): {len(self.unmatched)}: "
                           f"{', '.join(self.unmatched[:10])}{' ...' if len(self.unmatched) > 10 else ''}"))
        return buf.getvalue()

    def render(self, width: int = 160) -> str:
        """The table as plain text."""
        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=width, color_system=None, force_terminal=False, soft_wrap=False).print(self)
        return buf.getvalue()

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return (f"Plan(policy={self.policy!r}, entries={len(self.entries)}, unmatched={len(self.unmatched)}, "
                f"unused_rules={len(self.unused_rules)}, applied={self.applied})")

    def _repr_html_(self, max_rows: int = 500) -> str:
        """Notebook display: the table of :meth:`__rich__` as HTML (the first ``max_rows``
        tensors; the count of the rest), its title and footnotes."""
        import html

        esc = html.escape
        title = f"torchinit plan: policy {self.policy!r}, {len(self.entries)} tensors"
        if self.applied:
            title += f" (applied: engine={self.engine}, seed={self.seed})"
        cols = ("tensor", "shape", "rule", "init", "fan in/out", "gain", "nonlinearity", "std", "bounds")
        rows = []
        for e in self.entries[:max_rows]:
            b = e.bounds
            bounds = "" if b is None else (f"[{_fmt(b[0])}, {_fmt(b[1])}]" if b[0] != b[1] else f"= {_fmt(b[0])}")
            cells = (e.name + (f" (= {', '.join(e.aliases)})" if e.aliases else ""),
                     ("x".join(map(str, e.shape)) if e.shape else "()") + (" buf" if e.kind == "buffer" else ""),
                     (e.rule or "") + (f" > {', '.join(r.split(' ')[0] for r in e.overridden)}" if e.overridden else ""),
                     self._init_text(e), f"{e.fans.fan_in}/{e.fans.fan_out}" if e.fans is not None else "",
                     _fmt(e.gain), (e.nonlinearity or "") + (f" [{e.nonlinearity_source}]"
                                                              if e.nonlinearity and e.nonlinearity_source else ""),
                     _fmt(e.std), bounds)
            rows.append("<tr>" + "".join(f"<td style='text-align:left'>{esc(str(c))}</td>" for c in cells) + "</tr>")
        if len(self.entries) > max_rows:
            rows.append(f"<tr><td colspan='{len(cols)}'>... {len(self.entries) - max_rows} more tensors</td></tr>")
        foot = [f"unmatched (left as they are): {', '.join(self.unmatched)}"] if self.unmatched else []
        if self.unused_rules:
            foot.append(f"rules that matched nothing: {', '.join(self.unused_rules)}")
        if self.shadowed_rules:
            foot.append(f"rules always overridden: {', '.join(self.shadowed_rules)}")
        foot.extend(self.notes)
        head = "".join(f"<th style='text-align:left'>{c}</th>" for c in cols)
        return (f"<div class='torchinit-plan'><b>{esc(title)}</b><table><thead><tr>{head}</tr></thead><tbody>"
                + "".join(rows) + "</tbody></table>" + "".join(f"<p>{esc(f)}</p>" for f in foot) + "</div>")

    def print(self, file: IO[str] | None = None, width: int | None = None) -> None:
        """Print the table with rich (colours on a terminal)."""
        from rich.console import Console

        Console(file=file, width=width).print(self)
