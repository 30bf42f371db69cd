"""Plans: hand-written seed-note loops vs policies (bitwise, engine="torch"), validation
before writing, tied parameters, precedence, serialization, printing, keyed invariance."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
from torch import nn

import torchinit
from torchinit import Plan, Policy, PolicyError, Rule
from torchinit import specs as S


class MyNet(nn.Module):
    """The seed notes' kind of model: conv-BN-ReLU, a BatchNorm1d and Linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.fc(self.features(x)))))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_state_equal(a, b, same_bits):
    assert a.keys() == b.keys()
    for k in a:
        same_bits(a[k], b[k])


# ---------------------------------------------------------------------------------
# seed-notes loops vs equivalent policies, engine="torch": bitwise
# ---------------------------------------------------------------------------------

def test_for_loop_of_seed_notes_equals_policy_bitwise(same_bits, restore_rng):
    torch.manual_seed(123)
    ref = MyNet()
    ours = copy.deepcopy(ref)
    torch.manual_seed(7)
    for m in ref.modules():  # seed notes 3.1
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    policy = [
        {"modules": "Conv2d", "params": "weight", "init": "kaiming_normal",
         "args": {"mode": "fan_out", "nonlinearity": "relu"}},
        {"modules": "BatchNorm2d", "params": "weight", "init": "constant", "args": {"val": 1}},
        {"modules": "BatchNorm2d", "params": "bias", "init": "constant", "args": {"val": 0}},
    ]
    applied = torchinit.init_model(ours, policy, seed=7, engine="torch")
    _assert_state_equal(_state(ref), _state(ours), same_bits)
    # what the loop silently skipped is reported, not hidden
    assert "features.0.bias" in applied.unmatched and "fc.weight" in applied.unmatched
    assert "head.bias" in applied.unmatched and "bn.running_mean" in applied.unmatched


def test_apply_function_of_seed_notes_equals_policy_bitwise(same_bits, restore_rng):
    def weights_init_kaiming(m):  # seed notes 3.2 (with the deprecated kaiming_normal fixed)
        classname = m.__class__.__name__
        if classname.find("Conv") != -1:
            nn.init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
        elif classname.find("Linear") != -1:
            nn.init.kaiming_normal_(m.weight.data, a=0, mode="fan_out")
            nn.init.constant_(m.bias.data, 0.0)
        elif classname.find("BatchNorm1d") != -1:
            nn.init.normal_(m.weight.data, 1.0, 0.02)
            nn.init.constant_(m.bias.data, 0.0)

    torch.manual_seed(5)
    ref = MyNet()
    ours = copy.deepcopy(ref)
    torch.manual_seed(11)
    # net.apply visits children before parents; MyNet's order of parameters is the same
    for m in ref.modules():
        weights_init_kaiming(m)
    policy = Policy((
        Rule("kaiming_normal", {"mode": "fan_in"}, modules="*Conv*", params="weight"),
        Rule("kaiming_normal", {"mode": "fan_out"}, modules="Linear", params="weight"),
        Rule("zeros", modules="Linear", params="bias"),
        Rule("normal", {"mean": 1.0, "std": 0.02}, modules="BatchNorm1d", params="weight"),
        Rule("zeros", modules="BatchNorm1d", params="bias"),
    ))
    torchinit.init_model(ours, policy, seed=11, engine="torch")
    _assert_state_equal(_state(ref), _state(ours), same_bits)


def test_xavier_on_1d_bias_is_refused_and_model_untouched(same_bits):
    net = MyNet()
    before = _state(net)
    policy = [{"name": "convs", "modules": "Conv2d", "init": "xavier_uniform"}]  # seed notes: xavier(m.bias.data)
    with pytest.raises(PolicyError) as ei:
        torchinit.init_model(net, policy, seed=0, engine="torch")
    msg = str(ei.value)
    assert "rule 0 ('convs') [xavier_uniform] on 'features.0.bias' (shape (8,), Conv2d)" in msg
    assert "field 'params'" in msg and "select weights only" in msg
    assert ei.value.rule == 0 and ei.value.field == "params"
    _assert_state_equal(before, _state(net), same_bits)


