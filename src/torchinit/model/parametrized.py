"""Parametrized weights: a weight-normed layer's ``g`` and ``v``, planned as the weight they compute.

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
as a weight).

``spectral_norm``'s raw weight (``original``, legacy ``weight_orig``) is matched as the
weight too (the layer divides it by its largest singular value), and after a write its
``u``/``v`` are recomputed (:func:`refresh_spectral_norms`). An ``orthogonal``
parametrization's ``original`` and ``base`` compute an orthogonal weight whatever they
hold: no rule but ``keep`` may write them. Other parametrizations are matched under their
own names, as any tensor.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace

from torch import Tensor, nn

from ..core import specs as S
from .errors import PolicyError

__all__ = [
    "WeightNormPart",
    "g_spec",
    "names_original",
    "orthogonal_hint",
    "orthogonal_refusal",
    "rederive_gs",
    "refresh_spectral_norms",
    "weight_norm_entry",
    "weight_norm_hint",
    "weight_norm_part",
]


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
    """The weight norm (part ``g`` or ``v``) or spectral norm (part ``raw``) ``mpath.local``
    is part of, or an orthogonal parametrization's original or ``base`` (part ``orthogonal``),
    or None."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import _Orthogonal, _SpectralNorm, _WeightNorm
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    stems = ("original", "parametrizations")
    if isinstance(mod, _Orthogonal) and local == "base":  # <layer>.parametrizations.<tensor>.0.base
        parts = mpath.split(".")
        plist = modules.get(".".join(parts[:-1]))
        if isinstance(plist, parametrize.ParametrizationList) and len(parts) >= 3:
            path = ".".join(parts[:-3])
            return WeightNormPart(_join(path, parts[-2]), path, modules[path], parts[-2], "orthogonal",
                                  plist.original, "", stems + ("base",))
    if isinstance(mod, parametrize.ParametrizationList):
        # <layer>.parametrizations.<tensor>.original{0,1} (weight_norm) or .original (spectral_norm)
        parts = mpath.split(".")
        if len(parts) < 2 or parts[-2] != "parametrizations" or len(mod) != 1:
            return None
        path = ".".join(parts[:-2])
        if isinstance(mod[0], _WeightNorm) and local in ("original0", "original1"):
            return WeightNormPart(_join(path, parts[-1]), path, modules[path], parts[-1],
                                  "g" if local == "original0" else "v", mod.original1, _join(mpath, "original1"), stems)
        if isinstance(mod[0], (_SpectralNorm, _Orthogonal)) and local == "original":
            part = "raw" if isinstance(mod[0], _SpectralNorm) else "orthogonal"
            return WeightNormPart(_join(path, parts[-1]), path, modules[path], parts[-1], part, mod.original,
                                  _join(mpath, "original"), stems)
        return None
    for hook in mod._forward_pre_hooks.values():  # legacy: <layer>.weight_g / weight_v, weight_orig
        if isinstance(hook, WeightNorm) and local in (f"{hook.name}_g", f"{hook.name}_v"):
            v = mod._parameters.get(f"{hook.name}_v")
            if v is None:
                return None
            return WeightNormPart(_join(mpath, hook.name), mpath, mod, hook.name, local[-1], v,
                                  _join(mpath, f"{hook.name}_v"), (local,))
        if isinstance(hook, SpectralNorm) and local == f"{hook.name}_orig":
            return WeightNormPart(_join(mpath, hook.name), mpath, mod, hook.name, "raw", mod._parameters[local],
                                  _join(mpath, local), (local,))
    return None


def orthogonal_refusal(wn: WeightNormPart, q: str) -> str:
    """Why no rule may write ``q``, an orthogonal parametrization's original or base, and the fix."""
    return (f"it computes the orthogonal {wn.name!r} (torch.nn.utils.parametrizations.orthogonal): the layer's "
            f"weight is an orthogonal matrix whatever is drawn here, and a drawn value makes a different one (or "
            f"none: zeros); initialize the layer before registering the parametrization and accept these tensors "
            f"with a 'keep' rule ({{'qualnames': '{_join(wn.path, 'parametrizations')}.{wn.local}.*', 'init': 'keep'}})")


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
    if wn.part == "raw":
        return f"{how} (spectral_norm's raw weight: the layer divides it by its largest singular value)", role, res
    if wn.part == "v" and res.get("spec") is not None:  # the weight g * v / ||v|| gets v's std (diagnose reads it)
        return f"{how} (weight_norm's v)", role, dict(res, args=dict(res["args"], weight_norm=f"v of {wn.name}"))
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
        if wn is not None and wn.part in ("g", "v", "raw"):
            found.setdefault((wn.part == "raw", wn.name), []).append(n)
    out = ""
    for raw in (False, True):
        ws = [w for r, w in found if r == raw]
        if not ws:
            continue
        names = [n for (r, _), ns in found.items() if r == raw for n in ns]
        tensors = ", ".join(map(repr, names))
        what = ("the raw {} of spectral_norm's {} (divided by the largest singular value)" if raw else
                "the g and v of weight_norm's {1} = g * v / ||v||").format(
                    "weight" if len(names) == 1 else "weights", ", ".join(map(repr, ws)))
        gets = ("the raw weight gets its spec" if raw else
                "v gets its spec, g the spec's RMS slice norm; a rule of their own can break the weight (zeros "
                "in v: NaN)")
        out += (f". But {tensors} {'is' if len(names) == 1 else 'are'} {what}: init code that writes "
                f"{ws[0]!r} writes a temporary computed from them, which is lost. Give the weight a rule instead "
                f"(e.g. {{'qualnames': {ws[0]!r}, 'init': 'kaiming_normal'}}): {gets}")
    return out


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


