"""Mixture-of-experts models of transformers 5: experts stored as one 3-D tensor per projection
(``MixtralExperts.gate_up_proj`` / ``down_proj``), routers (``*Router``), GPT-OSS's expert biases
and attention sinks get the gpt2/llama presets' specs; none is left uncovered."""

from __future__ import annotations

import pytest
import torch

import torchinit

T = pytest.importorskip("transformers")

_SMALL = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1,
          "intermediate_size": 64}


def mixtral():
    return T.MixtralForCausalLM(T.MixtralConfig(**_SMALL, num_local_experts=4, num_experts_per_tok=2))


def gpt_oss():
    return T.GptOssForCausalLM(T.GptOssConfig(**_SMALL, num_local_experts=4, num_experts_per_tok=2, head_dim=16))


def _uncovered(model, plan):
    got = {n for e in plan.entries if e.spec is not None for n in (e.name, *e.aliases)}
    return [n for n, _ in model.named_parameters() if n not in got]


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("build", [mixtral, gpt_oss], ids=["mixtral", "gpt_oss"])
def test_experts_routers_and_sinks_are_covered(build, preset):
    m = build()
    p = torchinit.plan(m, preset)
    assert _uncovered(m, p) == []  # every parameter (the 3-D experts were left to 'keep' before)
    for i in range(2):
        mlp = f"model.layers.{i}.mlp"
        gate_up, down = p[f"{mlp}.experts.gate_up_proj"], p[f"{mlp}.experts.down_proj"]
        assert gate_up.rule.endswith("moe experts and router")
        # down_proj writes into the residual stream: scaled by depth like every down_proj
        assert down.spec.std < gate_up.spec.std == pytest.approx(0.02)
        assert down.rule == p[f"model.layers.{i}.self_attn.o_proj.weight"].rule
    if build is gpt_oss:
        assert p["model.layers.0.mlp.router.bias"].spec.value == 0.0
        assert p["model.layers.0.mlp.experts.down_proj_bias"].spec.value == 0.0
        assert p["model.layers.0.self_attn.sinks"].rule.endswith("attention sinks")
    else:
        assert p["model.layers.0.mlp.gate.weight"].spec.std == pytest.approx(0.02)


def test_moe_model_materializes_like_init_model():
    ref = mixtral()
    torchinit.init_model(ref, "gpt2", seed=3)
    with torch.device("meta"):
        meta = mixtral()
    torchinit.materialize(meta, "cpu", "gpt2", seed=3)  # refused before: experts had no initializer
    for (name, a), (_, b) in zip(ref.state_dict().items(), meta.state_dict().items()):
        assert torch.equal(a, b), name
    w = meta.model.layers[1].mlp.experts.gate_up_proj
    assert abs(float(w.std()) - 0.02) < 0.002


def test_fan_based_presets_say_why_they_leave_the_experts():
    with torch.device("meta"):
        meta = mixtral()
    with pytest.raises(ValueError, match=r"6 of them belong to mixture-of-experts modules \(MixtralExperts, "
                                         r"MixtralTopKRouter\): the gpt2, llama and module presets initialize those"):
        torchinit.materialize(meta, "cpu", "kaiming", seed=0)
    assert all(t.is_meta for t in meta.parameters())  # refused before allocating anything
    with pytest.warns(UserWarning, match=r"belong to mixture-of-experts modules .*they keep their current values"):
        torchinit.init_model(mixtral(), "xavier", seed=0)