@pytest.mark.parametrize("bad, match", [
    (dict(engine="jax"), "engine must be one of keyed, torch, got 'jax'"),
    (dict(seed=-1), r"seed must be in \[0, 2\*\*63\), got -1"),
    (dict(seed=1.5), "seed must be an int, got 1.5"),
    (dict(only=["nope"]), "only: no plan entry named 'nope'"),
])
def test_bad_apply_arguments_leave_model_untouched(bad, match, same_bits):
    net = MyNet()
    p = torchinit.plan(net, "kaiming")
    before = _state(net)
    kw = dict(seed=0, engine="torch")
    kw.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        torchinit.apply_plan(net, p, **kw)
    _assert_state_equal(before, _state(net), same_bits)


def test_plan_for_another_model_is_refused_before_writing(same_bits):
    p = torchinit.plan(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), "kaiming")
    other = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5))
    before = _state(other)
    with pytest.raises(ValueError, match=r"plan entry '1.weight': planned shape \(2, 3\) but the model's tensor "
                                         r"has shape \(5, 3\)"):
        torchinit.apply_plan(other, p, seed=0, engine="torch")
    _assert_state_equal(before, _state(other), same_bits)


def test_spec_that_does_not_fit_is_refused_at_plan_time(same_bits):
    net = nn.Sequential(nn.Linear(4, 3))
    before = _state(net)
    with pytest.raises(PolicyError, match=r"rule 0 \[eye\] on '0.bias' .*Only tensors with 2 dimensions"):
        torchinit.init_model(net, [Rule("eye", modules="Linear")], seed=0)
    _assert_state_equal(before, _state(net), same_bits)


def test_on_unmatched_error_names_the_tensors():
    with pytest.raises(PolicyError, match=r"no rule matches 0.bias"):
        torchinit.plan(nn.Sequential(nn.Linear(2, 2)),
                       Policy((Rule("zeros", params="weight"),), on_unmatched="error"))


# ---------------------------------------------------------------------------------
# matching, precedence, roles
# ---------------------------------------------------------------------------------

def test_precedence_later_rule_wins_and_priority_beats_order():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    pol = Policy((
        Rule("zeros", name="all"),
        Rule("ones", qualnames="1.*", name="second layer"),
        Rule("constant", {"val": 3.0}, params="bias", name="biases", priority=-1),
    ))
    p = torchinit.plan(net, pol)
    assert p["0.weight"].rule == "#0 all"
    assert p["1.weight"].rule == "#1 second layer" and p["1.weight"].overridden == ("#0 all",)
    # the bias rule has a lower priority: it loses even though it comes last
    assert p["1.bias"].rule == "#1 second layer"
    assert p["1.bias"].overridden == ("#0 all", "#2 biases")
    assert p["0.bias"].rule == "#0 all"
    assert p.shadowed_rules == ["#2 biases"]
    text = str(p)
    assert "#1 second layer > #0, #2" in text and "precedence" in text


def test_tied_parameter_falls_back_to_its_other_names_when_the_first_matches_nothing():
    """Hugging Face BERT registers its MLM bias on the head first, then ties the decoder
    Linear's bias to it: no preset names the head's own parameter, so every preset left it
    unmatched although it is a Linear bias under its second name."""
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.full((10,), 3.0))
            self.decoder = nn.Linear(6, 10)
            self.decoder.bias = self.bias

    m = nn.ModuleDict({"emb": nn.Embedding(10, 6, padding_idx=0), "head": Head()})
    m["head"].decoder.weight = m["emb"].weight
    p = torchinit.plan(m, "gpt2")
    assert p.unmatched == []
    e = p["head.bias"]
    assert e.aliases == ("head.decoder.bias",) and e.spec == S.Constant(0.0)
    assert e.rule.endswith("layer bias") and e.matched_as == "Linear (as 'head.decoder.bias')"
    w = p["emb.weight"]  # an embedding tied to a Linear head: the preset's tied rule, padding row and all
    assert w.rule.endswith("tied embedding/head") and w.zero_rows == (0,) and w.matched_as == "tied embedding/head"
    torchinit.apply_plan(m, p, seed=0)
    assert torch.all(m["head"].bias == 0)


