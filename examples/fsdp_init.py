"""Sharded init that equals single-process init, and what torch itself does.

Run with::

    torchrun --nproc_per_node=2 examples/fsdp_init.py

(CPU and gloo by default; on GPUs it uses NCCL and one GPU per rank.)

1. FSDP2: a GPT-style decoder is built on the meta device, sharded with
   ``fully_shard``, then ``torchinit.materialize`` allocates each rank's shards
   and fills them from their global indices. The gathered weights equal a
   single-process ``init_model`` with the same seed, bitwise.
2. Tensor parallel: an MLP whose layers are Colwise/Rowwise parallel, then
   ``init_model(..., engine="keyed")``: same guarantee.
3. torch side by side: ``torch.manual_seed(0); nn.init.normal_(w)`` on an
   FSDP2-sharded weight.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import torchinit
from torchinit import zoo

GPT = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=1001, block_size=32)  # 1001 rows: uneven shards


def main() -> None:
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.split(":")[0], (world,))

    # 1. meta -> fully_shard -> materialize
    with torch.device("meta"):
        model = zoo.build("gpt", **GPT)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    torchinit.materialize(model, device, "gpt2", seed=0)
    wte = model.transformer.wte.weight
    full = {k: v.full_tensor().cpu() for k, v in model.state_dict().items()}

    # 2. tensor parallel MLP
    tp = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16)).to(device)
    parallelize_module(tp, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    torchinit.init_model(tp, "kaiming", seed=0, engine="keyed")
    tp_full = {k: v.full_tensor().cpu() for k, v in tp.state_dict().items()}

    # 3. torch's own init on an FSDP2-sharded weight
    lin = nn.Linear(4, 8, bias=False).to(device)
    fully_shard(lin, mesh=mesh)
    torch.manual_seed(0)
    nn.init.normal_(lin.weight)
    torch_sharded = lin.weight.full_tensor().cpu()

    if rank == 0:
        ref = zoo.build("gpt", **GPT)
        torchinit.init_model(ref, "gpt2", seed=0)
        same = all(torch.equal(full[k], v) for k, v in ref.state_dict().items())
        print(f"world size {world}; transformer.wte.weight: global {tuple(wte.shape)}, "
              f"placements {wte.placements}, local {tuple(wte.to_local().shape)} on rank 0")
        print(f"FSDP2 + materialize == single-process init_model, all {len(full)} tensors bitwise: {same}")
        tp_ref = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16))
        torchinit.init_model(tp_ref, "kaiming", seed=0)
        tp_same = all(torch.equal(tp_full[k], v) for k, v in tp_ref.state_dict().items())
        print(f"tensor parallel (Colwise/Rowwise) + init_model == single-process, bitwise: {tp_same}")

        torch.manual_seed(0)
        single = nn.init.normal_(torch.empty(8, 4))
        half = torch_sharded.shape[0] // world
        print("torch: manual_seed(0); nn.init.normal_(w) on an FSDP2 weight (8, 4):")
        print(f"  rows 0-{half - 1} == rows {half}-{2 * half - 1} (every shard the same values): "
              f"{torch.equal(torch_sharded[:half], torch_sharded[half:2 * half])}")
        print(f"  equals single-process torch.manual_seed(0); normal_: {torch.equal(torch_sharded, single)}")
        print(f"  first column, sharded: {[round(x, 4) for x in torch_sharded[:, 0].tolist()]}")
        print(f"  first column, single : {[round(x, 4) for x in single[:, 0].tolist()]}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
