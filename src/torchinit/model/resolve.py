"""plan(): resolve a policy's rules against a model into a Plan (what each tensor gets, and why)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from ..core import specs as S
from ..core.fans import Fans, compute_fans, module_fans, torch_fans
from ..core.gains import TORCH_NONLINEARITIES, second_moment_gain
from ..core.gate_specs import GateConstant, OrthogonalPerGate
from .fan_notes import Hits, fans_notes, record_fans
from .norms import scales_by_one_plus_weight
from .nonlinearity import (Detection, NonlinearityWarning, auto_gain, detect_nonlinearities, is_weight_layer,
                           order_fallback_warning)
from .parametrized import names_original, orthogonal_refusal, weight_norm_entry, weight_norm_part
from .plan import Plan, PlanEntry
from .policy import INITIALIZERS, Policy, PolicyError, Rule, load_policy
from .registry import DEFAULT_POLICY, PresetName
from .selectors import _local_only, unused_rule_hints
from .tensors import is_tied_head as _is_tied_head, tensors_in_order as _tensors_in_order

__all__ = ["plan"]


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
        self._config_std: float | None = None
        self._steps = None
        self._steps_by_path: dict[str, list] | None = None
        self._code: dict[str, tuple[tuple[str, str], ...]] = {}  # code_for, per module path
        self._chains: dict[str, list[tuple[str, nn.Module]]] = {}  # chain, per module path
        #: (rule label, init, mode) -> [(tensor, true fan, torch's fan, std)] where fans="module" differs
        self.true_fans: Hits = {}
        self.swapped_fans: Hits = {}  # fans: torch on a Conv1D, whose (in, out) torch's rule reads swapped
        #: rule label -> {tensor: norm class} whose ``ones`` became 0: the norm scales by 1 + weight
        self.offset_norms: dict[str, dict[str, str]] = {}

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
                # the outermost lists: a list inside a layer (a block's experts) is no count of layers
                lists = [x for x in lists if not any(o != x[0] and x[0].startswith(f"{o}." if o else "")
                                                     for o, _, _ in lists)]
                n, v, kind = max(lists, key=lambda x: x[1])
                self._n_layer = v
                self.notes.append(f"n_layer = {v} (length of the longest {kind}, {n!r})")
        return self._n_layer

    def config_std(self) -> float:
        """The std the model's config asks for (``std: config``): ``initializer_range`` (or
        ``init_std``), times ``initializer_factor`` where present; 0.02 without either (noted)."""
        if self._config_std is None:
            cfg = getattr(self.model, "config", None)
            std, base = 0.02, None
            for attr in ("initializer_range", "init_std"):
                v = getattr(cfg, attr, None) if cfg is not None else None
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
                    std = float(v)
                    base = f"model.config.{attr} = {v}"
                    break
            f = getattr(cfg, "initializer_factor", None) if cfg is not None else None
            factor = isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) and f > 0
            if factor:
                std *= float(f)
            self._config_std = std
            # the note reads as the product it is: "0.02 (default) x model.config.initializer_factor = 1.0"
            if factor:
                self.notes.append(f"std = {std:g} ({base or '0.02 (default)'} x model.config.initializer_factor = {f})")
            elif base:
                self.notes.append(f"std = {std:g} (from {base})")
            else:
                self.notes.append("std = 0.02 (the default: the model has no config.initializer_range, init_std or "
                                  "initializer_factor)")
        return self._config_std

    def layer_index(self, module_path: str) -> int | None:
        parts = module_path.split(".") if module_path else []
        for i, comp in enumerate(parts):
            if comp.isdigit() and _is_layer_list(self.modules.get(".".join(parts[:i]))):
                return int(comp)
        return None

    def steps(self) -> list[tuple[str, str]]:
        if self._steps is None:
            from .module_init import module_init_steps

            self._steps = module_init_steps(self.model)
        return self._steps

    def chain(self, module_path: str) -> list[tuple[str, nn.Module]]:
        """``(path, module)`` from the root to the module at ``module_path`` (shared: do not modify)."""
        out = self._chains.get(module_path)
        if out is None:
            parts = module_path.split(".") if module_path else []
            out = self._chains[module_path] = [("", self.model)] + [
                (".".join(parts[:i + 1]), self.modules[".".join(parts[:i + 1])]) for i in range(len(parts))]
        return out

    def code_for(self, module_path: str) -> tuple[tuple[str, str], ...]:
        """Init steps whose module is the tensor's owner or one of its ancestors."""
        out = self._code.get(module_path)
        if out is None:
            out = self._code[module_path] = self._code_for(module_path)
        return out

    def _code_for(self, module_path: str) -> tuple[tuple[str, str], ...]:
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