def test_roles_and_module_relative_params():
    mha = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    model = nn.Sequential(mha, nn.LayerNorm(8))
    p = torchinit.plan(model, [
        Rule("ones", role="scale", name="scales"),
        Rule("zeros", role="bias", name="biases"),
        Rule("constant", {"val": 2.0}, modules="MultiheadAttention", params="out_proj.bias", name="mha out bias"),
    ])
    assert p["1.weight"].rule == "#0 scales"
    assert p["0.bias_k"].role == "bias" and p["0.bias_k"].rule == "#1 biases"
    assert p["0.out_proj.bias"].rule == "#2 mha out bias"
    assert p["0.out_proj.bias"].matched_as == "MultiheadAttention/out_proj.bias"
    assert "0.in_proj_weight" in p.unmatched and "0.out_proj.weight" in p.unmatched


def test_tied_parameters_are_initialized_once(same_bits, restore_rng):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.mid = nn.Linear(6, 6)
            self.out = nn.Linear(6, 10, bias=False)
            self.out.weight = self.emb.weight

    m = Tied()
    p = torchinit.plan(m, [Rule("normal", {"std": 0.5}, role="weight")])
    assert p.names.count("emb.weight") == 1 and "out.weight" not in p.names
    assert p["emb.weight"].aliases == ("out.weight",) and p["out.weight"] is p["emb.weight"]
    torchinit.apply_plan(m, p, seed=3, engine="torch")
    torch.manual_seed(3)
    ref_emb = torch.empty(10, 6).normal_(0, 0.5)
    ref_mid = torch.empty(6, 6).normal_(0, 0.5)
    same_bits(m.emb.weight.detach(), ref_emb)
    same_bits(m.mid.weight.detach(), ref_mid)
    assert m.out.weight is m.emb.weight


def test_prior_bias_and_embedding_padding_row():
    net = nn.ModuleDict({"emb": nn.Embedding(5, 3, padding_idx=2), "cls": nn.Linear(3, 4)})
    p = torchinit.init_model(net, [
        Rule("normal", modules="Embedding", params="weight"),
        Rule("prior_bias", {"prob": 0.01}, modules="Linear", params="bias"),
        Rule("zeros", modules="Linear", params="weight"),
    ], seed=0, engine="torch")
    assert p["emb.weight"].zero_rows == (2,)
    assert torch.all(net["emb"].weight[2] == 0) and torch.all(net["emb"].weight[0] != 0)
    assert torch.allclose(net["cls"].bias, torch.full((4,), -math.log(99.0)))


def test_only_applies_the_named_entries(same_bits):
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    before = _state(net)
    p = torchinit.plan(net, "kaiming")
    torchinit.apply_plan(net, p, seed=0, engine="torch", only=["1.weight"])
    after = _state(net)
    for k in ("0.weight", "0.bias", "1.bias"):
        same_bits(before[k], after[k])
    assert not torch.equal(before["1.weight"], after["1.weight"])


# ---------------------------------------------------------------------------------
# depth-scaled presets and plan content
# ---------------------------------------------------------------------------------

