"""weight_norm's g and v are planned as the weight they compute (model/parametrized.py):
v gets the weight's spec, g the spec's RMS slice norm, so the layer's weight has the
spec's std; nothing is left unmatched, and no rule draws g as if it were a weight."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import torchinit

G, V = "0.parametrizations.weight.original0", "0.parametrizations.weight.original1"


def _net(legacy: bool = False, dim: int | None = 0) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
    if legacy:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of parametrizations
            net[0] = nn.utils.weight_norm(net[0], dim=dim)
    else:
        net[0] = parametrizations.weight_norm(net[0], dim=dim)
    return net


def _weight(net: nn.Sequential) -> torch.Tensor:
    """The weight the layer computes with (the legacy hook sets it before each forward)."""
    m = net[0]
    if hasattr(m, "parametrizations"):
        return m.weight.detach()
    hook = next(iter(m._forward_pre_hooks.values()))
    return torch._weight_norm(m.weight_v, m.weight_g, hook.dim).detach()


# the weight's std under each preset: Linear(64 -> 128) followed by ReLU
_STD = {"pytorch": 1 / math.sqrt(3 * 64), "kaiming": math.sqrt(2 / 64), "xavier": math.sqrt(2) * math.sqrt(2 / 192),
        "lecun": 1 / 8, "orthogonal": math.sqrt(2 / 128), "gpt2": 0.02, "llama": 0.02, "vit": 0.02}


@pytest.mark.parametrize("legacy", [False, True], ids=["parametrizations", "legacy"])
@pytest.mark.parametrize("preset", ["pytorch", "kaiming", "xavier", "lecun", "orthogonal", "gpt2", "llama", "vit"])
def test_presets_give_the_computed_weight_the_layer_spec(preset, legacy):
    net = _net(legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before: g and v unmatched (or never written), a warning
        p = torchinit.init_model(net, preset, seed=0)
    g_name, v_name = (G, V) if not legacy else ("0.weight_g", "0.weight_v")
    assert p.unmatched == []
    g, v = p[g_name], p[v_name]
    assert g.initializer == "constant" and "weight_norm's g" in g.matched_as and g.args["weight_norm"] == "g of 0.weight"
    assert "(as '0.weight')" in v.matched_as and "weight_norm's v" in v.matched_as
    w = _weight(net)
    # every row of the computed weight has norm g = sqrt(64) * std: its std is the spec's
    assert torch.allclose(w.norm(dim=1), torch.full((128,), g.spec.value), rtol=1e-5)
    assert g.spec.value == pytest.approx(_STD[preset] * 8, rel=1e-6)
    assert float(w.pow(2).mean().sqrt()) == pytest.approx(_STD[preset], rel=1e-5)


def test_weight_norm_over_another_dim_and_the_whole_tensor():
    net = _net(dim=1)  # g: one norm per column (1, 64), slices of 128
    p = torchinit.init_model(net, "kaiming", seed=0)
    assert p[G].shape == (1, 64) and p[G].spec.value == pytest.approx(math.sqrt(2 / 64 * 128))
    assert torch.allclose(net[0].weight.norm(dim=0), torch.full((64,), p[G].spec.value), rtol=1e-5)
    net = _net(dim=None)  # g: one scalar, the whole tensor's norm
    p = torchinit.init_model(net, "kaiming", seed=0)
    assert p[G].shape == () and p[G].spec.value == pytest.approx(math.sqrt(2 / 64 * 128 * 64))
    assert float(net[0].weight.detach().pow(2).mean().sqrt()) == pytest.approx(math.sqrt(2 / 64), rel=1e-6)


def test_a_catch_all_rule_no_longer_draws_g_as_a_weight():
    # before: g ~ N(0, 0.02) per row, so the computed weight had std 0.0025 (and random signs per row)
    net = _net()
    torchinit.init_model(net, [{"qualnames": "*", "init": "normal", "args": {"std": 0.02}}], seed=0)
    assert float(net[0].weight.std()) == pytest.approx(0.02, rel=0.02)
    assert bool((net[0].parametrizations.weight.original0 > 0).all())
    # by role: before, g (128, 1) was a "weight" with fan_in 1 and got kaiming's N(0, 2)
    net = _net()
    torchinit.init_model(net, [{"role": "weight", "init": "kaiming_normal", "args": {"nonlinearity": "relu"}},
                               {"role": "bias", "init": "zeros"}], seed=0)
    assert torch.allclose(net[0].weight.norm(dim=1), torch.full((128,), math.sqrt(2.0)), rtol=1e-5)


def test_a_rule_naming_an_original_applies_to_it_alone():
    net = _net()
    p = torchinit.init_model(net, {"preset": "kaiming", "rules": [{"qualnames": "*.original0", "init": "ones"}]},
                             seed=0)
    assert p[G].initializer == "ones" and p[V].initializer == "kaiming_normal"
    assert torch.allclose(net[0].weight.norm(dim=1), torch.ones(128), rtol=1e-5)
    net = _net(legacy=True)
    p = torchinit.init_model(net, {"preset": "kaiming", "rules": [{"params": "weight_g", "init": "ones"}]}, seed=0)
    assert p["0.weight_g"].initializer == "ones" and p["0.weight_v"].initializer == "kaiming_normal"


@pytest.mark.parametrize("legacy", [False, True], ids=["parametrizations", "legacy"])
def test_materialize_gives_what_init_model_gives(legacy):
    with torch.device("meta"):
        net = _net(legacy)
    torchinit.materialize(net, "cpu", "kaiming", seed=0)  # before: refused g and v (no initializer)
    ref = _net(legacy)
    torchinit.init_model(ref, "kaiming", seed=0)
    for (n, a), (_, b) in zip(net.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n


def test_a_zero_or_unknown_slice_norm_is_refused_before_writing():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(torchinit.PolicyError) as err:
        torchinit.init_model(net, {"preset": "kaiming", "rules": [{"qualnames": "0.weight", "init": "zeros"}]}, seed=0)
    assert str(err.value) == (
        f"policy 'kaiming': rule #14 zeros: {G!r} is the g of weight_norm's '0.weight' = g * v / ||v||, whose rule "
        "gives Constant(value=0): a zero v makes the weight NaN (0 / 0, as torch's weight_norm of a zero weight "
        "does); give '0.weight' a non-zero init, or remove weight_norm from the layer")
    with pytest.raises(torchinit.PolicyError) as err:
        torchinit.plan(net, {"preset": "kaiming", "rules": [{"qualnames": "0.weight", "init": "eye"}]})
    assert str(err.value) == (
        f"policy 'kaiming': rule #14 eye: {G!r} is the g of weight_norm's '0.weight' = g * v / ||v||, whose rule "
        "gives Eye(): g would be the norm of a slice of it, not known for this spec; give '0.weight' a normal, "
        f"uniform, truncated normal, orthogonal or constant init, or g a rule naming it (qualnames: {G!r}; the "
        "weight's rule then applies to v only)")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


_HINT = (f". But {G!r}, {V!r} are the g and v of weight_norm's '0.weight' = g * v / ||v||: init code that writes "
         "'0.weight' writes a temporary computed from them, which is lost. Give the weight a rule instead (e.g. "
         "{'qualnames': '0.weight', 'init': 'kaiming_normal'}): v gets its spec, g the spec's RMS slice norm; a rule "
         "of their own can break the weight (zeros in v: NaN)")


def test_module_code_cannot_write_them_and_the_messages_say_what_to_do():
    net = _net()
    with pytest.warns(UserWarning) as caught:
        torchinit.init_model(net, "module", seed=0)
    (msg,) = [str(w.message) for w in caught if "never wrote" in str(w.message)]
    assert msg.endswith(_HINT + "; strict=True makes this an error")
    with torch.device("meta"):
        net = _net()
    with pytest.raises(ValueError) as err:
        torchinit.materialize(net, "cpu", "module", seed=0)
    assert str(err.value).endswith("or give them a rule" + _HINT)
    # the fix the messages give
    net = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torchinit.init_model(net, {"preset": "module", "rules": [
            {"qualnames": "0.weight", "init": "kaiming_normal", "args": {"nonlinearity": "relu"}}]}, seed=0)
    assert torch.allclose(net[0].weight.norm(dim=1), torch.full((128,), math.sqrt(2.0)), rtol=1e-5)


def test_mup_rescales_g_with_its_v():
    def build(width):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))
        m[2] = parametrizations.weight_norm(m[2])
        return m

    net = build(128)
    p = torchinit.init_model(net, torchinit.MuP(build(32)), seed=0)  # before: g kept, weight std 0.051
    g = p["2.parametrizations.weight.original0"]
    assert g.args["mup_role"] == "hidden" and g.spec.value == pytest.approx(math.sqrt(2 / 128 * 128))
    assert float(net[2].weight.pow(2).mean().sqrt()) == pytest.approx(math.sqrt(2 / 128), rel=1e-5)


def test_wav2vec2_positional_conv_is_covered():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
                                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    model = transformers.Wav2Vec2Model(cfg)
    p = torchinit.init_model(model, {"preset": "gpt2", "rules": [
        {"qualnames": "masked_spec_embed", "init": "uniform"}]}, seed=0, strict=True)
    conv = model.encoder.pos_conv_embed.conv  # weight_norm over dim 2: g (1, 1, 16), slices of 16 * 8
    name = "encoder.pos_conv_embed.conv.parametrizations.weight.original0"
    assert p[name].spec.value == pytest.approx(0.02 * math.sqrt(16 * 8))
    assert float(conv.weight.std()) == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("legacy", [False, True], ids=["parametrizations", "legacy"])
def test_a_rule_bias_option_reaches_a_weight_normed_layer_bias(legacy):
    # before: the layer had no 'weight' parameter, so bias= passed its bias by (unmatched, kept)
    net = _net(legacy)
    rule = {"modules": "Linear", "params": "weight", "init": "kaiming_normal", "args": {"nonlinearity": "relu"},
            "bias": "zeros"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = torchinit.init_model(net, [rule], seed=0)
    assert p["0.bias"].matched_as.endswith("(rule's bias=)") and bool((net[0].bias == 0).all())


def test_diagnose_holds_the_computed_weight_to_the_plan():
    net = _net()
    p = torchinit.init_model(net, "kaiming", seed=0)
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    rep = torchinit.diagnose(net, x, plan=p)
    assert rep.param("0.weight").promised_std == pytest.approx(math.sqrt(2 / 64))  # before: None, nothing to check
    assert rep.by_kind("mismatch") == []
    with torch.no_grad():  # a stale g: the weight is no longer what the plan promised
        net[0].parametrizations.weight.original0.fill_(1.0)
    (v,) = torchinit.diagnose(net, x, plan=p).by_kind("mismatch")
    assert "0.weight" in str(v)
