"""muP as a policy (torchinit.MuP): roles from shapes, specs at and away from the base
width, param groups (Tensor Programs V, Table 3), and MuP wherever a policy goes."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

import torchinit
from torchinit import specs as S
from torchinit import zoo


def _mlp(w: int) -> nn.Module:
    return zoo.MLP(depth=3, width=w, in_features=12, out_features=5)


def _cnn(w: int) -> nn.Module:
    return zoo.CNN(channels=(w, 2 * w), num_classes=7, image_size=8)


def _gpt(w: int, tie: bool = False, style: str = "gpt2") -> nn.Module:
    return zoo.GPT(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=w, tie_weights=tie, style=style)


def _meta(build, *a, **kw):
    with torch.device("meta"):
        return build(*a, **kw)


def _roles(mup, model):
    return {n: r.role for n, r in mup.roles(model).items()}


# -- roles --------------------------------------------------------------------------------

def test_roles_of_an_mlp():
    mup = torchinit.MuP(_meta(_mlp, 16))
    r = mup.roles(_mlp(64))
    assert _roles(mup, _mlp(64)) == {
        "layers.0.weight": "input", "layers.0.bias": "vector", "layers.2.weight": "hidden",
        "layers.2.bias": "vector", "layers.4.weight": "output", "layers.4.bias": "fixed"}
    assert r["layers.2.weight"].width_mult == 4.0 and r["layers.0.weight"].fan_out_mult == 4.0
    assert r["layers.4.weight"].fan_in_mult == 4.0 and r["layers.4.weight"].fan_out_mult == 1.0


def test_roles_of_a_convnet():
    mup = torchinit.MuP(_meta(_cnn, 4), delta=_meta(_cnn, 8))
    assert _roles(mup, _cnn(16)) == {
        "features.0.weight": "input", "features.1.weight": "vector", "features.1.bias": "vector",
        "features.1.running_mean": "fixed", "features.1.running_var": "fixed",
        "features.1.num_batches_tracked": "fixed", "features.3.weight": "hidden", "features.4.weight": "vector",
        "features.4.bias": "vector", "features.4.running_mean": "fixed", "features.4.running_var": "fixed",
        "features.4.num_batches_tracked": "fixed", "fc.weight": "output", "fc.bias": "fixed"}


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_roles_of_a_gpt_style_model(style):
    mup = torchinit.MuP(_meta(_gpt, 16, style=style))
    roles = _roles(mup, _gpt(48, style=style))
    emb = [n for n in roles if n.endswith(("wte.weight", "wpe.weight", "embed_tokens.weight",
                                             "embed_positions.weight"))]
    assert len(emb) == 2 and all(roles[n] == "input" for n in emb)  # Embedding (vocab, d): vocab is its fan-in
    assert roles["lm_head.weight"] == "output"
    hidden = [n for n, r in roles.items() if r == "hidden"]
    assert len(hidden) == 2 * (4 if style == "gpt2" else 6) and all(n.endswith(".weight") for n in hidden)
    assert all(roles[n] == "vector" for n in roles if "ln" in n or "norm" in n)


def test_tied_readout_is_input_like_and_the_plan_says_it_needs_a_forward_multiplier():
    mup = torchinit.MuP(_meta(_gpt, 16, tie=True))
    model = _gpt(32, tie=True)
    assert _roles(mup, model)["transformer.wte.weight"] == "input"
    p = torchinit.plan(model, mup)
    assert any("'transformer.wte.weight' is tied to the output layer" in n and "1/width_mult" in n for n in p.notes)


@pytest.mark.hf
def test_roles_of_hugging_face_models_built_from_configs():
    tr = pytest.importorskip("transformers")
    tr.utils.logging.set_verbosity_error()

    def gpt2(d):
        return tr.GPT2LMHeadModel(tr.GPT2Config(n_layer=1, n_embd=d, n_head=d // 8, vocab_size=50, n_positions=16))

    def llama(d):
        return tr.LlamaForCausalLM(tr.LlamaConfig(vocab_size=50, hidden_size=d, intermediate_size=2 * d,
                                                  num_hidden_layers=1, num_attention_heads=d // 8,
                                                  num_key_value_heads=d // 8, max_position_embeddings=16))

    mup = torchinit.MuP(_meta(gpt2, 16))
    r = _roles(mup, gpt2(32))
    # Conv1D stores (in, out): c_attn (d, 3d) and c_fc are hidden, wte/wpe input, lm_head tied to wte
    assert r["transformer.wte.weight"] == "input" and r["transformer.wpe.weight"] == "input"
    for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        assert r[f"transformer.h.0.{n}.weight"] == "hidden"
        assert r[f"transformer.h.0.{n}.bias"] == "vector"
    assert "lm_head.weight" not in r  # tied: once, under its first name
    assert mup.roles(gpt2(32))["transformer.h.0.mlp.c_fc.weight"].fan_in_mult == 2.0
    # planned and written like any policy: materialize on meta equals init_model, the tied readout is noted
    ref = gpt2(32)
    p = torchinit.init_model(ref, mup, seed=1)
    assert any("'transformer.wte.weight' is tied to the output layer" in n for n in p.notes)
    meta = _meta(gpt2, 32)
    torchinit.materialize(meta, "cpu", mup, seed=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(meta.state_dict().values(), ref.state_dict().values()))

    mup = torchinit.MuP(_meta(llama, 16))
    r = _roles(mup, llama(64))
    assert r["model.embed_tokens.weight"] == "input" and r["lm_head.weight"] == "output"
    for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
              "mlp.up_proj", "mlp.down_proj"):
        assert r[f"model.layers.0.{n}.weight"] == "hidden"
    assert r["model.layers.0.input_layernorm.weight"] == "vector" and r["model.norm.weight"] == "vector"


def test_roles_need_a_base_of_the_same_architecture():
    mup = torchinit.MuP(_meta(_mlp, 16))
    with pytest.raises(ValueError, match=r"model tensor 'extra' \(shape \(3,\)\) has no counterpart in the base"):
        m = _mlp(32)
        m.register_parameter("extra", nn.Parameter(torch.zeros(3)))
        mup.roles(m)
    with pytest.raises(ValueError, match=r"'layers.0.weight' has shape \(32, 12, 1\) but \(16, 12\) in the base"):
        m = _mlp(32)
        m.layers[0].weight = nn.Parameter(torch.zeros(32, 12, 1))
        mup.roles(m)


def test_bad_arguments_are_refused():
    base = _meta(_mlp, 16)
    with pytest.raises(ValueError, match="readout must be one of zero, scaled, got 'none'"):
        torchinit.MuP(base, readout="none")
    with pytest.raises(TypeError, match="base must be an nn.Module"):
        torchinit.MuP("mlp")
    with pytest.raises(TypeError, match="a MuP cannot be written as a policy file"):
        torchinit.MuP(base).to_dict()


# -- specs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("init", ["kaiming", "xavier", "gpt2", "pytorch"])
@pytest.mark.parametrize("build", [_mlp, _cnn, _gpt], ids=["mlp", "cnn", "gpt"])
def test_at_the_base_width_mup_is_the_base_policy_bit_for_bit(build, init, same_bits):
    """readout='scaled' at the base width: every tensor as the base policy writes it (keyed)."""
    mup = torchinit.MuP(_meta(build, 8), delta=_meta(build, 16), init=init, readout="scaled")
    a, b = build(8), build(8)
    pa = torchinit.init_model(a, mup, seed=3)
    pb = torchinit.init_model(b, init, seed=3)
    assert [e.spec for e in pa.entries] == [e.spec for e in pb.entries]
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        same_bits(x, y)


def test_at_the_base_width_a_zero_readout_is_the_only_difference(same_bits):
    mup = torchinit.MuP(_meta(_gpt, 8), delta=_meta(_gpt, 16))  # readout="zero"
    a, b = _gpt(8), _gpt(8)
    torchinit.init_model(a, mup, seed=3)
    torchinit.init_model(b, "kaiming", seed=3)
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        if n == "lm_head.weight":
            assert torch.count_nonzero(x) == 0 and torch.count_nonzero(y) > 0
        else:
            same_bits(x, y)


def test_away_from_the_base_width_hidden_variance_and_readout_scale_with_width():
    base = _meta(_mlp, 16)
    model = _mlp(64)
    ref = torchinit.plan(base, "gpt2")  # fixed std 0.02: the scaling is all muP's
    p = torchinit.plan(model, torchinit.MuP(base, init="gpt2", readout="scaled"))
    assert p["layers.2.weight"].spec == S.Normal(0.0, 0.02 / 2)  # variance / 4
    assert p["layers.4.weight"].spec == S.Normal(0.0, 0.02 / 4)  # std / 4: variance ~ 1/fan_in^2
    assert p["layers.0.weight"].spec == ref["layers.0.weight"].spec  # input: fan_in fixed
    z = torchinit.plan(model, torchinit.MuP(base, init="gpt2"))
    assert z["layers.4.weight"].spec == S.Constant(0.0) and z["layers.4.weight"].initializer == "zeros"
    assert z["layers.4.weight"].args == {"mup_role": "output", "width_mult": 4.0, "readout": "zero"}
    # kaiming at base 16 scaled by 1/sqrt(4) is kaiming at 64 (in value, not necessarily in bits)
    k = torchinit.plan(model, torchinit.MuP(base))
    assert math.isclose(k["layers.2.weight"].spec.std, math.sqrt(2 / 64), rel_tol=1e-12)


def test_scaled_truncated_and_uniform_specs_keep_their_shape():
    base = _meta(_mlp, 16)
    model = _mlp(64)
    p = torchinit.plan(model, torchinit.MuP(base, init="xavier", readout="scaled"))
    ref = torchinit.plan(base, "xavier")["layers.2.weight"].spec
    assert p["layers.2.weight"].spec == S.Uniform(ref.low / 2, ref.high / 2)
    lec = torchinit.plan(model, torchinit.MuP(base, init="lecun"))["layers.2.weight"].spec
    lref = torchinit.plan(base, "lecun")["layers.2.weight"].spec
    assert isinstance(lec, S.TruncatedNormal)
    assert (lec.std_, lec.a, lec.b) == (lref.std_ / 2, lref.a / 2, lref.b / 2)


def test_drawn_hidden_weights_follow_the_scaled_spec():
    base = _meta(_mlp, 16)
    model = _mlp(256)
    torchinit.init_model(model, torchinit.MuP(base, init="gpt2"), seed=0)
    w = model.layers[2].weight.detach().reshape(-1).double()
    assert stats.kstest((w / (0.02 / 4)).numpy(), "norm").pvalue > 1e-3


def test_plan_shows_role_and_width_multiplier():
    p = torchinit.plan(_mlp(64), torchinit.MuP(_meta(_mlp, 16)))
    assert p.policy == "mup(kaiming)"
    assert p["layers.2.weight"].args["mup_role"] == "hidden" and p["layers.2.weight"].args["width_mult"] == 4.0
    text = p.render(width=250)
    assert "mup_role=hidden, width_mult=4" in text and "mup_role=output" in text
    assert torchinit.Plan.from_json(p.to_json())["layers.0.weight"].args["mup_role"] == "input"
    assert any(n.startswith("muP roles: 1 input, 1 hidden, 1 output, 2 vector, 1 fixed") for n in p.notes)


def test_module_code_cannot_be_rescaled_and_says_so():
    base = _meta(_mlp, 16)
    with pytest.raises(torchinit.PolicyError, match=r"muP: 'layers.0.weight' \(input, shape \(64, 12\), base \(16, 12\)\) "
                                                    r"gets the module's own init code under 'module'"):
        torchinit.plan(_mlp(64), torchinit.MuP(base, init="module"))


def test_no_scaling_dim_is_noted():
    p = torchinit.plan(_mlp(16), torchinit.MuP(_meta(_mlp, 16)))
    assert any("no dimension differs from the base model" in n for n in p.notes)


def test_materialize_with_mup_equals_init_model(same_bits):
    base = _meta(_gpt, 8)
    mup = torchinit.MuP(base, init="gpt2")
    ref = _gpt(32)
    torchinit.init_model(ref, mup, seed=5)
    meta = _meta(_gpt, 32)
    torchinit.materialize(meta, "cpu", mup, seed=5, progress=False)
    got, want = meta.state_dict(), ref.state_dict()
    assert list(got) == list(want)  # same names in the same order: no tensor goes uncompared
    for n in want:
        same_bits(got[n], want[n])


def test_extending_a_mup_keeps_it_a_mup():
    base = _meta(_mlp, 16)
    mup = torchinit.MuP(base, init="gpt2") + torchinit.Rule("ones", qualnames="layers.0.bias")
    assert isinstance(mup, torchinit.MuP)
    p = torchinit.plan(_mlp(64), mup)
    assert p["layers.0.bias"].spec == S.Constant(1.0) and p["layers.2.weight"].spec == S.Normal(0.0, 0.01)


# -- param groups ---------------------------------------------------------------------------

@pytest.mark.parametrize("build", [_mlp, _cnn, lambda w: _gpt(w, tie=True)], ids=["mlp", "cnn", "gpt-tied"])
@pytest.mark.parametrize("opt", ["adam", "adamw", "sgd"])
def test_param_groups_hold_every_parameter_exactly_once(build, opt):
    model = build(32)
    groups = torchinit.MuP(_meta(build, 8)).param_groups(model, lr=0.1, optimizer=opt)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(ids) == len(set(ids))
    {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[opt](groups)


def test_param_group_learning_rates_follow_table_3():
    model = _mlp(64)
    mup = torchinit.MuP(_meta(_mlp, 16))

    def lrs(opt, wd=0.0):
        return {n: (g["lr"], g["weight_decay"]) for g in mup.param_groups(model, lr=0.1, optimizer=opt,
                                                                              weight_decay=wd) for n in g["names"]}

    adam = lrs("adam", wd=0.01)
    assert adam["layers.2.weight"] == (0.1 / 4, 0.04) and adam["layers.4.weight"] == (0.1 / 4, 0.04)
    assert adam["layers.0.weight"] == (0.1, 0.01) and adam["layers.0.bias"] == (0.1, 0.01)
    sgd = lrs("sgd")
    assert sgd["layers.0.weight"][0] == 0.4 and sgd["layers.0.bias"][0] == 0.4  # fan_out scales: lr * m
    assert sgd["layers.2.weight"][0] == 0.1 and sgd["layers.4.weight"][0] == 0.1 / 4
    assert sgd["layers.4.bias"][0] == 0.1


def test_param_groups_refuse_bad_arguments():
    mup = torchinit.MuP(_meta(_mlp, 16))
    with pytest.raises(ValueError, match="optimizer must be one of adam, adamw, sgd, got 'lion'"):
        mup.param_groups(_mlp(32), lr=0.1, optimizer="lion")
    with pytest.raises(ValueError, match=r"lr must be a finite number >= 0, got -1"):
        mup.param_groups(_mlp(32), lr=-1)


# -- the forward pass: attention logits 1/d ---------------------------------------------------

class _MHA(nn.Module):
    def __init__(self, w: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(w, heads, batch_first=True)


def test_attention_scale_refuses_multihead_attention_whose_head_dim_scales():
    mup = torchinit.MuP(_meta(_MHA, 16, 2))
    with pytest.raises(ValueError, match=r"'attn' is an nn.MultiheadAttention whose head dim scales \(8 -> 16\)"):
        mup.attention_scale_(_MHA(32, 2))
    assert torchinit.MuP(_meta(_MHA, 16, 2)).attention_scale_(_MHA(32, 4)) == []  # head dim fixed: nothing to do


@pytest.mark.hf
def test_attention_scale_sets_hugging_face_llama_scaling_to_one_over_d():
    tr = pytest.importorskip("transformers")
    tr.utils.logging.set_verbosity_error()

    def llama(d):
        torch.manual_seed(0)
        return tr.LlamaForCausalLM(tr.LlamaConfig(vocab_size=50, hidden_size=d, intermediate_size=2 * d,
                                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                                  max_position_embeddings=16, attn_implementation="eager"))

    mup = torchinit.MuP(_meta(llama, 16))
    model = llama(64)
    ids = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(0))
    before = model(ids).logits
    changed = mup.attention_scale_(model)
    assert changed == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    assert model.model.layers[0].self_attn.scaling == math.sqrt(8) / 32  # head dim 8 at the base, 32 here
    assert not torch.allclose(model(ids).logits, before)  # the forward reads it
    assert mup.attention_scale_(model) == []  # already muP's scale: left as it is
    model.model.layers[1].self_attn.scaling = 0.5
    with pytest.raises(ValueError, match=r"'model.layers.1.self_attn'.scaling is 0.5, neither 1/sqrt\(head_dim=32\)"):
        mup.attention_scale_(model)