def test_gpt2_and_llama_depth_scaling_in_the_plan():
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    enc = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)
    p = torchinit.plan(enc, "gpt2")
    e = p["layers.2.linear2.weight"]
    assert e.rule.endswith("residual projection") and e.args["n_layer"] == 3
    assert e.spec == S.Normal(0.0, 0.02 / math.sqrt(6))
    assert p["layers.0.linear1.weight"].spec == S.Normal(0.0, 0.02)
    assert p["layers.1.self_attn.out_proj.weight"].spec.std == pytest.approx(0.02 / math.sqrt(6))
    q = torchinit.plan(enc, "llama")
    for i in range(3):
        s = q[f"layers.{i}.linear2.weight"].spec
        assert isinstance(s, S.TruncatedNormal) and s.std_ == pytest.approx(0.02 / math.sqrt(2 * (i + 1)))
        assert (s.a, s.b) == (-2.0, 2.0)  # torchtitan's absolute bounds
    head = torchinit.plan(nn.ModuleDict({"output": nn.Linear(64, 10)}), "llama")["output.weight"].spec
    assert head.std_ == pytest.approx(1 / 8) and head.b == pytest.approx(3 / 8)


def test_transformer_encoder_layers_start_identical_but_presets_make_them_distinct():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    enc = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)
    w = [enc.layers[i].linear1.weight for i in range(3)]
    assert torch.equal(w[0], w[1]) and torch.equal(w[1], w[2])  # pytorch issue 86274
    engines = ["torch"] + (["keyed"] if _has_keyed() else [])
    for engine in engines:
        for preset in ("pytorch", "module", "kaiming", "xavier", "gpt2", "llama"):
            torchinit.init_model(enc, preset, seed=1, engine=engine)
            for name in ("linear1.weight", "self_attn.in_proj_weight", "linear2.weight"):
                vals = [dict(enc.layers[i].named_parameters())[name] for i in range(3)]
                assert not torch.equal(vals[0], vals[1]) and not torch.equal(vals[1], vals[2]), (preset, name)


def test_kaiming_plan_fields_and_grouped_transposed_fans():
    net = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.ConvTranspose2d(8, 6, 2, groups=2),
                        nn.LeakyReLU(0.2))
    p = torchinit.plan(net, "kaiming")
    e = p["0.weight"]
    assert (e.fans.fan_in, e.fans.fan_out) == (2 * 9, 4 * 9)  # conv layout, groups corrected
    assert e.nonlinearity == "relu" and e.nonlinearity_source == "fx: 1 (ReLU)"
    assert e.std == pytest.approx(math.sqrt(2) / math.sqrt(18))
    t = p["2.weight"]
    # stored (in=8, out/groups=3, 2, 2): true fan_in = 8/2 * 4 = 16, torch would say 3 * 4 = 12
    assert (t.fans.fan_in, t.fans.fan_out) == (16, 12)
    assert t.nonlinearity == "leaky_relu" and t.gain == pytest.approx(math.sqrt(2 / 1.04))
    assert t.args["a"] == pytest.approx(0.2)


# ---------------------------------------------------------------------------------
# serialization and printing
# ---------------------------------------------------------------------------------

def test_named_leaky_relu_without_a_slope_uses_torch_default_gain():
    """xavier / orthogonal have no ``a`` argument: ``nonlinearity: leaky_relu`` must mean
    torch's ``calculate_gain("leaky_relu")`` (slope 0.01), as ``xavier_normal_(w,
    gain=calculate_gain("leaky_relu"))`` does, not slope 0 (ReLU's sqrt(2))."""
    lin = nn.Linear(6, 4)
    torch_gain = nn.init.calculate_gain("leaky_relu")
    for init in ("xavier_normal", "xavier_uniform", "orthogonal"):
        e = torchinit.plan(lin, [Rule(init, {"nonlinearity": "leaky_relu"}, params="weight")])["weight"]
        assert e.gain == torch_gain, init
    # kaiming's own default stays torch's a=0
    e = torchinit.plan(lin, [Rule("kaiming_normal", {"nonlinearity": "leaky_relu"}, params="weight")])["weight"]
    assert e.gain == pytest.approx(math.sqrt(2)) and e.spec.std == pytest.approx(math.sqrt(2) / math.sqrt(6))


