"""A torchtitan-style Llama initialized by its OWN ``init_weights()`` under FSDP2, with
weights that do not depend on the number of ranks, and an audit that nothing was missed.

The flow is torchtitan's: build on the meta device, ``fully_shard`` each block and the
root, ``to_empty(device=...)``, then call the model's ``init_weights()``. Run inside
``torchinit.keyed_init_mode(model, seed=0)``, every draw that code makes lands in each
rank's shard with the values one process gives those global indices: the gathered
weights equal one process's, bit for bit, on 1, 2 or 4 ranks. No seed checkpoint, no
rank ever holds a full weight. ``mode.raise_if_incomplete()`` then proves every
parameter and buffer was written.

Run::

    python examples/torchtitan_style_llama.py --world 2        # gloo ranks spawned here
    torchrun --nproc_per_node=4 examples/torchtitan_style_llama.py

Without the mode (``torch.manual_seed(0); model.init_weights()``) the same code gives
weights that differ from one process (on a CPU mesh every rank draws the same values).
"""

from __future__ import annotations

import argparse
import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import torchinit

SMALL = dict(dim=64, n_layers=2, n_heads=4, vocab_size=1001, multiple_of=32, max_seq_len=64)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def reset_parameters(self):
        nn.init.ones_(self.weight)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def init_weights(self, init_std: float):
        for lin in (self.wq, self.wk, self.wv):
            nn.init.trunc_normal_(lin.weight, mean=0.0, std=0.02)
        nn.init.trunc_normal_(self.wo.weight, mean=0.0, std=init_std)

    def forward(self, x, rope):
        b, s, d = x.shape
        q, k, v = (w(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        q, k = _rotate(q, rope[:s]), _rotate(k, rope[:s])
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, s, d))


def _rotate(x, rope):
    cos, sin = rope.chunk(2, dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class FeedForward(nn.Module):
    def __init__(self, dim: int, multiple_of: int):
        super().__init__()
        hidden = multiple_of * math.ceil(int(2 * 4 * dim / 3) / multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def init_weights(self, init_std: float):
        nn.init.trunc_normal_(self.w1.weight, mean=0.0, std=0.02)
        for lin in (self.w2, self.w3):
            nn.init.trunc_normal_(lin.weight, mean=0.0, std=init_std)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, layer_id: int, dim: int, n_heads: int, multiple_of: int):
        super().__init__()
        self.attention = Attention(dim, n_heads)
        self.feed_forward = FeedForward(dim, multiple_of)
        self.attention_norm = RMSNorm(dim)
        self.ffn_norm = RMSNorm(dim)
        self.weight_init_std = 0.02 / (2 * (layer_id + 1)) ** 0.5  # torchtitan's depth-scaled init

    def init_weights(self):
        for norm in (self.attention_norm, self.ffn_norm):
            norm.reset_parameters()
        self.attention.init_weights(self.weight_init_std)
        self.feed_forward.init_weights(self.weight_init_std)

    def forward(self, x, rope):
        x = x + self.attention(self.attention_norm(x), rope)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    """torchtitan's Llama layout and ``init_weights`` (a real-valued rotary table)."""

    def __init__(self, dim: int, n_layers: int, n_heads: int, vocab_size: int, multiple_of: int, max_seq_len: int):
        super().__init__()
        self.dim, self.n_heads, self.max_seq_len = dim, n_heads, max_seq_len
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleDict({str(i): Block(i, dim, n_heads, multiple_of) for i in range(n_layers)})
        self.norm = RMSNorm(dim)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        self.register_buffer("rope", self._precompute_rope(), persistent=False)

    def _precompute_rope(self, theta: float = 10000.0):
        hd = self.dim // self.n_heads
        freqs = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
        angles = torch.outer(torch.arange(self.max_seq_len).float(), freqs)
        return torch.cat([angles.cos(), angles.sin()], dim=-1)

    def init_weights(self, buffer_device: torch.device | None = None):
        with torch.device(buffer_device or self.rope.device):
            self.rope = self._precompute_rope()
        nn.init.normal_(self.tok_embeddings.weight)
        for layer in self.layers.values():
            layer.init_weights()
        self.norm.reset_parameters()
        std = self.dim ** -0.5
        nn.init.trunc_normal_(self.output.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)

    def forward(self, tokens):
        h = self.tok_embeddings(tokens)
        for layer in self.layers.values():
            h = layer(h, self.rope)
        return self.output(self.norm(h))


def build_sharded(cfg: dict, mesh, dtype=torch.float32) -> Transformer:
    """meta -> fully_shard (each block, then the root) -> to_empty: the torchtitan flow."""
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        model = Transformer(**cfg).to(dtype)
    for layer in model.layers.values():
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model.to_empty(device="cpu")


def one_process(cfg: dict, seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """The same init code on one process, under the same mode."""
    with torch.device("meta"):
        model = Transformer(**cfg).to(dtype)
    model.to_empty(device="cpu")
    with torchinit.keyed_init_mode(model, seed=seed) as mode:
        model.init_weights()
    mode.raise_if_incomplete()
    return {k: v.clone() for k, v in model.state_dict().items()}


def run(rank: int, world: int, init_method: str | None = None) -> None:
    torch.set_num_threads(1)
    if init_method is None:
        dist.init_process_group("gloo")
    else:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    model = build_sharded(SMALL, mesh)
    with torchinit.keyed_init_mode(model, seed=0) as mode:
        model.init_weights()
    mode.raise_if_incomplete()  # every parameter and buffer was written
    full = {k: v.full_tensor() for k, v in model.state_dict().items()}
    w = model.tok_embeddings.weight
    shapes = tuple(w.shape), tuple(w.to_local().shape)
    loss = model(torch.zeros(1, 8, dtype=torch.long)).float().logsumexp(-1).mean()

    plain = build_sharded(SMALL, mesh)  # torch's own RNG, for comparison
    torch.manual_seed(0)
    with torch.no_grad():
        plain.init_weights()
    plain_full = {k: v.full_tensor() for k, v in plain.state_dict().items()}
    if rank == 0:
        ref = one_process(SMALL, seed=0)
        same = all(torch.equal(full[k], ref[k]) for k in ref)
        print(f"world size {world}: tok_embeddings global {shapes[0]}, local {shapes[1]} on rank 0")
        print(f"keyed_init_mode + init_weights() == one process, all {len(ref)} tensors bitwise: {same}")
        print(f"audit: {len(mode.report().tensors)} tensors, missing {mode.missing()}; loss {float(loss.detach()):.4f}")
        torch.manual_seed(0)
        plain_ref = Transformer(**SMALL)
        with torch.no_grad():
            plain_ref.init_weights()
        same_plain = all(torch.equal(plain_full[k], v) for k, v in plain_ref.state_dict().items())
        print(f"torch RNG (manual_seed(0), no mode) == one process: {same_plain}")
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2, help="gloo ranks to spawn (ignored under torchrun)")
    args = ap.parse_args()
    if "RANK" in os.environ:  # torchrun
        run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
        return
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(run, args=(args.world, f"file://{tmp}/pg"), nprocs=args.world, join=True,
                           start_method="spawn")


if __name__ == "__main__":
    main()
