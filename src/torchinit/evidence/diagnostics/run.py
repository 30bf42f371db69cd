"""diagnose(): run the model once forward and backward under the recorder and judge the result."""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._progress import _Progress
from ..._version import __version__
from ...model.calls import call_model, first_tensor, seeded_rng
from .params import _param_stats
from .record import _FunctionalActivations, _Recorder
from .report import Report, Thresholds
from .stream import _Stream
from .verdicts import _verdicts

__all__ = ["diagnose"]


def _loss(out: Tensor, target: Any, loss_fn: Callable | None) -> tuple[Tensor | None, str]:
    if loss_fn is not None:
        return (loss_fn(out) if target is None else loss_fn(out, target)), "loss_fn"
    if target is not None:
        if not isinstance(target, Tensor):
            raise TypeError(f"diagnose: target must be a Tensor, got {type(target).__name__}")
        if not target.is_floating_point():
            return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), target.reshape(-1)), "cross_entropy"
        return F.mse_loss(out.float(), target.float()), "mse"
    return None, "synthetic"


def diagnose(
    model: nn.Module,
    inputs: Any,
    *,
    target: Tensor | None = None,
    loss_fn: Callable[..., Tensor] | None = None,
    plan: Any = None,
    backward: bool = True,
    thresholds: Thresholds | None = None,
    max_cosine_samples: int = 64,
    label: str | None = None,
    progress: bool | None = None,
    seed: int = 0,
) -> Report:
    """Measure how the signal propagates through ``model`` on ``inputs`` and judge it.

    Args:
        model: any ``nn.Module``; left unchanged (buffers updated by the forward
            pass are restored, ``.grad`` is not touched).
        inputs: a Tensor (``model(inputs)``), a tuple/list (``model(*inputs)``) or a
            dict (``model(**inputs)``). Dim 0 of every layer output is the batch.
        target, loss_fn: the backward pass uses ``loss_fn(output, target)`` (or
            ``loss_fn(output)``), else cross-entropy for integer / MSE for float
            ``target``, else a synthetic loss ``sum(output * r)`` with ``r ~ N(0, 1)``
            (seeded), i.e. a unit-variance gradient at the output.
        plan: a :class:`torchinit.Plan` (or a list of its entries): each entry's
            ``.spec.std`` is the std the parameter was promised.
        backward: run the backward pass (gradient statistics). False keeps memory
            at one layer's activations. Gradients w.r.t. layer outputs are measured
            for frozen layers too (``requires_grad=False`` parameters, integer inputs):
            the first such output is replaced by an equal copy that requires grad, so
            no parameter's ``requires_grad`` or ``.grad`` changes. When no gradient
            could be measured, ``meta['grad_note']`` says why (printed with the report).
        thresholds: verdict thresholds (:class:`Thresholds`).
        max_cosine_samples: samples used for the pairwise cosine similarity
            (cost ``O(k^2 d)`` per layer).
        label: the report's name (default: the model's class name).
        progress: ``None`` (default): a progress bar (forward, backward, parameter
            checks) on stderr when the run takes longer than ~2 s and stderr is a
            terminal; ``True``: also when not a terminal; ``False``: never.
        seed: the forward and backward passes run on a forked global RNG seeded with
            ``seed``: random ops in a model in train mode (dropout; Hugging Face models built
            from a config are in train mode) draw the same values on every call, so the
            report is a function of (model, inputs, seed); the caller's RNG is left as it was.
            The model's mode is not changed (BatchNorm keeps using batch statistics).

    Returns:
        a :class:`Report`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"diagnose: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(max_cosine_samples, bool) or not isinstance(max_cosine_samples, int) or max_cosine_samples < 2:
        raise ValueError(f"diagnose: max_cosine_samples must be an integer >= 2, got {max_cosine_samples!r}")
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"diagnose: progress must be None, True or False, got {progress!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"diagnose: seed must be an int, got {seed!r}")
    if thresholds is not None and not isinstance(thresholds, Thresholds):  # a dict failed after the passes
        raise TypeError(f"diagnose: thresholds must be a torchinit.diagnostics.Thresholds (e.g. Thresholds(dead=0.6)), "
                        f"got {type(thresholds).__name__}")
    th = thresholds or Thresholds()
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("diagnose: the model has parameters on the meta device; materialize it first "
                         "(torchinit.materialize(model, ...))")
    x0 = first_tensor(inputs)
    input_std = input_cos = None
    if x0 is not None and x0.is_floating_point() and x0.numel():
        xf = x0.detach().float()
        input_std = float(xf.std(correction=0))
        if xf.shape[0] >= 2:
            s = xf[:max_cosine_samples].reshape(min(max_cosine_samples, xf.shape[0]), -1)
            nrm = s.norm(dim=1)
            ok = nrm > 0
            if int(ok.sum()) >= 2:
                u = s[ok] / nrm[ok, None]
                gm = u @ u.T
                m = gm.shape[0]
                input_cos = float((gm.sum() - gm.diagonal().sum()) / (m * (m - 1)))
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    params = [p for p in model.parameters() if p.requires_grad]
    # frozen layers need no parameter gradient: the recorder starts the graph at the first
    # output that does not require grad (_Recorder._grad_entry)
    rec = _Recorder(model, max_cosine_samples, backward)
    stream = _Stream(model, rec._owner)
    bar = _Progress("diagnose", 3, progress)
    bar.set_label("forward")
    loss_kind = None
    grad_note = None if backward else "backward=False: gradient statistics were not measured"
    rng = contextlib.ExitStack()
    try:
        rng.enter_context(seeded_rng(model, inputs, seed))  # dropout draws a function of seed
        rec.attach()  # inside try: hooks attached before a failure are removed in finally
        stream.attach()
        with torch.set_grad_enabled(backward), _FunctionalActivations(rec):
            out = call_model(model, inputs)
        bar.advance(1, "backward")
        y = first_tensor(out)
        wrt = params + rec.leaves + ([x0] if x0 is not None and x0.requires_grad else [])
        if backward and y is not None and y.requires_grad and wrt:
            loss, loss_kind = _loss(y, target, loss_fn)
            if loss is None:
                g = torch.Generator().manual_seed(0)
                cot = torch.randn(y.shape, generator=g, dtype=torch.float32).to(device=y.device, dtype=y.dtype)
                roots, grads = [y], [cot]
            else:
                roots, grads = [loss], [None]
            # autograd.grad, not .backward(): nothing is accumulated into any .grad
            try:
                torch.autograd.grad(roots, wrt, grad_outputs=grads, allow_unused=True)
            except RuntimeError as e:
                if not rec.leaves:
                    raise
                # the graph through frozen layers is ours: a model written for them to run
                # without one (in-place ops on saved tensors) must still be diagnosed
                for r in rec.records:
                    r.grad_std = None
                why = str(e).split(" Hint:")[0]
                grad_note = ("gradient statistics were not measured: the backward pass through frozen layers "
                             f"failed ({why})")
        elif backward:
            floating = y is not None and (y.is_floating_point() or y.is_complex())
            grad_note = "gradient statistics were not measured: the model output " + (
                "does not depend differentiably on any recorded layer (computed under torch.no_grad() or detached)"
                if floating else "is not a floating-point tensor")
        del out
    except BaseException:
        bar.close()
        raise
    finally:
        rng.close()  # the caller's RNG state is restored
        rec.detach()
        stream.detach()
        rec.leaves.clear()
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n])
    rec.measure_recurrent()
    bar.advance(1, "parameter checks")
    try:
        pstats = _param_stats(model, plan, rec.records, rec.modules)
    finally:
        bar.close()
    if grad_note is None and backward and not any(r.grad_std is not None for r in rec.records) and rec.records:
        grad_note = "gradient statistics were not measured: no recorded layer output reaches the model output"
    verdicts = _verdicts(rec.records, pstats, input_std, input_cos, th)
    meta = {
        "label": label or type(model).__name__,
        "model": type(model).__name__,
        "input_shape": list(x0.shape) if x0 is not None else None,
        "input_std": input_std,
        "input_cosine": input_cos,
        "loss": loss_kind,
        "grad_note": grad_note,
        "thresholds": asdict(th),
        # the std between the blocks of a residual network (stream.py); None without blocks
        "stream": stream.result(rec.records),
        "versions": {"torchinit": __version__, "torch": torch.__version__},
    }
    return Report(layers=rec.records, params=pstats, verdicts=verdicts, meta=meta)