def test_plan_round_trips_through_json_and_applies_identically(same_bits, restore_rng):
    net = MyNet()
    p = torchinit.plan(net, "kaiming")
    q = Plan.from_json(p.to_json())
    assert q.to_dict() == p.to_dict()
    assert json.loads(p.to_json())["entries"][0]["spec"]["kind"] == "normal"
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    torchinit.apply_plan(a, p, seed=4, engine="torch")
    torchinit.apply_plan(b, q, seed=4, engine="torch")
    _assert_state_equal(_state(a), _state(b), same_bits)


def test_plan_prints_a_readable_table():
    net = MyNet()
    p = torchinit.plan(net, "kaiming")
    text = str(p)
    assert "torchinit plan: policy 'kaiming'" in text
    for needle in ("features.0.weight", "#0 layer weight", "kaiming_normal(fans=module)", "relu [fx: features.2",
                   "bn.running_var", "fc.weight", "27/72", "rules that matched nothing"):
        assert needle in text, needle
    assert "#6 embedding" in text  # unused rule is reported
    assert repr(p).startswith("Plan(policy='kaiming', entries=")
    from rich.console import Console
    import io

    buf = io.StringIO()
    Console(file=buf, width=200).print(p)  # __rich__ renders with rich too
    assert "features.3.weight" in buf.getvalue()
    summary = p.summary()
    row = next(line for line in summary.splitlines() if "#0 layer weight" in line)
    assert "kaiming_normal" in row and " 4 " in row  # 2 convs + fc + head
    assert f"{8 * 3 * 9 + 8 * 8 * 9 + 8 * 16 + 16 * 4:,}" in row


# ---------------------------------------------------------------------------------
# keyed engine: reproducible by name
# ---------------------------------------------------------------------------------

def _has_keyed() -> bool:
    try:
        import torchinit.keyed  # noqa: F401
    except ImportError:
        return False
    return True


def _keyed():
    pytest.importorskip("torchinit.keyed")


def test_keyed_adding_removing_reordering_layers_leaves_others_unchanged(same_bits):
    _keyed()
    a = nn.ModuleDict({"enc": nn.Linear(6, 8), "dec": nn.Linear(8, 3)})
    b = nn.ModuleDict({"extra": nn.Linear(5, 5), "dec": nn.Linear(8, 3), "enc": nn.Linear(6, 8)})
    torchinit.init_model(a, "kaiming", seed=9)
    torchinit.init_model(b, "kaiming", seed=9)
    same_bits(a["enc"].weight, b["enc"].weight)
    same_bits(a["dec"].weight, b["dec"].weight)
    c = nn.ModuleDict({"enc": nn.Linear(6, 8), "dec": nn.Linear(8, 3)})
    torchinit.init_model(c, "kaiming", seed=10)
    assert not torch.equal(a["enc"].weight, c["enc"].weight)


def test_keyed_is_reproducible_and_ignores_the_global_rng(same_bits):
    _keyed()
    net1, net2 = MyNet(), MyNet()
    torch.manual_seed(1)
    torchinit.init_model(net1, "kaiming", seed=3)
    torch.manual_seed(2)
    torchinit.init_model(net2, "kaiming", seed=3)
    _assert_state_equal(_state(net1), _state(net2), same_bits)


def test_torch_engine_orthogonal_in_bf16_is_refused_before_writing(same_bits):
    net = nn.Sequential(nn.Embedding(4, 8), nn.Linear(8, 8)).to(torch.bfloat16)
    before = _state(net)
    with pytest.raises(ValueError, match=r"plan entry '1.weight': engine='torch' cannot draw Orthogonal for "
                                         r"dtype torch.bfloat16"):
        torchinit.init_model(net, "orthogonal", seed=0, engine="torch")
    _assert_state_equal(before, _state(net), same_bits)


