"""The verdicts: rules that read the recorded statistics and name what is wrong and how to fix it.

Each verdict kind is one small function ``rule(ctx) -> list[Verdict]`` reading a
:class:`_Context` (the recorded :class:`LayerStats`/:class:`ParamStats` and what is
derived from them once: the signal path, the gradient groups); :data:`RULES` lists
them in the order they are applied, and :func:`_verdicts` runs the table. A rule can
be called alone on hand-built statistics: ``_vanishing(_context(layers, params))``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, NamedTuple

from .classify import _PRETTY, _RELU_FAMILY, _expected_gain
from .fmt import _fmt
from .report import LayerStats, ParamStats, Thresholds, Verdict


def _start_of_run(stds: list[float], idx: int, shrinking: bool) -> int:
    """Walk back from ``idx`` while each step moved the same way by more than 5%;
    returns the index of the last value before the run (its first step is ``j + 1``)."""
    j = idx
    while j > 0 and ((stds[j] < 0.95 * stds[j - 1]) if shrinking else (stds[j] > 1.05 * stds[j - 1])):
        j -= 1
    return j


def _grad_extreme(layers: list[LayerStats]) -> tuple[float, float, list[LayerStats]] | None:
    """Among groups of >= 3 layers whose outputs have the same per-sample shape, the one
    whose first/last gradient std ratio ``q`` is the most extreme: ``(|log q|, q, group)``."""
    groups: dict[tuple, list[LayerStats]] = {}
    for r in layers:
        if r.grad_std is not None and r.grad_std > 0:
            groups.setdefault(tuple(r.shape[1:]), []).append(r)
    best = None
    for grp in groups.values():
        if len(grp) >= 3:
            q = grp[0].grad_std / grp[-1].grad_std
            if best is None or abs(math.log(q)) > best[0]:
                best = (abs(math.log(q)), q, grp)
    return best


_FIX_VANISH = ("initialize for the nonlinearity that follows each layer: torchinit.init_model(model, 'kaiming') "
               "for ReLU nets (nn.init.kaiming_normal_(w, nonlinearity='relu')), or torchinit.lsuv_(model, batch)")


def _fix_scale(act: str | None) -> str:
    """How to scale the weights for the nonlinearity at hand (the one that follows most
    weight layers): a tanh or sigmoid net is not told to use ReLU's Kaiming gain."""
    if act == "tanh":
        return ("use Xavier/Glorot init with the tanh gain 5/3: torchinit.init_model(model, 'xavier') "
                "(nn.init.xavier_normal_(w, gain=nn.init.calculate_gain('tanh'))), or torchinit.lsuv_(model, batch)")
    if act == "sigmoid":
        return ("use Xavier/Glorot init (Glorot & Bengio's normalized init, gain 1 for sigmoid): "
                "torchinit.init_model(model, 'xavier') (nn.init.xavier_normal_(w)), or torchinit.lsuv_(model, batch)")
    if act is None or act in _RELU_FAMILY or act == "leaky_relu" or _expected_gain(act, None) is None:
        return _FIX_VANISH
    return (f"initialize each layer with the gain of the {_PRETTY.get(act, act)} that follows "
            f"({_expected_gain(act, None):.3g}): torchinit.init_model(model, 'kaiming') picks it per layer, "
            f"or torchinit.lsuv_(model, batch)")


class _Item(NamedTuple):
    """One tensor's finding in a grouped verdict: ``short`` names it in the group's line,
    ``message`` is the finding alone."""

    layer: str
    short: str
    message: str
    value: float | None


def _names(items: list[str], n: int = 6) -> str:
    return ", ".join(items) if len(items) <= n else ", ".join(items[:n]) + f" and {len(items) - n} more"


