"""Policies: declarative rules that say which initializer every tensor of a model gets.

A :class:`Policy` is an ordered list of :class:`Rule` objects. A rule has

* a **selector**: ``modules`` (class names or classes, subclasses included, globs
  allowed on class names: ``"*RMSNorm"``), ``qualnames`` (globs on the qualified
  tensor name, ``"blocks.*.attn.proj.weight"``; ``"@output_head"``: the model's output
  layer's weight, see :data:`OUTPUT_HEAD`), ``params`` (the tensor's name
  relative to the matched module: ``"weight"``, ``"bias"``, ``"weight_hh_*"``,
  ``"out_proj.bias"``) and ``role`` (``"weight"``: a parameter with 2 or more
  dims; ``"bias"``: a parameter whose name contains "bias"; ``"scale"``: any other
  0/1-D parameter such as a norm's weight; ``"buffer"``; ``"tied_head"``: one weight
  tensor that is both an input embedding's weight and an output projection's (an LM
  head tied to the token embedding), found by identity whatever its names); every given field must
  match, absent fields match anything (without ``params`` a module rule matches the
  module's own tensors only). Buffers are selected only explicitly: by
  ``role="buffer"``, ``params`` or ``qualnames`` (or by a ``"module"`` rule);
* an **initializer** (``init``) with ``args``: see :data:`INITIALIZERS`; ``bias`` (a number, an
  initializer name, ``{init, args}`` or a spec) gives the bias of each layer whose weight it matches.

Precedence: when several rules match a tensor, the one with the highest
``priority`` wins; among equal priorities the LATER rule wins (a preset first, your
overrides after it). The plan shows the winner and the rules it overrode.

Policies are Python objects, dicts, JSON or YAML files; every error names the rule
(index and name) and the field at fault::

    rules:
      - name: convs
        modules: Conv2d
        params: weight
        init: kaiming_normal
        args: {mode: fan_out, nonlinearity: relu}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from torch import nn

from .activations import output_layer
from .errors import PolicyError, _short, _suggest
from .policy_files import _is_inline, parse_policy_text, read_policy_text
from .registry import PresetName, get_preset
from .selectors import OWN_INIT, _globs, _local_only, module_matches

__all__ = [
    "Rule",
    "Policy",
    "PolicyError",
    "INITIALIZERS",
    "ROLES",
    "OUTPUT_HEAD",
    "load_policy",
]

#: A ``qualnames`` entry: the weight of the model's output layer under any name (``get_output_embeddings()``).
OUTPUT_HEAD = "@output_head"

#: Tensor roles a rule may select.
ROLES = ("weight", "bias", "scale", "buffer", "tied_head")

_FANS = ("torch", "module", "x@w")
_MODES = ("fan_in", "fan_out")
_VS_MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
_DISTS = ("uniform", "normal", "truncated_normal")
_DEPTH = ("per_layer", "total")


@dataclass(frozen=True)
class InitializerInfo:
    """What an initializer name accepts: argument defaults (``REQUIRED`` marks
    required ones), whether it needs fans, and a one-line formula."""

    name: str
    args: Mapping[str, Any]
    formula: str
    needs_fans: bool = False
    random: bool = True


REQUIRED = object()

#: Every initializer a rule can name, with its arguments and formula.
INITIALIZERS: dict[str, InitializerInfo] = {
    i.name: i
    for i in [
        InitializerInfo("kaiming_uniform", {"a": 0.0, "mode": "fan_in", "nonlinearity": "leaky_relu", "fans": "torch"},
                        "U(-b, b), b = gain*sqrt(3/fan_mode)", True),
        InitializerInfo("kaiming_normal", {"a": 0.0, "mode": "fan_in", "nonlinearity": "leaky_relu", "fans": "torch"},
                        "N(0, std^2), std = gain/sqrt(fan_mode)", True),
        InitializerInfo("xavier_uniform", {"gain": 1.0, "nonlinearity": None, "fans": "torch"},
                        "U(-b, b), b = gain*sqrt(6/(fan_in+fan_out))", True),
        InitializerInfo("xavier_normal", {"gain": 1.0, "nonlinearity": None, "fans": "torch"},
                        "N(0, std^2), std = gain*sqrt(2/(fan_in+fan_out))", True),
        InitializerInfo("lecun_uniform", {"fans": "module"}, "U(-b, b), b = sqrt(3/fan_in)", True),
        InitializerInfo("lecun_normal", {"fans": "module"},
                        "truncated N, variance exactly 1/fan_in (JAX)", True),
        InitializerInfo("variance_scaling",
                        {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal", "fans": "module"},
                        "variance scale/n, n by mode (JAX)", True),
        InitializerInfo("uniform", {"a": 0.0, "b": 1.0}, "U(a, b)"),
        InitializerInfo("normal", {"mean": 0.0, "std": 1.0, "depth": None, "n_layer": None},
                        "N(mean, std^2); depth scales std by 1/sqrt(2*(layer+1)) or 1/sqrt(2*n_layer)"),
        InitializerInfo("trunc_normal",
                        {"mean": 0.0, "std": 1.0, "a": None, "b": None, "cutoff": None, "depth": None,
                         "n_layer": None},
                        "N(mean, std^2) restricted to [a, b] (absolute; default [-2, 2]) or mean +- cutoff*std"),
        InitializerInfo("constant", {"val": REQUIRED}, "val", random=False),
        InitializerInfo("zeros", {}, "0", random=False),
        InitializerInfo("ones", {}, "1", random=False),
        InitializerInfo("prior_bias", {"prob": REQUIRED}, "-log((1-p)/p) (focal-loss prior)", random=False),
        InitializerInfo("eye", {}, "identity matrix", random=False),
        InitializerInfo("dirac", {"groups": None}, "identity conv (per group)", random=False),
        InitializerInfo("orthogonal", {"gain": 1.0, "nonlinearity": None}, "gain * Haar semi-orthogonal"),
        InitializerInfo("delta_orthogonal", {"gain": 1.0, "nonlinearity": None},
                        "orthogonal (out, in) at the kernel centre, 0 elsewhere"),
        InitializerInfo("orthogonal_per_gate", {"gain": 1.0, "gates": None},
                        "gain * Haar orthogonal per gate block of dim 0 (gates: the RNN's, by default)"),
        InitializerInfo("lstm_bias", {"forget": 1.0}, "forget-gate rows H:2H = forget, other gates 0", random=False),
        InitializerInfo("sparse", {"sparsity": REQUIRED, "std": 0.01}, "N(0, std^2), ceil(s*rows) zeros per column"),
        InitializerInfo("fan_in_uniform", {}, "U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in of the module's weight (torch bias default)"),
        InitializerInfo("rnn_uniform", {}, "U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) (torch RNN default)"),
        InitializerInfo("spec", {"spec": REQUIRED}, "the given spec dict"),
        InitializerInfo("module", {}, "the module's own init code, routed through the engine"),
        InitializerInfo("keep", {}, "left as it is", random=False),
    ]
}

_NONLIN_NAMES = (
    "auto", "linear", "identity", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu", "gelu", "gelu_tanh", "silu",
    "swish", "mish", "elu", "softplus", "hardswish",
)

_RULE_FIELDS = ("name", "modules", "qualnames", "params", "role", "init", "args", "priority", "bias")


def _bias_init(bias: Any) -> tuple[str, dict[str, Any]]:
    """(initializer, args) of a rule's ``bias``: a number (constant), an initializer name,
    ``{init: ..., args: {...}}`` or a spec (dict or object)."""
    bias = bias.to_dict() if hasattr(bias, "to_dict") and hasattr(bias, "kind") else bias
    if isinstance(bias, (int, float)) and not isinstance(bias, bool):
        return "constant", {"val": bias}
    if isinstance(bias, Mapping) and "kind" in bias:
        return "spec", {"spec": dict(bias)}
    init, args = (bias, {}) if isinstance(bias, str) else (bias.get("init"), bias.get("args") or {}) if (
        isinstance(bias, Mapping) and set(bias) <= {"init", "args"}) else (None, {})
    if not isinstance(init, str):
        raise PolicyError(f"field 'bias': expected a number, an initializer name, {{init: ..., args: ...}} or a "
                          f"spec dict, got {bias!r}", field="bias")
    return init.removesuffix("_"), dict(args)


def _as_tuple(value: Any, fname: str, allow_types: bool = False) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (str, type)):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise PolicyError(f"field {fname!r}: expected a string or a list of strings, got {_short(value)}", field=fname)
    out = []
    for v in value:
        if isinstance(v, type):
            if not allow_types:
                raise PolicyError(f"field {fname!r}: expected strings, got class {v.__name__}", field=fname)
            if not issubclass(v, nn.Module):
                raise PolicyError(f"field {fname!r}: {v.__name__} is not an nn.Module subclass", field=fname)
        elif not isinstance(v, str) or not v:
            raise PolicyError(f"field {fname!r}: expected non-empty strings, got {_short(v)}", field=fname)
        out.append(v)
    if not out:
        raise PolicyError(f"field {fname!r}: empty list (omit the field to match anything)", field=fname)
    return tuple(out)


def _check_number(init: str, k: str, v: Any, *, positive: bool = False, prob: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise PolicyError(f"field 'args': {init}: {k} must be a finite number, got {v!r}", field="args")
    if positive and v <= 0:
        raise PolicyError(f"field 'args': {init}: {k} must be > 0, got {v!r}", field="args")
    if prob and not 0 < v < 1:
        raise PolicyError(f"field 'args': {init}: {k} must be in (0, 1), got {v!r}", field="args")


def _check_args(init: str, args: Mapping[str, Any]) -> dict[str, Any]:
    info = INITIALIZERS[init]
    unknown = [k for k in args if k not in info.args]
    if unknown:
        allowed = ", ".join(info.args) or "none"
        raise PolicyError(
            f"field 'args': unknown argument {unknown[0]!r} for initializer {init!r}"
            f"{_suggest(unknown[0], info.args)} (allowed: {allowed})", field="args")
    missing = [k for k, d in info.args.items() if d is REQUIRED and k not in args]
    if missing:
        raise PolicyError(f"field 'args': initializer {init!r} needs argument {missing[0]!r}", field="args")
    for k, v in args.items():
        if v is None:
            continue
        if k == "fans" and v not in _FANS:
            raise PolicyError(f"field 'args': {init}: fans must be one of {', '.join(_FANS)}, got {v!r}", field="args")
        if k == "mode":
            modes = _VS_MODES if init == "variance_scaling" else _MODES
            if v not in modes:
                raise PolicyError(f"field 'args': {init}: mode must be one of {', '.join(modes)}, got {v!r}",
                                  field="args")
        if k == "distribution" and v not in _DISTS:
            raise PolicyError(f"field 'args': {init}: distribution must be one of {', '.join(_DISTS)}, got {v!r}",
                              field="args")
        if k == "nonlinearity" and v not in _NONLIN_NAMES:
            raise PolicyError(f"field 'args': {init}: unknown nonlinearity {v!r}{_suggest(v, _NONLIN_NAMES)}",
                              field="args")
        if k == "depth" and v not in _DEPTH:
            raise PolicyError(f"field 'args': {init}: depth must be one of {', '.join(_DEPTH)}, got {v!r}",
                              field="args")
        if k in ("std",) and isinstance(v, str):  # "config": the model config's initializer_range (or 0.02)
            if v not in ("1/sqrt(fan_in)", "config"):
                raise PolicyError(f"field 'args': {init}: std must be a number, '1/sqrt(fan_in)' or 'config', got "
                                  f"{v!r}", field="args")
            continue
        if k in ("a", "b", "mean", "val", "gain", "forget") or (k == "std" and init in ("uniform",)):
            _check_number(init, k, v)
        if k in ("std", "scale", "cutoff"):
            _check_number(init, k, v, positive=(k != "std" or init != "sparse"))
        if k == "prob":
            _check_number(init, k, v, prob=True)
        if k == "sparsity":
            _check_number(init, k, v)
            if not 0 <= v <= 1:
                raise PolicyError(f"field 'args': {init}: sparsity must be in [0, 1], got {v!r}", field="args")
        if k in ("n_layer", "groups", "gates") and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise PolicyError(f"field 'args': {init}: {k} must be a positive int, got {v!r}", field="args")
        if k == "spec":
            from ..core.specs import spec_from_dict

            try:
                spec_from_dict(dict(v) if isinstance(v, Mapping) else v)
            except (TypeError, ValueError) as exc:
                raise PolicyError(f"field 'args': {init}: invalid spec: {exc}", field="args") from None
    if args.get("nonlinearity") is not None and args.get("gain") not in (None, 1, 1.0):
        raise PolicyError(f"field 'args': {init}: give either gain or nonlinearity, not both", field="args")
    if init == "trunc_normal" and args.get("cutoff") is not None and (args.get("a") is not None or args.get("b") is not None):
        raise PolicyError("field 'args': trunc_normal: give either cutoff (std units) or a/b (absolute), not both",
                          field="args")
    if init == "trunc_normal" and args.get("cutoff") is None and args.get("depth") is None:
        # the bounds are known now (a std from the config or the fans is checked per tensor, in the plan)
        from ..core.truncation import truncation_problem

        mean, std, lo, hi = (d if args.get(k) is None else args[k]
                             for k, d in (("mean", 0.0), ("std", 1.0), ("a", -2.0), ("b", 2.0)))
        problem = truncation_problem(mean, std, lo, hi) if not isinstance(std, str) and lo < hi else None
        if problem:
            raise PolicyError(f"field 'args': trunc_normal: {problem}", field="args")
    return dict(args)


@dataclass(frozen=True)
class Rule:
    """One rule: a selector and an initializer. See the module docstring.

    >>> Rule("kaiming_normal", modules="Conv2d", params="weight",
    ...      args={"mode": "fan_out", "nonlinearity": "relu"})  # doctest: +ELLIPSIS
    Rule(...)
    """

    init: str
    args: Mapping[str, Any] = field(default_factory=dict)
    modules: tuple[str | type, ...] | None = None
    qualnames: tuple[str, ...] | None = None
    params: tuple[str, ...] | None = None
    role: str | None = None
    name: str | None = None
    priority: int = 0
    bias: Any = None

    def __post_init__(self):
        where = f"rule {_short(self.name)}: " if self.name else "rule: "
        try:
            if self.name is not None and not isinstance(self.name, str):
                raise PolicyError(f"field 'name': expected a string, got {_short(self.name)}", field="name")
            if not isinstance(self.init, str):
                raise PolicyError(f"field 'init': expected an initializer name, got {self.init!r}", field="init")
            init = self.init[:-1] if self.init.endswith("_") else self.init
            if init not in INITIALIZERS:
                raise PolicyError(f"field 'init': unknown initializer {self.init!r}{_suggest(init, INITIALIZERS)}",
                                  field="init")
            object.__setattr__(self, "init", init)
            if not isinstance(self.args, Mapping):
                raise PolicyError(f"field 'args': expected a mapping, got {self.args!r}", field="args")
            object.__setattr__(self, "args", _check_args(init, self.args))
            object.__setattr__(self, "modules", _as_tuple(self.modules, "modules", allow_types=True))
            for q in (q for q in self.modules or () if isinstance(q, str) and q.startswith("@") and q != OWN_INIT):
                raise PolicyError(f"field 'modules': unknown selector {q!r}; the one there is: {OWN_INIT!r}",
                                  field="modules")
            object.__setattr__(self, "qualnames", _as_tuple(self.qualnames, "qualnames"))
            for q in (q for q in self.qualnames or () if q.startswith("@") and q != OUTPUT_HEAD):  # no name has "@"
                raise PolicyError(f"field 'qualnames': unknown selector {q!r}; the one there is: {OUTPUT_HEAD!r}",
                                  field="qualnames")
            object.__setattr__(self, "params", _as_tuple(self.params, "params"))
            if self.role is not None and self.role not in ROLES:
                raise PolicyError(f"field 'role': unknown role {self.role!r}; use one of {', '.join(ROLES)}",
                                  field="role")
            if isinstance(self.priority, bool) or not isinstance(self.priority, int):
                raise PolicyError(f"field 'priority': expected an int, got {self.priority!r}", field="priority")
            if self.bias is not None:
                binit, bargs = _bias_init(self.bias)
                if binit in INITIALIZERS and (INITIALIZERS[binit].needs_fans or binit == "module"):
                    raise PolicyError(f"field 'bias': {binit!r} cannot initialize a bias (a 1-D tensor, no fans); use "
                                      f"a number, zeros, fan_in_uniform, normal, uniform, ... or a spec", field="bias")
                try:
                    object.__setattr__(self, "_bias_rule", Rule(binit, bargs, name=self.name))
                except PolicyError as exc:
                    raise PolicyError(f"field 'bias': {exc}".replace("rule: ", "").replace(
                        f"rule {self.name!r}: ", ""), field="bias") from None
        except PolicyError as exc:
            raise PolicyError(where + str(exc), name=self.name, field=exc.field) from None

    # -- matching ---------------------------------------------------------------
    def match(self, qualname: str, role: str, chain: Sequence[tuple[str, nn.Module]],
              tied_head: bool = False) -> str | None:
        """How this rule matches the tensor ``qualname`` (None if it does not).

        ``chain`` lists ``(module_path, module)`` from the root to the tensor's owner;
        ``tied_head``: the tensor is an embedding's weight tied to an output projection's
        (role ``"tied_head"`` selects those, under every name; other rules see a ``"weight"``).
        """
        owner_path, owner = chain[-1]
        if self.bias is not None and qualname == (f"{owner_path}.bias" if owner_path else "bias") and (
                "weight" in owner._parameters or "weight_v" in owner._parameters  # weight_norm's, spectral_norm's
                or "weight_orig" in owner._parameters or "weight" in getattr(owner, "parametrizations", {})):
            # the layer's own bias goes with its weight: matched as the weight would be (see bias_rule)
            return self.match(qualname[:-4] + "weight", "weight", chain)
        if self.role == "tied_head":
            if not tied_head:
                return None
        elif self.role is not None and self.role != role:
            return None
        if (role == "buffer" and self.role is None and self.params is None and self.qualnames is None
                and self.init != "module"):
            return None  # buffers (running stats, ...) are only selected explicitly
        local = qualname[len(owner_path) + 1:] if owner_path else qualname
        if self.qualnames is not None and not _globs(self.qualnames)(qualname) and not (
                OUTPUT_HEAD in self.qualnames and local == "weight" and owner is output_layer(chain[0][1])):
            return None
        candidates = [chain[-1]] if self.params is None or self.modules is None or _local_only(self.params) \
            else reversed(chain)
        for path, mod in candidates:
            rel = qualname[len(path) + 1:] if path else qualname
            if self.params is not None and not _globs(self.params)(rel):
                continue
            if self.params is None and rel != local:
                continue
            if self.modules is not None:
                hit = module_matches(mod, self.modules)
                if hit is None:
                    continue
                return f"{type(mod).__name__}" + (f"/{rel}" if rel != local else "")
            return "tied embedding/head" if self.role == "tied_head" else "any"
        return None

    def bias_rule(self, qualname: str, owner_path: str) -> "Rule | None":
        """What the layer's ``bias`` (``qualname``, of the module at ``owner_path``) gets under ``bias=``, else None."""
        hit = self.bias is not None and qualname == (f"{owner_path}.bias" if owner_path else "bias")
        return getattr(self, "_bias_rule") if hit else None

    # -- serialization ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The rule as a dict (:meth:`from_dict` inverts it); fields at their defaults are left out."""
        d: dict[str, Any] = {}
        if self.name:
            d["name"] = self.name
        if self.modules is not None:
            d["modules"] = [m if isinstance(m, str) else
                            (m.__name__ if m.__module__.startswith("torch.nn") else f"{m.__module__}.{m.__qualname__}")
                            for m in self.modules]
        for k in ("qualnames", "params"):
            v = getattr(self, k)
            if v is not None:
                d[k] = list(v)
        if self.role is not None:
            d["role"] = self.role
        d["init"] = self.init
        if self.args:
            d["args"] = dict(self.args)
        if self.priority:
            d["priority"] = self.priority
        if self.bias is not None:
            d["bias"] = self.bias.to_dict() if hasattr(self.bias, "to_dict") else self.bias
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Rule":
        """Build a rule from a mapping of its fields (raises PolicyError naming an unknown or bad field)."""
        if not isinstance(d, Mapping):
            raise PolicyError(f"a rule must be a mapping, got {_short(d)}")
        unknown = [k for k in d if k not in _RULE_FIELDS]
        name = d.get("name")
        where = f"rule {_short(name)}: " if name else "rule: "
        if unknown:
            raise PolicyError(f"{where}unknown field {unknown[0]!r}{_suggest(unknown[0], _RULE_FIELDS)} "
                              f"(fields: {', '.join(_RULE_FIELDS)})", name=name, field=unknown[0])
        if "init" not in d:
            raise PolicyError(f"{where}field 'init' is missing", name=name, field="init")
        kwargs = dict(d)
        for k in ("args", "priority"):
            if kwargs.get(k) is None:
                kwargs.pop(k, None)
        return cls(**kwargs)

    def label(self, index: int) -> str:
        """Display label of the rule at position ``index``: ``#index name`` (or ``#index init``)."""
        return f"#{index} {self.name}" if self.name else f"#{index} {self.init}"


