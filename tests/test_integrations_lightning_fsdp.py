"""InitCallback under Lightning's ModelParallelStrategy (FSDP2) on CPU: 2 gloo processes, the model
built on the meta device and sharded in configure_model, materialized shard-locally by the
callback before the optimizer; the gathered weights training starts from are bitwise those of
single-process init with the same seed. Then DDP: a verdict found on one rank stops every rank."""

from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
from torch import nn

import torchinit

pytestmark = [
    pytest.mark.integrations, pytest.mark.distributed, pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed + gloo"),
]
pytest.importorskip("lightning", reason="the [lightning] extra is not installed")

SEED = 7


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


def _worker(rank: int, world: int, port: int, result_dir: str) -> None:
    # what torchrun sets: Lightning then joins this process group instead of launching processes
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), GROUP_RANK="0", LOCAL_WORLD_SIZE=str(world), TORCHELASTIC_RUN_ID="t")
    torch.set_num_threads(1)
    out: dict = {}
    try:
        import warnings

        import lightning as L
        from lightning.pytorch.strategies import ModelParallelStrategy
        from torch.distributed.fsdp import fully_shard

        from torchinit.integrations.lightning import InitCallback

        class Sharded(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.model = None

            def configure_model(self):
                if self.model is not None:
                    return
                with torch.device("meta"):
                    self.model = _net()
                for i in (0, 2, 4):
                    fully_shard(self.model[i], mesh=self.device_mesh["data_parallel"])
                fully_shard(self.model, mesh=self.device_mesh["data_parallel"])

            def forward(self, x):
                return self.model(x)

            def training_step(self, batch, batch_idx):
                x, y = batch
                return nn.functional.cross_entropy(self(x), y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        class Snapshot(L.Callback):
            def on_train_start(self, trainer, pl_module):
                sd = pl_module.model.state_dict()
                out["sharded"] = sorted(k for k, v in sd.items() if hasattr(v, "full_tensor"))
                out["start"] = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
                                for k, v in sd.items()}

        g = torch.Generator().manual_seed(0)
        x = torch.randn(32, 8, generator=g)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)
        trainer = L.Trainer(strategy=ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1),
                            accelerator="cpu", devices=world, max_steps=1, logger=False,
                            callbacks=[InitCallback("kaiming", seed=SEED, module="model"), Snapshot()],
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(Sharded(), loader)
        out["warnings"] = [str(w.message) for w in caught if "InitCallback" in str(w.message)]

        # DDP in the same process group: rank 1 diagnoses an all-zero input (zero biases: every
        # ReLU unit dead there), rank 0 a normal one; both ranks stop, rank 0 saying another rank failed
        class Replicated(Sharded):
            def configure_model(self):
                if self.model is None:
                    self.model = _net()

        ddp_cb = InitCallback("kaiming", seed=SEED, module="model", batch_to_inputs=lambda b: b[0] * (rank == 0))
        trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=world, max_steps=1, logger=False,
                            callbacks=[ddp_cb],
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        try:
            trainer.fit(Replicated(), loader)
        except Exception as exc:  # noqa: BLE001 - the type and message are what is checked
            out["ddp"] = f"{type(exc).__name__}: {exc}"
    except Exception:
        out["error"] = traceback.format_exc()
    torch.save(out, os.path.join(result_dir, f"rank{rank}.pt"))


def test_fsdp2_configure_model_is_initialized_shard_locally(tmp_path):
    import torch.multiprocessing as mp

    ref = _net()
    torchinit.init_model(ref, "kaiming", seed=SEED)
    with socket.socket() as s:  # a free port for the process group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world = 2
    mp.start_processes(_worker, args=(world, port, str(tmp_path)), nprocs=world, join=True, start_method="spawn")
    for rank in range(world):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert "error" not in out, f"rank {rank}:\n{out['error']}"
        assert out["sharded"] == sorted(ref.state_dict())  # every tensor was a DTensor shard
        for k, v in ref.state_dict().items():
            assert torch.equal(out["start"][k], v), (rank, k)
        # the first-batch check cannot judge DTensors: it says so instead of passing silently
        assert out["ddp"].startswith("InitVerdictError: torchinit: the initialization failed the check of the first "
                                     "training batch: ")
        if rank == 0:
            assert "another rank found a verdict at or above 'error' (its error names it)" in out["ddp"]
        else:
            assert "[error] dead_units at 1:" in out["ddp"]
        assert len(out["warnings"]) == 1 and "cannot judge DTensor-sharded parameters (0.weight and 5 more)" in \
            out["warnings"][0]
