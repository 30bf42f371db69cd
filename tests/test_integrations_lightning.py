"""torchinit.integrations.lightning with the real Lightning package on CPU: a Trainer fitting a
tiny model with InitCallback (eager, meta in configure_model), Fabric with an empty-init
module, a broken (all-zero) init stopped with its verdict named."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import torchinit

pytestmark = pytest.mark.integrations
L = pytest.importorskip("lightning", reason="the [lightning] extra is not installed")
from torchinit.integrations import InitVerdictError  # noqa: E402
from torchinit.integrations.lightning import InitCallback, diagnose_batch, init_fabric_module  # noqa: E402

SEED = 7


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


def _expected(policy="kaiming") -> dict[str, torch.Tensor]:
    """What torchinit writes into a fresh eager net: the reference for every flow."""
    net = _net()
    torchinit.init_model(net, policy, seed=SEED)
    return {k: v.clone() for k, v in net.state_dict().items()}


def _loader(n: int = 64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


class Eager(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = _net()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class MetaConfigured(Eager):
    """The model is built in configure_model on the meta device, and rebuilt at every call (not
    idempotent): the callback's init must be what training starts from."""

    def __init__(self):
        L.LightningModule.__init__(self)
        self.model = None
        self.configure_calls = 0

    def configure_model(self):
        self.configure_calls += 1
        with torch.device("meta"):
            self.model = _net()


class Snapshot(L.Callback):
    """The weights the first optimizer step starts from, and the optimizer's parameters."""

    def on_train_start(self, trainer, pl_module):
        self.start = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        self.opt_params = [p for g in trainer.optimizers[0].param_groups for p in g["params"]]


def _trainer(tmp_path, callbacks, logger=False, steps=3):
    return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=logger, callbacks=callbacks,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=str(tmp_path))


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_trainer_eager_init_diagnose_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module, snap = Eager(), Snapshot()
    cb = InitCallback("kaiming", seed=SEED, module="model")
    logger = TensorBoardLogger(str(tmp_path), name="run", version=0)
    _trainer(tmp_path, [cb, snap], logger=logger).fit(module, _loader())
    _same(snap.start, _expected())  # training started from torchinit's init, bitwise
    assert {id(p) for p in snap.opt_params} == {id(p) for p in module.parameters()}
    assert not torch.equal(module.model[0].weight, snap.start["0.weight"])  # and it trained
    assert cb.report is not None and cb.report.healthy and cb.plan["0.weight"].nonlinearity == "relu"
    ea = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    ea.Reload()
    tags = ea.Tags()
    assert {"torchinit/activation_std/0", "torchinit/grad_std/4", "torchinit/verdict_count/error"} <= set(tags["scalars"])
    assert {"torchinit/activation_hist/0", "torchinit/weight_hist/0.weight"} <= set(tags["histograms"])
    assert set(tags["images"]) == {"torchinit/signal_propagation", "torchinit/histograms"}
    assert ea.Scalars("torchinit/activation_std/0")[0].value == pytest.approx(cb.report.layer("0").std, rel=1e-6)


def test_trainer_meta_configure_model_is_materialized_before_the_optimizer(tmp_path):
    module, snap = MetaConfigured(), Snapshot()
    cb = InitCallback("kaiming", seed=SEED, module="model")
    _trainer(tmp_path, [cb, snap]).fit(module, _loader())
    assert module.configure_calls == 1  # Lightning's own call was a no-op: the init stayed
    _same(snap.start, _expected())  # materialize == init_model, bitwise
    assert {id(p) for p in snap.opt_params} == {id(p) for p in module.parameters()}
    assert not any(p.is_meta for p in module.parameters())
    assert "configure_model" not in module.__dict__  # restored at teardown


class ZeroInit(Eager):
    """A model whose own init code zeroes every weight: the broken run of the issue."""

    def __init__(self):
        super().__init__()
        for p in self.model.parameters():
            nn.init.zeros_(p)


def test_all_zero_weights_stop_the_run_naming_the_verdict(tmp_path):
    module = ZeroInit()
    cb = InitCallback(seed=SEED, module="model")  # no policy: diagnostics of the model's own init
    with pytest.raises(InitVerdictError, match=r"(?s)first training batch.*\[error\] symmetry at 0\.weight") as ei:
        _trainer(tmp_path, [cb]).fit(module, _loader())
    assert {v.kind for v in ei.value.verdicts} == {"symmetry"}
    assert ei.value.verdicts[0].layers == ["0.weight", "2.weight"]
    assert all(torch.count_nonzero(p) == 0 for p in module.parameters())  # stopped before any step