def _rnn_gates(mod: nn.Module, shape: tuple[int, ...]) -> int:
    """The gate count of a recurrent layer's tensor: rows / hidden_size (LSTM 4, GRU 3, RNN 1)."""
    h = getattr(mod, "hidden_size", None)
    if not isinstance(h, int) or h < 1 or not shape or shape[0] % h:
        raise PolicyError(f"orthogonal_per_gate: cannot tell the gates of a tensor of shape {shape} in "
                          f"{type(mod).__name__} (no hidden_size dividing dim 0); give args {{gates: n}}",
                          field="args")
    return shape[0] // h


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
        if std == "config":
            std = ctx.config_std()
            shown["std"] = std
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
        if init == "ones" and local == "weight" and scales_by_one_plus_weight(mod):  # Gemma: x * (1 + weight)
            spec, shown["offset"] = S.Constant(0.0), "1 + weight"
            ctx.offset_norms.setdefault(rule.name or rule.init, {})[q] = type(mod).__name__
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
    elif init == "orthogonal_per_gate":
        gates = args.get("gates") or _rnn_gates(mod, shape)
        spec = OrthogonalPerGate(gates, float(args["gain"]))
        out.update(gain=spec.gain)
        shown["gates"] = gates
    elif init == "lstm_bias":
        h = getattr(mod, "hidden_size", None)
        if len(shape) != 1 or not isinstance(h, int) or shape[0] != 4 * h:
            # a GRU's 3H bias may divide by 4 too: the forget slice would land in the wrong gate
            raise PolicyError(f"lstm_bias: expected an LSTM bias of 4 * hidden_size rows (gates i, f, g, o), got "
                              f"shape {shape} in {type(mod).__name__} (hidden_size {h})", field="init")
        spec = GateConstant((0.0, float(args["forget"]), 0.0, 0.0))
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
    record_fans(ctx.true_fans, ctx.swapped_fans, rule.name or rule.init, init, args, "fans" in rule.args, mod, q,
                shape, out.get("fans"), spec.std if spec is not None else None)
    if spec is not None:
        spec.check_shape(shape)
        if spec.random and not t.is_floating_point():
            raise PolicyError(f"{init} draws random values but the tensor has dtype {t.dtype}", field="init")
        if isinstance(spec, S.Constant) and not t.is_floating_point() and spec.value != int(spec.value):
            raise PolicyError(f"constant {spec.value} does not fit dtype {t.dtype}", field="args")
    out["spec"] = spec
    out["args"] = shown
    return out


def _owner(ctx: _Context, name: str) -> tuple[str, str, nn.Module, str]:
    """(name, module path, module, local name) of a qualified tensor name."""
    path, _, local = name.rpartition(".")
    return name, path, ctx.modules[path], local


def _what(rule: Rule, res: Mapping[str, Any]) -> str:
    if res.get("spec") is not None:
        return res["spec"].describe()
    return f"{rule.init}" + (f" ({', '.join(m for _, m in res['code'])})" if res.get("code") else "")


