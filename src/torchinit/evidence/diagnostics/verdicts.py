"""The verdicts: rules that read the recorded statistics and name what is wrong and how to fix it."""

from __future__ import annotations

import math

from .classify import _PRETTY
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


def _verdicts(report_layers: list[LayerStats], params: list[ParamStats], input_std: float | None,
              input_cos: float | None, th: Thresholds) -> list[Verdict]:
    out: list[Verdict] = []
    bad = [r for r in report_layers if not r.finite]
    if bad:
        out.append(Verdict("nonfinite", "error", bad[0].name,
                           f"{len(bad)} layer output(s) contain NaN or inf, first at {bad[0].name}.",
                           "check the init scale of this layer and the ones before it (and the input data).",
                           None, None))
    sig = [r for r in report_layers if r.kind == "linear" and r.finite]
    # the signal's path: residual branches end in a layer whose output is small by design
    # (GPT-2's 0.02/sqrt(2 n_layer) projections, zero-initialized branches) and is added to
    # the stream, so those layers do not count as the signal vanishing
    path = [r for r in sig if not r.residual]
    if len(path) < 2:  # every layer ends a branch (none reads the stream itself): judge them all
        path = sig
    if len(path) >= 2 and path[0].std > 0:
        s1 = path[0].std
        stds = [input_std if input_std else s1] + [r.std for r in path]
        ratios = [r.std / s1 for r in path]
        lo = min(range(len(path)), key=lambda i: ratios[i])
        hi = max(range(len(path)), key=lambda i: ratios[i])
        first_lo = next((i for i, q in enumerate(ratios) if q < th.vanish), None)
        first_hi = next((i for i, q in enumerate(ratios) if q > th.explode), None)
        if first_lo is not None:
            start = min(_start_of_run(stds, first_lo + 1, True), len(path) - 1)
            per = (ratios[lo]) ** (1.0 / max(lo, 1))
            out.append(Verdict(
                "vanishing", "error" if ratios[lo] < th.vanish ** 3 else "warning", path[start].name,
                f"activation std shrinks from {s1:.3g} at {path[0].name} to {path[lo].std:.3g} at {path[lo].name} "
                f"(x{ratios[lo]:.2g}, std x{per:.2f} per layer); it falls below {th.vanish:g}x at "
                f"{path[first_lo].name}.",
                _FIX_VANISH, ratios[lo], th.vanish))
        if first_hi is not None:
            start = min(_start_of_run(stds, first_hi + 1, False), len(path) - 1)
            per = (ratios[hi]) ** (1.0 / max(hi, 1))
            out.append(Verdict(
                "exploding", "error" if ratios[hi] > th.explode ** 3 else "warning", path[start].name,
                f"activation std grows from {s1:.3g} at {path[0].name} to {path[hi].std:.3g} at {path[hi].name} "
                f"(x{ratios[hi]:.3g}, std x{per:.2f} per layer); it exceeds {th.explode:g}x at {path[first_hi].name}.",
                "scale weights by gain/sqrt(fan_in) for the nonlinearity that follows (torchinit.init_model(model, "
                "'kaiming') or 'xavier' for tanh), or torchinit.lsuv_(model, batch)", ratios[hi], th.explode))
    if len(sig) >= 2 and sig[0].std > 0:
        # gradients: compared between layers whose outputs have the same per-sample shape
        # (per-element gradients of differently sized outputs, e.g. before and after a
        # global pooling, are not comparable); in a residual network only between layers that
        # end a branch: the gradient at their output is the stream's, while inside a branch it
        # depends on the layer's role (queries and keys get small gradients at init, through a
        # near-uniform softmax)
        ends = [r for r in sig if r.residual]
        best = _grad_extreme(ends) if len(ends) >= 3 else None
        if best is None:  # no residual branches, or too few of one shape (a ResNet's stages)
            best = _grad_extreme(sig)
        if best is not None:
            _, q, grp = best
            g = [(r.name, r.grad_std) for r in grp]
            gs = [v for _, v in g]
            if q < th.grad_vanish:
                top = 0  # walk up from the bottom while the gradient keeps growing upwards
                while top < len(gs) - 1 and gs[top] < 0.95 * gs[top + 1]:
                    top += 1
                out.append(Verdict(
                    "vanishing_gradients", "error" if q < th.grad_vanish ** 2 else "warning", g[top][0],
                    f"the gradient std at {g[0][0]} is x{q:.2g} that at {g[-1][0]} ({g[0][1]:.3g} vs {g[-1][1]:.3g}): "
                    f"lower layers barely learn with plain SGD.", _FIX_VANISH, q, th.grad_vanish))
            elif q > th.grad_explode:
                top = 0
                while top < len(gs) - 1 and gs[top] > 1.05 * gs[top + 1]:
                    top += 1
                out.append(Verdict(
                    "exploding_gradients", "error" if q > th.grad_explode ** 2 else "warning", g[top][0],
                    f"the gradient std at {g[0][0]} is x{q:.3g} that at {g[-1][0]} ({g[0][1]:.3g} vs {g[-1][1]:.3g}).",
                    "use mode='fan_out' or smaller gains, or normalization layers", q, th.grad_explode))
        # collapse
        # the output layer is excluded: the logits of a random head on pooled (positive)
        # features are naturally similar across samples
        # (on the signal's path: a small branch output is dominated by its bias by design)
        cs = [(r.name, r.cosine) for r in path[:-1] if r.cosine is not None]
        if cs and (input_cos is None or input_cos < th.collapse_input):
            worst = max(cs, key=lambda t: t[1])
            if worst[1] > th.collapse:
                start = next(n for n, c in cs if c > th.collapse_start)
                out.append(Verdict(
                    "collapse", "warning", start,
                    f"samples become nearly parallel: mean pairwise cosine similarity {worst[1]:.3f} at {worst[0]} "
                    f"(input {_fmt(input_cos, '.2f')}); the network maps different inputs to almost the same "
                    f"representation even where the std looks fine.",
                    "reduce constant offsets (zero the biases), use fewer or residual layers with normalization, "
                    "or orthogonal init (torchinit.init_model(model, 'orthogonal'))", worst[1], th.collapse))
    # dead units
    acts = [r for r in report_layers if r.dead is not None]
    deadly = [r for r in acts if r.dead > th.dead]
    if deadly:
        worst = max(deadly, key=lambda r: r.dead)
        out.append(Verdict(
            "dead_units", "error" if worst.dead >= th.dead_error else "warning", deadly[0].name,
            f"{len(deadly)} ReLU layer(s) have more than {th.dead:.0%} of their units at 0 for the whole batch "
            f"(worst {worst.dead:.0%} at {worst.name}): those units get no gradient.",
            "check negative biases and the weight scale of the layer before (kaiming, zero bias), "
            "or use LeakyReLU/GELU", worst.dead, th.dead))
    sats = [r for r in report_layers if r.saturated is not None and r.saturated > th.saturated]
    if sats:
        worst = max(sats, key=lambda r: r.saturated)
        out.append(Verdict(
            "saturation", "warning", sats[0].name,
            f"{len(sats)} {sats[0].nonlinearity} layer(s) have more than {th.saturated:.0%} of outputs saturated "
            f"(worst {worst.saturated:.0%} at {worst.name}): gradients through them nearly vanish.",
            "use xavier (Glorot & Bengio's normalized init, torchinit.init_model(model, 'xavier')) or a smaller "
            "gain for the layers feeding this activation", worst.saturated, th.saturated))
    # parameters
    lin_order = [r.name for r in report_layers if r.kind == "linear" and "#" not in r.name]
    head = lin_order[-1] if lin_order else None
    for p in params:
        if len(p.shape) < 2 or p.original_of is not None:
            continue
        if p.constant:
            promised = p.promised_std is not None and p.promised_std == 0
            is_head = p.module == head
            what = "all zero" if p.zero else f"constant ({p.mean:.3g})"
            if promised or is_head:
                out.append(Verdict(
                    "symmetry", "info", p.name,
                    f"{p.name} is {what}" + (" as its plan promised" if promised else " (the output layer)") +
                    ": fine for a last layer (Fixup / zero-init heads), since its inputs differ.",
                    "nothing to do if intended", 0.0, None))
            else:
                out.append(Verdict(
                    "symmetry", "error", p.name,
                    f"{p.name} is {what}: every unit of {p.module} computes the same function and receives the "
                    f"same gradient, so they never become different.",
                    f"initialize {p.name} randomly (kaiming/xavier); keep zeros for biases only", 0.0, None))
        elif p.duplicate_rows:
            out.append(Verdict(
                "symmetry", "warning", p.name,
                f"{p.name} has {p.duplicate_rows} duplicate row(s): those units compute identical outputs.",
                f"re-initialize {p.name} with a random initializer (each row drawn independently)",
                float(p.duplicate_rows), None))
        if p.identical_to:
            out.append(Verdict(
                "symmetry", "warning", p.name,
                f"{p.name} is identical to {p.identical_to} (e.g. layers deep-copied by nn.TransformerEncoder, "
                f"pytorch issue 86274).",
                "re-initialize each copy with its own random draw (torchinit.init_model(model, ...))", None, None))
    wrong = [p for p in params if p.gain is not None and p.expected_gain]
    rec_by_mod = {r.name: r for r in report_layers if r.kind == "linear"}
    checked = []
    for p in wrong:
        rec = rec_by_mod.get(p.module)
        if rec is None or rec.prev_act is None or rec.next_act is None or rec.prev_act != rec.next_act:
            continue
        checked.append((p, rec, (p.gain / p.expected_gain) ** 2))
    flagged = []
    if checked:
        # judge the typical layer (median), so that data-dependent inits (LSUV), whose
        # per-layer gains scatter around the right value, are not flagged
        med = sorted(f for _, _, f in checked)[len(checked) // 2]
        if med < th.gain_factor:
            flagged = [c for c in checked if c[2] < th.gain_factor]
        elif med > 1 / th.gain_factor:
            flagged = [c for c in checked if c[2] > 1 / th.gain_factor]
    if flagged:
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
        out.append(Verdict(
            "wrong_nonlinearity", severity, p.module,
            f"{len(flagged)} {rec.type} layer(s) followed by {act} initialized with gain {gtxt} "
            f"(sqrt(mean(w^2) * fan_in)); {act} needs {p.expected_gain:.3g}: each such layer multiplies the "
            f"signal variance by about {factor:.2f}.", fix, factor, th.gain_factor))
    for p in params:
        if p.promised_std is None or p.constant:
            continue
        n = math.prod(p.shape)
        tol = th.std_floor + th.std_sigmas / math.sqrt(2 * n)
        ref = p.promised_std
        if ref == 0 or abs(p.std - ref) / ref > tol:
            out.append(Verdict(
                "mismatch", "warning", p.name,
                f"{p.name} has std {p.std:.4g} but its plan promised {ref:.4g} (tolerance {tol:.1%}): it was "
                f"changed after the plan was applied, or the plan was not applied.",
                "re-apply the plan (torchinit.apply_plan(model, plan, seed=...)) or re-plan after the change",
                p.std / ref if ref else None, tol))
    order = {"error": 0, "warning": 1, "info": 2}
    out.sort(key=lambda v: order.get(v.severity, 3))
    return out