def test_a_zeros_policy_is_stopped_by_its_dead_units(tmp_path):
    # the plan promises zeros, so zero weights are no symmetry finding; the dead ReLUs are
    module = Eager()
    cb = InitCallback({"rules": [{"init": "zeros"}]}, seed=SEED, module="model")
    with pytest.raises(InitVerdictError, match=r"\[error\] dead_units at 1: 2 ReLU layer\(s\)"):
        _trainer(tmp_path, [cb]).fit(module, _loader())
    assert all(torch.count_nonzero(p) == 0 for p in module.parameters())


def test_fail_on_none_only_logs(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    module = Eager()
    cb = InitCallback({"rules": [{"init": "zeros"}]}, seed=SEED, module="model", fail_on=None)
    logger = CSVLogger(str(tmp_path), name="csv", version=0)
    _trainer(tmp_path, [cb], logger=logger, steps=1).fit(module, _loader())
    assert cb.report.by_kind("symmetry")
    text = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "torchinit/verdict_count/error" in text and "torchinit/activation_std/0" in text


def test_trainer_empty_init_garbage_is_initialized(tmp_path):
    # on one device, empty_init allocates the tensors and skips their init: garbage until torchinit
    snap = Snapshot()
    trainer = _trainer(tmp_path, [InitCallback("kaiming", seed=SEED, module="model"), snap])
    with trainer.init_module(empty_init=True):
        module = Eager()
    trainer.fit(module, _loader())
    _same(snap.start, _expected())


def test_wandb_logger_gets_the_report(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the [wandb] extra is not installed")
    import wandb
    from lightning.pytorch.loggers import WandbLogger
    from test_integrations_logging import _wandb_records

    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(k, v)
    logger = WandbLogger(project="torchinit-test", save_dir=str(tmp_path), offline=True)
    cb = InitCallback("kaiming", seed=SEED, module="model")
    try:
        _trainer(tmp_path, [cb], logger=logger, steps=1).fit(Eager(), _loader())
        run_dir = logger.experiment.dir
    finally:
        wandb.finish()
        wandb.teardown()
    records = _wandb_records(Path(run_dir).parent)
    keys = {(i.key or "/".join(i.nested_key)) for r in records if r.WhichOneof("record_type") == "history"
            for i in r.history.item}
    assert {"torchinit/activation_std/0", "torchinit/grad_std/4", "torchinit/verdict_count/error",
            "torchinit/layers/_type", "torchinit/verdicts/_type", "torchinit/signal_propagation/_type",
            "torchinit/weight_hist/0.weight/_type"} <= keys


def test_callback_arguments_are_checked_before_training():
    with pytest.raises(ValueError, match=r"fail_on must be None or one of \('info', 'warning', 'error'\), got 'fatal'"):
        InitCallback("kaiming", seed=0, fail_on="fatal")
    with pytest.raises(ValueError, match=r"a policy needs an int seed .* got seed=None"):
        InitCallback("kaiming")
    with pytest.raises(torchinit.PolicyError):
        InitCallback("no-such-preset", seed=0)


def test_a_missing_submodule_is_named(tmp_path):
    module = Eager()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match=r"InitCallback\(module='net'\): Eager has no submodule 'net' "
                                         r"\(after configure_model\); its submodules: \['model'\]"):
        _trainer(tmp_path, [InitCallback("kaiming", seed=SEED, module="net")]).fit(module, _loader())
    _same(module.state_dict(), before)


def test_fabric_empty_init_module(tmp_path):
    fabric = L.Fabric(accelerator="cpu", devices=1)
    with fabric.init_module(empty_init=True):
        net = _net()  # allocated, never initialized: garbage
    plan = init_fabric_module(fabric, net, "kaiming", seed=SEED)
    _same(net.state_dict(), _expected())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    model, opt = fabric.setup(net, opt)
    for i, (x, y) in enumerate(fabric.setup_dataloaders(_loader())):
        if i == 0:
            report = diagnose_batch(fabric, model, (x, y), plan=plan)
            assert report.healthy
        loss = nn.functional.cross_entropy(model(x), y)
        fabric.backward(loss)
        opt.step()
        opt.zero_grad()
    assert not torch.equal(net[0].weight, _expected()["0.weight"])


def test_fabric_meta_module_and_broken_init():
    fabric = L.Fabric(accelerator="cpu", devices=1)
    with torch.device("meta"):
        net = _net()
    init_fabric_module(fabric, net, "kaiming", seed=SEED)
    _same(net.state_dict(), _expected())
    with torch.device("meta"):
        broken = _net()
    init_fabric_module(fabric, broken, {"rules": [{"init": "zeros"}]}, seed=SEED)
    x, y = next(iter(_loader()))
    with pytest.raises(InitVerdictError, match=r"symmetry at 0\.weight"):
        diagnose_batch(fabric, fabric.setup_module(broken), (x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert diagnose_batch(fabric, broken, (x, y), fail_on=None).by_kind("symmetry")
