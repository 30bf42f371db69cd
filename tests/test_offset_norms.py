"""Norms that scale by ``1 + weight`` (Gemma's RMSNorm): the presets' norm rule ``ones`` means
the identity, which for them is 0; 1 doubled every normalized activation, silently."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import torchinit
from torchinit.model.norms import scales_by_one_plus_weight


class OffsetRMSNorm(nn.Module):  # GemmaRMSNorm's arithmetic
    def __init__(self, d: int):
        super().__init__()
        self.eps = 1e-6
        self.weight = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).type_as(x)


class PlainRMSNorm(OffsetRMSNorm):  # LlamaRMSNorm's: weight * norm(x)
    def __init__(self, d: int):
        super().__init__(d)
        nn.init.ones_(self.weight)

    def forward(self, x):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * y).type_as(x)


class Block(nn.Module):
    def __init__(self, d: int = 8):
        super().__init__()
        self.norm = OffsetRMSNorm(d)
        self.plain = PlainRMSNorm(d)
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return self.fc(self.ln(self.plain(self.norm(x))))


def test_probe_tells_offset_from_plain_norms_without_touching_them():
    b = Block()
    with torch.no_grad():
        b.norm.weight.fill_(0.5)
    assert scales_by_one_plus_weight(b.norm)
    assert not scales_by_one_plus_weight(b.plain) and not scales_by_one_plus_weight(b.ln)
    assert not scales_by_one_plus_weight(b.fc) and not scales_by_one_plus_weight(b)
    assert torch.all(b.norm.weight == 0.5)  # the probe ran on a copy
    with torch.device("meta"):
        m = Block()
    assert scales_by_one_plus_weight(m.norm) and not scales_by_one_plus_weight(m.plain)


@pytest.mark.parametrize("preset", ["pytorch", "kaiming", "xavier", "gpt2", "llama", "vit", "rnn"])
def test_presets_give_offset_norms_their_identity(preset):
    b = Block()
    with torch.no_grad():
        b.norm.weight.fill_(7.0)
        b.plain.weight.fill_(7.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = torchinit.init_model(b, preset, seed=0)
    assert p["norm.weight"].spec == torchinit.specs.Constant(0.0)
    assert torch.all(b.norm.weight == 0) and torch.all(b.plain.weight == 1) and torch.all(b.ln.weight == 1)
    assert any("1 + weight" in n and "'norm.weight' (OffsetRMSNorm)" in n for n in p.notes)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(b.norm(x).pow(2).mean(-1), torch.ones(4), atol=1e-4)  # unit RMS, not 4


def test_meta_materialize_and_explicit_constant():
    with torch.device("meta"):
        m = Block()
    torchinit.materialize(m, "cpu", "llama", seed=0)
    assert torch.all(m.norm.weight == 0) and torch.all(m.plain.weight == 1)
    b = Block()
    pol = {"preset": "llama", "rules": [{"qualnames": "norm.weight", "init": "constant", "args": {"val": 1.0}}]}
    torchinit.init_model(b, pol, seed=0)
    assert torch.all(b.norm.weight == 1)  # asked for the number 1, not the identity


def test_gemma_presets_agree_with_its_own_init():
    T = pytest.importorskip("transformers")
    cfg = T.GemmaConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32,
                        num_key_value_heads=1, head_dim=8, max_position_embeddings=32)
    ref = T.GemmaForCausalLM(cfg)
    norms = [n for n, mod in ref.named_modules() if type(mod).__name__ == "GemmaRMSNorm"]
    assert len(norms) == 5 and all(torch.all(ref.get_submodule(n).weight == 0) for n in norms)
    for preset in ("llama", "gpt2", "pytorch"):
        m = T.GemmaForCausalLM(cfg)
        torchinit.init_model(m, preset, seed=0)
        assert all(torch.all(m.get_submodule(n).weight == 0) for n in norms), preset