def refresh_spectral_norms(model: nn.Module, written: set[str], seed: int) -> None:
    """Recompute the power-iteration vectors ``u`` and ``v`` of each spectral norm whose raw
    weight, ``u`` or ``v`` was just written (``written``: qualified names): they were computed
    from the weight the layer had before, and in eval mode (no power step in the forward) it
    would divide the new weight by the old one's norm. From a start drawn on torch's CPU
    generator seeded by (``seed``, the name of ``u``), whatever ``u`` and ``v`` held (a rule's
    draw, fresh memory), then 50 steps (torch runs 15 when it registers the norm). Skipped
    while a tensor is on meta (materialize: the batch that fills the last does it) or sharded."""
    import zlib

    import torch
    import torch.nn.functional as F
    from torch.nn.utils.parametrizations import _SpectralNorm
    from torch.nn.utils.spectral_norm import SpectralNorm

    from ..engines.dtensor import is_dtensor

    if not any(n.endswith(("original", "_orig", "_u", "_v")) for n in written):
        return
    for mpath, mod in model.named_modules():
        found = []
        if isinstance(mod, _SpectralNorm) and hasattr(mod, "_u"):  # <layer>.parametrizations.<t>.0
            plist = model.get_submodule(mpath.rpartition(".")[0])
            names = (f"{mpath.rpartition('.')[0]}.original", f"{mpath}._u", f"{mpath}._v")
            found.append((names, plist.original, mod._u, mod._v, mod._reshape_weight_to_matrix, mod.eps))
        for hook in mod._forward_pre_hooks.values():
            if isinstance(hook, SpectralNorm):
                names = tuple(_join(mpath, f"{hook.name}_{k}") for k in ("orig", "u", "v"))
                found.append((names, getattr(mod, names[0].rpartition(".")[2]), getattr(mod, f"{hook.name}_u"),
                              getattr(mod, f"{hook.name}_v"), hook.reshape_weight_to_matrix, hook.eps))
        for names, w, u, v, to_matrix, eps in found:
            if not any(n in written for n in names) or any(t.is_meta for t in (w, u, v)):
                continue
            if any(is_dtensor(t) for t in (w, u, v)):  # the power iteration needs the whole weight
                warnings.warn(f"spectral_norm's u and v ({names[1]!r}, {names[2]!r}) were not recomputed for the "
                              f"sharded weight written into {names[0]!r}: until its first forward in training mode, "
                              "the layer divides by the norm of the weight it had before", UserWarning, stacklevel=3)
                continue
            gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{names[1]}".encode()))
            with torch.no_grad():
                wm = to_matrix(w.detach())
                v.copy_(F.normalize(torch.randn(v.shape, generator=gen, dtype=torch.float64), dim=0, eps=eps))
                for _ in range(50):
                    u.copy_(F.normalize(torch.mv(wm, v), dim=0, eps=eps))
                    v.copy_(F.normalize(torch.mv(wm.mH, u), dim=0, eps=eps))


def orthogonal_hint(model: nn.Module, names: list[str]) -> str:
    """For a message naming unmatched tensors: which compute an orthogonal parametrization's
    weight, which no rule initializes ("" when none does)."""
    modules = None
    found: dict[str, str] = {}
    for n in names:
        path, _, local = n.rpartition(".")
        if local not in ("original", "base"):
            continue
        modules = modules if modules is not None else dict(model.named_modules())
        wn = weight_norm_part(modules, path, modules[path], local) if path in modules else None
        if wn is not None and wn.part == "orthogonal":
            found.setdefault(wn.name, f"{_join(wn.path, 'parametrizations')}.{wn.local}.*")
    if not found:
        return ""
    return (f"; {', '.join(map(repr, found))} {'is' if len(found) == 1 else 'are'} orthogonal by parametrization "
            f"(torch.nn.utils.parametrizations.orthogonal): no rule draws its original, accept it with a 'keep' rule "
            f"({{'qualnames': {next(iter(found.values()))!r}, 'init': 'keep'}})")