def _group(kind: str, severity: str, items: list[_Item], *, head: str, tail: str, fix_one: str, fix_many: str,
           value: float | None = None, threshold: float | None = None) -> list[Verdict]:
    """One verdict for findings of one kind and severity: one tensor's message as it is,
    several named in one line (``layers`` lists all, ``details`` keeps each finding)."""
    if not items:
        return []
    details = [{"layer": i.layer, "message": i.message, "value": i.value} for i in items]
    layers = [i.layer for i in items]
    if len(items) == 1:
        return [Verdict(kind, severity, items[0].layer, items[0].message, fix_one, items[0].value, threshold,
                        layers, details)]
    return [Verdict(kind, severity, items[0].layer, f"{len(items)} {head}: {_names([i.short for i in items])}{tail}",
                    fix_many, value, threshold, layers, details)]


@dataclass
class _Context:
    """What the rules read: the statistics, the thresholds, and views derived from them."""

    layers: list[LayerStats]
    params: list[ParamStats]
    input_std: float | None = None
    input_cos: float | None = None
    th: Thresholds = field(default_factory=Thresholds)

    @cached_property
    def sig(self) -> list[LayerStats]:
        """The weight layers with finite outputs, in forward order."""
        return [r for r in self.layers if r.kind == "linear" and r.finite]

    @cached_property
    def path(self) -> list[LayerStats]:
        """The signal's path: residual branches end in a layer whose output is small by design
        (GPT-2's 0.02/sqrt(2 n_layer) projections, zero-initialized branches) and is added to
        the stream, so those layers do not count as the signal vanishing."""
        path = [r for r in self.sig if not r.residual]
        return path if len(path) >= 2 else self.sig  # every layer ends a branch: judge them all

    @cached_property
    def nonlinearity(self) -> str | None:
        """The activation that follows most weight layers (the first such on a tie)."""
        acts = Counter(r.next_act for r in self.sig if r.next_act)
        return max(acts, key=lambda a: acts[a]) if acts else None

    @cached_property
    def grad_group(self) -> tuple[float, float, list[LayerStats]] | None:
        """The gradient group the gradient rules judge (see :func:`_grad_extreme`).

        Gradients are compared between layers whose outputs have the same per-sample shape
        (per-element gradients of differently sized outputs, e.g. before and after a global
        pooling, are not comparable); in a residual network only between layers that end a
        branch: the gradient at their output is the stream's, while inside a branch it depends
        on the layer's role (queries and keys get small gradients at init, through a
        near-uniform softmax)."""
        if not (len(self.sig) >= 2 and self.sig[0].std > 0):
            return None
        ends = [r for r in self.sig if r.residual]
        best = _grad_extreme(ends) if len(ends) >= 3 else None
        # no residual branches, or too few of one shape (a ResNet's stages)
        return best if best is not None else _grad_extreme(self.sig)


def _context(layers: list[LayerStats], params: list[ParamStats] | None = None, input_std: float | None = None,
             input_cos: float | None = None, th: Thresholds | None = None) -> _Context:
    return _Context(list(layers), list(params or []), input_std, input_cos, th or Thresholds())


# ----------------------------------------------------------------------------------
# the rules, one per verdict kind
# ----------------------------------------------------------------------------------


def _nonfinite(ctx: _Context) -> list[Verdict]:
    bad = [r for r in ctx.layers if not r.finite]
    badp = [p.name for p in ctx.params if not p.finite]
    if badp:  # the cause, named: a layer output named after an activation call does not say which tensor
        outs = f"; layer outputs are non-finite from {bad[0].name} on" if bad else ""
        return [Verdict("nonfinite", "error", badp[0],
                        f"{len(badp)} parameter(s) contain NaN or inf: {_names(badp)}{outs}.",
                        f"re-initialize {_names(badp)} (torchinit.init_model(model, ...)) and check what wrote "
                        f"NaN/inf into them (a division by a zero std, a bad checkpoint).", None, None,
                        badp, [{"layer": n, "message": f"{n} contains NaN or inf", "value": None} for n in badp])]
    if not bad:
        return []
    return [Verdict("nonfinite", "error", bad[0].name,
                    f"{len(bad)} layer output(s) contain NaN or inf, first at {bad[0].name}.",
                    "check the init scale of this layer and the ones before it (and the input data).", None, None)]


