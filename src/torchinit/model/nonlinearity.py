"""Automatic nonlinearity detection: which activation follows each Linear / Conv layer.

The gain of He / Glorot init must match the activation that FOLLOWS the layer
(torch's ``kaiming_*`` default, ``leaky_relu`` with ``a=0``, is right only for ReLU).
:func:`detect_nonlinearities` finds it, in this order:

1. **torch.fx** symbolic tracing: from each layer's node, follow the data flow
   through "transparent" operations (norms, dropout, pooling, padding, reshapes,
   ``view``/``permute``/``flatten``, indexing, residual ``+``, gating ``*``) to the
   first activation (module or function). Another layer, the output or any other
   operation first means "linear". Modules traced through run their class's ``forward``
   without ``Module.__call__``: no forward hook or pre-hook runs (FSDP2's, a user's), so
   detection on a ``fully_shard``-ed model changes none of its state.
2. **one forward pass** (when tracing fails, e.g. data-dependent control flow), read as
   data flow (:mod:`.forward_flow`): a layer's outputs are tagged, transparent operations
   pass tags on, and the first activation (module, or function such as ``F.relu`` seen
   with a ``TorchFunctionMode``) a tagged tensor reaches is the layer's.
   The forward runs under ``no_grad`` in eval mode on a META-DEVICE VIEW of the model
   (:func:`~torchinit.model.calls.meta_view`: same classes, every tensor a meta tensor of
   its global shape, no hooks but weight_norm's), so it allocates nothing and gives the same answer for a
   model on CPU, on meta or sharded (FSDP2, DTensor); ``.item()`` / ``bool()`` on meta
   values answer 1 / True. Without ``example_inputs``, inputs are built from the model's
   forward signature and config (``input_ids``, ``decoder_input_ids``, ``pixel_values``,
   ``input_features``, ``input_values``: :func:`~torchinit.model.calls.dummy_inputs`).
   If the meta forward fails and ``example_inputs`` were given for an allocated model,
   the model itself runs on them.
3. **registration order** (no trace, no forward): the module after the layer in
   ``model.modules()`` order. A heuristic: ``plan`` warns (:class:`NonlinearityWarning`)
   naming the layers and how to pass example inputs.

A layer class of one's own whose ``forward`` ends in an activation (a ``Linear`` subclass
returning ``F.relu(...)``) is followed by that activation, in 1 and 2.

Mapping: ReLU/ReLU6 -> relu; LeakyReLU -> leaky_relu with its slope; PReLU ->
leaky_relu with its initial slope; Tanh, Sigmoid, SELU, GELU (approximate="tanh"
-> gelu_tanh), SiLU, Mish, ELU, Softplus, Hardswish by name (custom classes whose
name contains GELU / SiLU / Swish / Mish match too, e.g. Hugging Face's
``NewGELUActivation``).

Gains (:func:`auto_gain`): torch's ``calculate_gain`` values for the names it knows,
except SELU, which gets 1 (LeCun, as Klambauer et al. 2017 derive; torch's 3/4 is an
empirical choice kept only when a rule names ``"selu"`` explicitly). GELU, SiLU,
Mish, ELU, softplus and hardswish get ``1/sqrt(E[f(z)^2])`` for z ~ N(0, 1)
(:func:`torchinit.second_moment_gain`): the criterion that gives exactly sqrt(2)
for ReLU, applied to the activation's own second moment (see docs/policies.md).
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..core.gains import auto_gain
from .activations import (TRANSPARENT_FUNCS, TRANSPARENT_METHODS, Detection, activation_of_call,
                          activation_of_module, is_weight_layer, transparent_module)
from .forward_flow import flow_detect, pick_detection

__all__ = [
    "Detection",
    "NonlinearityWarning",
    "detect_nonlinearities",
    "activation_of_module",
    "is_weight_layer",
    "auto_gain",
]


class NonlinearityWarning(UserWarning):
    """Nonlinearity detection could not see the order in which layers run and guessed
    (registration order): the gains of the named layers may be wrong."""


def _node_activation(node: Any, modules: Mapping[str, nn.Module]) -> tuple[str, float | None, str] | None:
    """``(nonlinearity, param, description)`` when the fx ``node`` is an activation (a
    module of ``modules`` or a function / method call), else None."""
    if node.op == "call_module":
        m = modules.get(node.target)
        act = activation_of_module(m) if m is not None else None
        return None if act is None else (act[0], act[1], f"{node.target} ({type(m).__name__})")
    if node.op in ("call_function", "call_method"):
        name = _call_name(node)
        act = activation_of_call(name, tuple(node.args), node.kwargs)
        return None if act is None else (act[0], act[1], f"{'F.' if node.op == 'call_function' else '.'}{name}")
    return None


def _call_name(node: Any) -> str:
    return node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))


def _own_activation(tracer_cls: Any, m: nn.Module) -> tuple[str, float | None, str] | None:
    """The activation a custom weight layer applies last in its own ``forward``
    (``return F.relu(F.linear(x, self.weight))``), or None. torch.nn's layers apply none."""
    if type(m).__module__.startswith("torch."):
        return None
    try:
        graph = tracer_cls().trace(m)
    except Exception:  # not traceable alone: what follows the layer decides
        return None
    res = next((n.args[0] for n in graph.nodes if n.op == "output"), None)
    return _node_activation(res, dict(m.named_modules())) if hasattr(res, "op") else None


