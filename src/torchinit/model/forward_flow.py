"""Which activation each layer's output reaches, recorded during one forward pass (data flow).

Every tensor a weight layer returns is tagged with the layer's name; "transparent" operations
(norms, dropout, pooling, reshapes, residual ``+``, gating ``*``: :mod:`.activations`) pass the
tags of their inputs on to their outputs; an activation (a module, or a function such as
``F.gelu`` seen through a ``TorchFunctionMode``) that receives a tagged tensor is recorded for
each of its tags; any other consumer (another layer, ``matmul``, ``softmax``, a leaf module that
is neither) records "linear". A layer gets the first activation its output reaches, else linear.

This is the data flow torch.fx reads from a graph, read from a real run instead, so it sees
through control flow fx cannot trace; unlike plain execution order it is not fooled by code
that runs between a layer and its activation (ResNet's shortcut conv, run after the block's
second conv and before the ReLU both feed). Modules run as one unit: the insides of layers,
activations, norms and other leaf modules are not followed. A custom layer whose own
``forward`` ends in an activation (``F.relu(F.linear(x, w))``) is followed by it.
"""

from __future__ import annotations

import weakref
from typing import Any, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from .activations import (Detection, TRANSPARENT_FUNCS, TRANSPARENT_METHODS, activation_of_call,
                          activation_of_module, transparent_module)

__all__ = ["flow_detect"]

_PASS_NAMES = frozenset(
    {getattr(f, "__name__", "") for f in TRANSPARENT_FUNCS} | set(TRANSPARENT_METHODS) | {
        "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__", "__imul__",
        "__truediv__", "__itruediv__", "__neg__", "__getitem__", "dropout", "dropout_", "layer_norm", "rms_norm",
        "batch_norm", "group_norm", "pad", "interpolate", "contiguous", "half", "bfloat16", "double", "type",
        "clamp", "clamp_", "narrow", "unbind", "stack", "movedim", "swapaxes", "unflatten", "repeat",
    }) - {""}


# reads of a tensor's metadata (x.shape is Tensor.shape.__get__): not a consumer of its values
_METADATA = frozenset({"__get__", "size", "dim", "numel", "__len__", "__format__", "__bool__", "__hash__",
                       "is_floating_point", "stride", "is_contiguous", "element_size", "data_ptr", "get_device"})


def _tensors(x: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(x) if isinstance(t, torch.Tensor)]