class _Ratios(NamedTuple):
    path: list[LayerStats]
    stds: list[float]  #: the input's std (or the first layer's), then each path layer's
    ratios: list[float]  #: each layer's std over the std its segment starts from
    seg: list[int]  #: the index in ``path`` where each layer's segment starts
    base: list[float]  #: the std each layer's ratio is relative to
    normed: list[bool]  #: the segment starts from a normalized input (base: its root mean square)


def _signal_ratios(ctx: _Context) -> _Ratios | None:
    """The path's stds relative to where the signal's scale was last set: the first layer's
    output, or, for a layer fed by a normalization (a transformer's ``ln -> proj``), the
    normalized input, which restarts the comparison: a pre-norm transformer's layers are
    each judged on their own gain, not against a layer of another block."""
    path = ctx.path
    if not (len(path) >= 2 and path[0].std > 0):
        return None
    ratios, seg, bases, normed = [], [], [], []
    base, k, fresh = path[0].std, 0, False
    for i, r in enumerate(path):
        if r.after_norm and r.in_sq:
            base, k, fresh = math.sqrt(r.in_sq), i, True
        ratios.append(r.std / base)
        seg.append(k)
        bases.append(base)
        normed.append(fresh)
    stds = [ctx.input_std if ctx.input_std else path[0].std] + [r.std for r in path]
    return _Ratios(path, stds, ratios, seg, bases, normed)


def _from(rs: _Ratios, i: int) -> tuple[float, str]:
    """The std layer ``i``'s ratio is relative to, and where it was measured."""
    name = rs.path[rs.seg[i]].name
    return rs.base[i], f"the normalized input of {name}" if rs.normed[i] else name


def _rate(rs: _Ratios, i: int, per: float) -> str:
    q = rs.ratios[i]
    if i == rs.seg[i] and rs.normed[i]:
        return f"x{q:.3g}: the layer's own gain on its normalized input"
    return f"x{q:.3g}, std x{per:.3g} per layer"


def _vanish_limit(ctx: _Context, rs: _Ratios, i: int) -> float:
    # on a normalized input only a 100x shrink (GPT-2's 0.02 at small widths is a recipe)
    return ctx.th.vanish ** 2 if rs.normed[i] else ctx.th.vanish


def _extreme(ctx: _Context, shrinking: bool) -> tuple[_Ratios, int, int, int, float] | None:
    """(ratios, first layer past the threshold, the most extreme layer of its segment, the
    verdict's start layer, std factor per layer), or None."""
    rs = _signal_ratios(ctx)
    if rs is None:
        return None
    n = len(rs.path)
    # the model's output layer alone after a norm: small logits at init are a recipe (a tied
    # 0.02 head, a zero-initialized classifier), not a signal that vanished
    judged = [i for i in range(n) if not (i == n - 1 and rs.normed[i] and rs.seg[i] == i)]
    if shrinking:
        first = next((i for i in judged if rs.ratios[i] < _vanish_limit(ctx, rs, i)), None)
    else:
        first = next((i for i in judged if rs.ratios[i] > ctx.th.explode), None)
    if first is None:
        return None
    k = rs.seg[first]
    same = [i for i in judged if rs.seg[i] == k]
    ext = (min if shrinking else max)(same, key=lambda i: rs.ratios[i])
    # the run of layers moving that way that leads to ``first``, within its segment
    start = max(min(_start_of_run(rs.stds, first + 1, shrinking), first), k)
    per = rs.ratios[ext] ** (1.0 / max(ext - k, 1))
    return rs, first, ext, start, per


