"""Models with their own init code for the sharded routing / audit tests (imported by the
test processes and their gloo ranks)."""

from __future__ import annotations

import math

import torch
from torch import nn

SEED = 4321


class OwnInit(nn.Module):
    """Init code in every form the routing promises to shard: torch.nn.init, in-place
    sampling methods, ``.data``, a box view, fills, a copy of a plain tensor, orthogonal_
    (whole tensor), a fallback draw (bernoulli_), a computed buffer, slices across sharded
    dimensions (a padding row, a block of rows). Odd sizes: uneven
    shards on 2, 3 and 4 ranks."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 14)
        self.fc2 = nn.Linear(14, 10)
        self.emb = nn.Embedding(13, 6)
        self.norm = nn.LayerNorm(10)
        self.w = nn.Parameter(torch.empty(9, 7))
        self.q = nn.Parameter(torch.empty(7, 5))
        self.c = nn.Parameter(torch.empty(5, 4))
        self.m = nn.Parameter(torch.empty(6, 3))
        self.register_buffer("freqs", torch.empty(6), persistent=False)

    def init_weights(self, skip_norm: bool = False):
        nn.init.trunc_normal_(self.fc1.weight, std=0.02)
        self.fc1.bias.data.uniform_(-0.1, 0.1)
        self.fc2.weight.normal_(0.0, 0.05)
        nn.init.zeros_(self.fc2.bias)
        nn.init.kaiming_uniform_(self.emb.weight, a=math.sqrt(5))
        self.emb.weight[3].zero_()  # a padding row (a slice across the sharded dim under FSDP2)
        self.emb.weight[10:12, 1:] = 0.5  # __setitem__ of a box across shards
        nn.init.normal_(self.fc1.weight[5:9], std=3.0)  # rows across shard boundaries
        if not skip_norm:
            self.norm.weight.fill_(1.0)
        self.norm.bias.zero_()
        nn.init.xavier_normal_(self.w)
        self.w[:, :3].uniform_(-1.0, 1.0)
        nn.init.orthogonal_(self.q, gain=2.0)
        self.c.copy_(torch.arange(20.0).reshape(5, 4))
        self.m.bernoulli_(0.5)
        self.freqs.copy_(1.0 / 10000 ** (torch.arange(0, 12, 2).float() / 12))

    def forward(self, x):
        return self.norm(self.fc2(torch.relu(self.fc1(x))))


def reference(seed: int = SEED, **kw) -> dict[str, torch.Tensor]:
    """One process: the model built on CPU, its init code under keyed_init_mode."""
    import torchinit

    m = OwnInit()
    with torchinit.keyed_init_mode(m, seed=seed):
        m.init_weights(**kw)
    return {k: v.detach().clone() for k, v in m.state_dict(keep_vars=False).items()} | {"freqs": m.freqs.clone()}


class WeightNormed(nn.Module):
    """Init code that draws into a weight_norm layer's computed weight (HF Wav2Vec2's pos_conv_embed):
    a temporary, lost in one process; on shards a DTensor that is no tensor of the model."""

    def __init__(self):
        super().__init__()
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 6, 3), dim=2)
        self.fc = nn.Linear(5, 7)

    def init_weights(self):
        nn.init.normal_(self.conv.weight, std=0.1)  # lost: the weight is g * v / ||v||, computed
        self.fc.weight.copy_(torch.randn(7, 5))  # a fallback draw in the model's scope, after that one
        nn.init.zeros_(self.fc.bias)


GPT_KW = dict(n_layer=2, n_embd=24, n_head=2, vocab_size=37, block_size=8)  # 37 rows: uneven on 2 and 3 ranks


def llama():
    """A tiny Hugging Face Llama (rotary inv_freq: a computed non-persistent buffer); 37 rows."""
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=37, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=None)
    return transformers.LlamaForCausalLM(cfg)


def gpt2():
    """A tiny Hugging Face GPT-2 (its attention and MLP, modules with no parameter of their own,
    rescale their c_proj in its init code); 37 rows."""
    import transformers

    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=37, n_embd=16, n_layer=2, n_head=2,
                                                                 n_positions=16, bos_token_id=0,
                                                                 eos_token_id=0))


def llama_inv_freq() -> torch.Tensor:
    """What the rotary embedding of :func:`llama` computes (head dim 8, base 10000)."""
    return 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.int64).float() / 8))


def state(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (non-persistent ones included), gathered if sharded."""
    from torchinit.sharding import is_dtensor

    out = {}
    for k, v in list(model.named_parameters()) + list(model.named_buffers()):
        v = v.detach()
        out[k] = (v.full_tensor() if is_dtensor(v) else v).clone()
    return out
