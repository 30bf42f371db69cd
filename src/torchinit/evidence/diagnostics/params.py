"""Statistics of the parameters themselves: promised vs measured std, duplicate rows, tied and parametrized tensors."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ...core.fans import module_fans
from ...core.gate_specs import gate_block_std
from .classify import _expected_gain, _kind
from .report import LayerStats, ParamStats


def _promised_std(spec: Any, shape: Sequence[int]) -> float | None:
    if spec is None:
        return None
    kind = getattr(spec, "kind", None)
    if kind == "orthogonal" or kind == "delta_orthogonal":
        rows = shape[0]
        cols = int(math.prod(shape[1:])) if len(shape) > 1 else 1
        gain = float(getattr(spec, "gain", 1.0))
        if kind == "delta_orthogonal":
            k = int(math.prod(shape[2:]))
            return gain * math.sqrt(1.0 / (max(rows, shape[1]) * k)) if k else None
        return gain / math.sqrt(max(rows, cols))
    if kind == "orthogonal_per_gate":
        return gate_block_std(spec, tuple(shape))
    if kind == "sparse":
        rows = shape[0]
        zeros = math.ceil(spec.sparsity * rows)
        return float(spec.std) * math.sqrt(max(rows - zeros, 0) / rows) if rows else None
    std = getattr(spec, "std", None)
    return float(std) if std is not None else None


def _fingerprint(t: Tensor) -> tuple:
    """Shape and 64 values at fixed positions: equal tensors share it, and tensors drawn at
    random almost never do (``torch.equal`` confirms every match). No pass over the tensor."""
    f = t.detach().reshape(-1)
    # integer positions: a float32 linspace rounds n - 1 up past the end beyond 2**24 elements
    n, steps = f.numel(), min(64, f.numel())
    idx = torch.arange(steps, device=f.device) * (n - 1) // max(steps - 1, 1)
    return (tuple(t.shape), tuple(f[idx].double().tolist()))


#: rows projected per chunk by _duplicate_rows (float64 work memory stays ~64 MB)
_ROW_CHUNK_ELEMENTS = 1 << 23


def _duplicate_rows(w2: Tensor) -> int:
    rows, cols = w2.shape
    if rows < 2 or cols == 0:
        return 0
    g = torch.Generator().manual_seed(0)
    v = torch.randn(cols, generator=g, dtype=torch.float64).to(w2.device)
    # a random projection of every row (equal rows project equally), in float64 chunks:
    # no float64 copy of a whole embedding matrix
    step = max(1, _ROW_CHUNK_ELEMENTS // cols)
    h = torch.cat([c.double() @ v for c in w2.split(step)])
    order = torch.argsort(h)
    hs = h[order]
    same = (hs[1:] == hs[:-1]).nonzero().flatten()
    dup = set()
    for i in same.tolist():
        a, b = int(order[i]), int(order[i + 1])
        if torch.equal(w2[a], w2[b]):
            dup.add(b)
    return len(dup)


def _param_stats(model: nn.Module, plan: Any, records: list[LayerStats],
                 modules: Mapping[str, nn.Module]) -> list[ParamStats]:
    from torch.nn.utils import parametrize

    # parametrized tensors are read (module.weight, also by module_fans) in eval mode:
    # in training mode spectral_norm's power iteration would update its buffers; this
    # is the weight the model's stored state defines
    modes = [(m, m.training) for pl in model.modules() if isinstance(pl, parametrize.ParametrizationList)
             for m in pl.modules()]
    try:
        for m, _ in modes:
            m.training = False
        return _param_stats_impl(model, plan, records, parametrize.is_parametrized)
    finally:
        for m, training in modes:
            m.training = training


def _param_stats_impl(model: nn.Module, plan: Any, records: list[LayerStats],
                      is_parametrized: Callable[[nn.Module], bool]) -> list[ParamStats]:
    specs: dict[str, Any] = {}
    if plan is not None:
        for e in getattr(plan, "entries", plan):
            specs[getattr(e, "name")] = getattr(e, "spec", None)
            wn = str((getattr(e, "args", None) or {}).get("weight_norm", ""))
            if wn.startswith("v of "):  # weight_norm's v: the weight g * v / ||v|| has its spec's std
                specs.setdefault(wn[5:], getattr(e, "spec", None))
    linear_by_module: dict[str, LayerStats] = {}
    for r in records:
        if r.kind == "linear":
            linear_by_module.setdefault(r.name.split("#")[0], r)
    out: list[ParamStats] = []
    seen: dict[int, str] = {}
    prints: dict[tuple, list[str]] = {}  # fingerprint -> parameters that have it
    computed: dict[str, Tensor] = {}  # effective tensors of parametrizations, by name
    originals: dict[int, str] = {}  # id(ParametrizationList) -> name of the tensor it computes

    def tensor_stats(qname: str, label: str, pname: str, mod: nn.Module, t: Tensor) -> ParamStats | None:
        if t.is_meta or not t.is_floating_point() or t.numel() == 0:
            return None
        with torch.no_grad():
            pf = t.detach().float()
            # var and mean, not var_mean: its Welford reduction is 5x slower on CPU
            var, mean = torch.var(pf, correction=0) if pf.numel() > 1 else torch.zeros(()), pf.mean()
            lo, hi = torch.aminmax(pf)  # one pass, nothing allocated; NaN makes lo != hi
            constant = bool(lo == hi)
            finite = bool(torch.isfinite(lo) & torch.isfinite(hi))  # min/max propagate NaN
        ps = ParamStats(name=qname, module=label, shape=list(t.shape), mean=float(mean),
                        std=float(var.sqrt()), constant=constant, zero=constant and float(lo) == 0.0,
                        finite=finite)
        if qname in specs:
            ps.promised_std = _promised_std(specs[qname], t.shape)
        if id(mod) in originals:
            # weight_norm's g or spectral_norm's raw weight: its rows need not differ nor
            # be random; the tensor the layer uses is judged instead
            ps.original_of = originals[id(mod)]
            return ps
        if t.dim() >= 2 and not constant:
            with torch.no_grad():
                ps.duplicate_rows = _duplicate_rows(pf.reshape(t.shape[0], -1))
                fp = _fingerprint(pf)
            for earlier in prints.get(fp, ()):  # a fingerprint is not proof: compare
                other = computed.get(earlier)
                if other is None:
                    other = model.get_parameter(earlier)
                if torch.equal(pf, other.detach().float()):
                    ps.identical_to = earlier
                    break
            else:
                prints.setdefault(fp, []).append(qname)
        if pname == "weight" and t.dim() >= 2 and _kind(mod) == "linear":
            try:
                fan_in = module_fans(mod).fan_in
            except (ValueError, TypeError):
                fan_in = 0
            if fan_in:
                # mean(w^2) = var + mean^2, from the pass above
                ps.gain = math.sqrt(max(float(var) + float(mean) ** 2, 0.0) * fan_in)
            rec = linear_by_module.get(label)
            if rec is not None and rec.next_act:
                ps.expected_gain = _expected_gain(rec.next_act, rec.next_act_param)
        return ps

    for mname, mod in model.named_modules():
        label = mname or type(mod).__name__  # the name the recorder gives the module
        if is_parametrized(mod):
            # weight_norm / spectral_norm: the layer computes with module.<tensor>, built
            # from parametrizations.<tensor>.original*; its stats (gain included) are
            # those of that effective tensor, named like the plain parameter
            for tname, plist in mod.parametrizations.items():
                qname = f"{mname}.{tname}" if mname else tname
                originals[id(plist)] = qname
                with torch.no_grad():
                    eff = getattr(mod, tname)
                if isinstance(eff, Tensor):
                    computed[qname] = eff
                    ps = tensor_stats(qname, label, tname, mod, eff)
                    if ps is not None:
                        out.append(ps)
        for pname, p in mod.named_parameters(recurse=False):
            qname = f"{mname}.{pname}" if mname else pname
            if id(p) in seen:
                continue
            seen[id(p)] = qname
            ps = tensor_stats(qname, label, pname, mod, p)
            if ps is not None:
                out.append(ps)
    return out
