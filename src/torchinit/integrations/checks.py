"""What the training-framework integrations share: initialize a module with a policy (eager,
empty-init or meta), diagnose one batch, log the report, stop on a verdict."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..evidence.diagnostics import Report, Thresholds, Verdict, diagnose
from ..evidence.writers import writer_kind
from ..model.apply import init_model
from ..scale.materialize import materialize

__all__ = ["InitVerdictError", "check_fail_on", "failing", "init_module", "sharded_params", "unsharded_hint",
           "default_inputs", "diagnose_inputs", "log_to", "raise_on_verdicts", "report_scalars", "writer_target"]

#: severities from the mildest; ``fail_on`` stops a run at its level and above
SEVERITIES = ("info", "warning", "error")


class InitVerdictError(RuntimeError):
    """A diagnostics verdict reached the ``fail_on`` severity: the run is stopped before its first
    optimizer step. ``report`` is the :class:`~torchinit.Report`, ``verdicts`` those at fault."""

    def __init__(self, report: Report | None, verdicts: Sequence[Verdict], fail_on: str, where: str) -> None:
        self.report = report
        self.verdicts = list(verdicts)
        self.fail_on = fail_on
        if self.verdicts:
            found = f"{len(self.verdicts)} verdict(s) at or above {fail_on!r}:\n" + "\n".join(
                f"  {v}" for v in self.verdicts)
        else:  # every rank stops when one does; that rank's error names the verdicts
            found = f"another rank found a verdict at or above {fail_on!r} (its error names it)"
        super().__init__(f"torchinit: the initialization failed the check of {where}: {found}\n"
                         f"(fail_on={fail_on!r} stops the run; fail_on=None only logs the verdicts)")


def check_fail_on(fail_on: str | None) -> str | None:
    if fail_on is not None and fail_on not in SEVERITIES:
        raise ValueError(f"fail_on must be None or one of {SEVERITIES}, got {fail_on!r}")
    return fail_on


def failing(report: Report, fail_on: str | None) -> list[Verdict]:
    """The verdicts of ``report`` at or above ``fail_on`` (none when ``fail_on`` is None)."""
    if fail_on is None:
        return []
    level = SEVERITIES.index(fail_on)
    return [v for v in report.verdicts if v.severity in SEVERITIES and SEVERITIES.index(v.severity) >= level]


def raise_on_verdicts(report: Report | None, fail_on: str | None, where: str, *, any_rank: bool | None = None) -> None:
    """Raise :class:`InitVerdictError` when ``report`` has a verdict at or above ``fail_on``, or when
    ``any_rank`` (the decision reduced over the ranks) says another rank found one."""
    bad = failing(report, fail_on) if report is not None else []
    if bad or any_rank:
        raise InitVerdictError(report, bad, fail_on or "error", where)


def has_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in list(module.parameters()) + list(module.buffers()))


def init_module(module: nn.Module, policy: Any, *, seed: int, device: torch.device | str,
                strict: bool = True) -> Any:
    """Initialize ``module`` with ``policy`` and the keyed engine; returns the applied ``Plan``.

    A module with meta tensors (built under ``torch.device("meta")``, Fabric/Trainer
    ``init_module(empty_init=True)`` with a sharding strategy) is materialized on ``device``;
    any other (eager, or allocated but uninitialized by ``empty_init`` on one device) is
    initialized in place, a DTensor shard-locally. ``strict``: a tensor no rule covers raises
    before anything is written (an empty-init tensor would keep garbage)."""
    if has_meta(module):
        return materialize(module, device, policy, seed=seed, progress=False)
    return init_model(module, policy, seed=seed, strict=strict)


def sharded_params(module: nn.Module) -> list[str]:
    """Names of the DTensor parameters of ``module`` (FSDP2, tensor parallel): ``diagnose``
    measures whole tensors and cannot judge them."""
    return [n for n, p in module.named_parameters() if hasattr(p, "to_local") and hasattr(p, "device_mesh")]


def unsharded_hint(names: list[str]) -> str:
    return (f"diagnose measures whole tensors and cannot judge DTensor-sharded parameters ({names[0]}"
            f"{f' and {len(names) - 1} more' if len(names) > 1 else ''}); diagnose an unsharded copy "
            "instead: the keyed engine gives it the same values (the same policy and seed on a "
            "single-process model)")


def default_inputs(batch: Any) -> Any:
    """The model inputs of a batch: the first element of a tuple/list (``(x, y)``), a mapping
    without its ``labels`` (Hugging Face batches), else the batch itself."""
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k not in ("labels", "label")}
    return batch


def diagnose_inputs(model: nn.Module, inputs: Any, *, plan: Any = None, thresholds: Thresholds | None = None,
                    loss_fn: Callable | None = None, label: str | None = None) -> Report:
    """:func:`torchinit.diagnose` as the integrations call it: no progress bar; the training
    mode of the model is kept (diagnostics run the model as training would)."""
    return diagnose(model, inputs, plan=plan, thresholds=thresholds, loss_fn=loss_fn, label=label, progress=False)


def report_scalars(report: Report, prefix: str = "torchinit") -> dict[str, float]:
    """The report's scalars (per-layer activation/gradient std, verdict counts) for loggers
    that take a dict of numbers (Lightning's ``log_metrics``, the Hugging Face log history)."""
    out: dict[str, float] = {}
    for r in report.layers:
        out.setdefault(f"{prefix}/activation_std/{r.name}", float(r.std))
        if r.grad_std is not None:
            out.setdefault(f"{prefix}/grad_std/{r.name}", float(r.grad_std))
    for sev in SEVERITIES:
        out[f"{prefix}/verdict_count/{sev}"] = float(sum(v.severity == sev for v in report.verdicts))
    return out


def writer_target(w: Any) -> str:
    """``"tensorboard"``, ``"wandb"`` (:meth:`Report.log`) or ``"metrics"`` (an object with
    ``log_metrics``: Lightning's loggers); ``TypeError`` naming the object otherwise."""
    try:
        return writer_kind(w)
    except TypeError:
        if callable(getattr(w, "log_metrics", None)):
            return "metrics"
        raise TypeError(f"cannot log a report to a {type(w).__module__}.{type(w).__qualname__}: pass a "
                        "TensorBoard SummaryWriter, a W&B run, or a logger with log_metrics(dict, step)") from None


def log_to(report: Report, writers: Iterable[Any], *, step: int, model: nn.Module | None) -> None:
    """Write ``report`` to each writer (all checked first, see :func:`writer_target`): a
    TensorBoard ``SummaryWriter`` or W&B run through :meth:`Report.log` (W&B at its own current
    step: its steps must only grow), a logger with ``log_metrics`` as scalars."""
    kinds = [(w, writer_target(w)) for w in writers]
    for w, kind in kinds:
        if kind == "tensorboard":
            report.log(w, step=step, model=model)
        elif kind == "wandb":
            report.log(w, model=model)
        else:
            w.log_metrics(report_scalars(report), step=step)
