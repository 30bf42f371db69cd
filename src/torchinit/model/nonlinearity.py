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
2. **forward hooks** on ``example_inputs`` (when tracing fails, e.g. data-dependent
   control flow): the execution order of layers, activation modules and activation
   *functions* (``F.relu`` etc., seen with a ``TorchFunctionMode``); the first
   activation executed after a layer and before the next layer is its activation.
   The forward runs under ``no_grad`` in eval mode on a META-DEVICE VIEW of the model
   (:func:`~torchinit.model.calls.meta_view`: same classes, every tensor a meta tensor of
   its global shape, no hooks), so it allocates nothing and gives the same answer for a
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
import operator
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..core.gains import auto_gain

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


@dataclass(frozen=True)
class Detection:
    """The activation found after one layer.

    ``nonlinearity``: a gain name ("relu", "leaky_relu", "gelu", "linear", ...);
    ``param``: its parameter (leaky slope) or None; ``source``: "fx", "hooks" or
    "order"; ``via``: what was found (``"layers.1 (ReLU)"``, ``"F.gelu"``, ``"output"``).
    """

    nonlinearity: str
    param: float | None
    source: str
    via: str

    def describe(self) -> str:
        return f"{self.source}: {self.via}"


def is_weight_layer(m: nn.Module) -> bool:
    """Linear, ConvNd / ConvTransposeNd, Bilinear, or Hugging Face's ``Conv1D``."""
    return isinstance(m, (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear)) or type(m).__name__ == "Conv1D"


_TRANSPARENT_MODULES: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.dropout._DropoutNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.ZeroPad2d,
)
if hasattr(nn, "RMSNorm"):
    _TRANSPARENT_MODULES = _TRANSPARENT_MODULES + (nn.RMSNorm,)


def _transparent_module(m: nn.Module) -> bool:
    n = type(m).__name__
    return isinstance(m, _TRANSPARENT_MODULES) or n.endswith(("LayerNorm", "RMSNorm", "Dropout"))


_ACT_BY_NAME = {
    "relu": "relu", "relu_": "relu", "relu6": "relu", "hardtanh": None,
    "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
    "selu": "selu", "selu_": "selu", "gelu": "gelu", "silu": "silu", "silu_": "silu", "mish": "mish",
    "elu": "elu", "elu_": "elu", "softplus": "softplus", "hardswish": "hardswish", "hardswish_": "hardswish",
    "leaky_relu": "leaky_relu", "leaky_relu_": "leaky_relu",
}


#: Activation modules without a parameter that matters, and the nonlinearity each is.
_PLAIN_ACTIVATIONS = (
    ((nn.ReLU, nn.ReLU6), "relu"), (nn.Tanh, "tanh"), (nn.Sigmoid, "sigmoid"), (nn.SELU, "selu"),
    (nn.SiLU, "silu"), (nn.Mish, "mish"), (nn.ELU, "elu"), (nn.Softplus, "softplus"), (nn.Hardswish, "hardswish"),
)


def activation_of_module(m: nn.Module) -> tuple[str, float | None] | None:
    """``(nonlinearity, param)`` for an activation module, None for anything else."""
    for cls, act in _PLAIN_ACTIVATIONS:
        if isinstance(m, cls):
            return (act, None)
    if isinstance(m, nn.LeakyReLU):
        return ("leaky_relu", float(m.negative_slope))
    if isinstance(m, nn.PReLU):
        return ("leaky_relu", float(m.init) if hasattr(m, "init") else float(m.weight.detach().mean()))
    if isinstance(m, nn.GELU):
        return ("gelu_tanh" if m.approximate == "tanh" else "gelu", None)
    name = type(m).__name__.lower()
    if list(m.parameters(recurse=False)):
        return None
    if "gelu" in name:
        return ("gelu_tanh" if ("new" in name or "fast" in name or "tanh" in name) else "gelu", None)
    if "silu" in name or "swish" in name:
        return ("silu", None)
    if "mish" in name:
        return ("mish", None)
    if name in ("relu", "reluactivation", "relusquaredactivation"):
        return ("relu", None)
    return None


def _activation_of_call(name: str, args: tuple, kwargs: Mapping[str, Any]) -> tuple[str, float | None] | None:
    act = _ACT_BY_NAME.get(name)
    if act is None:
        return None
    if act == "leaky_relu":
        slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
        return ("leaky_relu", float(slope) if isinstance(slope, (int, float)) else 0.01)
    if act == "gelu" and kwargs.get("approximate", "none") == "tanh":
        return ("gelu_tanh", None)
    return (act, None)