@dataclass(frozen=True)
class Policy:
    """An ordered list of rules (later rules override earlier ones at equal priority).

    ``on_unmatched``: ``"keep"`` leaves parameters no rule matched as they are (the
    plan lists them); ``"error"`` makes :func:`torchinit.plan` raise.
    """

    rules: tuple[Rule, ...] = ()
    name: str = "custom"
    on_unmatched: str = "keep"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        rules = tuple(self.rules)
        for i, r in enumerate(rules):
            if not isinstance(r, Rule):
                try:
                    r = Rule.from_dict(r)
                except PolicyError as exc:
                    raise PolicyError(f"policy {self.name!r}: rule {i}: {exc}", rule=i, name=exc.rule_name,
                                      field=exc.field) from None
                rules = rules[:i] + (r,) + rules[i + 1:]
        object.__setattr__(self, "rules", rules)
        if self.on_unmatched not in ("keep", "error"):
            raise PolicyError(f"policy {self.name!r}: field 'on_unmatched': use 'keep' or 'error', got "
                              f"{self.on_unmatched!r}", field="on_unmatched")

    def __add__(self, other: "Policy | Rule | Sequence[Rule | Mapping]") -> "Policy":
        return self.extend(other)

    def extend(self, other: "Policy | Rule | Sequence[Rule | Mapping]") -> "Policy":
        """This policy followed by ``other``'s rules (which therefore win ties)."""
        if isinstance(other, Policy):
            extra = other.rules
        elif isinstance(other, (Rule, Mapping)):
            extra = (other,)
        else:
            extra = tuple(other)
        return Policy(self.rules + tuple(extra), name=self.name if self.name != "custom" else "custom",
                      on_unmatched=self.on_unmatched, options=self.options)

    def to_dict(self) -> dict[str, Any]:
        """The policy as a dict (:meth:`from_dict` inverts it)."""
        d: dict[str, Any] = {"name": self.name, "rules": [r.to_dict() for r in self.rules]}
        if self.on_unmatched != "keep":
            d["on_unmatched"] = self.on_unmatched
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Policy":
        """Build from ``{"preset": ..., "options": {...}, "rules": [...], "name": ..., "on_unmatched": ...}``.

        With ``preset``, the preset's rules come first and ``rules`` override them.
        """
        if not isinstance(d, Mapping):
            got = "an empty document" if d is None else type(d).__name__
            raise PolicyError(f"a policy must be a mapping (fields: preset, options, rules, name, on_unmatched) "
                              f"or a list of rules, got {got}")
        allowed = ("name", "preset", "options", "rules", "on_unmatched")
        unknown = [k for k in d if k not in allowed]
        if unknown:
            raise PolicyError(f"policy: unknown field {unknown[0]!r}{_suggest(unknown[0], allowed)} "
                              f"(fields: {', '.join(allowed)})", field=unknown[0])
        rules_in = d.get("rules") or []
        if not isinstance(rules_in, (list, tuple)):
            raise PolicyError("policy: field 'rules' must be a list of rules", field="rules")
        base: tuple[Rule, ...] = ()
        options = d.get("options") or {}
        if not isinstance(options, Mapping):
            raise PolicyError("policy: field 'options' must be a mapping", field="options")
        name = d.get("name")
        if name is not None and not isinstance(name, str):
            raise PolicyError(f"policy: field 'name': expected a string, got {_short(name)}", field="name")
        if d.get("preset") is not None:
            p = get_preset(d["preset"], **options)
            base = p.rules
            name = name or p.name
        elif options:
            raise PolicyError("policy: field 'options' needs a 'preset'", field="options")
        offset = len(base)
        rules = list(base)
        for i, r in enumerate(rules_in):
            try:
                rules.append(r if isinstance(r, Rule) else Rule.from_dict(r))
            except PolicyError as exc:
                rname = exc.rule_name
                label = f"rule {i + offset}" + (f" ({_short(rname)})" if rname else "")
                msg = str(exc)
                for pre in (f"rule {_short(rname)}: ", "rule: "):
                    if msg.startswith(pre):
                        msg = msg[len(pre):]
                        break
                raise PolicyError(f"policy {_short(name or 'custom')}: {label}: {msg}", rule=i + offset, name=rname,
                                  field=exc.field) from None
        return cls(tuple(rules), name=name or "custom", on_unmatched=d.get("on_unmatched", "keep"),
                   options=dict(options))

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_yaml(cls, text_or_path: str | os.PathLike) -> "Policy":
        """Parse YAML text or a YAML file path (sizes bounded: :mod:`.policy_files`)."""
        text = str(text_or_path)
        where = "policy"
        if isinstance(text_or_path, os.PathLike) or (("\n" not in text) and os.path.exists(text)):
            where = f"policy file {os.fspath(text_or_path)}"  # name the file, as for JSON
            text = read_policy_text(text_or_path)
        data = parse_policy_text(text, where)
        return cls.from_dict({"rules": data} if isinstance(data, list) else data)  # a bare list of rules


