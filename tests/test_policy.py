"""Policies: rule validation with errors naming the rule and field, dict/YAML/JSON
loading, composition, serialization."""

from __future__ import annotations

import json
import math
import re
import warnings

import pytest
import torch
from torch import nn

import torchinit
from torchinit import Policy, PolicyError, Rule, load_policy


def test_rule_normalizes_and_validates():
    r = Rule("kaiming_normal_", {"mode": "fan_out"}, modules="Conv2d", params="weight")
    assert r.init == "kaiming_normal" and r.modules == ("Conv2d",) and r.params == ("weight",)
    assert Rule("zeros", modules=nn.Linear).to_dict() == {"modules": ["Linear"], "init": "zeros"}


@pytest.mark.parametrize("kwargs, message, field", [
    (dict(init="kaiming"), "rule: field 'init': unknown initializer 'kaiming'; did you mean 'kaiming_normal', "
                           "'kaiming_uniform'?", "init"),
    (dict(init="kaiming_normal", args={"mod": "fan_in"}, name="convs"),
     "rule 'convs': field 'args': unknown argument 'mod' for initializer 'kaiming_normal'; did you mean 'mode'? "
     "(allowed: a, mode, nonlinearity, fans)", "args"),
    (dict(init="kaiming_normal", args={"mode": "fan_avg"}),
     "rule: field 'args': kaiming_normal: mode must be one of fan_in, fan_out, got 'fan_avg'", "args"),
    (dict(init="xavier_uniform", args={"nonlinearity": "relux"}),
     "rule: field 'args': xavier_uniform: unknown nonlinearity 'relux'; did you mean 'relu'", "args"),
    (dict(init="constant"), "rule: field 'args': initializer 'constant' needs argument 'val'", "args"),
    (dict(init="prior_bias", args={"prob": 1.5}), "rule: field 'args': prior_bias: prob must be in (0, 1), got 1.5",
     "args"),
    (dict(init="normal", args={"std": -1}), "rule: field 'args': normal: std must be > 0, got -1", "args"),
    (dict(init="zeros", role="weights"), "rule: field 'role': unknown role 'weights'; use one of weight, bias, "
                                         "scale, buffer", "role"),
    (dict(init="zeros", modules=[]), "rule: field 'modules': empty list (omit the field to match anything)",
     "modules"),
    (dict(init="zeros", modules=[int]), "rule: field 'modules': int is not an nn.Module subclass", "modules"),
    (dict(init="trunc_normal", args={"cutoff": 2, "a": -1}),
     "rule: field 'args': trunc_normal: give either cutoff (std units) or a/b (absolute), not both", "args"),
    (dict(init="spec", args={"spec": {"kind": "normal", "sd": 1}}),
     "rule: field 'args': spec: invalid spec: spec 'normal' has no field(s) ['sd']", "args"),
])
def test_rule_errors_name_the_field(kwargs, message, field):
    with pytest.raises(PolicyError) as ei:
        Rule(**kwargs)
    assert str(ei.value).startswith(message), str(ei.value)
    assert ei.value.field == field


def test_policy_dict_errors_name_rule_index_and_name():
    with pytest.raises(PolicyError) as ei:
        Policy.from_dict({"name": "mine", "rules": [
            {"init": "zeros", "params": "bias"},
            {"name": "convs", "modules": "Conv2d", "init": "kaiming_normal", "args": {"nonlinearity": "rel"}},
        ]})
    msg = str(ei.value)
    assert msg.startswith("policy 'mine': rule 1 ('convs'): field 'args': kaiming_normal: unknown nonlinearity 'rel'")
    assert (ei.value.rule, ei.value.rule_name, ei.value.field) == (1, "convs", "args")
    with pytest.raises(PolicyError, match=r"policy 'custom': rule 0: unknown field 'modul'; did you mean "
                                          r"'modules'\?"):
        Policy.from_dict({"rules": [{"modul": "Linear", "init": "zeros"}]})
    with pytest.raises(PolicyError, match=r"policy 'custom': rule 0: field 'init' is missing"):
        Policy.from_dict({"rules": [{"modules": "Linear"}]})
    with pytest.raises(PolicyError, match=r"policy: unknown field 'rule'; did you mean 'rules'\?"):
        Policy.from_dict({"rule": []})


