"""Lightning: initialize a LightningModule with a torchinit policy at the right moment, diagnose
the first training batch, log the report, stop a broken run (``pip install torchinit[lightning]``).

Where the init goes. ``Trainer.fit`` runs, in this order: the ``setup`` hooks (callbacks first),
``configure_model`` (under the strategy's init contexts: meta for FSDP with empty init), then
the strategy's setup, which moves or shards the model and builds the optimizer, then
``on_fit_start``. No hook sits between ``configure_model`` and the optimizer, so
:class:`InitCallback` calls ``configure_model`` itself in ``setup`` (under the same contexts),
initializes the result, and makes Lightning's own call of ``configure_model`` a no-op for that
fit (Lightning asks the hook to be idempotent; this holds even when it is not). The optimizer is
then built on initialized parameters.

Fabric has no callbacks for this: build the module (``fabric.init_module(empty_init=True)``
or not), call :func:`init_fabric_module`, then ``fabric.setup``; call :func:`diagnose_batch`
on the first batch.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from ..evidence.diagnostics import Report, Thresholds
from ..evidence.writers import writer_kind
from ..model.policy import load_policy
from .checks import (InitVerdictError, check_fail_on, default_inputs, diagnose_inputs, failing, init_module,
                     log_to, raise_on_verdicts, sharded_params, unsharded_hint)

__all__ = ["InitCallback", "InitVerdictError", "init_fabric_module", "diagnose_batch"]


def _check_policy(policy: Any, seed: Any) -> None:
    if policy is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"a policy needs an int seed (the keyed engine's Key(seed)), got seed={seed!r}")
    if not hasattr(policy, "entries"):  # a Plan is applied as is; anything else must load now, not mid-fit
        load_policy(policy)


def _writers(loggers: Any) -> list[Any]:
    """A logger's experiment when Report.log can write to it (TensorBoard, W&B), else the logger."""
    out = []
    for lg in loggers or ():
        exp = getattr(lg, "experiment", None)
        try:
            writer_kind(exp)
            out.append(exp)
        except TypeError:
            out.append(lg)
    return out


def _target(pl_module: nn.Module, module: str | None) -> nn.Module:
    if module is None:
        return pl_module
    try:
        target = pl_module.get_submodule(module)
    except AttributeError:
        target = None
    if not isinstance(target, nn.Module):  # also a submodule configure_model left as None
        raise ValueError(f"InitCallback(module={module!r}): {type(pl_module).__name__} has no submodule "
                         f"{module!r} (after configure_model); its submodules: {[n for n, _ in pl_module.named_children()]}")
    return target