def _fx_detect(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, Detection]:
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        # fx keeps only torch.nn's own modules as calls; a layer, activation or norm class
        # defined elsewhere (a Linear subclass, Hugging Face's Conv1D or NewGELUActivation,
        # a custom Swish) would be traced through, its call lost and its inner ops
        # (sigmoid, tanh, pow ...) taken for the activation
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return (super().is_leaf_module(m, qualname) or is_weight_layer(m)
                    or activation_of_module(m) is not None or transparent_module(m))

        # fx runs a non-leaf module through Module.__call__, i.e. with its forward hooks and
        # pre-hooks (and the global ones): FSDP2's would lazily initialize a fully_shard-ed block
        # as if it were the root (the model's first real forward then fails) and unshard /
        # reshard its parameters, and a user's hook may have side effects. Detection runs the
        # class's forward alone, as fx does for the root: no hook runs, no module state changes.
        def call_module(self, m: nn.Module, forward, args, kwargs):
            own = m.__dict__.get("forward")
            if type(m).forward is nn.Module.forward and callable(own):
                fwd = own  # a module whose only forward is set on the instance
            else:
                fwd = type(m).forward.__get__(m)  # not an instance override: accelerate's wrappers move weights
            return super().call_module(m, fwd, args, kwargs)

    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    found: dict[str, list[tuple[str, float | None, str]]] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in layers:
            continue
        results = found.setdefault(node.target, [])
        queue, seen = list(node.users), set()
        while queue:
            u = queue.pop(0)
            if u in seen:
                continue
            seen.add(u)
            act = _node_activation(u, modules)
            if act is not None:
                results.append(act)
                continue
            if u.op == "call_module":
                m = modules.get(u.target)
                if m is not None and transparent_module(m):
                    queue.extend(u.users)
                    continue
                results.append(("linear", None, f"{u.target} ({type(m).__name__})"))
                continue
            if u.op in ("call_function", "call_method"):
                if (u.op == "call_function" and u.target in TRANSPARENT_FUNCS) or (
                        u.op == "call_method" and u.target in TRANSPARENT_METHODS):
                    queue.extend(u.users)
                    continue
                results.append(("linear", None, _call_name(u)))
                continue
            if u.op == "output":
                results.append(("linear", None, "output"))
    out = {}
    for name, res in found.items():
        own = _own_activation(_Tracer, modules[name])
        if own is not None:  # the layer's forward ends in it: it follows this layer whatever comes next
            out[name] = Detection(own[0], own[1], "fx", f"{own[2]} in {name}'s forward")
            continue
        out[name] = pick_detection(res, "fx", "unused output")
    return out


