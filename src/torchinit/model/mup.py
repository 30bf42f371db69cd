"""muP (maximal update parametrization, Yang et al., Tensor Programs V, 2022) as a policy.

``MuP(base=base_model)`` compares every tensor of a target model with its namesake in
``base`` (the same architecture at the base width; on meta is fine) and, optionally,
``delta`` (the same architecture at another width): a dimension scales with width when
it differs between base and target, or between base and delta. From the fan-in and
fan-out dimensions that scale, each tensor gets a role:

========== ===================== ============================= ========================
role       which dims scale      init (relative to the base)   Adam LR / SGD LR
========== ===================== ============================= ========================
input      fan_out only          base spec                     lr / lr * m_out
hidden     fan_in and fan_out    base variance / m_in          lr / m_in / lr * m_out/m_in
output     fan_in only           zero, or base std / m_in      lr / m_in / lr / m_in
vector     its one dim (1-D)     base spec                     lr / lr * m
fixed      none                  base spec                     lr / lr
========== ===================== ============================= ========================

``m_in = fan_in / base fan_in`` (``m_out`` likewise). This is Table 3 of Tensor Programs
V (init variance 1/fan_in for input and hidden weights, 1/fan_in^2 for output weights;
Adam LR 1/fan_in for hidden and output weights), anchored at the base width so that at
the base width every tensor gets exactly the base policy's spec; it needs no multiplier
in the forward pass. Roles come from shapes and names alone: nothing is stored on the
tensors, so DTensor/FSDP2-sharded and compiled models work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterator, Mapping

from torch import Tensor, nn

from ..core import specs as S
from .errors import PolicyError
from .parametrized import rederive_gs
from .plan import Plan, PlanEntry
from .policy import Policy, load_policy
from .tensors import tensors_in_order as _tensors_in_order
from .resolve import plan as _plan

__all__ = ["MuP", "MuRole", "ROLES"]

ROLES = ("input", "hidden", "output", "vector", "fixed")
_READOUTS = ("zero", "scaled")
_OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class MuRole:
    """One tensor's muP role: which of its dims scale with width, and by how much.

    ``fan_in_mult``/``fan_out_mult``: target size of the fan-in/fan-out dim over the base
    size (1 for a dim that does not scale); ``width_mult``: the multiplier that sets
    the tensor's init and LR (``fan_in_mult`` for hidden and output weights,
    ``fan_out_mult`` for input weights, the dim's ratio for vectors, 1 for fixed).
    """

    name: str
    role: str
    shape: tuple[int, ...]
    base_shape: tuple[int, ...]
    fan_in_mult: float
    fan_out_mult: float
    width_mult: float

    def std_mult(self, readout: str = "scaled") -> float:
        """Factor on the base spec's std: 1/sqrt(m) for hidden weights (variance / m),
        1/m for a scaled readout (variance 1/fan_in^2), 0 for a zero readout, else 1."""
        if self.role == "hidden":
            return 1.0 / math.sqrt(self.fan_in_mult)
        if self.role == "output":
            return 0.0 if readout == "zero" else 1.0 / self.fan_in_mult
        return 1.0

    def lr_mult(self, optimizer: str) -> float:
        """Factor on the base LR (Tensor Programs V, Table 3, no forward multiplier)."""
        if optimizer in ("adam", "adamw"):
            return 1.0 / self.fan_in_mult if self.role in ("hidden", "output") else 1.0
        if self.role == "input":
            return self.fan_out_mult
        if self.role == "vector":
            return self.width_mult
        if self.role == "hidden":
            return self.fan_out_mult / self.fan_in_mult
        if self.role == "output":
            return 1.0 / self.fan_in_mult
        return 1.0


def _in_out_dims(mod: nn.Module, local: str, ndim: int) -> tuple[int, int] | None:
    """(fan-in dim, fan-out dim) of a 2+-D weight: dims 1, 0 (torch's ``(out, in, *k)``),
    except tensors stored input-first: Embedding rows are indexed by the input (vocab),
    Hugging Face ``Conv1D`` is ``x @ w`` and transposed convs are ``(in, out, *k)``."""
    if ndim < 2:
        return None
    if (isinstance(mod, (nn.Embedding, nn.EmbeddingBag)) or type(mod).__name__ == "Conv1D"
            or (isinstance(mod, nn.modules.conv._ConvTransposeNd) and local == "weight")):
        return 0, 1
    return 1, 0


def _unique_tensors(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, Tensor, str]]:
    """(qualified name, owner module, local name, tensor, kind), tied tensors once: the plan's walk."""
    for name, _mpath, mod, local, t, kind in _tensors_in_order(model):
        yield name, mod, local, t, kind


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    out = {}
    for n, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if t is not None:
            out[n] = tuple(t.shape)
    return out


def _scaled(spec: S.Spec, c: float, name: str) -> S.Spec:
    """``spec`` with its spread about the mean multiplied by ``c`` (std times c)."""
    if c == 1.0:
        return spec
    if c == 0.0:
        return S.Constant(0.0)
    if isinstance(spec, S.Normal):
        return S.Normal(spec.mean, spec.std * c)
    if isinstance(spec, S.TruncatedNormal):
        m = spec.mean_
        return S.TruncatedNormal(m, spec.std_ * c, m + (spec.a - m) * c, m + (spec.b - m) * c)
    if isinstance(spec, S.Uniform):
        m = spec.mean
        return S.Uniform(m + (spec.low - m) * c, m + (spec.high - m) * c)
    if isinstance(spec, (S.Orthogonal, S.DeltaOrthogonal)):
        return type(spec)(spec.gain * c)
    if isinstance(spec, S.Sparse):
        return S.Sparse(spec.sparsity, spec.std * c)
    if isinstance(spec, S.Constant) and spec.value == 0.0:
        return spec
    raise PolicyError(f"muP: cannot scale {name!r}'s spec {spec!r} by {c:.6g} (a random spec is needed: "
                      "give this tensor a normal, uniform, truncated normal, orthogonal or sparse rule)",
                      field="init")


class MuP(Policy):
    """muP as a policy: ``torchinit.init_model(model, MuP(base=base_model), seed=0)``.

    Args:
        base: the same architecture at the base width (the width the hyperparameters
            were tuned at); its tensors may be on meta (nothing is allocated). The MuP
            keeps a reference to it: each plan plans it under ``init`` for the base
            specs, and ``attention_scale_`` reads its head dims.
        delta: optional, the same architecture at another width: dims that differ
            between ``base`` and ``delta`` scale with width even where the target model
            has the base width (needed for a zero readout at the base width).
        init: the base policy (a preset name, ``Policy``, dict, file...): the specs
            every tensor gets at the base width.
        readout: ``"zero"`` (output weights zero at every width, as Tensor Programs V
            recommends) or ``"scaled"`` (the base spec with its std divided by
            ``width_mult``: variance proportional to 1/fan_in^2).
        example_inputs: for planning ``base`` where ``nonlinearity="auto"`` needs a
            forward pass (default: the target model's ``example_inputs``).

    At the base width (every dim as in ``base``) a ``MuP`` plans exactly the base
    policy's specs, bit for bit, except a zero readout. Elsewhere hidden weights get
    the base spec with its variance divided by ``width_mult`` (std by its root), the
    output weights per ``readout``, and every other tensor the base spec.
    """

    def __init__(self, base: nn.Module, delta: nn.Module | None = None, init: Any = "kaiming",
                 readout: str = "zero", *, example_inputs: Any = None) -> None:
        if not isinstance(base, nn.Module):
            raise TypeError(f"MuP: base must be an nn.Module (the model at the base width), got {type(base).__name__}")
        if delta is not None and not isinstance(delta, nn.Module):
            raise TypeError(f"MuP: delta must be an nn.Module or None, got {type(delta).__name__}")
        if readout not in _READOUTS:
            raise ValueError(f"MuP: readout must be one of {', '.join(_READOUTS)}, got {readout!r}")
        pol = load_policy(init)
        if isinstance(pol, MuP):
            raise TypeError("MuP: init must be a plain policy, not another MuP")
        super().__init__(rules=pol.rules, name=f"mup({pol.name})", on_unmatched=pol.on_unmatched,
                         options=pol.options)
        object.__setattr__(self, "base_policy", pol)
        object.__setattr__(self, "readout", readout)
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_base_shapes", _shapes(base))
        object.__setattr__(self, "_delta_shapes", _shapes(delta) if delta is not None else None)
        object.__setattr__(self, "_base_inputs", example_inputs)

    # a MuP is a Policy (accepted wherever one is) but compares by identity: two MuPs with
    # the same rules and different bases are different parametrizations
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"MuP(init={self.base_policy.name!r}, readout={self.readout!r}, base tensors={len(self._base_shapes)})"

    def extend(self, other: Any) -> "MuP":
        """This MuP with ``other``'s rules appended to its base policy."""
        new = object.__new__(MuP)
        Policy.__init__(new, rules=self.rules, name=self.name, on_unmatched=self.on_unmatched, options=self.options)
        for k in ("readout", "_base", "_base_shapes", "_delta_shapes", "_base_inputs"):
            object.__setattr__(new, k, getattr(self, k))
        pol = self.base_policy.extend(other)
        object.__setattr__(new, "base_policy", pol)
        object.__setattr__(new, "rules", pol.rules)
        return new

    def to_dict(self) -> dict[str, Any]:
        """Refused: a policy file cannot hold a MuP (its rules depend on the base model's
        shapes, which a file does not carry). Raises ``TypeError``; save the plan instead,
        ``torchinit.plan(model, mup).to_json()``."""
        raise TypeError("a MuP cannot be written as a policy file (it needs the base model's shapes); "
                        "save its plan instead: torchinit.plan(model, mup).to_json()")

    # -- roles -------------------------------------------------------------------------
    def roles(self, model: nn.Module) -> dict[str, MuRole]:
        """Every tensor's :class:`MuRole` (tied tensors under their first name), from the
        shapes of ``model``, ``base`` and ``delta``. Raises ValueError naming a tensor
        the base lacks or whose rank differs."""
        out = {}
        for name, mod, local, t, kind in _unique_tensors(model):
            out[name] = self._role(name, mod, local, tuple(t.shape), kind)
        return out

    def _role(self, name: str, mod: nn.Module, local: str, shape: tuple[int, ...], kind: str) -> MuRole:
        base = self._base_shapes.get(name)
        if base is None:
            raise ValueError(f"MuP: model tensor {name!r} (shape {shape}) has no counterpart in the base model "
                             "(base must be the same architecture at the base width)")
        if len(base) != len(shape):
            raise ValueError(f"MuP: {name!r} has shape {shape} but {base} in the base model (rank differs)")
        delta = self._delta_shapes.get(name) if self._delta_shapes is not None else None
        if self._delta_shapes is not None and (delta is None or len(delta) != len(shape)):
            raise ValueError(f"MuP: {name!r} (shape {shape}) has no counterpart of the same rank in the delta model")
        scales = [shape[i] != base[i] or (delta is not None and delta[i] != base[i]) for i in range(len(shape))]
        ratio = [shape[i] / base[i] if base[i] else 1.0 for i in range(len(shape))]
        dims = _in_out_dims(mod, local, len(shape))
        if kind == "buffer":
            return MuRole(name, "fixed", shape, base, 1.0, 1.0, 1.0)
        if dims is None:
            if any(scales):
                m = ratio[0] if ratio else 1.0
                return MuRole(name, "vector", shape, base, 1.0, m, m)
            return MuRole(name, "fixed", shape, base, 1.0, 1.0, 1.0)
        i, o = dims
        other = [d for d in range(len(shape)) if d not in dims and scales[d]]
        if other:
            also = f", delta {delta}" if delta is not None else ""
            raise ValueError(f"MuP: {name!r} (shape {shape}, base {base}{also}): dim {other[0]} scales with width but "
                             f"is neither its fan-in dim ({i}) nor its fan-out dim ({o}); muP has no role for it")
        mi = ratio[i] if scales[i] else 1.0
        mo = ratio[o] if scales[o] else 1.0
        role = {(True, True): "hidden", (False, True): "input", (True, False): "output",
                (False, False): "fixed"}[(scales[i], scales[o])]
        m = {"hidden": mi, "output": mi, "input": mo, "fixed": 1.0}[role]
        return MuRole(name, role, shape, base, mi, mo, m)

    # -- the plan (called by torchinit.plan through its hook) -----------------------------
    def _mup_plan(self, model: nn.Module, example_inputs: Any = None) -> Plan:
        """The base policy's plan of ``model`` with each spec scaled for its role."""
        roles = self.roles(model)
        target = _plan(model, self.base_policy, example_inputs)
        base = _plan(self._base, self.base_policy,
                     self._base_inputs if self._base_inputs is not None else example_inputs)
        entries: list[PlanEntry] = []
        counts: dict[str, int] = {}
        for e in target.entries:
            r = roles[e.name]
            counts[r.role] = counts.get(r.role, 0) + 1
            args = dict(e.args, mup_role=r.role, width_mult=r.width_mult)
            c = r.std_mult(self.readout)
            if e.kind == "buffer" or str(e.args.get("weight_norm", "")).startswith("g of "):  # running stats: the
                entries.append(replace(e, args=args))  # policy's own entry; weight_norm's g: from its v, below
                continue
            if c == 1.0:
                # every dim as in base (or a role the width does not rescale): the base spec
                be = e if r.shape == r.base_shape else _base_entry(base, e.name)
                if be.spec is None and be.initializer == "module":
                    raise PolicyError(
                        f"muP: {e.name!r} ({r.role}, shape {r.shape}, base {r.base_shape}) gets the module's own "
                        f"init code under {self.base_policy.name!r}, which would draw it for the target width, not "
                        "the base width; use a policy with spec rules for it (kaiming, xavier, gpt2, ...)",
                        field="init")
                entries.append(replace(e, args=args, spec=be.spec, code=be.code, initializer=be.initializer))
                continue
            if c == 0.0:  # zero readout
                args = {"mup_role": r.role, "width_mult": r.width_mult, "readout": "zero"}
                entries.append(replace(e, args=args, spec=S.Constant(0.0), initializer="zeros", code=()))
                continue
            be = _base_entry(base, e.name)
            if be.spec is None:
                raise PolicyError(
                    f"muP: {e.name!r} ({r.role}, width_mult {r.width_mult:g}) gets {be.initializer!r} under "
                    f"{self.base_policy.name!r}, which has no spec to scale; use a policy with spec rules for it "
                    "(kaiming, xavier, gpt2, ...)", field="init")
            entries.append(replace(e, args=args, spec=_scaled(be.spec, c, e.name)))
        entries = rederive_gs(model, entries)  # g: the norm of a slice of its v's scaled spec
        notes = list(target.notes)
        notes.append("muP roles: " + ", ".join(f"{counts[k]} {k}" for k in ROLES if k in counts)
                     + f"; readout={self.readout}; init and LR relative to the base width (Tensor Programs V, Table 3)")
        tied = [n for n in _tied_readouts(model, roles)]
        for n in tied:
            notes.append(f"muP: {n!r} is tied to the output layer; a tied readout needs its logits multiplied by "
                         "1/width_mult in the forward pass (init and LR alone cannot give it)")
        if not any(r.role in ("hidden", "input", "output", "vector") for r in roles.values()):
            notes.append("muP: no dimension differs from the base model: every tensor is 'fixed' "
                         "(pass delta=, the model at another width, to find the scaling dims at the base width)")
        return replace(target, entries=entries, policy=self.name, notes=notes)

    # -- optimizer -----------------------------------------------------------------------
    def param_groups(self, model: nn.Module, lr: float, optimizer: str = "adam",
                     weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups with muP's per-tensor learning rates.

        ``torch.optim.Adam(mup.param_groups(model, lr=1e-3))``. Adam/AdamW: hidden and
        output weights ``lr / m_in``, everything else ``lr``; SGD: input weights
        ``lr * m_out``, vectors ``lr * m``, hidden ``lr * m_out / m_in``, output
        ``lr / m_in`` (Tensor Programs V, Table 3). ``weight_decay`` is divided by the
        same factor, so ``lr * weight_decay`` (the decay per step of torch's AdamW) does
        not change with width. Every parameter appears exactly once (tied ones once);
        groups also carry ``mup_role``, ``width_mult`` and ``names``.
        """
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"param_groups: optimizer must be one of {', '.join(_OPTIMIZERS)}, got {optimizer!r}")
        for k, v in (("lr", lr), ("weight_decay", weight_decay)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"param_groups: {k} must be a finite number >= 0, got {v!r}")
        roles = self.roles(model)
        groups: dict[tuple[str, float], dict[str, Any]] = {}
        for name, p in model.named_parameters():
            r = roles[name]
            f = r.lr_mult(optimizer)
            g = groups.get((r.role, f))
            if g is None:
                g = groups[(r.role, f)] = {"params": [], "lr": lr * f, "weight_decay": weight_decay / f,
                                           "mup_role": r.role, "width_mult": r.width_mult, "names": []}
            g["params"].append(p)
            g["names"].append(name)
        return list(groups.values())


    # -- the forward pass ----------------------------------------------------------------
    def attention_scale_(self, model: nn.Module) -> list[str]:
        """Give attention muP's logit scale ``sqrt(base_head_dim) / head_dim`` (1/d, anchored
        at the base: the usual ``1/sqrt(head_dim)`` at the base width) where a module
        exposes it cleanly: an int ``head_dim`` and a float ``scaling`` (Hugging Face
        Llama-style attention, GPT-2's ``GPT2Attention``) or ``scale`` (timm) equal to
        ``head_dim ** -0.5``. Returns the names of the modules changed; a module already
        at muP's scale is left as it is. Where head_dim is the base's, 1/sqrt(d) differs
        from 1/d by a constant and nothing changes.

        Raises ValueError, before changing anything, for an ``nn.MultiheadAttention``
        whose head dim scales (its forward has no scale to set) and for a scale that is
        neither ``head_dim ** -0.5`` nor muP's.
        """
        changes: list[tuple[nn.Module, str, float, str]] = []
        for name, mod in model.named_modules():
            hd = getattr(mod, "head_dim", None)
            if not isinstance(hd, int) or isinstance(hd, bool) or hd < 1:
                continue
            try:
                base_hd = getattr(self._base.get_submodule(name), "head_dim", None)
            except AttributeError:
                base_hd = None
            if not isinstance(base_hd, int) or base_hd == hd:
                continue
            attr = next((a for a in ("scaling", "scale") if isinstance(getattr(mod, a, None), float)), None)
            if attr is None:
                if isinstance(mod, nn.MultiheadAttention):
                    raise ValueError(
                        f"attention_scale_: {name!r} is an nn.MultiheadAttention whose head dim scales ({base_hd} -> "
                        f"{hd}); its forward divides the logits by sqrt(head_dim) with no scale to set: keep head_dim "
                        "fixed and scale num_heads with width, or use an attention module with a scale")
                continue
            old, want = getattr(mod, attr), math.sqrt(base_hd) / hd
            if math.isclose(old, want, rel_tol=1e-12):
                continue
            if not math.isclose(old, hd ** -0.5, rel_tol=1e-12):
                raise ValueError(f"attention_scale_: {name!r}.{attr} is {old:.6g}, neither 1/sqrt(head_dim={hd}) nor "
                                 f"muP's sqrt({base_hd})/{hd}; set it yourself")
            changes.append((mod, attr, want, name))
        for mod, attr, want, _ in changes:
            setattr(mod, attr, want)
        return [n for *_, n in changes]


def _base_entry(base: Plan, name: str) -> PlanEntry:
    try:
        return base[name]
    except KeyError:
        raise PolicyError(f"muP: the base policy plans {name!r} in the target model but not in the base model",
                          field="init") from None


def _tied_readouts(model: nn.Module, roles: Mapping[str, MuRole]) -> list[str]:
    """First names of tensors that are both an input-like weight and a readout (tied embeddings)."""
    out = []
    for name, mod, local, t, kind in _unique_tensors(model):
        r = roles.get(name)
        if r is None or r.role != "input":
            continue
        for alias, p in model.named_parameters(remove_duplicate=False):
            if p is t and alias != name:
                owner = model.get_submodule(alias.rpartition(".")[0]) if "." in alias else model
                dims = _in_out_dims(owner, alias.rpartition(".")[2], p.dim())
                if dims == (1, 0):  # used as a Linear (out, in): the readout
                    out.append(name)
                    break
    return out