def _vanishing(ctx: _Context) -> list[Verdict]:
    got = _extreme(ctx, True)
    if got is None:
        return []
    rs, first, lo, start, per = got
    path, ratios = rs.path, rs.ratios
    lim = _vanish_limit(ctx, rs, first)
    b, where = _from(rs, lo)
    return [Verdict(
        "vanishing", "error" if ratios[lo] < ctx.th.vanish ** 3 else "warning", path[start].name,
        f"activation std shrinks from {b:.3g} at {where} to {path[lo].std:.3g} at {path[lo].name} "
        f"({_rate(rs, lo, per)}); it falls below {lim:g}x at {path[first].name}.",
        _fix_scale(ctx.nonlinearity), ratios[lo], lim)]


def _exploding(ctx: _Context) -> list[Verdict]:
    got = _extreme(ctx, False)
    if got is None:
        return []
    rs, first, hi, start, per = got
    path, ratios = rs.path, rs.ratios
    b, where = _from(rs, hi)
    return [Verdict(
        "exploding", "error" if ratios[hi] > ctx.th.explode ** 3 else "warning", path[start].name,
        f"activation std grows from {b:.3g} at {where} to {path[hi].std:.3g} at {path[hi].name} "
        f"({_rate(rs, hi, per)}); it exceeds {ctx.th.explode:g}x at {path[first].name}.",
        _fix_explode(ctx.nonlinearity), ratios[hi], ctx.th.explode)]


def _fix_explode(act: str | None) -> str:
    if act in ("tanh", "sigmoid"):
        return "scale weights down to " + _fix_scale(act)[4:]
    return ("scale weights by gain/sqrt(fan_in) for the nonlinearity that follows (torchinit.init_model(model, "
            "'kaiming') or 'xavier' for tanh), or torchinit.lsuv_(model, batch)")


def _vanishing_gradients(ctx: _Context) -> list[Verdict]:
    best = ctx.grad_group
    if best is None or not best[1] < ctx.th.grad_vanish:
        return []
    _, q, grp = best
    gs = [r.grad_std for r in grp]
    top = 0  # walk up from the bottom while the gradient keeps growing upwards
    while top < len(gs) - 1 and gs[top] < 0.95 * gs[top + 1]:
        top += 1
    return [Verdict(
        "vanishing_gradients", "error" if q < ctx.th.grad_vanish ** 2 else "warning", grp[top].name,
        f"the gradient std at {grp[0].name} is x{q:.2g} that at {grp[-1].name} ({gs[0]:.3g} vs {gs[-1]:.3g}): "
        f"lower layers barely learn with plain SGD.", _fix_scale(ctx.nonlinearity), q, ctx.th.grad_vanish)]


def _exploding_gradients(ctx: _Context) -> list[Verdict]:
    best = ctx.grad_group
    if best is None or not best[1] > ctx.th.grad_explode:
        return []
    _, q, grp = best
    gs = [r.grad_std for r in grp]
    top = 0
    while top < len(gs) - 1 and gs[top] > 1.05 * gs[top + 1]:
        top += 1
    return [Verdict(
        "exploding_gradients", "error" if q > ctx.th.grad_explode ** 2 else "warning", grp[top].name,
        f"the gradient std at {grp[0].name} is x{q:.3g} that at {grp[-1].name} ({gs[0]:.3g} vs {gs[-1]:.3g}).",
        "use mode='fan_out' or smaller gains, or normalization layers", q, ctx.th.grad_explode)]


def _collapse(ctx: _Context) -> list[Verdict]:
    if not (len(ctx.sig) >= 2 and ctx.sig[0].std > 0):
        return []
    # the output layer is excluded: the logits of a random head on pooled (positive)
    # features are naturally similar across samples; on the signal's path only: a small
    # branch output is dominated by its bias by design
    cs = [(r.name, r.cosine) for r in ctx.path[:-1] if r.cosine is not None]
    th = ctx.th
    if not cs or not (ctx.input_cos is None or ctx.input_cos < th.collapse_input):
        return []
    worst = max(cs, key=lambda t: t[1])
    if not worst[1] > th.collapse:
        return []
    start = next(n for n, c in cs if c > th.collapse_start)
    return [Verdict(
        "collapse", "warning", start,
        f"samples become nearly parallel: mean pairwise cosine similarity {worst[1]:.3f} at {worst[0]} "
        f"(input {_fmt(ctx.input_cos, '.2f')}); the network maps different inputs to almost the same "
        f"representation even where the std looks fine.",
        "reduce constant offsets (zero the biases), use fewer or residual layers with normalization, "
        "or orthogonal init (torchinit.init_model(model, 'orthogonal'))", worst[1], th.collapse)]