def _hook_detect(model: nn.Module, layers: Mapping[str, Any], example_inputs: Any,
                 scalars: Any = None) -> dict[str, Detection]:
    """Data-flow detection (:func:`~torchinit.model.forward_flow.flow_detect`) over one forward of
    ``model`` on ``example_inputs``, in eval mode, under ``no_grad`` and ``scalars`` (a mode)."""
    from .calls import call_model

    def run() -> None:
        with torch.no_grad(), (scalars if scalars is not None else contextlib.nullcontext()):
            call_model(model, example_inputs)

    return flow_detect(model, layers, run)


def _scan_events(events: list, layers: dict[str, nn.Module], source: str) -> dict[str, Detection]:
    out: dict[str, Detection] = {}
    for i, ev in enumerate(events):
        if ev[0] != "layer" or ev[1] in out:
            continue
        det = Detection("linear", None, source, "end of forward")
        for nxt in events[i + 1:]:
            if nxt[0] == "act":
                det = Detection(nxt[1][0], nxt[1][1], source, nxt[2])
                break
            if nxt[0] in ("layer", "other"):
                det = Detection("linear", None, source, f"{nxt[2]} ({'next layer' if nxt[0] == 'layer' else 'op'})")
                break
        out[ev[1]] = det
    return out


def _order_detect(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, Detection]:
    events = []
    for n, m in model.named_modules():
        if n in layers:
            events.append(("layer", n, n))
        elif list(m.children()) or m is model:
            continue
        else:
            act = activation_of_module(m)
            if act is not None:
                events.append(("act", act, f"{n} ({type(m).__name__})"))
    return _scan_events(events, layers, "order")


def _meta_detect(model: nn.Module, layers: dict[str, nn.Module], inputs: Any) -> tuple[dict[str, Detection], int]:
    """Hook detection on :func:`~torchinit.model.calls.meta_view` of ``model`` with ``inputs`` moved
    to meta: (detections, number of data-dependent reads answered by guess)."""
    from torch.utils._pytree import tree_flatten, tree_map

    from .calls import MetaScalars, meta_view, to_meta

    scalars = MetaScalars()
    try:
        det = _hook_detect(meta_view(model), layers, to_meta(inputs), scalars)
    except Exception:
        # pack_padded_sequence needs its lengths on the CPU: once more with the integer inputs left
        # there (an embedding takes CPU ids with a meta table), so CPU and meta models plan the same
        def cpu_int(v: Any) -> bool:
            return isinstance(v, torch.Tensor) and v.device.type == "cpu" and not (
                v.is_floating_point() or v.is_complex())

        if not any(cpu_int(v) for v in tree_flatten(inputs)[0]):
            raise
        scalars = MetaScalars()
        try:
            det = _hook_detect(meta_view(model), layers, tree_map(lambda v: v if cpu_int(v) else to_meta(v), inputs),
                               scalars)
        except Exception:  # noqa: BLE001 - the first failure is the one to report
            det = None
        if det is None:
            raise
        return det, scalars.count
    return det, scalars.count


def _allocated(model: nn.Module) -> bool:
    """Every tensor is a plain tensor with storage (not meta, not a DTensor): a forward can run on it."""
    return all(type(t) in (torch.Tensor, nn.Parameter) and not t.is_meta
               for t in list(model.parameters()) + list(model.buffers()))


