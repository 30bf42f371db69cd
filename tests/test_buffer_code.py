"""Constructor-computed buffers no rule covers (model/buffer_code.py): after ``to_empty`` they
hold garbage, and ``init_model`` (keyed engine) gives them their module's own init code, as
``materialize`` does for meta buffers, instead of keeping them silently."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchinit
from torchinit.model.buffer_code import non_persistent_buffers, uncovered


class Rope(nn.Module):
    """A rotary table: a computed, non-persistent buffer, recomputed by reset_parameters."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.dim = dim
        self.register_buffer("inv_freq", torch.empty(dim // 2), persistent=False)
        self.register_buffer("scale", torch.ones(()), persistent=True)  # persistent: a checkpoint's
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.inv_freq.copy_(1.0 / 10000 ** (torch.arange(0, self.dim, 2).float() / self.dim))


class NoCode(nn.Module):
    """A non-persistent buffer whose module has no init code of its own."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mask", torch.tril(torch.ones(4, 4)), persistent=False)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 8), Rope(), NoCode())


def _to_garbage(model: nn.Module) -> nn.Module:
    """``to_empty`` with its garbage made visible: NaN in every floating tensor."""
    model.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.fill_(math.nan)
    return model


def test_non_persistent_buffers_are_listed_in_module_order():
    assert non_persistent_buffers(_net()) == ["1.inv_freq", "2.mask"]


def test_after_to_empty_init_model_recomputes_them_with_the_module_code():
    ref = _net()
    with torch.device("meta"):
        model = _net()
    _to_garbage(model)
    p = torchinit.init_model(model, "gpt2", seed=0)
    assert torch.equal(model[1].inv_freq, ref[1].inv_freq)
    assert p["1.inv_freq"].initializer == "module"
    assert ("init_model: 1 buffer(s)/frozen table(s) the policy has no rule for (1.inv_freq) are initialized by "
            "their module's own init code (buffers registered persistent=False are computed, never loaded: after "
            "to_empty they would hold garbage)") in p.notes
    # no code to run: kept as before (a persistent buffer is a checkpoint's value: kept too)
    assert torch.isnan(model[2].mask).all() and torch.isnan(model[1].scale)
    assert uncovered(p, ["1.inv_freq", "2.mask", "1.scale"]) == ["1.scale", "2.mask"]


def test_an_allocated_model_gets_the_same_values_and_weights():
    a, b = _net(), _net()
    pa = torchinit.init_model(a, "gpt2", seed=3)
    pb = torchinit.plan(b, "gpt2")
    torchinit.apply_plan(b, pb, seed=3)
    for (n, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), n
    assert torch.equal(a[1].inv_freq, _net()[1].inv_freq)
    assert "1.inv_freq" not in {e.name for e in pb.entries} and pa["1.inv_freq"].initializer == "module"


def test_the_torch_engine_leaves_them_to_the_caller():
    # torch's RNG would move under the module code's other draws: the torch engine keeps its plan
    with torch.device("meta"):
        model = _net()
    _to_garbage(model)
    p = torchinit.init_model(model, "gpt2", seed=0, engine="torch")
    assert "1.inv_freq" not in {e.name for e in p.entries} and torch.isnan(model[1].inv_freq).all()


def test_hugging_face_llama_after_to_empty_gets_its_rotary_table():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    ref = transformers.LlamaForCausalLM(cfg)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    _to_garbage(model)
    torchinit.init_model(model, "llama", seed=0)
    bufs = dict(ref.named_buffers())
    for n, b in model.named_buffers():
        assert torch.equal(b, bufs[n]), n
    fresh = transformers.LlamaForCausalLM(cfg)
    torchinit.init_model(fresh, "llama", seed=0)
    for (n, x), y in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(x, y), n