def _dead_units(ctx: _Context) -> list[Verdict]:
    deadly = [r for r in ctx.layers if r.dead is not None and r.dead > ctx.th.dead]
    if not deadly:
        return []
    worst = max(deadly, key=lambda r: r.dead)
    return [Verdict(
        "dead_units", "error" if worst.dead >= ctx.th.dead_error else "warning", deadly[0].name,
        f"{len(deadly)} ReLU layer(s) have more than {ctx.th.dead:.0%} of their units at 0 for the whole batch "
        f"(worst {worst.dead:.0%} at {worst.name}): those units get no gradient.",
        "check negative biases and the weight scale of the layer before (kaiming, zero bias), "
        "or use LeakyReLU/GELU", worst.dead, ctx.th.dead)]


def _saturation(ctx: _Context) -> list[Verdict]:
    sats = [r for r in ctx.layers if r.saturated is not None and r.saturated > ctx.th.saturated]
    if not sats:
        return []
    worst = max(sats, key=lambda r: r.saturated)
    # a recurrent layer's fraction covers its gates and tanh units (recurrent.py)
    what = "/".join(dict.fromkeys(f"{r.type} (gates and tanh)" if r.kind == "recurrent" else str(r.nonlinearity)
                                  for r in sats))
    fix = ("use xavier (Glorot & Bengio's normalized init, torchinit.init_model(model, 'xavier')) or a smaller "
           "gain for the layers feeding this activation")
    if any(r.kind == "recurrent" for r in sats):
        fix += ("; for recurrent layers, xavier input weights and orthogonal recurrent weights (gain 1), "
                "as torchinit.init_model(model, 'xavier') gives them")
    return [Verdict(
        "saturation", "warning", sats[0].name,
        f"{len(sats)} {what} layer(s) have more than {ctx.th.saturated:.0%} of outputs saturated "
        f"(worst {worst.saturated:.0%} at {worst.name}): gradients through them nearly vanish.",
        fix, worst.saturated, ctx.th.saturated, [r.name for r in sats])]


def _time_ratios(ctx: _Context) -> list[tuple[str, float, int]]:
    """``(layer, q, steps)``: how much of the gradient at the last step reaches the first.
    A sequence layer's own probe (:mod:`.recurrent`); a cell called once per step (``cell``,
    ``cell#2``, ...): the gradient std at its first call's output over its last call's."""
    out: list[tuple[str, float, int]] = []
    calls: dict[str, list[LayerStats]] = {}
    for r in ctx.layers:
        if r.kind != "recurrent":
            continue
        if r.time_grad_ratio is not None and r.time_steps:
            out.append((r.name, r.time_grad_ratio, r.time_steps))
        elif r.time_steps is None and r.type.endswith("Cell"):
            calls.setdefault(r.name.split("#")[0], []).append(r)
    for name, rs in calls.items():
        gs = [r.grad_std for r in rs]
        if len(rs) >= 2 and gs[0] is not None and gs[-1]:
            out.append((name, gs[0] / gs[-1], len(rs)))
    return out


_FIX_TIME = ("initialize the recurrent weights orthogonal (gain 1) and the input weights xavier, biases zero "
             "(torchinit.init_model(model, 'xavier')); for an LSTM also set the forget-gate bias to 1 "
             "(bias_hh[H:2H], Jozefowicz et al. 2015) so that the cell state keeps its past; for sequences longer "
             "than ~20 steps, chrono init (Tallec & Ollivier 2018): forget-gate bias log(u), u ~ U(1, T - 1), "
             "input-gate bias its negative")


