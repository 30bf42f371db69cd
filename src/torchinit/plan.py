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
from dataclasses import dataclass, field, replace
from typing import IO, Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import specs as S
from .fans import Fans, compute_fans, module_fans, torch_fans
from .gains import TORCH_NONLINEARITIES, second_moment_gain
from .nonlinearity import Detection, auto_gain, detect_nonlinearities, is_weight_layer
from .policy import INITIALIZERS, Policy, PolicyError, Rule, load_policy

__all__ = ["PlanEntry", "Plan", "plan", "apply_plan", "init_model"]

ENGINES = ("keyed", "torch")


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
        """Std of one element under ``spec`` (None for module code / shape-dependent specs)."""
        if self.spec is None:
            return self.observed[-1].std if self.observed else None
        if isinstance(self.spec, S.Orthogonal) and len(self.shape) >= 2:
            rows = self.shape[0]
            cols = math.prod(self.shape) // rows
            return abs(self.spec.gain) / math.sqrt(max(rows, cols))
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
        """Rebuild an entry from :meth:`to_dict`'s output."""
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
        if not isinstance(d, Mapping) or "entries" not in d:
            raise ValueError("a plan dict needs an 'entries' list")
        return cls(
            entries=[PlanEntry.from_dict(e) for e in d["entries"]], policy=d.get("policy", "custom"),
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

    def print(self, file: IO[str] | None = None, width: int | None = None) -> None:
        """Print the table with rich (colours on a terminal)."""
        from rich.console import Console

        Console(file=file, width=width).print(self)


# ----------------------------------------------------------------------------------
# Building a plan
# ----------------------------------------------------------------------------------

_RESETTABLE_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _role(kind: str, local: str, t: Tensor) -> str:
    if kind == "buffer":
        return "buffer"
    if "bias" in local.rsplit(".", 1)[-1]:
        return "bias"
    return "weight" if t.dim() >= 2 else "scale"


def _is_layer_list(m: nn.Module | None) -> bool:
    """A stack of layers: an ``nn.ModuleList``, or an ``nn.ModuleDict`` keyed by layer id
    (``"0"``, ``"1"``, ...: torchtitan's ``self.layers[str(layer_id)]``)."""
    if isinstance(m, nn.ModuleList):
        return True
    return isinstance(m, nn.ModuleDict) and len(m) > 0 and all(k.isdigit() for k in m.keys())


class _Context:
    def __init__(self, model: nn.Module, example_inputs: Any):
        self.model = model
        self.example_inputs = example_inputs
        self.modules = dict(model.named_modules(remove_duplicate=False))
        self._det: dict[str, Detection] | None = None
        self.notes: list[str] = []
        self._n_layer: int | None = None
        self._steps = None
        self._steps_by_path: dict[str, list] | None = None

    def detections(self) -> dict[str, Detection]:
        if self._det is None:
            self._det, notes = detect_nonlinearities(self.model, self.example_inputs)
            self.notes.extend(notes)
        return self._det

    def n_layer(self) -> int:
        if self._n_layer is None:
            cfg = getattr(self.model, "config", None)
            for attr in ("n_layer", "num_hidden_layers", "num_layers", "n_layers"):
                v = getattr(cfg, attr, None) if cfg is not None else None
                if isinstance(v, int) and v > 0:
                    self._n_layer = v
                    self.notes.append(f"n_layer = {v} (from model.config.{attr})")
                    break
            else:
                lists = [(n, len(m), type(m).__name__) for n, m in self.modules.items()
                         if _is_layer_list(m) and len(m)]
                if not lists:
                    raise PolicyError("depth='total' needs n_layer: the model has no config.n_layer and no "
                                      "nn.ModuleList (or ModuleDict keyed 0, 1, ...) of layers; pass args n_layer",
                                      field="args")
                n, v, kind = max(lists, key=lambda x: x[1])
                self._n_layer = v
                self.notes.append(f"n_layer = {v} (length of the longest {kind}, {n!r})")
        return self._n_layer

    def layer_index(self, module_path: str) -> int | None:
        parts = module_path.split(".") if module_path else []
        for i, comp in enumerate(parts):
            if comp.isdigit() and _is_layer_list(self.modules.get(".".join(parts[:i]))):
                return int(comp)
        return None

    def steps(self) -> list[tuple[str, str]]:
        if self._steps is None:
            from .routing import module_init_steps

            self._steps = module_init_steps(self.model)
        return self._steps

    def code_for(self, module_path: str) -> tuple[tuple[str, str], ...]:
        """Init steps whose module is the tensor's owner or one of its ancestors."""
        if self._steps_by_path is None:
            self._steps_by_path = {}
            for i, (path, meth) in enumerate(self.steps()):
                self._steps_by_path.setdefault(path, []).append((i, (path, meth)))
        parts = module_path.split(".") if module_path else []
        found = []
        for k in range(len(parts) + 1):
            found.extend(self._steps_by_path.get(".".join(parts[:k]), ()))
        return tuple(step for _, step in sorted(found))


def _fans(args: Mapping[str, Any], mod: nn.Module, local: str, shape: tuple[int, ...]) -> Fans:
    if len(shape) < 2:
        raise PolicyError(
            f"needs fans, which need a tensor with at least 2 dims, got shape {shape}; "
            "select weights only (params: weight, or role: weight)", field="params")
    kind = args.get("fans", "torch")
    if kind == "x@w":
        return compute_fans(shape, "x@w")
    if kind == "module":
        if type(mod).__name__ == "Conv1D":  # Hugging Face GPT-2 Conv1D stores (in, out): x @ w
            return compute_fans(shape, "x@w")
        if local == "weight" and isinstance(mod, nn.modules.conv._ConvNd):
            return module_fans(mod, "weight")
    return torch_fans(shape)


def _nonlinearity(ctx: _Context, args: Mapping[str, Any], mod_path: str, mod: nn.Module,
                  a: float | None = None) -> tuple[str | None, float | None, float | None, str | None]:
    """(nonlinearity, param, gain, source) for a rule's nonlinearity argument. ``a``: the
    leaky_relu slope (kaiming's argument); None, for initializers without one, is torch's
    ``calculate_gain`` default (0.01)."""
    nl = args.get("nonlinearity")
    if nl is None:
        return None, None, None, None
    if nl == "auto":
        if not is_weight_layer(mod):
            return "linear", None, 1.0, "default: not a Linear/Conv layer"
        det = ctx.detections().get(mod_path)
        if det is None:
            return "linear", None, 1.0, "default: not detected"
        return det.nonlinearity, det.param, auto_gain(det.nonlinearity, det.param), det.describe()
    param = a if nl == "leaky_relu" else None
    return nl, param, float(second_moment_gain(nl, param)), "rule"


def _resolve(ctx: _Context, rule: Rule, q: str, mod_path: str, mod: nn.Module, local: str,
             t: Tensor) -> dict[str, Any]:
    init, args = rule.init, dict(rule.args)
    info = INITIALIZERS[init]
    for k, v in info.args.items():
        args.setdefault(k, v)
    shape = tuple(t.shape)
    out: dict[str, Any] = {"spec": None, "fans": None, "gain": None, "nonlinearity": None,
                           "nonlinearity_source": None, "code": ()}
    shown = {k: v for k, v in rule.args.items()}
    spec: S.Spec | None = None
    if t.numel() == 0 and init not in ("module", "keep"):
        # zero-element tensor: nothing to draw (torch's kaiming_* warns and returns); no fans exist
        out.update(spec=S.Constant(0.0), args=dict(shown, empty=True))
        return out
    if init in ("kaiming_uniform", "kaiming_normal"):
        fans = _fans(args, mod, local, shape)
        dist = "uniform" if init.endswith("uniform") else "normal"
        a = args["a"]
        nl, param, gain, src = _nonlinearity(ctx, args, mod_path, mod, a)
        if src == "rule" and nl in TORCH_NONLINEARITIES:
            spec = S.kaiming(shape, a, args["mode"], nl, dist, fans=fans)  # torch's exact arithmetic
        else:
            spec = S.from_std(S.scaled_std(fans, args["mode"], gain), dist)
        out.update(fans=fans, gain=gain, nonlinearity=nl, nonlinearity_source=src)
        if nl == "leaky_relu" and src != "rule":
            shown["a"] = param
    elif init in ("xavier_uniform", "xavier_normal"):
        fans = _fans(args, mod, local, shape)
        nl, _, gain, src = _nonlinearity(ctx, args, mod_path, mod)
        gain = float(args["gain"]) if gain is None else gain
        spec = S.from_std(S.scaled_std(fans, "fan_avg", gain), "uniform" if init.endswith("uniform") else "normal")
        out.update(fans=fans, gain=gain, nonlinearity=nl, nonlinearity_source=src)
    elif init in ("lecun_uniform", "lecun_normal", "variance_scaling"):
        fans = _fans(args, mod, local, shape)
        if init == "variance_scaling":
            spec = S.variance_scaling(shape, args["scale"], args["mode"], args["distribution"], fans=fans)
        else:
            spec = S.lecun(shape, "uniform" if init == "lecun_uniform" else "truncated_normal", fans=fans)
        out.update(fans=fans, gain=1.0)
    elif init in ("normal", "trunc_normal"):
        std = args["std"]
        if isinstance(std, str):  # "1/sqrt(fan_in)"
            fans = torch_fans(shape) if len(shape) >= 2 else None
            if fans is None:
                raise PolicyError(f"std='1/sqrt(fan_in)' needs a tensor with >= 2 dims, got shape {shape}",
                                  field="args")
            std = fans.fan_in ** -0.5
            out["fans"] = fans
        depth = args.get("depth")
        if depth == "total":
            n = args.get("n_layer") or ctx.n_layer()
            std = std / math.sqrt(2 * n)
            shown["n_layer"] = n
        elif depth == "per_layer":
            lid = ctx.layer_index(mod_path)
            shown["layer"] = lid if lid is not None else "n/a (0)"
            std = std / (2 * ((lid or 0) + 1)) ** 0.5
        if depth is not None:
            shown["std"] = std
        mean = args["mean"]
        if init == "normal":
            spec = S.Normal(mean, std)
        else:
            if args.get("cutoff") is not None:
                lo, hi = mean - args["cutoff"] * std, mean + args["cutoff"] * std
            else:
                lo = -2.0 if args.get("a") is None else args["a"]
                hi = 2.0 if args.get("b") is None else args["b"]
            spec = S.TruncatedNormal(mean, std, lo, hi)
    elif init == "uniform":
        spec = S.Uniform(args["a"], args["b"])
    elif init in ("constant", "zeros", "ones"):
        spec = S.Constant({"zeros": 0.0, "ones": 1.0}.get(init, args.get("val")))
    elif init == "prior_bias":
        p = args["prob"]
        spec = S.Constant(-math.log((1 - p) / p))
    elif init == "eye":
        spec = S.Eye()
    elif init == "dirac":
        g = args.get("groups") or int(getattr(mod, "groups", 1) or 1)
        spec = S.Dirac(g)
    elif init in ("orthogonal", "delta_orthogonal"):
        nl, _, gain, src = _nonlinearity(ctx, args, mod_path, mod)
        gain = float(args["gain"]) if gain is None else gain
        spec = S.Orthogonal(gain) if init == "orthogonal" else S.DeltaOrthogonal(gain)
        out.update(gain=gain, nonlinearity=nl, nonlinearity_source=src)
    elif init == "sparse":
        spec = S.Sparse(args["sparsity"], args["std"])
    elif init == "fan_in_uniform":
        w = getattr(mod, "weight", None)
        if not isinstance(w, Tensor) or w.dim() < 2:
            raise PolicyError(f"fan_in_uniform needs the module's 2+-D 'weight' for fan_in; "
                              f"{type(mod).__name__} has none", field="init")
        fans = torch_fans(w.shape)
        bound = 1 / math.sqrt(fans.fan_in) if fans.fan_in > 0 else 0
        spec = S.Uniform(-bound, bound)
        out["fans"] = fans
    elif init == "rnn_uniform":
        h = getattr(mod, "hidden_size", None)
        if not isinstance(h, int):
            raise PolicyError(f"rnn_uniform needs a module with hidden_size; {type(mod).__name__} has none",
                              field="init")
        stdv = 1.0 / math.sqrt(h) if h > 0 else 0
        spec = S.Uniform(-stdv, stdv)
    elif init == "spec":
        spec = S.spec_from_dict(dict(args["spec"]))
    elif init == "module":
        out["code"] = ctx.code_for(mod_path)
    elif init == "keep":
        pass
    if spec is not None:
        spec.check_shape(shape)
        if spec.random and not t.is_floating_point():
            raise PolicyError(f"{init} draws random values but the tensor has dtype {t.dtype}", field="init")
        if isinstance(spec, S.Constant) and not t.is_floating_point() and spec.value != int(spec.value):
            raise PolicyError(f"constant {spec.value} does not fit dtype {t.dtype}", field="args")
    out["spec"] = spec
    out["args"] = shown
    return out


def _tensors_in_order(model: nn.Module):
    """(qualified name, module path, module, local name, tensor, kind) in named_parameters order,
    each module's buffers after its parameters; tied tensors once."""
    seen: set[int] = set()
    for mpath, mod in model.named_modules():
        for kind, store in (("parameter", mod._parameters), ("buffer", mod._buffers)):
            for local, t in store.items():
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                yield (f"{mpath}.{local}" if mpath else local), mpath, mod, local, t, kind


def _owner(ctx: _Context, name: str) -> tuple[str, str, nn.Module, str]:
    """(name, module path, module, local name) of a qualified tensor name."""
    path, _, local = name.rpartition(".")
    return name, path, ctx.modules[path], local


def plan(model: nn.Module, policy: Policy | str | Mapping | Sequence = "kaiming", example_inputs: Any = None) -> Plan:
    """Decide, without writing anything, what every tensor of ``model`` gets under ``policy``.

    ``policy``: a :class:`Policy`, a preset name, a YAML/JSON path, a dict or a
    list of rules (see :func:`torchinit.load_policy`). ``example_inputs`` (a tensor,
    tuple or dict of kwargs) lets ``nonlinearity="auto"`` fall back to forward hooks
    when torch.fx cannot trace the model.

    Raises :class:`~torchinit.policy.PolicyError` naming the rule, tensor and field
    when a rule cannot apply (e.g. fans of a 1-D bias).
    """
    pol = load_policy(policy)
    ctx = _Context(model, example_inputs)
    aliases: dict[int, list[str]] = {}
    first: dict[int, str] = {}
    for n, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if t is None:
            continue
        if id(t) in first:
            if n != first[id(t)] and n not in aliases[id(t)]:
                aliases[id(t)].append(n)
        else:
            first[id(t)] = n
            aliases[id(t)] = []
    labels = [r.label(i) for i, r in enumerate(pol.rules)]
    matched_count = [0] * len(pol.rules)
    won_count = [0] * len(pol.rules)
    entries: list[PlanEntry] = []
    unmatched: list[str] = []
    for q, mpath, mod, local, t, kind in _tensors_in_order(model):
        if isinstance(t, nn.parameter.UninitializedTensorMixin):
            raise ValueError(f"{q!r} is an uninitialized (lazy) {kind} of {type(mod).__name__}: run one forward "
                             "pass with a dummy batch before planning its init")
        # a tied tensor is matched under its first name; only when no rule matches that name are
        # its other names tried (BERT's MLM bias is first the head's own parameter, which no
        # preset names, then the decoder Linear's bias)
        canonical = (q, mpath, mod, local)
        for cq, cpath, cmod, clocal in [canonical] + [_owner(ctx, a) for a in aliases.get(id(t), ())]:
            parts = cpath.split(".") if cpath else []
            chain = [("", model)] + [(".".join(parts[:i + 1]), ctx.modules[".".join(parts[:i + 1])])
                                     for i in range(len(parts))]
            role = _role(kind, clocal, t)
            hits = []
            for i, rule in enumerate(pol.rules):
                how = rule.match(cq, role, chain)
                if how is None:
                    continue
                if rule.init == "module" and not ctx.code_for(cpath):
                    continue
                hits.append((rule.priority, i, how))
                matched_count[i] += 1
            if hits:
                break
        if not hits:
            if kind == "parameter" or (local in _RESETTABLE_BUFFERS and isinstance(mod, nn.modules.batchnorm._NormBase)):
                unmatched.append(q)
            continue
        hits.sort()
        _, win, how = hits[-1]
        if cq != q:
            how = f"{how} (as {cq!r})"
        won_count[win] += 1
        rule = pol.rules[win]
        try:
            res = _resolve(ctx, rule, cq, cpath, cmod, clocal, t)
        except (PolicyError, ValueError, TypeError) as exc:
            fld = getattr(exc, "field", None)
            raise PolicyError(
                f"policy {pol.name!r}: rule {win}" + (f" ({rule.name!r})" if rule.name else "")
                + f" [{rule.init}] on {cq!r} (shape {tuple(t.shape)}, {type(cmod).__name__})"
                + (f": field {fld!r}" if fld else "") + f": {exc}",
                rule=win, name=rule.name, field=fld) from None
        zero_rows: tuple[int, ...] = ()
        spec = res["spec"]
        if kind == "buffer" and spec is not None and spec.random and rule.role is None and rule.params is None:
            # a name glob also selects buffers: drawing running statistics at random (a negative
            # running_var) is rarely meant; role "buffer" or params says it is
            ctx.notes.append(f"rule {labels[win]} draws random values into buffer {q!r} (its qualnames glob "
                             f"selects buffers too; give it a role (weight, bias, scale) to leave buffers out, or role: buffer "
                             f"to say this is meant)")
        if (spec is not None and spec.random and clocal == "weight" and isinstance(cmod, (nn.Embedding, nn.EmbeddingBag))
                and getattr(cmod, "padding_idx", None) is not None):
            zero_rows = (int(cmod.padding_idx),)
        entries.append(PlanEntry(
            name=q, module=mpath, module_type=type(mod).__name__, kind=kind, shape=tuple(t.shape),
            dtype=str(t.dtype).replace("torch.", ""), role=role, rule=labels[win], rule_index=win,
            initializer=rule.init, args=res["args"], spec=spec, fans=res["fans"], gain=res["gain"],
            nonlinearity=res["nonlinearity"], nonlinearity_source=res["nonlinearity_source"], matched_as=how,
            overridden=tuple(labels[i] for _, i, _ in reversed(hits[:-1])), aliases=tuple(aliases.get(id(t), ())),
            zero_rows=zero_rows, code=res["code"],
        ))
    if unmatched and pol.on_unmatched == "error":
        more = f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
        raise PolicyError(f"policy {pol.name!r} (on_unmatched='error'): no rule matches "
                          f"{', '.join(unmatched[:5])}{more}", field="rules")
    return Plan(
        entries=entries, policy=pol.name, rules=labels, unmatched=unmatched,
        unused_rules=[labels[i] for i in range(len(labels)) if matched_count[i] == 0],
        shadowed_rules=[labels[i] for i in range(len(labels)) if matched_count[i] and not won_count[i]],
        notes=ctx.notes,
    )


# ----------------------------------------------------------------------------------
# Applying a plan
# ----------------------------------------------------------------------------------

def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


def apply_plan(model: nn.Module, plan: Plan, *, seed: int, engine: str = "keyed",
               only: Iterable[str] | None = None, restore_on_error: bool = True) -> Plan:
    """Write ``plan`` into ``model``; return the applied plan.

    Validates everything first (seed, engine, every entry's tensor exists with the
    planned shape, specs fit, ``only`` names exist): on any error nothing is written.
    Module-code entries run first (each module's init code once, in post-order,
    routed through the keyed engine for ``engine="keyed"``), then spec entries in
    plan order. ``only``: apply just the entries with these names (aliases accepted);
    module code then leaves every other tensor as it was.

    Module code is the model's own and may raise at run time, after validation. With
    ``restore_on_error`` (default) the tensors it may write are copied first and put
    back if it raises, so a failed call leaves the model as it was, at the cost of one
    copy of those tensors; ``materialize`` turns it off (its fresh tensors hold
    nothing to lose, and it returns a failed batch to meta itself).
    """
    return _apply_plan(model, plan, seed=seed, engine=engine, only=only, restore_on_error=restore_on_error)


def _apply_plan(model: nn.Module, plan: Plan, *, seed: int, engine: str = "keyed",
                only: Iterable[str] | None = None, restore_on_error: bool = True,
                unwritten: list[str] | None = None) -> Plan:
    """:func:`apply_plan`; with ``unwritten`` (a list), also appends the names of the
    module-code entries whose tensors the code (keyed engine) left unwritten."""
    from .routing import HF_INIT_STEP
    from .sharding import check_no_dtensor, is_dtensor, zero_rows_

    seed = _check_seed(seed)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a Plan, got {type(plan).__name__}")
    tensors: dict[str, Tensor] = {}
    for n, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if t is not None:
            tensors[n] = t
    modules = dict(model.named_modules(remove_duplicate=False))
    by_name: dict[str, PlanEntry] = {}
    for e in plan.entries:
        t = tensors.get(e.name)
        if t is None:
            raise ValueError(f"plan entry {e.name!r} has no tensor in the model (was the plan made for another model?)")
        if tuple(t.shape) != tuple(e.shape):
            raise ValueError(f"plan entry {e.name!r}: planned shape {tuple(e.shape)} but the model's tensor has "
                             f"shape {tuple(t.shape)}")
        if e.spec is not None:
            try:
                e.spec.checked().check_shape(tuple(t.shape))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"plan entry {e.name!r}: spec {e.spec!r} does not fit: {exc}") from None
            if e.spec.random and not t.is_floating_point():
                raise ValueError(f"plan entry {e.name!r}: random spec for dtype {t.dtype}")
            if (engine == "torch" and isinstance(e.spec, (S.Orthogonal, S.DeltaOrthogonal))
                    and t.dtype not in (torch.float32, torch.float64) and not t.is_meta):
                raise ValueError(f"plan entry {e.name!r}: engine='torch' cannot draw {type(e.spec).__name__} "
                                 f"for dtype {t.dtype} (torch's QR needs float32/float64); use engine='keyed'")
        if engine == "torch":  # sharded tensors need the keyed engine (issue 5)
            check_no_dtensor(t, e.name, engine)
        for r in e.zero_rows:
            if not (t.dim() >= 1 and -t.shape[0] <= r < t.shape[0]):
                raise ValueError(f"plan entry {e.name!r}: zero row {r} out of range for shape {tuple(t.shape)}")
        for path, meth in e.code:
            m = modules.get(path)
            if m is None or (meth != HF_INIT_STEP and not callable(getattr(m, meth, None))):
                raise ValueError(f"plan entry {e.name!r}: module {path!r} has no init method {meth!r}")
        by_name[e.name] = e
        for a in e.aliases:
            by_name[a] = e
    selected_names: set[str] | None = None
    if only is not None:
        only = [only] if isinstance(only, str) else list(only)
        missing = [n for n in only if n not in by_name]
        if missing:
            raise ValueError(f"only: no plan entry named {missing[0]!r}" + (
                f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        selected_names = {by_name[n].name for n in only}
    selected = [e for e in plan.entries if selected_names is None or e.name in selected_names]
    on_meta = [e.name for e in selected if e.initializer != "keep" and tensors[e.name].is_meta]
    if on_meta:  # a write into a meta tensor stores nothing: the call would silently do nothing
        more = f" and {len(on_meta) - 3} more" if len(on_meta) > 3 else ""
        raise ValueError(
            f"plan entries {', '.join(map(repr, on_meta[:3]))}{more} are on the meta device (no storage: "
            "nothing would be written); allocate and initialize them with "
            "torchinit.materialize(model, device, policy, seed=...)")
    if engine == "keyed":
        code_entry = next((e for e in plan.entries if e.initializer == "module"), None)
        sharded = next((n for n, t in tensors.items() if is_dtensor(t)), None) if code_entry else None
        if sharded is not None:
            raise ValueError(
                f"plan entry {code_entry.name!r}: the 'module' initializer runs the model's own init code, which "
                f"cannot be routed through the keyed engine on a model with sharded (DTensor) tensors (first: "
                f"{sharded!r}); give these tensors spec rules (every preset but 'module' does for standard layers) "
                "or initialize the model before sharding it")
    needs_keyed = engine == "keyed" and any(
        (e.spec is not None and e.spec.random) or e.initializer == "module" for e in selected)
    if needs_keyed:
        try:
            from .keyed import Key
        except ImportError as exc:
            raise ImportError(f"engine='keyed' needs torchinit.keyed: {exc}") from None

    # ---- everything validated: write ----
    from .torch_engine import torch_fill_
    from .initializers import fill_ as fill_any_

    observed: dict[str, tuple[S.Spec, ...]] = {}
    module_entries = [e for e in selected if e.initializer == "module"]
    if engine == "torch":
        torch.manual_seed(seed)
    if module_entries:
        from .routing import keyed_init_mode, run_module_init

        steps: list[tuple[str, str]] = []
        for e in module_entries:
            for s in e.code:
                if s not in steps:
                    steps.append(s)
        order = {s: i for i, s in enumerate(_ctx_steps(model))}
        steps.sort(key=lambda s: order.get(s, len(order)))
        allowed = {e.name for e in module_entries}
        outside = {n for n in tensors if by_name.get(n) is None or by_name[n].name not in allowed}
        undo: list[tuple[Tensor, Tensor]] = []
        if restore_on_error:
            undo_ids: set[int] = set()
            for n in allowed:
                t = tensors.get(n)
                if t is not None and id(t) not in undo_ids and not t.is_meta:
                    undo.append((t, t.detach().clone()))
                    undo_ids.add(id(t))
        try:
            if engine == "keyed":
                # the routing mode skips the code's writes to tensors outside these entries
                before = ({e.name: (tensors[e.name], _storage_ptr(tensors[e.name])) for e in module_entries}
                          if unwritten is not None else {})
                with keyed_init_mode(model, seed, protect=outside) as mode:
                    run_module_init(model, steps, mode)
                observed = {n: tuple(v) for n, v in mode.log.specs.items()}
                if unwritten is not None:
                    unwritten.extend(_unwritten(model, module_entries, before, mode.log.written))
            else:
                _run_module_init_torch(model, steps, tensors, outside, run_module_init)
        except BaseException:
            with torch.no_grad():
                for t, v in undo:
                    t.copy_(v)
            raise
    with torch.no_grad():
        for e in selected:
            if e.spec is None:
                continue
            t = tensors[e.name]
            if engine == "torch" or (not e.spec.random and not is_dtensor(t)):
                torch_fill_(t, e.spec)
            else:  # random specs, and every spec of a DTensor: filled shard-locally (issue 5)
                fill_any_(t, e.spec, key=Key(seed).child(e.name))
            if e.zero_rows:
                zero_rows_(t, e.zero_rows)
    applied = replace(plan, entries=[replace(e, observed=observed.get(e.name, e.observed)) for e in plan.entries],
                      seed=seed, engine=engine, applied=True, notes=list(plan.notes))
    if only is not None:
        applied.notes.append(f"applied only {len(selected)} of {len(plan.entries)} entries")
    return applied


def _storage_ptr(t: Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # DTensor and other subclasses without a plain storage
        return None


def _unwritten(model: nn.Module, entries: list[PlanEntry], before: dict[str, tuple[Tensor, int | None]],
               written: set[str]) -> list[str]:
    """Module-code entries (plain tensors) the code neither wrote through torch calls nor
    replaced (``p.data = ...`` moves the storage, ``module.buf = ...`` the object)."""
    out = []
    for e in entries:
        t0, ptr0 = before[e.name]
        if ptr0 is None or e.name in written or any(a in written for a in e.aliases):
            continue
        path, _, local = e.name.rpartition(".")
        owner = model.get_submodule(path)
        t1 = owner._parameters.get(local, owner._buffers.get(local))
        if t1 is not t0 or _storage_ptr(t1) != ptr0:
            continue
        out.append(e.name)
    return out


def _run_module_init_torch(model: nn.Module, steps: list[tuple[str, str]], tensors: dict[str, Tensor],
                           outside: set[str], run_module_init: Any) -> None:
    """Run module init code on torch's RNG, then put back every tensor outside the
    selected entries that the code may have written (torch has no way to skip writes)."""
    prefixes = [p for p, _ in steps]
    saved: dict[str, Tensor] = {}
    seen_ids: set[int] = set()
    for n in outside:
        t = tensors[n]
        if id(t) in seen_ids or t.is_meta or not any(p == "" or n.startswith(p + ".") for p in prefixes):
            continue
        saved[n] = t.detach().clone()
        seen_ids.add(id(t))
    try:
        run_module_init(model, steps, None)
    finally:
        with torch.no_grad():
            for n, v in saved.items():
                tensors[n].copy_(v)


def _ctx_steps(model: nn.Module) -> list[tuple[str, str]]:
    from .routing import module_init_steps

    return module_init_steps(model)


def init_model(model: nn.Module, policy: Policy | str | Mapping | Sequence = "kaiming", *, seed: int,
               engine: str = "keyed", example_inputs: Any = None) -> Plan:
    """Plan and apply ``policy`` to ``model``; returns the applied :class:`Plan`.

    >>> import torch, torchinit
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> p = torchinit.init_model(net, "kaiming", seed=0)
    >>> p["0.weight"].nonlinearity, round(p["0.weight"].gain, 4)
    ('relu', 1.4142)
    """
    _check_seed(seed)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    p = plan(model, policy, example_inputs=example_inputs)
    return apply_plan(model, p, seed=seed, engine=engine)