def _resolve_named(ctx: _Context, pol: Policy, win: int, cq: str, cpath: str, cmod: nn.Module, clocal: str,
                   t: Tensor) -> tuple[Rule, dict[str, Any]]:
    """The rule ``pol.rules[win]`` (or what it says for the layer's bias) resolved for the tensor
    ``t`` under its name ``cq``; errors name the policy, rule, tensor and field."""
    rule = pol.rules[win]
    rule = rule.bias_rule(cq, cpath) or rule  # Rule(..., bias=...): the layer's bias gets its own init
    try:
        return rule, _resolve(ctx, rule, cq, cpath, cmod, clocal, t)
    except (PolicyError, ValueError, TypeError) as exc:
        fld = getattr(exc, "field", None)
        raise PolicyError(
            f"policy {pol.name!r}: rule {win}" + (f" ({rule.name!r})" if rule.name else "")
            + f" [{rule.init}] on {cq!r} (shape {tuple(t.shape)}, {type(cmod).__name__})"
            + (f": field {fld!r}" if fld else "") + f": {exc}",
            rule=win, name=rule.name, field=fld) from None


def _note_tied_conflict(ctx: _Context, pol: Policy, labels: list[str], q: str, t: Tensor, best: tuple,
                        others: list, rule: Rule, res: Mapping[str, Any]) -> None:
    """A note when the winning rules of a tied tensor's names give it different inits (the
    precedence picked one: say which, and how to choose another)."""
    chosen = _what(rule, res)
    lines = []
    for hits, cq, cpath, cmod, clocal, _ in others:
        win = hits[-1][1]
        try:
            orule, ores = _resolve_named(ctx, pol, win, cq, cpath, cmod, clocal, t)
            other = _what(orule, ores)
        except PolicyError as exc:  # the losing rule could not even apply under this name
            other = f"(not applicable: {exc})"
        if other != chosen:
            lines.append(f"as {cq!r} rule {labels[win]} would give {other}")
    if lines:
        ctx.notes.append(
            f"tied tensor {q!r} is registered as {best[1]!r} and {', '.join(repr(o[1]) for o in others)}, and the "
            f"rules for these names disagree: as {best[1]!r} rule {labels[best[0][-1][1]]} gives {chosen}; "
            + "; ".join(lines) + f". {labels[best[0][-1][1]]} applies to every name (precedence across names: the "
            "highest priority, then the later rule, then the first name); to choose, add a rule for one of the "
            "names with a higher priority")


def _rules_for(pol: Policy, local: str, cache: dict[str, list[tuple[int, Rule]]]) -> list[tuple[int, Rule]]:
    """``(index, rule)`` of the rules that can match a tensor whose local name is ``local``: a
    rule whose ``params`` are literal names without a dot (no ``bias=``) sees only its module's
    own tensors, so it cannot match another local name (Rule.match would say None)."""
    out = cache.get(local)
    if out is None:
        out = cache[local] = [(i, r) for i, r in enumerate(pol.rules) if r.bias is not None or r.params is None
                              or not _local_only(r.params) or local in r.params]
    return out


