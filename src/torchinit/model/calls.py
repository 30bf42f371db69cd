"""How torchinit calls a model: with example inputs (a tensor, a tuple or a mapping), on a
meta-device view of its structure (detection), with inputs built from its own signature and
config (Hugging Face models), and how it finds the tensor in what the model returns."""

from __future__ import annotations

import contextlib
import inspect
import types
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

__all__ = ["call_model", "first_tensor", "dummy_inputs", "meta_view", "to_meta", "MetaScalars", "seeded_rng"]


def first_tensor(x: Any) -> Tensor | None:
    """The tensor a model's output stands for: itself, ``logits`` or
    ``last_hidden_state`` of a mapping (Hugging Face outputs), else the first tensor found."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, Mapping):
        for k in ("logits", "last_hidden_state"):
            if isinstance(x.get(k), Tensor):
                return x[k]
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        for v in x:
            t = first_tensor(v)
            if t is not None:
                return t
    return None


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping, ``model(*inputs)`` for a tuple/list, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


@contextlib.contextmanager
def seeded_rng(model: nn.Module, inputs: Any, seed: int) -> Iterator[None]:
    """Run a measurement pass on a forked global RNG seeded with ``seed``: random ops in the
    forward (dropout of a model in train mode, as Hugging Face models built from a config are)
    draw a function of ``seed``, not of the caller's RNG state, which is restored after (the CPU
    generator and those of the CUDA devices the model and inputs are on)."""
    devices = set()
    for t in [*model.parameters(), *model.buffers(), first_tensor(inputs)]:
        if isinstance(t, Tensor) and t.device.type == "cuda":
            devices.add(t.device.index if t.device.index is not None else torch.cuda.current_device())
    with torch.random.fork_rng(devices=sorted(devices)):
        torch.random.default_generator.manual_seed(seed)
        for i in devices:
            torch.cuda.default_generators[i].manual_seed(seed)
        yield


def _meta_tensor(t: Tensor) -> Tensor:
    # a DTensor's .shape is the global shape: the view is the unsharded model
    new = torch.empty(tuple(t.shape), dtype=t.dtype, device="meta")
    return nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new


def to_meta(x: Any) -> Any:
    """``x`` (a tensor or a nest of tuples / lists / dicts of tensors) with every tensor replaced
    by a meta tensor of the same (global) shape and dtype."""
    return tree_map(lambda v: _meta_tensor(v) if isinstance(v, Tensor) else v, x)


def _plain_class(cls: type) -> type:
    # FSDP2's fully_shard swaps a module's class for FSDP<Cls>(FSDPModule, Cls); the view runs Cls
    idx = getattr(cls, "_orig_cls_mro_index", None)
    return cls.__mro__[idx] if isinstance(idx, int) and idx < len(cls.__mro__) else cls


def _computes_weight(hook: Any) -> bool:
    """The pre-hook of ``torch.nn.utils.weight_norm`` / ``spectral_norm``: it sets the weight the
    forward uses from the module's own parameters, so the view keeps it (every other hook goes)."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    return isinstance(hook, (WeightNorm, SpectralNorm))