def _vanishing_through_time(ctx: _Context) -> list[Verdict]:
    items = []
    worst = None
    for name, q, steps in _time_ratios(ctx):
        if q < ctx.th.grad_vanish:
            per = q ** (1 / max(steps - 1, 1)) if q > 0 else 0.0
            horizon = f"; it falls to 1% within {math.log(0.01) / math.log(per):.0f} steps" if 0 < per < 1 else ""
            items.append(_Item(name, f"{name} (x{q:.2g} over {steps} steps)",
                               f"the gradient of {name}'s last step reaches its first step at x{q:.2g} of the last "
                               f"step's (over {steps} steps, x{per:.2f} per step{horizon}): it barely learns "
                               f"dependencies that span the sequence.", q))
            worst = q if worst is None else min(worst, q)
    if not items:
        return []
    return _group("vanishing_through_time", "error" if worst < ctx.th.grad_vanish ** 2 else "warning", items,
                  head="recurrent layers lose the gradient through time",
                  tail=": they barely learn dependencies that span the sequence.",
                  fix_one=_FIX_TIME, fix_many=_FIX_TIME, value=worst, threshold=ctx.th.grad_vanish)


def _exploding_through_time(ctx: _Context) -> list[Verdict]:
    items = [_Item(name, f"{name} (x{q:.3g} over {steps} steps)",
                   f"the gradient of {name}'s last step is x{q:.3g} larger at its first step than at the last "
                   f"(over {steps} steps): the recurrence amplifies it.", q)
             for name, q, steps in _time_ratios(ctx) if q > ctx.th.grad_explode]
    if not items:
        return []
    return _group("exploding_through_time", "warning", items, head="recurrent layers amplify the gradient through time",
                  tail=".", fix_one=_FIX_TIME + "; or clip gradients", fix_many=_FIX_TIME + "; or clip gradients",
                  value=max(i.value for i in items), threshold=ctx.th.grad_explode)


def _symmetry(ctx: _Context) -> list[Verdict]:
    errors: list[_Item] = []
    heads: list[_Item] = []
    copies: list[_Item] = []
    lin_order = [r.name for r in ctx.layers if r.kind == "linear" and "#" not in r.name]
    head = lin_order[-1] if lin_order else None
    for p in ctx.params:
        if len(p.shape) < 2 or p.original_of is not None or not p.finite:
            continue
        if p.constant:
            promised = p.promised_std is not None and p.promised_std == 0
            what = "all zero" if p.zero else f"constant ({p.mean:.3g})"
            short = p.name if p.zero else f"{p.name} ({what})"
            if promised or p.module == head:
                heads.append(_Item(p.name, short, f"{p.name} is {what}" + (
                    " as its plan promised" if promised else " (the output layer)") +
                    ": fine for a last layer (Fixup / zero-init heads), since its inputs differ.", 0.0))
            else:
                errors.append(_Item(p.name, short, f"{p.name} is {what}: every unit of {p.module} computes the same "
                                    f"function and receives the same gradient, so they never become different.", 0.0))
        elif p.duplicate_rows:
            copies.append(_Item(p.name, f"{p.name} ({p.duplicate_rows} duplicate rows)",
                                f"{p.name} has {p.duplicate_rows} duplicate row(s): those units compute identical "
                                f"outputs.", float(p.duplicate_rows)))
        if p.identical_to:
            copies.append(_Item(p.name, f"{p.name} = {p.identical_to}",
                                f"{p.name} is identical to {p.identical_to} (e.g. layers deep-copied by "
                                f"nn.TransformerEncoder, pytorch issue 86274).", None))
    one_copy = copies[0] if copies else None
    any_same = any(c.value is None for c in copies)  # identical tensors (duplicate rows carry a count)
    same = any_same and all(c.value is None for c in copies)
    return (
        _group("symmetry", "error", errors, head="weight tensors are all zero or constant",
               tail=": every unit of each of these layers computes the same function and receives the same "
                    "gradient, so they never become different.",
               fix_one=f"initialize {errors[0].layer if errors else ''} randomly (kaiming/xavier); keep zeros for "
                       f"biases only",
               fix_many="initialize these weights randomly (torchinit.init_model(model, 'kaiming') or 'xavier'); "
                        "keep zeros for biases only", value=0.0)
        + _group("symmetry", "warning", copies,
                 head=("weight tensors are identical to another parameter" if same else
                       "weight tensors have duplicate rows" if not any_same else
                       "weight tensors have duplicate rows or equal another parameter"),
                 tail=(" (e.g. layers deep-copied by nn.TransformerEncoder, pytorch issue 86274)." if any_same else
                       ": those units compute identical outputs."),
                 fix_one=("re-initialize each copy with its own random draw (torchinit.init_model(model, ...))"
                          if one_copy and one_copy.value is None else
                          f"re-initialize {one_copy.layer if one_copy else ''} with a random initializer (each row "
                          f"drawn independently)"),
                 fix_many="re-initialize each with its own random draw (torchinit.init_model(model, ...))")
        + _group("symmetry", "info", heads, head="output-layer weights are all zero or constant",
                 tail=": fine for a last layer (Fixup / zero-init heads), since its inputs differ.",
                 fix_one="nothing to do if intended", fix_many="nothing to do if intended", value=0.0)
    )