def test_preset_plus_overrides_from_dict_offsets_rule_indices():
    base = len(torchinit.get_preset("kaiming").rules)
    pol = Policy.from_dict({"preset": "kaiming", "rules": [
        {"name": "head prior", "qualnames": "head.bias", "init": "prior_bias", "args": {"prob": 0.01}}]})
    assert pol.name == "kaiming" and len(pol.rules) == base + 1
    net = nn.ModuleDict({"body": nn.Linear(4, 4), "head": nn.Linear(4, 3)})
    e = torchinit.plan(net, pol)["head.bias"]
    assert e.rule == f"#{base} head prior" and e.overridden == ("#1 layer bias",)
    with pytest.raises(PolicyError, match=rf"policy 'kaiming': rule {base} \('x'\): field 'args'"):
        Policy.from_dict({"preset": "kaiming", "rules": [{"name": "x", "init": "normal", "args": {"sd": 1}}]})


def test_yaml_and_json_files(tmp_path):
    y = tmp_path / "policy.yaml"
    y.write_text(
        "name: seed-notes\n"
        "rules:\n"
        "  - name: convs\n"
        "    modules: Conv2d\n"
        "    params: weight\n"
        "    init: kaiming_normal\n"
        "    args: {mode: fan_out, nonlinearity: relu}\n"
        "  - {modules: BatchNorm2d, params: weight, init: ones}\n"
        "  - {modules: BatchNorm2d, params: bias, init: zeros}\n")
    pol = load_policy(str(y))
    assert pol.name == "seed-notes" and [r.init for r in pol.rules] == ["kaiming_normal", "ones", "zeros"]
    j = tmp_path / "policy.json"
    j.write_text(json.dumps(pol.to_dict()))
    assert load_policy(j).to_dict() == pol.to_dict()
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - modules: Conv2d\n    init: kaiming_normal\n    args: {mode: fan_ot}\n")
    with pytest.raises(PolicyError, match=r"rule 0: field 'args': kaiming_normal: mode must be one of "
                                          r"fan_in, fan_out, got 'fan_ot'"):
        load_policy(bad)
    with pytest.raises(FileNotFoundError, match="policy file not found"):
        load_policy(str(tmp_path / "missing.yaml"))
    bare = tmp_path / "bare.yml"
    bare.write_text("- {role: bias, init: zeros}\n- {role: weight, init: orthogonal, args: {nonlinearity: auto}}\n")
    assert [r.init for r in load_policy(bare).rules] == ["zeros", "orthogonal"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [\n")
    with pytest.raises(PolicyError, match="invalid YAML"):
        load_policy(broken)


def test_yaml_reads_exponent_floats_as_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads ``1e-3`` as the string '1e-3'; a policy must read it as YAML 1.2
    and JSON do, as a number."""
    y = tmp_path / "sci.yaml"
    y.write_text("rules:\n"
                 "  - {init: normal, role: weight, args: {std: 2e-2}}\n"
                 "  - {init: constant, role: bias, args: {val: 1.0e-3}}\n"
                 "  - {init: uniform, role: scale, args: {a: -5E-1, b: .5e0}}\n")
    pol = load_policy(y)
    assert pol.rules[0].args == {"std": 0.02} and pol.rules[1].args == {"val": 0.001}
    assert pol.rules[2].args == {"a": -0.5, "b": 0.5}
    assert Policy.from_yaml("- {init: zeros, name: 1e3x}\n").rules[0].name == "1e3x"  # not a number: a string


def test_load_policy_accepts_every_form():
    p = torchinit.get_preset("xavier")
    assert load_policy(p) is p
    assert load_policy("xavier").to_dict() == p.to_dict()
    assert load_policy([{"init": "zeros"}]).rules[0].init == "zeros"
    assert load_policy({"rules": [Rule("ones")]}).rules[0].init == "ones"
    assert load_policy(Rule("ones")).rules[0].init == "ones"
    assert load_policy("gpt2", std=0.01).rules[0].args["std"] == 0.01
    with pytest.raises(PolicyError, match="cannot make a policy from int"):
        load_policy(3)


def test_policy_composition_and_on_unmatched():
    p = torchinit.get_preset("kaiming") + Rule("zeros", qualnames="*.weight", name="all zero")
    assert p.rules[-1].name == "all zero" and p.name == "kaiming"
    assert (p + [Rule("ones")]).rules[-1].init == "ones"
    with pytest.raises(PolicyError, match="field 'on_unmatched': use 'keep' or 'error'"):
        Policy((), on_unmatched="ignore")


def test_rule_matching_by_class_glob_and_subclass():
    class MyLinear(nn.Linear):
        pass

    net = nn.Sequential(MyLinear(3, 3), nn.Conv1d(3, 3, 1), nn.ConvTranspose1d(3, 3, 1))
    p = torchinit.plan(net, [Rule("zeros", modules="nn.Linear", params="weight", name="lin"),
                              Rule("ones", modules="_ConvNd", params="weight", name="conv"),
                              Rule("ones", modules=torch.nn.ConvTranspose1d, params="bias", name="t")])
    assert p["0.weight"].rule == "#0 lin"  # subclass matches
    assert p["1.weight"].rule == "#1 conv" and p["2.weight"].rule == "#1 conv"
    assert p["2.bias"].rule == "#2 t" and "1.bias" in p.unmatched


def test_policy_file_errors_name_the_file_and_preset_option(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text('rules:\n  - qualnames: "fc.bias\n    init: zeros\n')
    with pytest.raises(PolicyError, match=rf"policy file {re.escape(str(broken))}: invalid YAML: ") as info:
        load_policy(broken)
    assert "<unicode string>" not in str(info.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(PolicyError, match=rf"policy file {re.escape(str(empty))}: a policy must be a mapping .*got an empty document"):
        load_policy(empty)
    rule = tmp_path / "rule.yaml"
    rule.write_text("rules:\n  - {name: head, modules: Linear, init: normal, args: {std: -1}}\n")
    with pytest.raises(PolicyError, match=rf"policy file {re.escape(str(rule))}: policy 'custom': rule 0 \('head'\): field 'args'") as info:
        load_policy(rule)
    assert (info.value.rule, info.value.rule_name, info.value.field) == (0, "head", "args")
    opts = tmp_path / "opts.json"
    opts.write_text(json.dumps({"preset": "kaiming", "options": {"mode": "fan_ot"}}))
    with pytest.raises(PolicyError, match=rf"policy file {re.escape(str(opts))}: preset 'kaiming' with options mode='fan_ot': "
                                          r".*mode must be one of fan_in, fan_out, got 'fan_ot'") as info:
        load_policy(opts)
    assert info.value.field == "options"
    with pytest.raises(PolicyError, match=r"^preset 'gpt2' with options std=-1: .*std must be > 0"):
        torchinit.get_preset("gpt2", std=-1)


# -- Rule(..., bias=...): one rule for a layer's weight and bias (mmengine's
#    dict(type='Kaiming', layer='Conv2d', bias=0)) -------------------------------------

def _convnet():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                               torch.nn.Flatten(), torch.nn.Linear(8, 2))


def test_rule_bias_number_initializes_the_layers_bias():
    m = _convnet()
    rule = Rule("kaiming_normal", {"nonlinearity": "relu"}, modules="Conv2d", params="weight", bias=0.25, name="convs")
    p = torchinit.plan(m, [rule])
    for layer in ("0", "2"):
        e = p[f"{layer}.bias"]
        assert (e.initializer, e.spec, e.rule) == ("constant", torchinit.specs.Constant(0.25), "#0 convs")
        assert "bias=" in e.matched_as
        assert p[f"{layer}.weight"].initializer == "kaiming_normal"
    assert p.unmatched == ["4.weight", "4.bias"]  # the Linear is not selected: nor is its bias
    with pytest.warns(UserWarning, match=r"covers 2 tensor\(s\): '4.weight', '4.bias'"):
        torchinit.init_model(m, [rule], seed=0)
    assert bool((m[0].bias == 0.25).all()) and bool((m[2].bias == 0.25).all())


def test_rule_bias_without_params_overrides_the_rules_own_init_for_the_bias():
    m = _convnet()
    p = torchinit.plan(m, [Rule("xavier_uniform", modules="Linear", bias="fan_in_uniform")])
    assert p["4.bias"].initializer == "fan_in_uniform" and p["4.weight"].initializer == "xavier_uniform"
    assert p["4.bias"].spec.high == pytest.approx(1 / math.sqrt(8))
    # without bias= the module rule's own init would go to the bias and fail there (no fans)
    with pytest.raises(PolicyError, match=r"needs fans"):
        torchinit.plan(m, [Rule("xavier_uniform", modules="Linear")])


def test_rule_bias_from_yaml_and_dict_round_trip():
    text = """
rules:
  - name: convs
    modules: Conv2d
    params: weight
    init: kaiming_normal
    args: {mode: fan_out, nonlinearity: relu}
    bias: {init: normal, args: {std: 0.01}}
  - {modules: Linear, params: weight, init: zeros, bias: {kind: uniform, low: -0.5, high: 0.5}}
"""
    pol = Policy.from_yaml(text)
    p = torchinit.plan(_convnet(), pol)
    assert p["0.bias"].spec == torchinit.specs.Normal(0, 0.01)
    assert p["4.bias"].spec == torchinit.specs.Uniform(-0.5, 0.5)
    again = Policy.from_dict(json.loads(pol.to_json()))
    assert [r.to_dict() for r in again.rules] == [r.to_dict() for r in pol.rules]
    assert again.rules[0].to_dict()["bias"] == {"init": "normal", "args": {"std": 0.01}}


@pytest.mark.parametrize("bias, match", [
    ("kaiming_normal", r"rule 'r': field 'bias': 'kaiming_normal' cannot initialize a bias \(a 1-D tensor, no fans\)"),
    ("module", r"field 'bias': 'module' cannot initialize a bias"),
    ("zeroes", r"rule 'r': field 'bias': field 'init': unknown initializer 'zeroes'; did you mean 'zeros'"),
    ([1], r"field 'bias': expected a number, an initializer name, \{init: ..., args: ...\} or a spec dict, got \[1\]"),
    ({"init": "normal", "args": {"std": -1}}, r"field 'bias': field 'args': normal: std must be > 0, got -1"),
    ({"kind": "normal", "std": -1}, r"field 'bias': .*invalid spec: Normal: std must be >= 0"),
    (True, r"field 'bias': expected a number"),
])
def test_rule_bias_errors_name_the_field(bias, match):
    with pytest.raises(PolicyError, match=match) as exc:
        Rule("zeros", name="r", bias=bias)
    assert exc.value.field == "bias"
    with pytest.raises(PolicyError, match=r"policy 'custom': rule 0 \('r'\): field 'bias'"):
        Policy.from_dict({"rules": [{"name": "r", "init": "zeros", "bias": bias}]})


def test_a_typo_in_a_selector_of_ones_own_rule_warns():
    # an override with modules: Conv2D matched nothing, and the convs silently kept the preset's init
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    pol = {"preset": "kaiming", "rules": [{"modules": "Conv2D", "init": "zeros"},
                                          {"modules": "Linear", "params": "weights", "init": "zeros"},
                                          {"qualnames": "3.Bias", "init": "ones"}]}
    with pytest.warns(UserWarning) as rec:
        p = torchinit.plan(net, pol)
    msgs = [str(w.message) for w in rec if "matched nothing" in str(w.message)]
    assert msgs == ["rule #14 zeros matched nothing: modules 'Conv2D' is not in the model; did you mean 'Conv2d'?",
                    "rule #15 zeros matched nothing: params 'weights' is not in the model; did you mean 'weight'?",
                    "rule #16 ones matched nothing: qualnames '3.Bias' is not in the model; did you mean '3.bias'?"]
    assert [n for n in p.notes if "matched nothing" in n] == msgs
    # the presets' own rules for layers the model lacks, and rules of one's own for absent layer types, are quiet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for preset in ("pytorch", "kaiming", "xavier", "gpt2", "llama", "rnn", "vit"):
            torchinit.plan(nn.Sequential(nn.Linear(4, 4)), {"preset": preset, "options": {"n_layer": 1}}
                           if preset == "gpt2" else preset)
        p = torchinit.plan(net, {"rules": [{"modules": "Conv3d", "init": "zeros"},
                                           {"modules": "Linear", "params": "scale", "init": "ones"}]})
        assert p.unused_rules == ["#0 zeros", "#1 ones"]
