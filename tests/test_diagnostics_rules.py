"""The verdict rules one by one, on hand-built statistics (no model runs)."""

from __future__ import annotations

import math

import pytest

from torchinit.diagnostics import LayerStats, ParamStats, Thresholds, Verdict
from torchinit.evidence.diagnostics import verdicts as V


def lin(name, std, *, shape=(8, 16), grad=None, cos=None, residual=False, finite=True, prev=None, nxt=None):
    return LayerStats(name=name, type="Linear", kind="linear", shape=list(shape), mean=0.0, std=std,
                      max_abs=4 * std, sq_mean=0.0, chan_var=std * std, finite=finite, grad_std=grad, cosine=cos,
                      residual=residual, prev_act=prev, next_act=nxt)


def act(name, nl, *, dead=None, sat=None):
    return LayerStats(name=name, type="ReLU", kind="activation", shape=[8, 16], mean=0.0, std=1.0, max_abs=1.0,
                      sq_mean=0.0, chan_var=1.0, nonlinearity=nl, dead=dead, saturated=sat)


def weight(name, std=0.1, *, module=None, shape=(16, 16), zero=False, constant=False, promised=None, gain=None,
           expected=None, dup=0, identical=None):
    return ParamStats(name=name, module=module or name.rsplit(".", 1)[0], shape=list(shape), mean=0.0, std=std,
                      constant=constant or zero, zero=zero, duplicate_rows=dup, identical_to=identical,
                      promised_std=promised, gain=gain, expected_gain=expected)


def run(rule, layers, params=(), **kw):
    out = rule(V._context(layers, list(params), **kw))
    assert all(isinstance(v, Verdict) for v in out)
    return out


def test_rule_table_names_each_rule_by_the_kind_it_returns():
    names = [n for n, _ in V.RULES]
    assert len(names) == len(set(names))
    assert {"nonfinite", "vanishing", "exploding", "vanishing_gradients", "exploding_gradients", "collapse",
            "dead_units", "saturation", "symmetry", "wrong_nonlinearity", "mismatch"} <= set(names)
    # every rule is quiet on a healthy two-layer net
    healthy = [lin("0", 1.0, grad=1.0), act("1", "relu", dead=0.1), lin("2", 1.0, grad=1.0)]
    for name, rule in V.RULES:
        assert run(rule, healthy, [weight("0.weight"), weight("2.weight")]) == [], name


def test_vanishing_rule_starts_at_the_shrinking_run_and_ignores_branch_ends():
    layers = [lin("a", 1.0), lin("b", 1.0), lin("c", 0.3), lin("d", 0.05)]
    (v,) = run(V._vanishing, layers, input_std=1.0)
    assert (v.kind, v.layer, v.severity) == ("vanishing", "c", "warning")
    assert v.value == pytest.approx(0.05) and v.threshold == 0.1
    # a residual-branch end is small by design: not the signal vanishing
    assert run(V._vanishing, [lin("a", 1.0), lin("p", 0.01, residual=True), lin("b", 1.0)]) == []
    assert run(V._vanishing, [lin("a", 1.0), lin("b", 1e-4)])[0].severity == "error"  # below vanish**3


def test_exploding_rule():
    (v,) = run(V._exploding, [lin("a", 1.0), lin("b", 4.0), lin("c", 20.0)], input_std=1.0)
    assert (v.kind, v.layer, v.value) == ("exploding", "b", 20.0)
    assert run(V._exploding, [lin("a", 1.0), lin("b", 9.0)]) == []


def test_gradient_rules_judge_groups_of_three_same_shaped_layers():
    layers = [lin("a", 1.0, grad=1e-5), lin("b", 1.0, grad=1e-2), lin("c", 1.0, grad=1.0)]
    (v,) = run(V._vanishing_gradients, layers)
    assert (v.layer, v.severity) == ("c", "error") and v.value == pytest.approx(1e-5)
    assert run(V._exploding_gradients, layers) == []
    up = [lin("a", 1.0, grad=1e3), lin("b", 1.0, grad=1.0), lin("c", 1.0, grad=1.0)]
    (v,) = run(V._exploding_gradients, up)
    assert (v.kind, v.layer, v.value) == ("exploding_gradients", "b", 1e3)  # the top of the growing run
    # two layers are not a group
    assert run(V._vanishing_gradients, layers[1:]) == []