class _Flow(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.tags: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> frozenset of layer names
        self.found: dict[str, list[tuple[str, float | None, str]]] = {}  # layer -> what its output reached
        self.ran: list[str] = []  # layers in the order they first returned
        self.opaque = 0  # > 0 inside a module run as one unit (layer, activation, norm, other leaf)
        self.in_layer = 0  # > 0 inside a weight layer's own forward
        self.last_act: tuple[tuple[str, float | None], str, Any] | None = None  # inside a layer: (act, desc, ref)

    def sources(self, x: Any) -> frozenset:
        out: frozenset = frozenset()
        for t in _tensors(x):
            out = out | self.tags.get(t, frozenset())
        return out

    def record(self, layers: frozenset, what: tuple[str, float | None, str]) -> None:
        for n in layers:
            self.found.setdefault(n, []).append(what)

    def tag(self, x: Any, layers: frozenset) -> None:
        for t in _tensors(x):
            if layers:
                self.tags[t] = layers
            elif t in self.tags:
                del self.tags[t]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        act = activation_of_call(name, tuple(args), kwargs)
        if self.opaque == 0:
            src = self.sources((args, kwargs))
            if act is not None:
                self.record(src, (act[0], act[1], f"F.{name}"))
                self.tag(out, frozenset())
            elif name in _PASS_NAMES:
                if src:
                    self.tag(out, src)
            elif src and name not in _METADATA:
                self.record(src, ("linear", None, f"{name} (op)"))
                self.tag(out, frozenset())
        elif self.in_layer and act is not None and isinstance(out, torch.Tensor) and self.opaque == self.in_layer:
            self.last_act = (act, f"F.{name}", weakref.ref(out))  # the layer's own forward applied it
        return out


def flow_detect(model: nn.Module, layers: Mapping[str, Any], run: Any) -> dict[str, Detection]:
    """Run ``run()`` (one forward of ``model``) under the recorder and return the detection of
    every layer of ``layers`` that ran. Hooks are removed and training flags restored after."""
    flow = _Flow()
    handles = []
    flags = {n: m.training for n, m in model.named_modules()}

    def layer_pre(mod, args, n):
        if flow.opaque == 0:
            flow.record(flow.sources(args), ("linear", None, f"{n} (next layer)"))
        flow.opaque += 1
        flow.in_layer += 1
        flow.last_act = None

    def layer_post(mod, args, out, n):
        flow.opaque -= 1
        flow.in_layer -= 1
        last, flow.last_act = flow.last_act, None
        if n not in flow.ran:
            flow.ran.append(n)
        if last is not None and isinstance(out, torch.Tensor) and last[2]() is out:
            flow.found.setdefault(n, []).insert(0, (last[0][0], last[0][1], f"{last[1]} in {n}'s forward"))
            flow.tag(out, frozenset())
        elif flow.opaque == 0:  # a layer inside another module run as one unit tags nothing outside it
            flow.tag(out, frozenset({n}))

    def act_pre(mod, args, act, desc):
        if flow.opaque == 0:
            flow.record(flow.sources(args), (act[0], act[1], desc))
        flow.opaque += 1

    def act_post(mod, args, out, act, desc):
        flow.opaque -= 1
        if flow.in_layer and flow.opaque == flow.in_layer and isinstance(out, torch.Tensor):
            flow.last_act = (act, desc, weakref.ref(out))  # an activation module inside a layer's forward
        if flow.opaque == 0:
            flow.tag(out, frozenset())

    stack: list[frozenset] = []

    def pass_pre(mod, args):
        stack.append(flow.sources(args) if flow.opaque == 0 else frozenset())
        flow.opaque += 1

    def pass_post(mod, args, out):
        flow.opaque -= 1
        src = stack.pop()
        if flow.opaque == 0:
            flow.tag(out, src)

    def other_pre(mod, args, n):
        if flow.opaque == 0:
            flow.record(flow.sources(args), ("linear", None, f"{n} ({type(mod).__name__})"))
        flow.opaque += 1

    def other_post(mod, args, out):
        flow.opaque -= 1

    try:  # hooks registered before any failure are removed in finally
        for n, m in model.named_modules():
            if n in layers:
                handles.append(m.register_forward_pre_hook(lambda mod, a, n=n: layer_pre(mod, a, n)))
                handles.append(m.register_forward_hook(lambda mod, a, o, n=n: layer_post(mod, a, o, n)))
            elif (act := activation_of_module(m)) is not None:
                desc = f"{n} ({type(m).__name__})"
                handles.append(m.register_forward_pre_hook(lambda mod, a, act=act, d=desc: act_pre(mod, a, act, d)))
                handles.append(m.register_forward_hook(lambda mod, a, o, act=act, d=desc: act_post(mod, a, o, act, d)))
            elif transparent_module(m):
                handles.append(m.register_forward_pre_hook(pass_pre))
                handles.append(m.register_forward_hook(pass_post))
            elif not list(m.children()) and m is not model:
                handles.append(m.register_forward_pre_hook(lambda mod, a, n=n: other_pre(mod, a, n)))
                handles.append(m.register_forward_hook(other_post))
        model.eval()
        with flow:
            run()
    finally:
        for h in handles:
            h.remove()
        for n, m in model.named_modules():
            m.training = flags.get(n, m.training)
    out: dict[str, Detection] = {}
    for n in flow.ran:
        out[n] = pick_detection(flow.found.get(n, []), "hooks", "output")
    return out


def pick_detection(res: list, source: str, unused: str) -> Detection:
    """The detection of a layer whose output reached ``res`` (``(nonlinearity, param, via)``
    in data-flow order): the first activation (others named as ambiguous), else linear."""
    acts = [r for r in res if r[0] != "linear"]
    if acts:
        first = acts[0]
        others = sorted({a[0] for a in acts} - {first[0]})
        via = first[2] + (f"; also {', '.join(others)} (ambiguous, first kept)" if others else "")
        return Detection(first[0], first[1], source, via)
    if res:
        return Detection("linear", None, source, res[0][2])
    return Detection("linear", None, source, unused)