def test_torch_engine_only_with_module_code_restores_other_tensors(same_bits, restore_rng):
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    before = _state(net)
    p = torchinit.plan(net, "module")
    torchinit.apply_plan(net, p, seed=0, engine="torch", only=["0.bias"])
    after = _state(net)
    for k in ("0.weight", "1.weight", "1.bias"):
        same_bits(after[k], before[k])
    ref = nn.Linear(4, 4)
    torch.manual_seed(0)
    ref.reset_parameters()
    same_bits(after["0.bias"], ref.bias.detach())


def test_catch_all_rules_never_touch_buffers_but_explicit_ones_do():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    p = torchinit.plan(net, [Rule("ones", name="all")])
    assert "1.running_var" in p.unmatched and "1.running_var" not in p
    q = torchinit.plan(net, [Rule("ones", name="all"), Rule("zeros", role="buffer", name="bufs")])
    assert q["1.running_var"].rule == "#1 bufs" and q["1.num_batches_tracked"].spec == S.Constant(0.0)
    assert torchinit.plan(net, "module")["1.running_mean"].initializer == "module"


def test_lazy_modules_need_a_forward_first():
    with pytest.raises(ValueError, match=r"'0.weight' is an uninitialized \(lazy\) parameter of LazyLinear: run "
                                         r"one forward pass"):
        torchinit.plan(nn.Sequential(nn.LazyLinear(4)), "kaiming")


def test_keyed_values_depend_only_on_names_property(same_bits):
    """Any subset of layers, in any order, under any preset: each tensor equals its value
    in the full model (keys come from qualified names)."""
    _keyed()
    from hypothesis import given, settings, strategies as st

    layers = {"a": lambda: nn.Linear(6, 6), "b": lambda: nn.Conv1d(6, 6, 3), "c": lambda: nn.LayerNorm(6),
              "d": lambda: nn.Embedding(9, 6), "e": lambda: nn.GRU(6, 4)}
    reference = {}
    for preset in ("kaiming", "pytorch", "module"):
        full = nn.ModuleDict({k: f() for k, f in layers.items()})
        torchinit.init_model(full, preset, seed=5)
        reference[preset] = {k: v.clone() for k, v in full.state_dict().items()}

    @settings(max_examples=12, deadline=None)
    @given(st.permutations(sorted(layers)), st.integers(1, 5), st.sampled_from(sorted(reference)))
    def check(order, n, preset):
        sub = nn.ModuleDict({k: layers[k]() for k in order[:n]})
        torchinit.init_model(sub, preset, seed=5)
        for k, v in sub.state_dict().items():
            same_bits(v, reference[preset][k])

    check()


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
def test_zero_element_tensors_are_planned_as_no_ops():
    net = nn.Sequential(nn.Linear(0, 4), nn.Linear(4, 2))
    p = torchinit.init_model(net, "kaiming", seed=0, engine="torch")
    assert p["0.weight"].args["empty"] is True and p["0.weight"].spec == S.Constant(0.0)
    assert p["1.weight"].spec.std == pytest.approx(1 / 2)


@pytest.mark.parametrize("engine", ["keyed", "torch"])
def test_module_code_that_raises_leaves_the_model_untouched(engine):
    """A model's own init code can fail after validation: every tensor is restored."""

    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3, 3))

        def reset_parameters(self):
            raise RuntimeError("broken init code")

    model = nn.Sequential(nn.Linear(4, 3), Bad())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="broken init code"):
        torchinit.init_model(model, "module", seed=0, engine=engine)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_name_glob_drawing_random_buffers_is_noted():
    # qualnames globs select buffers too (documented); a random draw into BatchNorm's running
    # statistics is almost never meant, so the plan says so (and says nothing when role or
    # params names the tensors)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    p = torchinit.plan(net, {"rules": [{"qualnames": "1.running_*", "init": "normal"}]})
    noted = [n for n in p.notes if "draws random values into buffer" in n]
    assert {n.split("buffer ")[1].split(" ")[0] for n in noted} == {"'1.running_mean'", "'1.running_var'"}
    assert "role: buffer" in noted[0]
    for rule in ({"qualnames": "1.running_*", "init": "normal", "role": "buffer"},
                 {"qualnames": "1.*", "init": "zeros"}):
        assert not any("draws random values" in n for n in torchinit.plan(net, {"rules": [rule]}).notes)