def test_collapse_rule_needs_a_diverse_input_and_skips_the_head():
    layers = [lin("a", 1.0, cos=0.5), lin("b", 1.0, cos=0.95), lin("c", 1.0, cos=0.999), lin("head", 1.0, cos=1.0)]
    (v,) = run(V._collapse, layers, input_cos=0.1)
    assert (v.layer, v.value) == ("b", 0.999)
    assert run(V._collapse, layers, input_cos=0.95) == []  # the input is collapsed already
    assert run(V._collapse, [lin("a", 1.0, cos=0.5), lin("head", 1.0, cos=1.0)], input_cos=0.1) == []


def test_dead_units_and_saturation_rules():
    (v,) = run(V._dead_units, [act("r1", "relu", dead=0.2), act("r2", "relu", dead=0.6), act("r3", "relu", dead=1.0)])
    assert (v.layer, v.severity, v.value) == ("r2", "error", 1.0)
    (v,) = run(V._saturation, [act("t1", "tanh", sat=0.1), act("t2", "tanh", sat=0.8)])
    assert (v.kind, v.layer, v.value) == ("saturation", "t2", 0.8)


def test_symmetry_rule_zero_hidden_is_error_zero_head_is_info():
    layers = [lin("0", 1.0), lin("2", 0.0), lin("4", 0.0)]
    out = run(V._symmetry, layers, [weight("0.weight"), weight("2.weight", 0.0, zero=True),
                                    weight("4.weight", 0.0, zero=True)])
    sev = {v.layer: v.severity for v in out}
    assert sev == {"2.weight": "error", "4.weight": "info"}
    (v,) = run(V._symmetry, layers, [weight("0.weight", dup=3)])
    assert (v.severity, v.value) == ("warning", 3.0)


def test_wrong_nonlinearity_rule_judges_the_median_layer():
    layers, params = [], []
    for i in range(4):
        layers += [act(f"r{i}", "relu"), lin(f"l{i}", 1.0, prev="relu", nxt="relu")]
        params.append(weight(f"l{i}.weight", gain=1.0, expected=math.sqrt(2)))
    (v,) = run(V._wrong_nonlinearity, layers, params)
    assert (v.kind, v.layer, v.severity) == ("wrong_nonlinearity", "l0", "warning")
    assert v.value == pytest.approx(0.5)
    params[1].gain = params[2].gain = params[3].gain = math.sqrt(2)  # the median layer is right
    assert run(V._wrong_nonlinearity, layers, params) == []


def test_mismatch_rule_uses_the_plan_tolerance():
    n = 16 * 16
    tol = 0.05 + 5 / math.sqrt(2 * n)
    assert run(V._mismatch, [], [weight("w", 0.1 * (1 + 0.9 * tol), promised=0.1)]) == []
    (v,) = run(V._mismatch, [], [weight("w", 0.1 * (1 + 1.1 * tol), promised=0.1)])
    assert v.threshold == pytest.approx(tol)


def test_nonfinite_rule_names_the_first_bad_output():
    (v,) = run(V._nonfinite, [lin("a", 1.0), lin("b", float("nan"), finite=False)])
    assert (v.kind, v.layer, v.severity) == ("nonfinite", "b", "error")


def test_verdicts_sorts_by_severity_and_keeps_rule_order_within():
    th = Thresholds()
    layers = [lin("a", 1.0), lin("b", 1e-4), act("r", "relu", dead=0.6)]
    out = V._verdicts(layers, [], 1.0, None, th)
    assert [v.kind for v in out] == ["vanishing", "dead_units"]


def test_group_keeps_one_message_and_names_many():
    one = V._group("symmetry", "error", [V._Item("a.weight", "a.weight", "a.weight is all zero.", 0.0)],
                   head="tensors are zero", tail=".", fix_one="fix a", fix_many="fix all")
    assert [(v.message, v.fix, v.layers) for v in one] == [("a.weight is all zero.", "fix a", ["a.weight"])]
    items = [V._Item(f"{i}.weight", f"{i}.weight", f"{i}.weight is all zero.", 0.0) for i in range(8)]
    (v,) = V._group("symmetry", "error", items, head="tensors are zero", tail=".", fix_one="fix a",
                    fix_many="fix all")
    assert v.message == "8 tensors are zero: 0.weight, 1.weight, 2.weight, 3.weight, 4.weight, 5.weight and 2 more."
    assert v.layer == "0.weight" and v.fix == "fix all" and len(v.details) == 8
    assert v.details[7] == {"layer": "7.weight", "message": "7.weight is all zero.", "value": 0.0}
    assert V._group("symmetry", "error", [], head="", tail="", fix_one="", fix_many="") == []


