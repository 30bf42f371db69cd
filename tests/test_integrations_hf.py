"""torchinit.integrations.hf with the real transformers Trainer on CPU: a tiny GPT-2 built from
its config with a torchinit policy, trained a few steps with DiagnoseCallback, TensorBoard
read back; a broken init stopped with its verdict named."""

from __future__ import annotations

import pytest
import torch

import torchinit

pytestmark = [pytest.mark.integrations, pytest.mark.hf]
transformers = pytest.importorskip("transformers", reason="the [hf] extra is not installed")
pytest.importorskip("accelerate", reason="the [hf] extra (accelerate) is not installed")
from torchinit.integrations import InitVerdictError  # noqa: E402
from torchinit.integrations.hf import DiagnoseCallback, from_config  # noqa: E402


def _config():
    return transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=96, n_positions=16,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


class Tokens(torch.utils.data.Dataset):
    """Random token sequences (fixed seed), labels = inputs (causal LM)."""

    def __init__(self, n: int = 32, length: int = 16):
        self.ids = torch.randint(0, 96, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _train(model, tmp_path, callbacks, report_to="none", steps=3):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, max_steps=steps, per_device_train_batch_size=8,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=report_to, seed=0,
        disable_tqdm=True, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=callbacks)
    trainer.train()
    return trainer


def test_from_config_equals_init_model_and_keeps_ties():
    model = from_config(transformers.GPT2LMHeadModel, _config(), "gpt2", seed=3)
    ref = transformers.GPT2LMHeadModel(_config())
    torchinit.init_model(ref, "gpt2", seed=3)
    assert model.lm_head.weight is model.transformer.wte.weight
    for (k, a), (k2, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert model.torchinit_plan["transformer.h.0.mlp.c_fc.weight"].spec.std == pytest.approx(0.02)


def test_trainer_with_diagnose_callback_logs_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = from_config(transformers.GPT2LMHeadModel, _config(), "gpt2", seed=0)
    cb = DiagnoseCallback()
    trainer = _train(model, tmp_path / "run", [cb], report_to=["tensorboard"])
    assert cb.report is not None and not [v for v in cb.report.verdicts if v.severity == "error"]
    assert cb.report.layer("transformer.h.0.mlp.c_fc").grad_std is not None
    (entry,) = [e for e in trainer.state.log_history if "torchinit/verdict_count/error" in e]
    assert entry["step"] == 0 and entry["torchinit/verdict_count/error"] == 0.0
    assert entry["torchinit/activation_std/transformer.h.0.mlp.c_fc"] == cb.report.layer("transformer.h.0.mlp.c_fc").std
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 2, 3]  # and it trained
    ea = EventAccumulator(str(tmp_path / "run" / "runs" / "torchinit"),
                          size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    ea.Reload()
    tags = ea.Tags()
    assert {"torchinit/activation_std/transformer.h.1.attn.c_attn", "torchinit/verdict_count/error"} <= set(tags["scalars"])
    assert "torchinit/weight_hist/transformer.wte.weight" in tags["histograms"]
    assert set(tags["images"]) == {"torchinit/signal_propagation", "torchinit/histograms"}


def test_the_callback_does_not_change_the_run(tmp_path):
    a = from_config(transformers.GPT2LMHeadModel, _config(), "gpt2", seed=0)
    b = from_config(transformers.GPT2LMHeadModel, _config(), "gpt2", seed=0)
    _train(a, tmp_path / "a", [DiagnoseCallback(writers=[])])
    _train(b, tmp_path / "b", [])
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_zeroed_mlp_weights_stop_the_run_naming_the_verdict(tmp_path):
    model = from_config(transformers.GPT2LMHeadModel, _config(), "gpt2", seed=0)
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.c_fc.weight.zero_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InitVerdictError, match=r"\[error\] symmetry at transformer\.h\.0\.mlp\.c_fc\.weight"):
        _train(model, tmp_path, [DiagnoseCallback(writers=[])])
    for k, v in model.state_dict().items():  # stopped before the first step
        assert torch.equal(v, before[k]), k


def test_diagnose_callback_arguments():
    with pytest.raises(ValueError, match=r"fail_on must be None or one of"):
        DiagnoseCallback(fail_on="fatal")
    with pytest.raises(TypeError, match=r"cannot log a report to a builtins\.dict: pass a TensorBoard SummaryWriter, "
                                        r"a W&B run, or a logger with log_metrics\(dict, step\)"):
        DiagnoseCallback(writers=[{}])