def plan(model: nn.Module, policy: PresetName | Policy | str | Mapping | Sequence = DEFAULT_POLICY,
         example_inputs: Any = None) -> Plan:
    """Decide, without writing anything, what every tensor of ``model`` gets under ``policy``.

    ``policy``: a :class:`Policy`, a preset name, a YAML/JSON path, a dict or a
    list of rules (see :func:`torchinit.load_policy`); default ``"pytorch"`` (torch's own
    per-layer init, the default of ``init_model``, ``materialize`` and the CLI too). ``example_inputs`` (a tensor,
    tuple or dict of kwargs) give ``nonlinearity="auto"`` a forward pass to follow when
    torch.fx cannot trace the model; it runs on a meta-device view of the model, so the plan
    is the same on CPU, on meta and sharded. Without them, inputs are built from the model's
    forward signature and config where it can be (Hugging Face models). When neither works,
    the activations are guessed from registration order and a
    :class:`~torchinit.NonlinearityWarning` (also in ``notes``) names the layers.

    Raises :class:`~torchinit.policy.PolicyError` naming the rule, tensor and field
    when a rule cannot apply (e.g. fans of a 1-D bias).
    """
    pol = load_policy(policy)
    if hasattr(pol, "_mup_plan"):  # a MuP (model/mup.py): the base policy's plan, rescaled per tensor role
        return pol._mup_plan(model, example_inputs)
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
    cache: dict[str, list[tuple[int, Rule]]] = {}
    labels = [r.label(i) for i, r in enumerate(pol.rules)]
    matched_count = [0] * len(pol.rules)
    won_count = [0] * len(pol.rules)
    entries: list[PlanEntry] = []
    unmatched: list[str] = []
    for q, mpath, mod, local, t, kind in _tensors_in_order(model):
        if isinstance(t, nn.parameter.UninitializedTensorMixin):
            raise ValueError(f"{q!r} is an uninitialized (lazy) {kind} of {type(mod).__name__}: run one forward "
                             "pass with a dummy batch before planning its init")
        # a tied tensor (one Parameter under several names: an embedding and its LM head) is matched
        # under every name; the names' winning rules compete by the same precedence as rules for one
        # name (highest priority, then the later rule; the first name on a tie), and when they give
        # different inits the plan says so (BERT's MLM bias: the head's own name matches no preset
        # rule, the decoder Linear's bias does)
        names = [(q, mpath, mod, local)] + [_owner(ctx, a) for a in aliases.get(id(t), ())]
        # weight_norm's g or v: rules select the weight they compute (model/parametrized.py)
        wn = weight_norm_part(ctx.modules, mpath, mod, local)
        if wn is not None and wn.part != "orthogonal":  # an orthogonal weight is what it is: no rule for it
            names.append((wn.name, wn.path, wn.module, wn.local))
        tied_head = _is_tied_head(names, t)
        # a frozen embedding table (Whisper's sinusoidal positions, requires_grad=False) is computed, not
        # learned: rules selecting it by module type pass it by (kept, noted); a rule naming it (qualnames)
        # or the module's own code (which knows how to compute it) still applies
        frozen = (kind == "parameter" and not t.requires_grad
                  and any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for _, _, m, _ in names))
        # mamba_ssm marks what its constructor computes (the time-step bias) _no_reinit: only a rule naming it writes it
        no_reinit = getattr(t, "_no_reinit", False) is True
        kept_from: list[str] = []
        per_name = []
        for cq, cpath, cmod, clocal in names:
            chain = ctx.chain(cpath)
            role = _role(kind, clocal, wn.v if wn is not None and cq == wn.name else t)
            hits = []
            for i, rule in _rules_for(pol, clocal, cache):
                if wn is not None and cq == q and not names_original(rule, wn):
                    continue  # by its shape or a catch-all, g would be drawn as a weight
                how = rule.match(cq, role, chain, tied_head)
                if how is None:
                    continue
                if rule.init == "module" and not ctx.code_for(cpath):
                    continue
                if (frozen and rule.qualnames is None and rule.init != "module") or (
                        no_reinit and q not in (rule.qualnames or ())):
                    kept_from.append(labels[i])
                    continue
                hits.append((rule.priority, i, how))
                matched_count[i] += 1
            if hits:
                per_name.append((sorted(hits), cq, cpath, cmod, clocal, role))
        if kept_from:
            passed = ", ".join(dict.fromkeys(kept_from))
            ctx.notes.append(
                (f"kept: {q!r} ({type(mod).__name__}) is marked _no_reinit (its constructor computed it, as "
                 f"mamba_ssm's time-step bias); rule {passed} would have overwritten it" if no_reinit and not per_name else
                 f"kept: frozen (requires_grad=False) {q!r} ({type(mod).__name__}): a computed table, not a learned "
                 f"one; rule {passed} would have overwritten it" if not per_name else
                 f"frozen (requires_grad=False) {q!r} ({type(mod).__name__}): rule {passed} passes it by, its "
                 f"module's own init code applies")
                + f". A rule naming it (qualnames: {q!r}) initializes it")
        if not per_name:
            if kept_from:
                continue  # kept: not unmatched
            if kind == "parameter" or (local in _RESETTABLE_BUFFERS and isinstance(mod, nn.modules.batchnorm._NormBase)):
                unmatched.append(q)
            continue
        best = max(per_name, key=lambda n: n[0][-1][:2])  # max keeps the first of equals
        hits, cq, cpath, cmod, clocal, role = best
        _, win, how = hits[-1]
        if cq != q:
            how = f"{how} (as {cq!r})"
        won_count[win] += 1

        if wn is not None and wn.part == "orthogonal" and rule.init not in ("keep", "module"):
            raise PolicyError(f"policy {pol.name!r}: rule {labels[win]} on {q!r}: {orthogonal_refusal(wn, q)}",
                              rule=win, name=rule.name, field="init")
        as_weight = wn is not None and cq == wn.name
        rule, res = _resolve_named(ctx, pol, win, cq, cpath, cmod, clocal, wn.v if as_weight else t)
        if as_weight:
            try:
                how, role, res = weight_norm_entry(how, wn, res, t, q)
            except PolicyError as exc:
                raise PolicyError(f"policy {pol.name!r}: rule {labels[win]}: {exc}", rule=win,
                                  name=rule.name, field=exc.field) from None
        if rule is not pol.rules[win]:
            how = f"{how} (rule's bias=)"
        others = [n for n in per_name if n is not best]
        overridden = [labels[i] for _, i, _ in reversed(hits[:-1])]
        if others:
            overridden += [labels[n[0][-1][1]] for n in others if labels[n[0][-1][1]] not in overridden
                           and n[0][-1][1] != win]
            _note_tied_conflict(ctx, pol, labels, q, t, best, others, rule, res)
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
            initializer=res.get("initializer", rule.init), args=res["args"], spec=spec, fans=res["fans"], gain=res["gain"],
            nonlinearity=res["nonlinearity"], nonlinearity_source=res["nonlinearity_source"], matched_as=how,
            overridden=tuple(overridden), aliases=tuple(aliases.get(id(t), ())),
            zero_rows=zero_rows, code=res["code"],
        ))
    notes, warns = fans_notes(ctx.true_fans, ctx.swapped_fans)
    ctx.notes.extend(notes)
    for msg in warns:
        warnings.warn(msg, UserWarning, stacklevel=2)
    for rname, hits in ctx.offset_norms.items():
        shown = ", ".join(f"{n!r} ({c})" for n, c in list(hits.items())[:3])
        ctx.notes.append(
            f"rule {rname!r} (ones): {len(hits)} norm weight(s) scale by 1 + weight ({shown}"
            f"{f' and {len(hits) - 3} more' if len(hits) > 3 else ''}): they get 0, their identity (1 would "
            f"double every normalized activation); a rule init constant, args val: 1 writes 1")
    guessed = {e.module: e.nonlinearity for e in entries if (e.nonlinearity_source or "").startswith("order:")}
    if guessed:  # a silently wrong gain is worse than a warning
        msg = order_fallback_warning(guessed, ctx.notes)
        ctx.notes.append(msg)
        warnings.warn(msg, NonlinearityWarning, stacklevel=2)
    for msg in unused_rule_hints(model, pol.rules, [i for i in range(len(labels)) if not matched_count[i]], labels):
        ctx.notes.append(msg)  # a typo in a selector silently left the tensors to the other rules
        warnings.warn(msg, UserWarning, stacklevel=2)
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
