"""plan(): resolve a policy's rules against a model into a Plan (what each tensor gets, and why)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from ..core import specs as S
from ..core.fans import Fans, compute_fans, module_fans, torch_fans
from ..core.gains import TORCH_NONLINEARITIES, second_moment_gain
from .nonlinearity import (Detection, NonlinearityWarning, auto_gain, detect_nonlinearities, is_weight_layer,
                           order_fallback_warning)
from .plan import Plan, PlanEntry
from .policy import INITIALIZERS, Policy, PolicyError, Rule, load_policy

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
            from .module_init import module_init_steps

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
    guessed = {e.module: e.nonlinearity for e in entries if (e.nonlinearity_source or "").startswith("order:")}
    if guessed:  # a silently wrong gain is worse than a warning
        msg = order_fallback_warning(guessed)
        ctx.notes.append(msg)
        warnings.warn(msg, NonlinearityWarning, stacklevel=2)
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
