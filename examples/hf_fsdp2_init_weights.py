"""A Hugging Face model under FSDP2, initialized by its own ``_init_weights``, equal to one
process bit for bit, with the init audit.

    python examples/hf_fsdp2_init_weights.py --world 2

Flow: a tiny ``LlamaForCausalLM`` is built on the meta device, each decoder layer and the
root are ``fully_shard``-ed, ``to_empty`` allocates each rank's shards, then the model's
``_init_weights`` runs over every module inside ``torchinit.keyed_init_mode``: each draw
lands in the rank's shard with the values one process gives those global indices, and
the rotary ``inv_freq`` buffer is recomputed by the model's own code. The same in one
call: ``torchinit.materialize(model, "cpu", "module", seed=0)`` on the meta model.
Needs ``transformers``.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.distributed as dist

import torchinit


def build(meta: bool = True):
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=1001, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=None)
    if meta:
        with torch.device("meta"):
            return transformers.LlamaForCausalLM(cfg)
    return transformers.LlamaForCausalLM(cfg)


def init_with_own_code(model, seed: int = 0):
    with torchinit.keyed_init_mode(model, seed=seed) as mode:
        model.apply(model._init_weights)
    mode.raise_if_incomplete()  # every parameter and buffer written (inv_freq included)
    return mode


def state(model):
    out = {}
    for k, v in list(model.named_parameters()) + list(model.named_buffers()):
        v = v.detach()
        out[k] = v.full_tensor() if hasattr(v, "full_tensor") else v
    return out


def run(rank: int, world: int, init_method: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    results = {}
    for how in ("_init_weights under keyed_init_mode", "materialize(..., 'module')"):
        model = build()
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        if how.startswith("_init"):
            model.to_empty(device="cpu")
            init_with_own_code(model)
        else:
            torchinit.materialize(model, "cpu", "module", seed=0, progress=False)
        results[how] = state(model)
    if rank == 0:
        ref = build()
        ref.to_empty(device="cpu")
        init_with_own_code(ref)
        ref_state = state(ref)
        ref2 = build()
        torchinit.materialize(ref2, "cpu", "module", seed=0, progress=False)
        refs = {"_init_weights under keyed_init_mode": ref_state, "materialize(..., 'module')": state(ref2)}
        for how, got in results.items():
            same = all(torch.equal(got[k], v) for k, v in refs[how].items())
            print(f"world size {world}, {how}: == one process, all {len(got)} tensors bitwise: {same}")
        print(f"inv_freq: {results['_init_weights under keyed_init_mode']['model.rotary_emb.inv_freq'][:4].tolist()}")
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    args = ap.parse_args()
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(run, args=(args.world, f"file://{tmp}/pg"), nprocs=args.world, join=True,
                           start_method="spawn")


if __name__ == "__main__":
    main()
