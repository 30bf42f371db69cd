"""The Hugging Face ``Trainer``: diagnose the first training batch, log it, stop a broken run
(:class:`DiagnoseCallback`), and build a model from its config with a torchinit policy
(:func:`from_config`). Needs ``pip install torchinit[hf]`` (transformers, accelerate).

A ``TrainerCallback`` sees neither the batches nor the other callbacks, so
:class:`DiagnoseCallback` draws the first batch from the ``train_dataloader`` the ``Trainer``
hands to ``on_train_begin``, with the random state saved and restored around it: the run's
batches and its random numbers are those it would have without the callback.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Callable

import torch
from torch import nn
from transformers import TrainerCallback

from ..evidence.diagnostics import Report, Thresholds
from ..scale.materialize import materialize
from .checks import (InitVerdictError, check_fail_on, default_inputs, diagnose_inputs, log_to, raise_on_verdicts,
                     report_scalars, sharded_params, unsharded_hint, writer_target)

__all__ = ["DiagnoseCallback", "InitVerdictError", "from_config"]


def from_config(model_class: Any, config: Any, policy: Any = "module", *, seed: int,
                device: torch.device | str = "cpu", **kwargs: Any) -> nn.Module:
    """``model_class(config, **kwargs)`` built on the meta device and materialized on ``device``
    with ``policy`` and the keyed engine: no memory or time goes to an init that is thrown away.
    ``policy="module"`` runs the model's own ``_init_weights`` through the keyed engine (same
    distributions as ``model_class(config)``, reproducible by name); ``"gpt2"``, ``"llama"``,
    ``"kaiming"``, a dict or a file choose others. Tied weights stay tied. The applied ``Plan``
    is ``model.torchinit_plan``."""
    with torch.device("meta"):
        model = model_class(config, **kwargs)
    plan = materialize(model, device, policy, seed=seed, progress=False)
    model.torchinit_plan = plan
    return model


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict) or hasattr(batch, "items"):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


class DiagnoseCallback(TrainerCallback):
    """Diagnose the model on the first training batch when training begins, log the report, and
    stop the run (:class:`InitVerdictError` from ``trainer.train()``, before the first step)
    when a verdict reaches ``fail_on``.

    Args:
        fail_on: ``"error"`` (default), ``"warning"``, ``"info"``, or ``None`` (only log).
        plan: the ``Plan`` the model was initialized with (``from_config`` stores it as
            ``model.torchinit_plan``, used by default): its promised stds are checked.
        writers: where :meth:`Report.log` writes (``SummaryWriter``, W&B run); default
            ``"auto"``: a ``SummaryWriter`` in ``$TENSORBOARD_LOGGING_DIR`` or
            ``<output_dir>/runs/torchinit`` when ``report_to`` has ``"tensorboard"``, and
            ``wandb.run`` when it has ``"wandb"``. The scalars (per-layer std, verdict counts)
            always go to ``trainer.state.log_history`` as one entry.
        batch_to_inputs: ``batch -> model inputs``; default: the batch without ``labels``.
        loss_fn, thresholds: passed to :func:`torchinit.diagnose`.

    ``callback.report`` is the ``Report`` after training began.
    """

    def __init__(self, *, fail_on: str | None = "error", plan: Any = None, writers: Any = "auto",
                 batch_to_inputs: Callable[[Any], Any] | None = None, loss_fn: Callable | None = None,
                 thresholds: Thresholds | None = None) -> None:
        self.fail_on = check_fail_on(fail_on)
        self.plan = plan
        if not (isinstance(writers, str) and writers == "auto"):
            writers = list(writers) if isinstance(writers, (list, tuple)) else [writers]
            for w in writers:  # a writer that cannot take the report fails here, not after training began
                writer_target(w)
        self.writers = writers
        self.batch_to_inputs = batch_to_inputs or default_inputs
        self.loss_fn = loss_fn
        self.thresholds = thresholds
        self.report: Report | None = None

    def _auto_writers(self, args: Any) -> list[Any]:
        report_to = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
        out = []
        if "tensorboard" in report_to or "all" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            out.append(SummaryWriter(os.environ.get("TENSORBOARD_LOGGING_DIR")
                                     or os.path.join(args.output_dir, "runs", "torchinit")))
        wandb = sys.modules.get("wandb")  # imported by the Trainer's W&B callback when it reports there
        if ("wandb" in report_to or "all" in report_to) and wandb is not None and wandb.run is not None:
            out.append(wandb.run)
        return out

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        if model is None or train_dataloader is None:
            raise ValueError("DiagnoseCallback: the Trainer passed no model or train_dataloader to on_train_begin")
        sharded = sharded_params(model)
        if sharded:  # said, not silently passed: the check does not run
            warnings.warn(f"DiagnoseCallback: the first-batch check is skipped: {unsharded_hint(sharded)}",
                          stacklevel=2)
            return
        with torch.random.fork_rng(devices=[]):  # the run draws the same numbers as without us
            batch = next(iter(train_dataloader))
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        plan = self.plan if self.plan is not None else getattr(model, "torchinit_plan", None)
        self.report = diagnose_inputs(model, _to(self.batch_to_inputs(batch), device), plan=plan,
                                      thresholds=self.thresholds, loss_fn=self.loss_fn)
        if state.is_world_process_zero:
            auto = isinstance(self.writers, str)
            writers = self._auto_writers(args) if auto else self.writers
            log_to(self.report, writers, step=state.global_step, model=model)
            for w in writers:
                if auto and hasattr(w, "add_scalar"):
                    w.close()  # ours: opened for this report
            state.log_history.append({**report_scalars(self.report), "step": state.global_step})
        raise_on_verdicts(self.report, self.fail_on, "the first training batch")
