"""A weight-normed layer's ``g`` and ``v``, planned as the weight they compute.

``torch.nn.utils.parametrizations.weight_norm`` (Wav2Vec2's and HuBERT's ``pos_conv_embed``,
vocoders) replaces a layer's ``weight`` by ``w = g * v / ||v||`` (one norm per slice along
``dim``): the learned tensors are ``<layer>.parametrizations.weight.original0`` (g) and
``original1`` (v); the legacy ``torch.nn.utils.weight_norm`` names them ``weight_g`` and
``weight_v``. Rules select ``<layer>.weight`` (``modules: Linear, params: weight``, a
qualname, ...) and :func:`torchinit.plan` applies them to the tensors that compute it:

* ``v`` gets the weight's spec (same shape, the layer's fans and gain);
* ``g`` gets the constant ``sqrt(mean square of the spec * slice size)``: the norm a slice
  of the spec has in mean square, so the effective weight has the spec's second moment
  exactly, each slice's direction drawn from the spec. A constant is keyed by nothing and
  shard-local; ``g = ||v||`` (what ``weight_norm`` computes when it wraps an initialized
  layer) would need the whole of ``v``.

A rule that names an original itself (its ``qualnames`` or ``params`` say ``original`` /
``parametrizations``, or ``weight_g``/``weight_v``) still applies to it as written; rules
that would select it only by its shape or a catch-all glob no longer do (they drew ``g``
as a weight). Other parametrizations (``spectral_norm``, ``orthogonal``) are left as they
were: their originals are matched under their own names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping

from torch import Tensor, nn

from ..core import specs as S
from .errors import PolicyError

__all__ = ["WeightNormPart", "weight_norm_part", "names_original", "g_spec", "weight_norm_entry", "weight_norm_hint",
           "rederive_gs"]


@dataclass(frozen=True)
class WeightNormPart:
    """``g`` or ``v`` of a weight norm computing ``module.<local>`` (the layer at ``path``)."""

    name: str  # the computed tensor's qualified name: "<path>.weight"
    path: str
    module: nn.Module
    local: str  # "weight"
    part: str  # "g" or "v"
    v: Tensor  # the direction tensor: its shape gives the weight's fans
    v_name: str  # its qualified name
    stems: tuple[str, ...]  # what a rule's pattern says when it names the original itself


def _join(path: str, local: str) -> str:
    return f"{path}.{local}" if path else local


def weight_norm_part(modules: Mapping[str, nn.Module], mpath: str, mod: nn.Module,
                     local: str) -> WeightNormPart | None:
    """The weight norm ``mpath.local`` is part of, or None."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import _WeightNorm
    from torch.nn.utils.weight_norm import WeightNorm

    if isinstance(mod, parametrize.ParametrizationList):
        # <layer>.parametrizations.<tensor>.original{0,1}, one _WeightNorm and nothing else
        parts = mpath.split(".")
        if (len(parts) < 2 or parts[-2] != "parametrizations" or local not in ("original0", "original1")
                or len(mod) != 1 or not isinstance(mod[0], _WeightNorm)):
            return None
        path = ".".join(parts[:-2])
        return WeightNormPart(_join(path, parts[-1]), path, modules[path], parts[-1],
                              "g" if local == "original0" else "v", mod.original1, _join(mpath, "original1"),
                              ("original", "parametrizations"))
    for hook in mod._forward_pre_hooks.values():  # legacy: <layer>.weight_g / weight_v
        if isinstance(hook, WeightNorm) and local in (f"{hook.name}_g", f"{hook.name}_v"):
            v = mod._parameters.get(f"{hook.name}_v")
            if v is None:
                return None
            return WeightNormPart(_join(mpath, hook.name), mpath, mod, hook.name, local[-1], v,
                                  _join(mpath, f"{hook.name}_v"), (local,))
    return None


def names_original(rule, wn: WeightNormPart) -> bool:
    """Whether ``rule`` names the original itself, not the weight it computes."""
    pats = (rule.qualnames or ()) + (rule.params or ())
    return any(stem in p for p in pats if isinstance(p, str) for stem in wn.stems)