_TRANSPARENT_FUNCS = {
    operator.add, operator.iadd, operator.sub, operator.mul, operator.imul, operator.getitem, operator.neg,
    operator.truediv, torch.add, torch.mul, torch.cat, torch.flatten, torch.reshape, torch.transpose,
    torch.permute, torch.squeeze, torch.unsqueeze, torch.nn.functional.dropout, torch.nn.functional.pad,
    torch.nn.functional.layer_norm, torch.nn.functional.batch_norm, torch.nn.functional.group_norm,
    torch.nn.functional.max_pool1d, torch.nn.functional.max_pool2d, torch.nn.functional.max_pool3d,
    torch.nn.functional.avg_pool1d, torch.nn.functional.avg_pool2d, torch.nn.functional.avg_pool3d,
    torch.nn.functional.adaptive_avg_pool1d, torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.adaptive_avg_pool3d, torch.nn.functional.adaptive_max_pool2d,
    torch.nn.functional.interpolate, torch.chunk, torch.split, torch.mean,
}
_TRANSPARENT_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "add", "add_",
    "mul", "mul_", "__getitem__", "expand", "expand_as", "mean", "clone", "float", "to", "type_as", "chunk",
    "split", "view_as", "reshape_as", "sub", "neg", "div",
}


def _node_activation(node: Any, modules: Mapping[str, nn.Module]) -> tuple[str, float | None, str] | None:
    """``(nonlinearity, param, description)`` when the fx ``node`` is an activation (a
    module of ``modules`` or a function / method call), else None."""
    if node.op == "call_module":
        m = modules.get(node.target)
        act = activation_of_module(m) if m is not None else None
        return None if act is None else (act[0], act[1], f"{node.target} ({type(m).__name__})")
    if node.op in ("call_function", "call_method"):
        name = _call_name(node)
        act = _activation_of_call(name, tuple(node.args), node.kwargs)
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
                    or activation_of_module(m) is not None or _transparent_module(m))

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
                if m is not None and _transparent_module(m):
                    queue.extend(u.users)
                    continue
                results.append(("linear", None, f"{u.target} ({type(m).__name__})"))
                continue
            if u.op in ("call_function", "call_method"):
                if (u.op == "call_function" and u.target in _TRANSPARENT_FUNCS) or (
                        u.op == "call_method" and u.target in _TRANSPARENT_METHODS):
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
        acts = [r for r in res if r[0] != "linear"]
        if acts:
            first = acts[0]
            others = sorted({a[0] for a in acts} - {first[0]})
            via = first[2] + (f"; also {', '.join(others)} (ambiguous, first kept)" if others else "")
            out[name] = Detection(first[0], first[1], "fx", via)
        elif res:
            out[name] = Detection("linear", None, "fx", res[0][2])
        else:
            out[name] = Detection("linear", None, "fx", "unused output")
    return out


_LINEAR_MAPS = frozenset({
    F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
    F.conv_transpose3d, torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.einsum,
    torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.Tensor.mm, torch.Tensor.bmm,
})


class _ActivationRecorder(TorchFunctionMode):
    def __init__(self, events: list):
        super().__init__()
        self.events = events
        self.depth = 0  # > 0 while inside an activation module
        self.in_layer = 0  # > 0 while inside a weight layer's own forward
        self.last: tuple[int, Any] | None = None  # (event index, weakref to output) of such a call
        self.pending = -1  # event index of the activation module running

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            name = getattr(func, "__name__", "")
            act = _activation_of_call(name, tuple(args), kwargs)
            if act is not None:
                self.events.append(("act", act, f"F.{name}"))
                if self.in_layer and isinstance(out, torch.Tensor):
                    self.last = (len(self.events) - 1, weakref.ref(out))
            elif not self.in_layer and func in _LINEAR_MAPS:
                # a weight applied outside any layer module (F.linear(x, self.w), x @ w): the
                # layer before feeds a linear map, not an activation that comes later
                self.events.append(("other", name, f"F.{name}"))
        return out

    def layer_done(self, name: str, out: Any) -> None:
        """A weight layer's forward returned ``out``. If that is the output of an activation
        its own forward applied (``relu(linear(x))`` in a custom layer), the activation
        follows this layer, not the one before: the event moves after the layer's."""
        self.in_layer -= 1
        last, self.last = self.last, None
        if last is not None and isinstance(out, torch.Tensor) and last[1]() is out:
            _, act, desc = self.events[last[0]]
            self.events[last[0]] = ("inner", act, desc)
            self.events.append(("layer", name, name))
            self.events.append(("act", act, f"{desc} in {name}'s forward"))
        else:
            self.events.append(("layer", name, name))