def test_constant_weight_explains_the_signal_verdicts_after_it():
    layers = [lin("0", 1.0), act("1", "relu", dead=0.0), lin("2", 0.0), act("3", "relu", dead=1.0), lin("4", 0.0)]
    params = [weight("0.weight"), weight("2.weight", 0.0, zero=True), weight("4.weight")]
    out = V._verdicts(layers, params, 1.0, None, Thresholds())
    assert [(v.kind, v.layer) for v in out] == [("symmetry", "2.weight")]
    # without the zero weight the collapse of the signal and the dead layer are reported
    params[1] = weight("2.weight")
    assert [v.kind for v in V._verdicts(layers, params, 1.0, None, Thresholds())] == ["vanishing", "dead_units"]


def test_fix_text_follows_the_nonlinearity_at_hand():
    assert "tanh gain 5/3" in V._fix_scale("tanh") and "kaiming" not in V._fix_scale("tanh")
    assert "gain 1 for sigmoid" in V._fix_scale("sigmoid")
    assert V._fix_scale("relu") == V._FIX_VANISH and V._fix_scale(None) == V._FIX_VANISH
    assert "SiLU" in V._fix_scale("silu")
    layers = [lin("0", 1.0, nxt="tanh"), lin("1", 1.0, nxt="tanh"), lin("2", 1.0, nxt="relu")]
    assert V._context(layers).nonlinearity == "tanh"


def normed(name, std, in_rms=1.0):
    """A weight layer fed by a normalization layer (a transformer block's ``ln -> proj``)."""
    r = lin(name, std)
    r.after_norm, r.in_sq = True, in_rms * in_rms
    return r


def test_a_layer_fed_by_a_norm_restarts_the_comparison_and_is_judged_on_its_gain():
    # pre-norm transformer, GPT-2 default-like: every block's projections at gain 0.16, the
    # head tied to a 0.02 embedding: nothing vanishes, nothing explodes
    healthy = [normed("h0.attn", 0.16), normed("h0.fc", 0.16), normed("h1.attn", 0.16), normed("h1.fc", 0.16),
               normed("lm_head", 0.16)]
    assert run(V._vanishing, healthy) == [] and run(V._exploding, healthy) == []
    # the same recipe at width 16 (gain 0.08) and a zeroed-like head: recipes, not vanishing
    tiny = [normed("h0.attn", 0.08), normed("h0.fc", 0.08), normed("lm_head", 1e-4)]
    assert run(V._vanishing, tiny) == []
    # weights at std 1 (gain 16 at width 256), head unchanged: the projections explode, the head
    # does not "vanish" against them (the comparison across blocks said so before)
    big = [normed("h0.attn", 16.0), normed("h0.fc", 16.0), normed("h1.attn", 16.0), normed("lm_head", 0.16)]
    assert run(V._vanishing, big) == []
    (v,) = run(V._exploding, big)
    assert (v.layer, v.value) == ("h0.attn", pytest.approx(16.0))
    assert "the layer's own gain on its normalized input" in v.message
    # weights at 1e-4: each projection's own gain is tiny; the head does not "explode"
    small = [normed("h0.attn", 1.6e-3), normed("h0.fc", 1.6e-3), normed("lm_head", 0.16)]
    assert run(V._exploding, small) == []
    (v,) = run(V._vanishing, small)
    assert (v.layer, v.value, v.threshold) == ("h0.attn", pytest.approx(1.6e-3), pytest.approx(0.01))
    # the layers after a norm-fed one (query -> key -> value -> dense) compare with the
    # normalized input until the next norm
    seg = [normed("q", 1.0, in_rms=2.0), lin("k", 1.0), lin("d", 0.01), normed("next", 1.0)]
    (v,) = run(V._vanishing, seg)
    assert (v.layer, v.value) == ("d", pytest.approx(0.005))
    assert "from 2 at the normalized input of q" in v.message