def meta_view(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` on the meta device: the same module classes, names and
    attributes, every parameter, buffer and tensor attribute a meta tensor of its GLOBAL shape
    (a DTensor shard becomes the whole tensor), no hooks (FSDP2's, tensor parallel's, a user's)
    and FSDP2's class wrapper removed. Tied tensors and shared modules stay shared.

    A forward on the view allocates nothing, reads no value and cannot change the model, and it
    is the same whether the model is on CPU, on meta or sharded: detection runs on it."""
    memo: dict[int, Any] = {}

    def tensor(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        if id(t) not in memo:
            memo[id(t)] = _meta_tensor(t)
        return memo[id(t)]

    def module(m: nn.Module | None) -> nn.Module | None:
        if m is None:
            return None
        if id(m) in memo:
            return memo[id(m)]
        cls = _plain_class(type(m))
        view = object.__new__(cls)
        memo[id(m)] = view
        state = {}
        for k, v in m.__dict__.items():
            if k in ("_parameters", "_buffers"):
                v = type(v)((n, tensor(t)) for n, t in v.items())
            elif k == "_modules":
                v = type(v)((n, module(s)) for n, s in v.items())
            elif "hooks" in k and isinstance(v, dict):
                v = type(v)((i, h) for i, h in v.items() if k == "_forward_pre_hooks" and _computes_weight(h))
            elif isinstance(v, Tensor):
                v = tensor(v)
            elif k == "forward":
                if getattr(v, "__self__", None) is m:  # a method set on the instance: the view's own
                    v = types.MethodType(v.__func__, view)
                elif type(m).forward is not nn.Module.forward:
                    continue  # a wrapper bound to the model (accelerate's offload hook): the class's forward
            state[k] = v
        view.__dict__.update(state)
        return view

    return module(model)


class MetaScalars(TorchDispatchMode):
    """Answers the data-dependent reads a forward makes on meta tensors (``.item()``, ``bool(t)``,
    ``torch.equal``) with 1 / True instead of raising, and counts them: a mask check
    (``if mask.all():``) then takes its usual branch. Values never decide which layer comes next
    in the models detection has been tested on; ``count`` lets the caller say it guessed.
    After ``LIMIT`` answers it raises instead: ``while mask.any():`` would otherwise never end."""

    _READS = ("_local_scalar_dense", "is_nonzero", "equal")
    LIMIT = 1024

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in self._READS and any(isinstance(a, Tensor) and a.is_meta for a in args):
            self.count += 1
            if self.count > self.LIMIT:
                raise RuntimeError(f"more than {self.LIMIT} data-dependent reads of meta values (a loop that "
                                   "runs until a value changes?): the forward cannot run on meta")
            if name == "_local_scalar_dense":
                dt = args[0].dtype
                return True if dt == torch.bool else (1.0 if dt.is_floating_point or dt.is_complex else 1)
            return True
        return func(*args, **kwargs)


_SEQ_LEN = 16


def _config_int(cfg: Any, *names: str, default: int | None = None) -> int | None:
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], int):
            v = v[0]
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return default


def dummy_inputs(model: nn.Module, device: torch.device | str = "meta") -> dict[str, Tensor] | None:
    """Inputs for one forward of a Hugging Face-style model, from its ``forward`` signature and
    ``model.config``: ``input_ids`` (1 x 16 tokens, fewer if its positions are fewer),
    ``decoder_input_ids`` for an encoder-decoder, ``pixel_values`` (1 x num_channels x
    image_size^2), ``input_features`` (Whisper: 1 x num_mel_bins x 2 max_source_positions),
    ``input_values`` (wav2vec2: 1 x 16000). Else the model's own ``dummy_inputs``, else None
    (also when ``forward`` has a required argument none of these fills).

    Made on ``device`` (meta by default: a detection forward on :func:`meta_view` costs nothing,
    whatever the sizes)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    cfg = getattr(model, "config", None)
    out: dict[str, Tensor] = {}
    sub = getattr(cfg, "vision_config", None) or cfg  # CLIP-style composite configs
    if "pixel_values" in params:
        size = _config_int(sub, "image_size", "img_size", default=224)
        ch = _config_int(sub, "num_channels", "in_channels", "in_chans", default=3)
        out["pixel_values"] = torch.zeros(1, ch, size, size, device=device)
    if "input_features" in params and cfg is not None and hasattr(cfg, "num_mel_bins"):
        frames = 2 * _config_int(cfg, "max_source_positions", default=1500)  # two stride-2 convs
        out["input_features"] = torch.zeros(1, _config_int(cfg, "num_mel_bins", default=80), frames, device=device)
    elif "input_values" in params:
        out["input_values"] = torch.zeros(1, 16000, device=device)
    # tokens, unless the model takes audio, or images alone (ViT's forward has no input_ids; CLIP needs both)
    wants_ids = "input_ids" in params and not out.keys() & {"input_features", "input_values"} and (
        "pixel_values" not in out or hasattr(cfg, "text_config")
        or params["input_ids"].default is inspect.Parameter.empty)
    if wants_ids:
        n = min(_SEQ_LEN, _config_int(cfg, "n_positions", "max_position_embeddings", default=_SEQ_LEN))
        out["input_ids"] = torch.zeros(1, n, dtype=torch.long, device=device)
    if "decoder_input_ids" in params and getattr(cfg, "is_encoder_decoder", False):
        n = min(_SEQ_LEN, _config_int(cfg, "max_target_positions", "n_positions", "max_position_embeddings",
                                      default=_SEQ_LEN))
        out["decoder_input_ids"] = torch.zeros(1, n, dtype=torch.long, device=device)
    given = set(out) | {"self"}
    missing = [n for n, p in params.items() if n not in given and p.default is inspect.Parameter.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if out and not missing:
        return out
    return _hf_dummy_inputs(model, device)


def _hf_dummy_inputs(model: nn.Module, device: torch.device | str) -> dict[str, Tensor] | None:
    """A Hugging Face model's ``dummy_inputs`` (a dict of small tensors) on ``device``, or None."""
    try:
        dummy = model.dummy_inputs if hasattr(type(model), "dummy_inputs") else None
    except Exception:  # a property that needs something the model lacks
        return None
    if not isinstance(dummy, Mapping) or not dummy or not all(isinstance(v, Tensor) for v in dummy.values()):
        return None
    return {k: v.to(device) for k, v in dummy.items()}
