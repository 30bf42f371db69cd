"""lsuv_ on tied and residual models: never through a tied alias, residual-branch ends
deliberately (skipped by default, or scaled relative to the stream), said in the report."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import torchinit
from torchinit import lsuv_
from torchinit.diagnostics import diagnose

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers")


def gpt2(n_layer=2):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=1000, n_positions=64, n_embd=64, n_layer=n_layer, n_head=4, bos_token_id=0,
                     eos_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    torchinit.init_model(model, "gpt2", seed=0)
    return model


IDS = torch.randint(0, 1000, (8, 16), generator=torch.Generator().manual_seed(0))


def c_projs(model):
    return {n: m for n, m in model.named_modules() if n.endswith("c_proj")}


def test_gpt2_tied_head_and_residual_projections_are_left_alone():
    model = gpt2()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rep = lsuv_(model, IDS, seed=0)
    # the tied lm_head is the input embedding: not rewritten through the alias (std 0.020 stayed)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(model.transformer.wte.weight, before["transformer.wte.weight"])
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    # the residual projections keep their depth scaling (0.02 / sqrt(2 * 2) = 0.010)
    for n in c_projs(model):
        assert torch.equal(model.get_parameter(f"{n}.weight"), before[f"{n}.weight"]), n
        assert model.get_parameter(f"{n}.weight").std().item() == pytest.approx(0.01, rel=0.05)
    acts = {l.name: l for l in rep.layers}
    assert acts["lm_head"].skipped == "tied: shared with transformer.wte.weight"
    assert acts["lm_head"].action.startswith("skipped: tied to transformer.wte.weight")
    assert sorted(n for n, l in acts.items() if l.skipped == "residual end") == sorted(c_projs(model))
    scaled = [l for l in rep.layers if l.skipped is None]
    assert [l.name.rsplit(".", 1)[-1] for l in scaled] == ["c_attn", "c_fc"] * 2
    assert all(l.converged and l.action == "scaled: unit output std" for l in scaled)
    assert rep.converged and rep.extra["tied"] == {"lm_head": ["transformer.wte.weight"]}
    assert "skipped: residual end" in str(rep) and "skipped: tied to" in str(rep)
    # diagnose agrees: the branch ends (now larger than the embedding stream in block 0) are
    # still branch ends, not the signal vanishing after unit-scaled c_attn/c_fc
    after = diagnose(model, IDS)
    assert {r.name for r in after.signal() if r.residual} == set(c_projs(model))
    assert after.verdicts == [], [str(v) for v in after.verdicts]


def test_gpt2_relative_scales_branches_against_the_stream():
    model = gpt2()
    wte = model.transformer.wte.weight.detach().clone()
    rep = lsuv_(model, IDS, seed=0, residual="relative", tol=0.05)
    assert torch.equal(model.transformer.wte.weight, wte)
    ends = [l for l in rep.layers if l.name.endswith("c_proj")]
    assert len(ends) == 4 and all(l.skipped is None and l.converged for l in ends)
    # measured independently: each branch output is 1/sqrt(4) of the stream it is added to
    layers = {r.name: r for r in diagnose(model, IDS, backward=False).layers}
    for l in ends:
        r = layers[l.name]
        assert r.std / r.stream_std == pytest.approx(0.5, rel=0.05), l.name
        assert l.target_std == pytest.approx(0.5 * l.stream_std)
    rep2 = lsuv_(gpt2(), IDS, seed=0, residual="relative", residual_ratio=0.25)
    assert all(l.target_std == pytest.approx(0.25 * l.stream_std) for l in rep2.layers if l.name.endswith("c_proj"))


def test_gpt2_scale_treats_branch_ends_like_any_layer_but_never_the_tied_head():
    model = gpt2()
    wte = model.transformer.wte.weight.detach().clone()
    rep = lsuv_(model, IDS, seed=0, residual="scale")
    assert torch.equal(model.transformer.wte.weight, wte)
    assert all(l.skipped is None for l in rep.layers if l.name.endswith("c_proj"))
    assert model.transformer.h[0].attn.c_proj.weight.std().item() > 0.1  # unit output: depth scaling gone


def test_llama_o_proj_and_down_proj_are_branch_ends():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(0))
    rep = lsuv_(model, ids, seed=0)
    skipped = {l.name: l.skipped for l in rep.layers if l.skipped}
    assert skipped == {**{f"model.layers.{i}.{p}": "residual end" for i in (0, 1)
                          for p in ("self_attn.o_proj", "mlp.down_proj")},
                       "lm_head": "tied: shared with model.embed_tokens.weight"}


class Block(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        return x + self.proj(torch.relu(self.fc(x)))


def test_plain_torch_residual_and_tied_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), Block(), Block(), nn.Linear(32, 32), nn.Linear(32, 32))
    model[4].weight = model[3].weight  # two layers sharing one weight
    with torch.no_grad():
        for b in (model[1], model[2]):
            b.proj.weight.mul_(0.1)  # depth-scaled branch ends
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    rep = lsuv_(model, x, seed=0)
    got = {l.name: l.skipped for l in rep.layers}
    assert got == {"0": None, "1.fc": None, "1.proj": "residual end", "2.fc": None, "2.proj": "residual end",
                   "3": "tied: shared with 4.weight", "4": "tied: shared with 3.weight"}
    for n in ("1.proj.weight", "2.proj.weight", "1.proj.bias", "3.weight", "3.bias", "4.bias"):
        assert torch.equal(model.get_parameter(n), before[n]), n
    assert not torch.equal(model[1].fc.weight, before["1.fc.weight"])


def test_bad_residual_options_raise_before_anything_is_written():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 16)
    with pytest.raises(ValueError, match=r"lsuv_: residual must be 'skip', 'relative' or 'scale', got 'bogus'"):
        lsuv_(model, x, residual="bogus")
    with pytest.raises(ValueError, match=r"lsuv_: residual_ratio must be a positive finite number, got -1"):
        lsuv_(model, x, residual="relative", residual_ratio=-1)
    with pytest.raises(ValueError, match=r"residual_ratio is used with residual='relative' only"):
        lsuv_(model, x, residual_ratio=0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
