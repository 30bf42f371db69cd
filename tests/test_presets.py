"""Presets: every preset on MLPs, CNNs with BatchNorm, RNNs and transformers; the
"pytorch" preset reproduces torch's reset_parameters (bitwise with engine="torch",
by KS test with the keyed engine)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import torchinit
from torchinit import PolicyError, get_preset
from torchinit import specs as S

PRESETS = ["pytorch", "module", "kaiming", "xavier", "lecun", "orthogonal", "gpt2", "llama", "rnn", "vit"]


def _models():
    return {
        "mlp": nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)),
        "cnn": nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, groups=2),
                             nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5)),
        "rnn": nn.ModuleDict({"emb": nn.Embedding(50, 16, padding_idx=0), "lstm": nn.LSTM(16, 32, num_layers=2),
                              "gru": nn.GRU(16, 8), "head": nn.Linear(32, 4)}),
        "transformer": nn.TransformerEncoder(
            nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True), num_layers=2,
            enable_nested_tensor=False),
    }


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_covers_standard_models_and_matches_its_plan(preset):
    for mname, model in _models().items():
        plan = torchinit.plan(model, preset)
        assert plan.unmatched == [], (preset, mname, plan.unmatched)
        applied = torchinit.init_model(model, preset, seed=0)
        params = dict(model.named_parameters())
        for e in applied.entries:
            t = params.get(e.name)
            if t is None:
                continue
            assert torch.isfinite(t).all(), (preset, e.name)
            std = e.std
            if std is None or std == 0 or t.numel() < 500 or e.zero_rows:
                continue
            # 5 standard errors of a sample std (about 1 / sqrt(2 n) relative): a 10% error in a
            # preset's formula fails every large tensor it touches (seed 0: deterministic)
            tol = 5 / math.sqrt(2 * t.numel())
            assert float(t.detach().std()) == pytest.approx(std, rel=tol), (preset, mname, e.name)


def _torch_reference_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ConvTranspose2d(6, 4, 2, groups=2), nn.Conv1d(4, 4, 3),
        nn.Linear(12, 7), nn.LayerNorm(7), nn.Embedding(11, 5, padding_idx=3), nn.LSTM(5, 6, num_layers=2),
        nn.GRU(4, 3, bias=False), nn.RNNCell(3, 2), nn.GroupNorm(2, 4), nn.InstanceNorm1d(3, affine=True),
    )


def test_pytorch_preset_torch_engine_equals_reset_parameters_in_order(same_bits, restore_rng):
    ref = _torch_reference_model()
    ours = copy.deepcopy(ref)
    torch.manual_seed(42)
    for m in ref.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    p = torchinit.init_model(ours, "pytorch", seed=42, engine="torch")
    assert p.unmatched == []
    for k, v in ref.state_dict().items():
        same_bits(v, ours.state_dict()[k])


def _ks(values: torch.Tensor, cdf) -> float:
    return stats.kstest(values.detach().flatten().double().numpy(), cdf).pvalue


def test_pytorch_preset_keyed_distributions_ks():
    m = nn.ModuleDict({
        "convt": nn.ConvTranspose2d(16, 24, 3, groups=4),
        "mha": nn.MultiheadAttention(48, 4, add_bias_kv=True),
        "lstm": nn.LSTM(20, 40),
        "emb": nn.Embedding(100, 30, padding_idx=7),
        "fc": nn.Linear(80, 60),
    })
    p = torchinit.init_model(m, "pytorch", seed=3)
    # ConvTranspose: torch's fans of the stored (in, out/groups, k, k) layout: "fan_in" = 6 * 9
    b = 1 / math.sqrt(6 * 9)
    assert p["convt.weight"].spec.high == pytest.approx(b, rel=1e-12)
    assert _ks(m["convt"].weight, stats.uniform(-b, 2 * b).cdf) > 1e-3
    assert _ks(m["convt"].bias, stats.uniform(-b, 2 * b).cdf) > 1e-4
    x = math.sqrt(6 / (48 + 144))
    assert _ks(m["mha"].in_proj_weight, stats.uniform(-x, 2 * x).cdf) > 1e-3
    assert torch.all(m["mha"].in_proj_bias == 0) and torch.all(m["mha"].out_proj.bias == 0)
    bk = torch.cat([m["mha"].bias_k.flatten(), m["mha"].bias_v.flatten()])
    # xavier_normal on (1, 1, 48): torch's fans are fan_in = fan_out = 1 * 48
    assert p["mha.bias_k"].spec == S.Normal(0.0, math.sqrt(2 / (48 + 48)))
    assert _ks(bk, stats.norm(0, math.sqrt(2 / (48 + 48))).cdf) > 1e-3
    lo = 1 / math.sqrt(40)
    lstm = torch.cat([t.flatten() for t in m["lstm"].parameters()])
    assert _ks(lstm, stats.uniform(-lo, 2 * lo).cdf) > 1e-3
    emb = m["emb"].weight.detach()
    assert torch.all(emb[7] == 0)
    assert _ks(torch.cat([emb[:7], emb[8:]]), stats.norm(0, 1).cdf) > 1e-3
    f = 1 / math.sqrt(80)
    assert _ks(m["fc"].weight, stats.uniform(-f, 2 * f).cdf) > 1e-3


def test_pytorch_preset_falls_back_to_routed_reset_parameters():
    m = nn.ModuleDict({"bil": nn.Bilinear(3, 4, 5), "prelu": nn.PReLU(3, init=0.1)})
    p = torchinit.plan(m, "pytorch")
    assert p["bil.weight"].initializer == "module" and p["bil.weight"].code == (("bil", "reset_parameters"),)
    a = torchinit.init_model(m, "pytorch", seed=1)
    assert torch.allclose(m["prelu"].weight, torch.full((3,), 0.1))
    bound = 1 / math.sqrt(3)
    assert a["bil.weight"].observed[-1] == S.Uniform(-bound, bound)


def test_kaiming_xavier_lecun_orthogonal_formulas():
    net = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 20))
    k = torchinit.plan(net, "kaiming")["0.weight"]
    assert k.spec == S.Normal(0.0, math.sqrt(2) / math.sqrt(100))
    x = torchinit.plan(net, "xavier")["0.weight"]
    assert x.spec.std == pytest.approx(math.sqrt(2) * math.sqrt(2 / 150))
    lc = torchinit.plan(net, "lecun")["2.weight"].spec
    assert isinstance(lc, S.TruncatedNormal) and lc.std == pytest.approx(1 / math.sqrt(50))
    o = torchinit.plan(net, "orthogonal")["0.weight"]
    assert o.spec == S.Orthogonal(math.sqrt(2)) and o.std == pytest.approx(math.sqrt(2) / 10)
    torchinit.init_model(net, "orthogonal", seed=0)
    w = net[0].weight.detach()
    assert torch.allclose(w @ w.T, 2 * torch.eye(50), atol=1e-4)
    # RNN in non-pytorch presets (Keras defaults): orthogonal recurrent weights
    lstm = nn.LSTM(8, 16)
    torchinit.init_model(lstm, "kaiming", seed=0)
    whh = lstm.weight_hh_l0.detach()  # (64, 16): orthonormal columns
    assert torch.allclose(whh.T @ whh, torch.eye(16), atol=1e-4)
    assert torch.all(lstm.bias_ih_l0 == 0)


def test_preset_options_and_errors():
    assert get_preset("gpt2", std=0.01).rules[0].args["std"] == 0.01
    assert get_preset("kaiming", mode="fan_out").rules[0].args["mode"] == "fan_out"
    with pytest.raises(PolicyError, match=r"unknown preset 'kaimin'; did you mean 'kaiming'\?"):
        get_preset("kaimin")
    with pytest.raises(PolicyError, match=r"preset 'gpt2': bad options \['sd'\]"):
        get_preset("gpt2", sd=1)
    with pytest.raises(PolicyError, match="field 'args': kaiming_normal: mode must be one of fan_in, fan_out"):
        get_preset("kaiming", mode="fan_avg")


def test_presets_are_serializable():
    for name in PRESETS:
        pol = get_preset(name)
        again = torchinit.load_policy(pol.to_dict())
        assert again.to_dict() == pol.to_dict()
    assert np.isclose(get_preset("pytorch").rules[1].args["a"], math.sqrt(5))


class _TitanBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attention = nn.ModuleDict({n: nn.Linear(d, d, bias=False) for n in ("wq", "wk", "wv", "wo")})
        self.feed_forward = nn.ModuleDict({"w1": nn.Linear(d, 2 * d, bias=False), "w2": nn.Linear(2 * d, d, bias=False),
                                           "w3": nn.Linear(d, 2 * d, bias=False)})
        self.attention_norm, self.ffn_norm = nn.RMSNorm(d), nn.RMSNorm(d)


def test_llama_preset_on_torchtitan_layout_layers_in_a_module_dict():
    """torchtitan keeps its blocks in ``nn.ModuleDict`` keyed by str(layer_id): the depth
    scaling must use that id (and n_layer its length), not silently take layer 0."""
    model = nn.Module()
    model.tok_embeddings = nn.Embedding(50, 16)
    model.layers = nn.ModuleDict({str(i): _TitanBlock(16) for i in range(4)})
    model.norm, model.output = nn.RMSNorm(16), nn.Linear(16, 50, bias=False)
    p = torchinit.plan(model, "llama")
    for i in range(4):
        for name in ("attention.wo", "feed_forward.w2", "feed_forward.w3"):
            e = p[f"layers.{i}.{name}.weight"]
            assert e.spec.std_ == pytest.approx(0.02 / math.sqrt(2 * (i + 1))) and e.args["layer"] == i, name
        assert p[f"layers.{i}.attention.wq.weight"].spec.std_ == 0.02
    total = torchinit.plan(model, get_preset("llama", depth_init=False))
    assert total["layers.0.attention.wo.weight"].spec.std_ == pytest.approx(0.02 / math.sqrt(2 * 4))
    assert any("n_layer = 4" in n for n in total.notes)


def test_glob_options_given_as_one_string_are_one_glob():
    """``residual="*.proj.weight"`` (as a YAML ``options`` value gives it) was split into its
    characters, and the glob "*" among them scaled every weight of the model."""
    net = nn.ModuleDict({"fc": nn.Linear(8, 8), "blocks": nn.ModuleList([nn.ModuleDict({"proj": nn.Linear(8, 8)})])})
    p = torchinit.plan(net, torchinit.load_policy({"preset": "gpt2", "options": {"residual": "*.proj.weight"}}))
    assert p["fc.weight"].spec == S.Normal(0.0, 0.02)
    assert p["blocks.0.proj.weight"].spec == S.Normal(0.0, 0.02 / math.sqrt(2))
    q = torchinit.plan(net, get_preset("llama", output="fc.weight", residual="*.proj.weight"))
    assert q["fc.weight"].rule.endswith("output head") and q["blocks.0.proj.weight"].rule.endswith("output projection")
    with pytest.raises(PolicyError, match="option 'residual' must be a glob or a list of globs"):
        get_preset("gpt2", residual=[])


class _MaskedLM(nn.Module):
    """An encoder with a tied MLM head under a name no glob of the llama preset knows (BERT's
    ``cls.predictions.decoder``); it says which layer is its output through
    ``get_output_embeddings()``, as Hugging Face models do."""

    def __init__(self, vocab: int = 500, d: int = 16):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.body = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.decoder = nn.Linear(d, vocab)
        self.decoder.weight = self.emb.weight

    def get_output_embeddings(self) -> nn.Module:
        return self.decoder

    def forward(self, ids):
        return self.decoder(self.norm(self.body(self.emb(ids))))


def test_llama_output_head_reaches_the_models_own_output_layer_under_any_name():
    # issue 15: under llama BERT's tied cls.predictions.decoder (Whisper's proj_out) got the
    # embedding's N(0, 1): logits std sqrt(d); "@output_head" selects get_output_embeddings().weight
    model = _MaskedLM()
    p = torchinit.init_model(model, "llama", seed=0)
    e = p["emb.weight"]
    # tied: the "tied embedding/head" rule (found by identity) gives the head's spec
    assert e.aliases == ("decoder.weight",) and e.rule.endswith("tied embedding/head")
    assert e.spec == S.TruncatedNormal(0.0, 0.25, -0.75, 0.75)  # d^-0.5 = 0.25, truncated at 3 std
    untied = _MaskedLM()
    untied.decoder.weight = nn.Parameter(torch.empty(500, 16))
    u = torchinit.plan(untied, "llama")["decoder.weight"]  # untied, odd name: "@output_head"
    assert u.rule.endswith("output head") and u.spec == S.TruncatedNormal(0.0, 0.25, -0.75, 0.75)
    with torch.no_grad():
        assert model(torch.arange(64)).std() < 3
    plain = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))  # no get_output_embeddings: nothing is the head
    q = torchinit.plan(plain, "llama")
    assert not any(x.rule.endswith("output head") for x in q.entries)
    r = torchinit.load_policy({"rules": [{"qualnames": "@output_head", "init": "zeros"}]})
    assert [x.name for x in torchinit.plan(model, r).entries] == ["emb.weight"]
    assert torchinit.Policy.from_dict(r.to_dict()) == r
    with pytest.raises(PolicyError, match="field 'qualnames': unknown selector '@output-head'; the one there is: "
                                          "'@output_head'"):  # a typo would otherwise match nothing, quietly
        torchinit.load_policy({"rules": [{"qualnames": "@output-head", "init": "zeros"}]})


def test_preset_and_engine_names_are_literal_types_in_public_signatures():
    # issue 15: IDEs complete Literal values; the Literals list exactly the built-in names
    import inspect
    import typing

    from torchinit.model.plan import ENGINES

    names = typing.get_args(torchinit.PresetName)  # the built-ins, in registration order (rnn, vit included)
    assert names == tuple(list(torchinit.PRESETS)[:len(names)]) and {"rnn", "vit"} <= set(names)
    assert set(typing.get_args(torchinit.PresetName)) <= set(torchinit.PRESETS)
    assert typing.get_args(torchinit.EngineName) == ENGINES
    # (get_preset's return type is a TYPE_CHECKING import: read its annotation as written)
    assert inspect.signature(torchinit.get_preset).parameters["name"].annotation == "PresetName | str"
    for fn in (torchinit.plan, torchinit.init_model, torchinit.materialize, torchinit.load_policy):
        hints = typing.get_type_hints(fn)
        first = next(k for k in ("policy", "obj", "name") if k in hints)
        assert torchinit.PresetName in typing.get_args(hints[first]), fn.__name__
    for fn in (torchinit.init_model, torchinit.apply_plan):
        assert typing.get_type_hints(fn)["engine"] is torchinit.EngineName, fn.__name__


@pytest.mark.parametrize("preset, kind",
                         [("llama", "truncated_normal"), ("gpt2", "normal"), ("vit", "truncated_normal")])
def test_relative_position_biases_get_the_presets_std_not_the_embeddings(preset, kind):
    # T5's relative_attention_bias (an nn.Embedding of buckets x heads) is added to the attention
    # logits: llama gave it the token embeddings' N(0, 1), as large as the content logits; Swin's
    # raw relative_position_bias_table was covered by no preset. Both now get the preset's std
    # (the config's initializer_range, or 0.02 times T5's initializer_factor).
    T = pytest.importorskip("transformers")
    t5 = T.T5EncoderModel(T.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                     initializer_factor=0.5))
    swin = T.SwinModel(T.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1], num_heads=[1],
                                    window_size=2, initializer_range=0.03))
    for model, name, std in [
            (t5, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 0.02 * 0.5),
            (swin, "encoder.layers.0.blocks.0.attention.relative_position_bias.relative_position_bias_table", 0.03)]:
        p = torchinit.plan(model, preset)
        assert name not in p.unmatched
        e = p[name]
        assert e.rule.endswith(" relative position bias"), e.rule
        assert e.spec.kind == kind and e.spec.std_ == pytest.approx(std)
        emb = [x for x in p.entries if x.rule.endswith(" embedding")]
        if preset == "llama" and emb:  # the token embeddings keep their N(0, 1)
            assert all(x.spec.std_ == 1.0 for x in emb)


def test_pytorch_preset_leaves_a_user_class_named_transformer_alone():
    # the "transformer >1-D" rule matched the bare class name, so a model class of one's own named
    # Transformer (torchtitan's models are) got xavier_uniform on every >1-D tensor under the DEFAULT
    # preset: its token embedding U(+-0.21) instead of the N(0, 1) its constructor gives
    class Transformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_embeddings = nn.Embedding(100, 32)
            self.proj = nn.Linear(32, 32)

        def forward(self, x):
            return self.proj(self.tok_embeddings(x))

    p = torchinit.plan(Transformer())
    assert p["tok_embeddings.weight"].rule == "#7 embedding" and p["tok_embeddings.weight"].spec == S.Normal(0.0, 1.0)
    assert p["proj.weight"].rule == "#1 layer weight"
    assert "#12 transformer >1-D" in p.unused_rules
    # torch's own nn.Transformer, and its subclasses, still get it (as its _reset_parameters does)
    class MyTransformer(nn.Transformer):
        pass

    for cls in (nn.Transformer, MyTransformer):
        t = cls(16, 2, 1, 1, 32, batch_first=True)
        assert torchinit.plan(t)["encoder.layers.0.linear1.weight"].rule == "#12 transformer >1-D"


def test_gpt2_n_layer_ignores_lists_inside_a_layer():
    # a block holding its experts in an nn.ModuleList: n_layer came from the longest list, the 4
    # experts, not the 3 layers, and every residual projection got 0.02 / sqrt(8) for 0.02 / sqrt(6)
    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.w2 = nn.Linear(8, 16, bias=False), nn.Linear(16, 8, bias=False)

        def forward(self, x):
            return self.w2(torch.relu(self.w1(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.o_proj, self.experts = nn.Linear(8, 8), nn.ModuleList(Expert() for _ in range(4))

        def forward(self, x):
            return x + self.o_proj(x) + sum(e(x) for e in self.experts)

    model = nn.Sequential()
    model.layers = nn.ModuleList(Block() for _ in range(3))
    p = torchinit.plan(model, "gpt2")
    assert "n_layer = 3 (length of the longest ModuleList, 'layers')" in p.notes
    for name in ("layers.2.o_proj.weight", "layers.0.experts.3.w2.weight"):
        assert p[name].args["n_layer"] == 3 and p[name].spec == S.Normal(0.0, 0.02 / math.sqrt(6))


def test_pytorch_preset_runs_a_subclass_s_own_init_code():
    # "pytorch" is what the constructors give; a subclass of nn.Linear / nn.LayerNorm / nn.Embedding
    # with a reset_parameters of its own got its torch base's init instead: a zero-initialized output
    # layer U(+-1/sqrt(fan_in)), a LayerNorm subclass's weight 1 for 0.5
    class ZeroLinear(nn.Linear):
        def reset_parameters(self):
            nn.init.zeros_(self.weight)
            nn.init.zeros_(self.bias)

    class HalfNorm(nn.LayerNorm):
        def reset_parameters(self):
            nn.init.constant_(self.weight, 0.5)
            nn.init.zeros_(self.bias)

    class SmallEmbedding(nn.Embedding):
        def reset_parameters(self):
            nn.init.normal_(self.weight, std=0.02)

    class Plain(nn.Linear):  # no init code of its own: torch's, as a spec
        pass

    def build():
        return nn.Sequential(SmallEmbedding(10, 8), Plain(8, 8), nn.ReLU(), ZeroLinear(8, 2), HalfNorm(2))

    built = build()
    for engine in ("keyed", "torch"):
        model = build()
        p = torchinit.init_model(model, seed=0, engine=engine)
        for name in ("0.weight", "3.weight", "3.bias", "4.weight", "4.bias"):
            assert p[name].rule == "#13 own init code", name
        assert p["1.weight"].rule == "#1 layer weight"
        assert torch.equal(model[3].weight, built[3].weight) and torch.equal(model[4].weight, built[4].weight)
        assert abs(model[0].weight.std().item() - 0.02) < 0.01
    with torch.device("meta"):
        meta = build()
    torchinit.materialize(meta, "cpu", seed=0)
    assert torch.all(meta[3].weight == 0) and torch.all(meta[4].weight == 0.5)


def test_own_init_selector_round_trips_and_a_typo_is_refused():
    pol = torchinit.load_policy({"rules": [{"modules": "@own_init", "init": "module"}]})
    assert torchinit.Policy.from_dict(pol.to_dict()) == pol
    with pytest.raises(PolicyError, match=r"^policy 'custom': rule 0: field 'modules': unknown selector '@own_int'; "
                                          r"the one there is: '@own_init'$"):  # it would match nothing, quietly
        torchinit.load_policy({"rules": [{"modules": "@own_int", "init": "module"}]})


@pytest.mark.parametrize("value", ["false", "no", 0, None])
def test_llama_depth_init_must_be_a_bool(value):
    # {"preset": "llama", "options": {"depth_init": "false"}} was truthy: per-layer depth scaling, silently
    with pytest.raises(PolicyError, match=rf"^preset 'llama' with options depth_init={value!r}: preset 'llama': "
                                          rf"depth_init must be true or false, got {value!r}$"):
        torchinit.load_policy({"preset": "llama", "options": {"depth_init": value}})


def test_pytorch_preset_runs_the_init_code_of_a_class_named_like_torch_s():
    # rules name torch's classes by name, so a class of one's own called Linear (not a subclass)
    # with a zero init of its own got torch's Linear init from the default preset
    class Linear(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.zeros(o, i)), nn.Parameter(torch.zeros(o))

        def reset_parameters(self):
            nn.init.zeros_(self.weight)
            nn.init.zeros_(self.bias)

        def forward(self, x):
            return x @ self.weight.T + self.bias

    model = nn.Sequential(Linear(4, 4))
    p = torchinit.init_model(model, seed=0)
    assert p["0.weight"].rule == "#13 own init code" and torch.all(model[0].weight == 0)