def test_init_model_on_meta_tensors_is_an_error_not_a_silent_no_op():
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"plan entries '0.weight', '0.bias', '2.weight' and 1 more are on the "
                                         r"meta device .*torchinit.materialize\(model, device, policy, seed=...\)"):
        torchinit.init_model(net, "kaiming", seed=0)
    net[0] = nn.Linear(4, 4)  # partly allocated: nothing is written either
    before = net[0].weight.detach().clone()
    with pytest.raises(ValueError, match=r"'2.weight', '2.bias' are on the meta device"):
        torchinit.init_model(net, "kaiming", seed=0)
    assert torch.equal(net[0].weight, before)
    p = torchinit.plan(net, "kaiming")
    torchinit.apply_plan(net, p, seed=0, only=["0.weight"])  # the allocated tensors alone are fine
    assert not torch.equal(net[0].weight, before)


def test_sparse_std_column_is_the_tensors_std():
    # issue 15: the std column showed the non-zeros' std (0.1), not the tensor's (0.0316)
    lin = nn.Linear(100, 50)
    rules = [{"init": "sparse", "args": {"sparsity": 0.9, "std": 0.1}, "params": "weight"}]
    p = torchinit.plan(lin, rules)
    assert p["weight"].std == pytest.approx(0.1 * math.sqrt(0.1), rel=1e-12)
    assert p.to_dict()["entries"][0]["std"] == p["weight"].std
    with pytest.warns(UserWarning, match=r"covers 1 tensor\(s\): 'bias'"):  # the rules leave the bias alone
        torchinit.init_model(lin, rules, seed=0)
    assert lin.weight.std().item() == pytest.approx(p["weight"].std, rel=0.1)


def test_delta_orthogonal_std_column():
    conv = nn.Conv2d(4, 8, 3, bias=False)
    rules = [{"init": "delta_orthogonal", "args": {"gain": 2.0}, "params": "weight"}]
    p = torchinit.plan(conv, rules)
    torchinit.init_model(conv, rules, seed=0)
    w = conv.weight.detach().double()
    assert p["weight"].std == pytest.approx(2.0 / math.sqrt(8 * 9), rel=1e-12)
    assert w.pow(2).mean().sqrt().item() == pytest.approx(p["weight"].std, rel=1e-6)


def test_true_fans_of_a_depthwise_conv_are_noted():
    # issue 15: kaiming fan_out on a depthwise conv gives std 0.47 (true fan_out 9) where the
    # recipe users port, nn.init.kaiming_normal_(w, mode="fan_out"), gives 0.083 (fan_out 288)
    model = nn.Sequential(nn.Conv2d(32, 32, 3, groups=32, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 1))
    p = torchinit.plan(model, {"preset": "kaiming", "options": {"mode": "fan_out"}})
    assert p["0.weight"].std == pytest.approx(math.sqrt(2) / 3, rel=1e-12)
    torch_std = math.sqrt(2) / math.sqrt(32 * 9)  # torch.nn.init's fan_out for (32, 1, 3, 3)
    notes = [n for n in p.notes if "true fans" in n]
    assert len(notes) == 1, p.notes
    assert "0.weight: fan_out 9 vs 288" in notes[0] and f"std {p['0.weight'].std:.4g} vs {torch_std:.4g}" in notes[0]
    assert "kaiming_normal_" in notes[0] and "fans: torch" in notes[0]
    assert "2.weight" not in notes[0]  # a 1x1 conv without groups: the same fans either way
    # fan_in: true and torch's fans agree for a grouped conv, nothing to say
    assert not [n for n in torchinit.plan(model, "kaiming").notes if "true fans" in n]
    # the advice works: fans: torch gives torch's std and no note
    p2 = torchinit.plan(model, {"preset": "kaiming", "options": {"mode": "fan_out"},
                                "rules": [{"init": "kaiming_normal", "modules": "Conv2d", "params": "weight",
                                           "args": {"mode": "fan_out", "nonlinearity": "relu", "fans": "torch"}}]})
    assert p2["0.weight"].std == pytest.approx(torch_std, rel=1e-12)
    assert not [n for n in p2.notes if "true fans" in n]