def _mean_square(spec: S.Spec, shape: tuple[int, ...]) -> float | None:
    if type(spec) in (S.Constant, S.Uniform, S.Normal, S.TruncatedNormal):
        return spec.mean ** 2 + spec.std ** 2
    if type(spec) is S.Orthogonal and len(shape) >= 2 and math.prod(shape) > 0:
        rows = shape[0]
        return spec.gain ** 2 / max(rows, math.prod(shape) // rows)  # (semi-)orthonormal rows or columns
    return None


def g_spec(spec: S.Spec, wn: WeightNormPart, g: Tensor, q: str) -> S.Constant:
    """What ``g`` (the tensor ``q``) gets when the weight ``wn.name`` gets ``spec``."""
    shape = tuple(wn.v.shape)
    ms = _mean_square(spec, shape)
    what = f"{q!r} is the g of weight_norm's {wn.name!r} = g * v / ||v||, whose rule gives {spec.describe()}"
    if ms is None:
        raise PolicyError(f"{what}: g would be the norm of a slice of it, not known for this spec; give "
                          f"{wn.name!r} a normal, uniform, truncated normal, orthogonal or constant init, or g a "
                          f"rule naming it (qualnames: {q!r}; the weight's rule then applies to v only)", field="init")
    c = math.sqrt(ms * (math.prod(shape) // max(g.numel(), 1)))
    if not (c > 0 and math.isfinite(c)):
        raise PolicyError(f"{what}: a zero v makes the weight NaN (0 / 0, as torch's weight_norm of a zero "
                          f"weight does); give {wn.name!r} a non-zero init, or remove weight_norm from the layer",
                          field="init")
    return S.Constant(c)


def weight_norm_entry(how: str, wn: WeightNormPart, res: dict, t: Tensor, q: str) -> tuple[str, str, dict]:
    """(matched_as, role, resolved rule) of ``q`` (``t``: g or v) when a rule for ``wn.name`` won."""
    role = "weight" if t.dim() >= 2 else "scale"
    if wn.part == "v" or res.get("spec") is None:  # v, module code or keep: what the weight gets
        return f"{how} (weight_norm's {wn.part})", role, res
    spec = g_spec(res["spec"], wn, t, q)
    return (f"{how} (weight_norm's g: the RMS norm of a slice of {res['spec'].describe()})", role,
            dict(res, spec=spec, initializer="constant", args={"val": spec.value, "weight_norm": f"g of {wn.name}"},
                 fans=None, gain=None,
                 nonlinearity=None, nonlinearity_source=None))


def weight_norm_hint(model: nn.Module, names: list[str]) -> str:
    """For a message naming tensors module code left unwritten: which are weight_norm's g and
    v, and the fix ("" when none is)."""
    modules = None
    found: dict[str, list[str]] = {}
    for n in names:
        path, _, local = n.rpartition(".")
        if not local.startswith(("original", "weight_")):
            continue
        modules = modules if modules is not None else dict(model.named_modules())
        mod = modules.get(path)
        wn = weight_norm_part(modules, path, mod, local) if mod is not None else None
        if wn is not None:
            found.setdefault(wn.name, []).append(n)
    if not found:
        return ""
    first = next(iter(found))
    return (f". But {', '.join(repr(n) for ns in found.values() for n in ns)} are the g and v of weight_norm's "
            f"{', '.join(map(repr, found))} = g * v / ||v||: init code that writes {first!r} writes a temporary "
            f"computed from them, which is lost, and a rule of their own can break the weight (zeros in v: NaN). "
            f"Give the weight a rule instead (e.g. {{'qualnames': {first!r}, 'init': 'kaiming_normal'}}): v gets "
            f"its spec, g the spec's RMS slice norm")


def rederive_gs(model: nn.Module, entries: list) -> list:
    """``entries`` (plan entries) with each weight_norm g that its weight's rule gave recomputed
    from its v's spec in ``entries``: for a policy that rescales the specs of a plan (MuP)."""
    by_name = {e.name: e for e in entries}
    modules = None
    out = []
    for e in entries:
        if e.spec is not None and str(e.args.get("weight_norm", "")).startswith("g of "):
            modules = modules if modules is not None else dict(model.named_modules())
            path, _, local = e.name.rpartition(".")
            wn = weight_norm_part(modules, path, modules[path], local)
            v = by_name.get(wn.v_name) if wn is not None else None
            if v is not None and v.spec is not None:
                g = modules[path]._parameters[local]
                spec = g_spec(v.spec, wn, g, e.name)
                same = {k: v.args[k] for k in ("mup_role", "width_mult") if k in v.args}  # its weight's
                e = replace(e, spec=spec, args=dict(e.args, val=spec.value, **same))
        out.append(e)
    return out