def load_policy(obj: "PresetName | Policy | str | os.PathLike | Mapping | Sequence", **options: Any) -> Policy:
    """A :class:`Policy` from a Policy, a preset name (``"kaiming"``), a path to a
    ``.yaml``/``.yml``/``.json`` file, a policy's JSON or YAML text (``'{"preset": "kaiming"}'``,
    ``"rules: [{init: zeros}]"``), a dict, or a list of rules. ``options`` go to a preset."""
    if isinstance(obj, Policy):
        if options:
            raise PolicyError("options can only be given with a preset name")
        return obj
    if isinstance(obj, Rule):
        return Policy((obj,))
    if isinstance(obj, str) and _is_inline(obj):  # the text of a policy, as the command line's --policy takes
        data = parse_policy_text(obj, "inline policy")
        return Policy.from_dict({"rules": data} if isinstance(data, list) else data)
    if isinstance(obj, os.PathLike) or (isinstance(obj, str) and (os.sep in obj or obj.endswith(
            (".yaml", ".yml", ".json")))):
        path = os.fspath(obj)
        if not os.path.exists(path):
            raise FileNotFoundError(f"policy file not found: {path}")
        try:
            data = parse_policy_text(read_policy_text(path), f"policy file {path}", json_only=path.endswith(".json"))
            return Policy.from_dict({"rules": data} if isinstance(data, list) else data)
        except PolicyError as exc:  # say which file the rule or field at fault is in
            if str(exc).startswith(f"policy file {path}"):
                raise
            raise PolicyError(f"policy file {path}: {exc}", rule=exc.rule, name=exc.rule_name,
                              field=exc.field) from None
    if isinstance(obj, str):
        return get_preset(obj, **options)
    if isinstance(obj, Mapping):
        return Policy.from_dict(obj)
    if isinstance(obj, (list, tuple)):
        return Policy.from_dict({"rules": list(obj)})
    raise PolicyError(f"cannot make a policy from {type(obj).__name__}: pass a Policy, preset name, file path, "
                      "dict or list of rules")