def _reason(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def detect_nonlinearities(
    model: nn.Module, example_inputs: Any = None
) -> tuple[dict[str, Detection], list[str]]:
    """Detect the activation after every weight layer of ``model``.

    Returns ``(detections by layer qualified name, notes)``; the notes say which
    method ran and why a fallback was needed. Never writes to the model.

    The forward of step 2 runs on a meta-device view of the model (same classes, every tensor a
    meta tensor of its global shape, no hooks): it allocates nothing, and its result is the same
    for the model on CPU, on meta or sharded (FSDP2 / DTensor). Without ``example_inputs``, the
    inputs are built from the model's forward signature and config
    (:func:`~torchinit.model.calls.dummy_inputs`). Only when that forward fails and the user gave
    ``example_inputs`` for an allocated model does the model itself run.
    """
    from .calls import dummy_inputs

    layers = {n: m for n, m in model.named_modules() if is_weight_layer(m)}
    notes: list[str] = []
    if not layers:
        return {}, notes
    try:
        det = _fx_detect(model, layers)
        for n in layers:
            det.setdefault(n, Detection("linear", None, "fx", "layer not called in forward"))
        notes.append("nonlinearity: detected by torch.fx symbolic tracing")
        return det, notes
    except Exception as exc:  # tracing fails on data-dependent control flow and many third-party models
        notes.append(f"nonlinearity: torch.fx tracing failed ({_reason(exc)})")
    inputs, what = example_inputs, "example_inputs"
    if inputs is None:
        inputs, what = dummy_inputs(model), "dummy_inputs built from the model's signature and config"
    if inputs is not None:
        try:
            det, guessed = _meta_detect(model, layers, inputs)
        except Exception as exc:  # data-dependent shapes (nonzero, MoE routing), code that needs values
            notes.append(f"nonlinearity: a meta-device forward on {what} failed ({_reason(exc)})")
            if example_inputs is not None and _allocated(model):
                try:
                    det = _hook_detect(model, layers, example_inputs)
                except Exception as run_exc:  # the model's own error, deep in its forward, named nothing
                    raise ValueError(
                        f"nonlinearity detection: the model's forward fails on example_inputs ({_reason(run_exc)}); "
                        "pass inputs its forward accepts, or give the rules an explicit nonlinearity") from run_exc
                for n in layers:
                    det.setdefault(n, Detection("linear", None, "hooks", "layer not executed"))
                notes.append("nonlinearity: detected from the data flow of a forward of the model on "
                             "example_inputs (forward hooks, no gradients)")
                return det, notes
        else:
            for n in layers:
                det.setdefault(n, Detection("linear", None, "hooks", "layer not executed"))
            notes.append(f"nonlinearity: detected from the data flow of a meta-device forward on {what} "
                         "(forward hooks; allocates nothing)"
                         + (f"; {guessed} data-dependent reads (.item(), bool) answered 1/True" if guessed else ""))
            return det, notes
    else:
        notes.append("nonlinearity: no example_inputs, and none could be built from the model's forward "
                     "signature and config")
    notes.append("nonlinearity: fell back to module registration order (heuristic)")
    return _order_detect(model, layers), notes


def order_fallback_warning(guessed: Mapping[str, str], notes: Sequence[str] = ()) -> str:
    """The warning for layers whose nonlinearity came from registration order: ``guessed`` maps
    each layer to the nonlinearity it got. Layers given an activation are named first (a wrong
    one there is the costly mistake: ViT's attention output taking the MLP's GELU). ``notes``:
    the detection's notes, whose failed meta forward (on example_inputs too) the warning names."""
    names = sorted(guessed, key=lambda n: guessed[n] == "linear")
    shown = ", ".join(f"{n} ({guessed[n]})" for n in names[:8])
    more = f" and {len(names) - 8} more" if len(names) > 8 else ""
    failed = next((n[len("nonlinearity: "):] for n in notes if n.startswith("nonlinearity: a meta-device forward")), None)
    why = f"torch.fx could not trace the model and {failed}" if failed else \
        "torch.fx could not trace the model and no forward ran"
    return (f"nonlinearity: execution order unknown ({why}), "
            f"so the activation after {len(names)} layer(s) was GUESSED from module registration order: "
            f"{shown}{more}. Their gains may be wrong. Pass example inputs{' its forward accepts on meta' if failed else ''}"
            ": plan(model, example_inputs=...), "
            "init_model(..., example_inputs=...), materialize(..., example_inputs=...) or the CLI's "
            "--example-inputs; or give the rule an explicit nonlinearity")