class InitCallback(Callback):
    """Initialize the LightningModule with ``policy`` before the optimizer is built, diagnose the
    first training batch, log the report through the trainer's loggers, and stop the run when a
    verdict reaches ``fail_on``.

    Args:
        policy: a torchinit policy (preset name, ``Policy``, dict, file...) or a ``Plan``;
            ``None``: no init, only the diagnostics.
        seed: the keyed engine's seed (tensor ``name`` gets ``Key(seed).child(name)``).
        diagnose: run :func:`torchinit.diagnose` on the first training batch.
        fail_on: ``"error"`` (default), ``"warning"`` or ``"info"``: raise
            :class:`InitVerdictError` (from ``trainer.fit``, before the first optimizer step)
            when a verdict of that severity or above is found (on any rank); ``None``: only log.
        module: the attribute path of the submodule to initialize and diagnose
            (``"model"`` for ``self.model``); default: the LightningModule itself (its ``forward``
            is called on the batch's inputs). Tensor names, hence keys, are relative to it.
        batch_to_inputs: ``batch -> inputs`` of that module's forward; default: ``batch[0]``
            of a tuple/list, a mapping without ``labels``, else the batch.
        loss_fn, thresholds: passed to :func:`torchinit.diagnose` (default: a synthetic
            unit-variance loss gradient).
        strict: a tensor that no rule of ``policy`` covers raises (before anything is written)
            instead of keeping its values: after ``empty_init`` those are garbage.

    After the fit, ``callback.plan`` is the applied ``Plan`` and ``callback.report`` the
    diagnostics ``Report``. Logging: a ``TensorBoardLogger`` / ``WandbLogger`` gets
    :meth:`Report.log` (scalars, histograms, weights, figures), any other logger the scalars
    through ``log_metrics``; on global rank 0 only.
    """

    def __init__(self, policy: Any = None, *, seed: int | None = None, diagnose: bool = True,
                 fail_on: str | None = "error", module: str | None = None,
                 batch_to_inputs: Callable[[Any], Any] | None = None, loss_fn: Callable | None = None,
                 thresholds: Thresholds | None = None, strict: bool = True) -> None:
        _check_policy(policy, seed)
        self.policy = policy
        self.seed = seed
        self.diagnose = bool(diagnose)
        self.fail_on = check_fail_on(fail_on)
        self.module = module
        self.batch_to_inputs = batch_to_inputs or default_inputs
        self.loss_fn = loss_fn
        self.thresholds = thresholds
        self.strict = strict
        self.plan: Any = None
        self.report: Report | None = None
        self._initialized = False
        self._diagnosed = False
        self._shadowed: nn.Module | None = None

    # -- init: in setup, after configure_model, before the strategy builds the optimizer -----
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit" or self.policy is None or self._initialized:
            return  # once per callback: a second fit() continues training, it does not re-init
        if is_overridden("configure_model", pl_module):
            with contextlib.ExitStack() as stack:  # the contexts Lightning calls configure_model under
                stack.enter_context(trainer.strategy.tensor_init_context())
                stack.enter_context(trainer.strategy.model_sharded_context())
                stack.enter_context(trainer.precision_plugin.module_init_context())
                pl_module.configure_model()
            pl_module.configure_model = _configured  # Lightning's call of the hook: a no-op this fit
            self._shadowed = pl_module
        self.plan = init_module(_target(pl_module, self.module), self.policy, seed=self.seed,
                                device=trainer.strategy.root_device, strict=self.strict)
        self._initialized = True

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._shadowed is not None:
            self._shadowed.__dict__.pop("configure_model", None)
            self._shadowed = None

    # -- diagnostics: the first training batch, before its optimizer step ----------------------
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self.diagnose or self._diagnosed:
            return
        self._diagnosed = True
        target = _target(pl_module, self.module)
        sharded = sharded_params(target)
        if sharded:  # said, not silently passed: the check did not run
            warnings.warn(f"InitCallback: the first-batch check is skipped: {unsharded_hint(sharded)}", stacklevel=2)
            return
        self.report = diagnose_inputs(target, self.batch_to_inputs(batch), plan=self.plan,
                                      thresholds=self.thresholds, loss_fn=self.loss_fn)
        if trainer.is_global_zero:
            log_to(self.report, _writers(trainer.loggers), step=trainer.global_step, model=target)
        # every rank stops when one does (a rank left running would wait in a collective forever)
        any_bad = trainer.strategy.reduce_boolean_decision(bool(failing(self.report, self.fail_on)), all=False)
        raise_on_verdicts(self.report, self.fail_on, "the first training batch", any_rank=any_bad)


def _configured() -> None:
    """Stands in for ``configure_model`` after :class:`InitCallback` has called it."""


def init_fabric_module(fabric: Any, module: nn.Module, policy: Any, *, seed: int, strict: bool = True) -> Any:
    """Initialize a module for ``fabric`` with ``policy``; returns the applied ``Plan``. Call it
    after building the module (under ``fabric.init_module(empty_init=True)`` or not) and before
    ``fabric.setup``: meta tensors are materialized on ``fabric.device``, others initialized in
    place (see :func:`torchinit.integrations.checks.init_module`)."""
    _check_policy(policy, seed)
    return init_module(getattr(module, "_original_module", module), policy, seed=seed, device=fabric.device,
                       strict=strict)


def diagnose_batch(fabric: Any, module: nn.Module, batch: Any, *, plan: Any = None, fail_on: str | None = "error",
                   step: int = 0, batch_to_inputs: Callable[[Any], Any] | None = None,
                   loss_fn: Callable | None = None, thresholds: Thresholds | None = None) -> Report:
    """Diagnose ``module`` (Fabric-wrapped or not) on ``batch``, log the report to
    ``fabric.loggers`` (rank 0) and raise :class:`InitVerdictError` when a verdict reaches
    ``fail_on`` on any rank; returns the ``Report``. Call it on the first batch, before the
    first ``optimizer.step()``."""
    check_fail_on(fail_on)
    target = getattr(module, "_original_module", module)
    sharded = sharded_params(target)
    if sharded:
        raise ValueError(f"diagnose_batch: {unsharded_hint(sharded)}")
    report = diagnose_inputs(target, (batch_to_inputs or default_inputs)(batch), plan=plan,
                             thresholds=thresholds, loss_fn=loss_fn)
    if fabric.is_global_zero:
        log_to(report, _writers(fabric.loggers), step=step, model=target)
    any_bad = fabric.strategy.reduce_boolean_decision(bool(failing(report, fail_on)), all=False)
    raise_on_verdicts(report, fail_on, "the first training batch", any_rank=any_bad)
    return report