class _RawScale(nn.Module):
    """A module's own parameter used through a functional op: no preset has a rule for it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.full((4,), float("nan")))

    def forward(self, x):
        return self.lin(x) * self.scale


@pytest.mark.parametrize("preset", ["pytorch", "module", "kaiming", "xavier", "lecun", "orthogonal", "gpt2", "llama",
                                    "rnn", "vit"])
def test_init_model_warns_naming_tensors_no_rule_covers(preset):
    # issue 15: the NaN 'scale' kept its value under every preset without a word
    m = _RawScale()
    with pytest.warns(UserWarning, match=rf"init_model: no rule of policy '{preset}' covers 1 tensor\(s\): 'scale'; "
                                         r"they keep their current values.*strict=True makes this an error"):
        torchinit.init_model(m, preset, seed=0)
    assert torch.isnan(m.scale).all()  # left as it was, as the warning says


def test_init_model_strict_raises_before_writing():
    m = _RawScale()
    before = m.lin.weight.detach().clone()
    with pytest.raises(PolicyError, match=r"no rule of policy 'kaiming' covers 1 tensor\(s\): 'scale'; nothing was written"):
        torchinit.init_model(m, "kaiming", seed=0, strict=True)
    assert torch.equal(m.lin.weight, before)
    # covered: no warning, and strict passes
    pol = {"preset": "kaiming", "rules": [{"qualnames": "scale", "init": "ones"}]}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torchinit.init_model(m, pol, seed=0, strict=True)
    assert bool((m.scale == 1).all())


def test_init_model_warning_lists_at_most_20_names():
    m = nn.Module()
    for i in range(25):
        m.register_parameter(f"p{i}", nn.Parameter(torch.zeros(2)))
    with pytest.warns(UserWarning, match=r"covers 25 tensor\(s\): 'p0', 'p1', .*'p19' and 5 more \(plan.unmatched"):
        torchinit.init_model(m, "kaiming", seed=0)


def test_apply_plan_warns_for_parameters_the_plan_does_not_know():
    # a plan saved before a layer was added: the new layer silently kept its constructor values
    small = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    bigger = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Linear(2, 2))
    p = torchinit.plan(small, "kaiming")
    with pytest.warns(UserWarning, match=r"^apply_plan: the plan has no entry for 2 learned parameter\(s\) of the "
                                         r"model: '3.weight', '3.bias'; they keep their current values \(was the plan "
                                         r"made for another model\? torchinit.plan\(model, policy\) plans every tensor\)$"):
        torchinit.apply_plan(bigger, p, seed=0)
    bigger[3].requires_grad_(False)  # frozen tensors, unmatched ones, only=[...] and tied aliases: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torchinit.apply_plan(bigger, p, seed=0)
        bigger[3].requires_grad_(True)
        torchinit.apply_plan(bigger, p, seed=0, only=["0.weight"])
        torchinit.apply_plan(small, p, seed=0)
        tied = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        tied[2].weight = tied[0].weight
        torchinit.apply_plan(tied, torchinit.plan(tied, "kaiming"), seed=0)
        partial = torchinit.plan(small, {"rules": [{"modules": "Linear", "params": "weight", "init": "zeros"}]})
        assert partial.unmatched == ["0.bias", "2.bias"]
        torchinit.apply_plan(small, partial, seed=0)