def _wrong_nonlinearity(ctx: _Context) -> list[Verdict]:
    th = ctx.th
    rec_by_mod = {r.name: r for r in ctx.layers if r.kind == "linear"}
    checked = []
    for p in ctx.params:
        if p.gain is None or not p.expected_gain or p.constant or not p.finite:
            continue  # a constant weight is a symmetry problem, not a gain
        rec = rec_by_mod.get(p.module)
        if rec is None or rec.prev_act is None or rec.next_act is None or rec.prev_act != rec.next_act:
            continue
        checked.append((p, rec, (p.gain / p.expected_gain) ** 2))
    if not checked:
        return []
    # judge the typical layer (median), so that data-dependent inits (LSUV), whose
    # per-layer gains scatter around the right value, are not flagged
    med = sorted(f for _, _, f in checked)[len(checked) // 2]
    if med < th.gain_factor:
        flagged = [c for c in checked if c[2] < th.gain_factor]
    elif med > 1 / th.gain_factor:
        flagged = [c for c in checked if c[2] > 1 / th.gain_factor]
    else:
        return []
    p, rec, factor = flagged[0]
    act = _PRETTY.get(rec.next_act, rec.next_act)
    gains = sorted({round(q.gain, 2) for q, _, _ in flagged})
    gtxt = f"{p.gain:.2f}" if len(gains) == 1 else f"{gains[0]:.2f}..{gains[-1]:.2f}"
    if rec.next_act in ("relu", "leaky_relu"):
        fix = f"use kaiming or nonlinearity='{rec.next_act}' (gain {p.expected_gain:.3g}): torchinit.init_model(model, 'kaiming')"
    else:
        fix = (f"use gain {p.expected_gain:.3g} for {act} (torchinit.second_moment_gain('{rec.next_act}')), "
               f"e.g. torchinit.init_model(model, 'kaiming') or torchinit.lsuv_(model, batch)")
    total = math.prod(f for _, _, f in flagged)
    # one mis-scaled layer costs a constant factor; the damage compounds with depth
    severity = "warning" if len(flagged) >= 3 or not (0.1 <= total <= 10) else "info"
    return [Verdict(
        "wrong_nonlinearity", severity, p.module,
        f"{len(flagged)} {rec.type} layer(s) followed by {act} initialized with gain {gtxt} "
        f"(sqrt(mean(w^2) * fan_in)); {act} needs {p.expected_gain:.3g}: each such layer multiplies the "
        f"signal variance by about {factor:.2f}.", fix, factor, th.gain_factor)]


def _mismatch(ctx: _Context) -> list[Verdict]:
    items, tols = [], []
    for p in ctx.params:
        if p.promised_std is None or p.constant or not p.finite:
            continue
        tol = ctx.th.std_floor + ctx.th.std_sigmas / math.sqrt(2 * math.prod(p.shape))
        ref = p.promised_std
        if ref == 0 or abs(p.std - ref) / ref > tol:
            items.append(_Item(p.name, f"{p.name} ({p.std:.3g} vs {ref:.3g})",
                               f"{p.name} has std {p.std:.4g} but its plan promised {ref:.4g} (tolerance {tol:.1%}): "
                               f"it was changed after the plan was applied, or the plan was not applied.",
                               p.std / ref if ref else None))
            tols.append(tol)
    fix = "re-apply the plan (torchinit.apply_plan(model, plan, seed=...)) or re-plan after the change"
    return _group("mismatch", "warning", items, head="parameters differ from the std their plan promised",
                  tail=": they were changed after the plan was applied, or the plan was not applied.",
                  fix_one=fix, fix_many=fix, threshold=tols[0] if len(tols) == 1 else None)


Rule = Callable[[_Context], "list[Verdict]"]

#: the verdict rules, applied in this order (ties in severity keep it)
RULES: tuple[tuple[str, Rule], ...] = (
    ("nonfinite", _nonfinite),
    ("vanishing", _vanishing),
    ("exploding", _exploding),
    ("vanishing_gradients", _vanishing_gradients),
    ("exploding_gradients", _exploding_gradients),
    ("collapse", _collapse),
    ("dead_units", _dead_units),
    ("saturation", _saturation),
    ("vanishing_through_time", _vanishing_through_time),
    ("exploding_through_time", _exploding_through_time),
    ("symmetry", _symmetry),
    ("wrong_nonlinearity", _wrong_nonlinearity),
    ("mismatch", _mismatch),
)

_SEVERITY = {"error": 0, "warning": 1, "info": 2}
#: verdicts about the signal, which a constant weight upstream explains
_SIGNAL_KINDS = frozenset({"vanishing", "exploding", "vanishing_gradients", "exploding_gradients", "collapse",
                           "dead_units", "saturation", "wrong_nonlinearity", "vanishing_through_time",
                           "exploding_through_time"})


def _drop_consequences(ctx: _Context, out: list[Verdict]) -> list[Verdict]:
    """A constant (all-zero) hidden weight makes every layer after it compute a constant:
    the vanishing signal, dead ReLUs and collapsed samples that follow are its
    consequences, so the signal verdicts that start at or after its layer are dropped and
    the symmetry verdict is the one that says what to fix."""
    order: dict[str, int] = {}
    for i, r in enumerate(ctx.layers):
        order.setdefault(r.name, i)
    names = {p.name: p.module for p in ctx.params}
    cut = [order[names[n]] for v in out if v.kind == "symmetry" and v.severity == "error"
           for n in (v.layers or [v.layer]) if names.get(n) in order]
    if not cut:
        return out
    first = min(cut)
    return [v for v in out if not (v.kind in _SIGNAL_KINDS and order.get(v.layer, -1) >= first)]


def _verdicts(report_layers: list[LayerStats], params: list[ParamStats], input_std: float | None,
              input_cos: float | None, th: Thresholds) -> list[Verdict]:
    """Apply :data:`RULES` in order, drop what a constant weight explains
    (:func:`_drop_consequences`); the verdicts sorted by severity (stable)."""
    ctx = _context(report_layers, params, input_std, input_cos, th)
    out = _drop_consequences(ctx, [v for _, rule in RULES for v in rule(ctx)])
    out.sort(key=lambda v: _SEVERITY.get(v.severity, 3))
    return out