def _run(model: nn.Module, example_inputs: Any, scalars: Any) -> None:
    from .calls import call_model

    with torch.no_grad(), (scalars if scalars is not None else contextlib.nullcontext()):
        call_model(model, example_inputs)


def _hook_detect(model: nn.Module, layers: Mapping[str, Any], example_inputs: Any,
                 scalars: Any = None) -> dict[str, Detection]:
    events: list = []
    rec = _ActivationRecorder(events)
    handles = []
    flags = {n: m.training for n, m in model.named_modules()}
    try:  # hooks registered before any failure are removed in finally
        for n, m in model.named_modules():
            if n in layers:
                def layer_in(mod, i):
                    rec.in_layer += 1
                    rec.last = None

                handles.append(m.register_forward_pre_hook(layer_in))
                handles.append(m.register_forward_hook(lambda mod, i, o, n=n: rec.layer_done(n, o)))
            else:
                act = activation_of_module(m)
                if act is not None:
                    def pre(mod, i, act=act, n=n):
                        events.append(("act", act, f"{n} ({type(mod).__name__})"))
                        rec.depth += 1
                        rec.pending = len(events) - 1

                    def post(mod, i, o):
                        rec.depth -= 1
                        if rec.in_layer and rec.depth == 0 and isinstance(o, torch.Tensor):
                            rec.last = (rec.pending, weakref.ref(o))  # inside a layer's forward

                    handles.append(m.register_forward_pre_hook(pre))
                    handles.append(m.register_forward_hook(post))
                elif not _transparent_module(m) and not list(m.children()) and m is not model:
                    handles.append(m.register_forward_hook(lambda mod, i, o, n=n: events.append(("other", n, n))))
        model.eval()
        with rec:
            _run(model, example_inputs, scalars)
    finally:
        for h in handles:
            h.remove()
        for n, m in model.named_modules():
            m.training = flags.get(n, m.training)
    return _scan_events(events, layers, "hooks")


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
    from .calls import MetaScalars, meta_view, to_meta

    scalars = MetaScalars()
    det = _hook_detect(meta_view(model), layers, to_meta(inputs), scalars)
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
                det = _hook_detect(model, layers, example_inputs)
                for n in layers:
                    det.setdefault(n, Detection("linear", None, "hooks", "layer not executed"))
                notes.append("nonlinearity: detected from execution order of a forward of the model on "
                             "example_inputs (forward hooks, no gradients)")
                return det, notes
        else:
            for n in layers:
                det.setdefault(n, Detection("linear", None, "hooks", "layer not executed"))
            notes.append(f"nonlinearity: detected from execution order of a meta-device forward on {what} "
                         "(forward hooks; allocates nothing)"
                         + (f"; {guessed} data-dependent reads (.item(), bool) answered 1/True" if guessed else ""))
            return det, notes
    else:
        notes.append("nonlinearity: no example_inputs, and none could be built from the model's forward "
                     "signature and config")
    notes.append("nonlinearity: fell back to module registration order (heuristic)")
    return _order_detect(model, layers), notes


def order_fallback_warning(guessed: Mapping[str, str]) -> str:
    """The warning for layers whose nonlinearity came from registration order: ``guessed`` maps
    each layer to the nonlinearity it got. Layers given an activation are named first (a wrong
    one there is the costly mistake: ViT's attention output taking the MLP's GELU)."""
    names = sorted(guessed, key=lambda n: guessed[n] == "linear")
    shown = ", ".join(f"{n} ({guessed[n]})" for n in names[:8])
    more = f" and {len(names) - 8} more" if len(names) > 8 else ""
    return (f"nonlinearity: execution order unknown (torch.fx could not trace the model and no forward ran), "
            f"so the activation after {len(names)} layer(s) was GUESSED from module registration order: "
            f"{shown}{more}. Their gains may be wrong. Pass example inputs: plan(model, example_inputs=...), "
            "init_model(..., example_inputs=...), materialize(..., example_inputs=...) or the CLI's "
            "--example-inputs; or give the rule an explicit nonlinearity")
