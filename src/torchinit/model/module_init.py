"""The model's own init code as plan steps: reset_parameters methods and Hugging Face's init step, run in order."""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor, nn

from .routing import KeyedInitMode

__all__ = ["module_init_steps", "run_module_init", "find_hf_models", "INIT_METHODS", "check_init_step"]


def find_hf_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-most Hugging Face ``PreTrainedModel`` submodules (``model`` itself included)."""
    mu = sys.modules.get("transformers.modeling_utils")
    if mu is None:
        return []
    cls = mu.PreTrainedModel
    out: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, cls) and not any(name.startswith(p + ".") or p == "" for p, _ in out):
            out.append((name, m))
    return out


def reset_method(module: nn.Module) -> str | None:
    """Name of ``module``'s own init method: ``reset_parameters`` or ``_reset_parameters``."""
    for meth in ("reset_parameters", "_reset_parameters"):
        if callable(getattr(module, meth, None)):
            return meth
    return None


#: The method name of the step that runs a Hugging Face model's ``_init_weights`` over all
#: its modules (through :func:`_run_hf`, not a plain method call).
HF_INIT_STEP = "_init_weights"


#: The only methods a plan's ``code`` may name: init code. A plan is an interchange format
#: (``Plan.from_dict(load_plan_file(...)["plan"])``), and any other zero-argument method of
#: a module may do anything (``__init__`` empties it, ``half`` converts it, ``train``...).
INIT_METHODS = ("reset_parameters", "_reset_parameters", "init_weights", HF_INIT_STEP)


def check_init_step(model_modules: dict[str, nn.Module], path: Any, meth: Any, where: str) -> None:
    """Raise ``ValueError`` (starting with ``where``) unless ``(path, meth)`` is an init step
    that can run on this model: ``meth`` one of :data:`INIT_METHODS`, ``path`` a module of
    the model that has it (the Hugging Face step: a module with ``_init_weights``)."""
    from .errors import _short

    if not isinstance(path, str) or not isinstance(meth, str):
        raise ValueError(f"{where}: code step ({_short(path)}, {_short(meth)}) must be two strings "
                         "(module path, init method)")
    if meth not in INIT_METHODS:
        raise ValueError(f"{where}: code step ({path!r}, {_short(meth)}): {_short(meth)} is not an init method; a "
                         f"plan's code may only run {', '.join(INIT_METHODS)}")
    m = model_modules.get(path)
    if m is None or not callable(getattr(m, meth, None)):
        raise ValueError(f"{where}: module {path!r} has no init method {meth!r}")


def module_init_steps(model: nn.Module) -> list[tuple[str, str]]:
    """The init code ``"module"`` runs, in order: ``(module path, method)``.

    Every module's ``reset_parameters`` / ``_reset_parameters`` in post-order
    (children before parents, as construction runs them, so ``nn.Transformer`` and
    ``nn.MultiheadAttention`` override their children), then, for each Hugging Face
    model, its ``_init_weights`` over all its modules (``"_init_weights"``).
    """
    steps: list[tuple[str, str]] = []

    def visit(prefix: str, m: nn.Module, seen: set[int]):
        if id(m) in seen:
            return
        seen.add(id(m))
        for cname, child in m.named_children():
            visit(f"{prefix}.{cname}" if prefix else cname, child, seen)
        meth = reset_method(m)
        if meth is not None:
            steps.append((prefix, meth))

    visit("", model, set())
    for path, _ in find_hf_models(model):
        steps.append((path, HF_INIT_STEP))
    return steps


def _tied_targets(hf: nn.Module) -> dict[int, list[Tensor]]:
    """Tensors that Hugging Face ties to another one (``lm_head.weight`` to the input
    embedding, BERT's decoder to the word embeddings), by id of the module holding them
    under the tied (target) name; only those really shared with another name."""
    keys = getattr(hf, "all_tied_weights_keys", None)  # transformers 5: {target: source}, config-aware
    if not isinstance(keys, dict):
        keys = getattr(hf, "_tied_weights_keys", None)  # transformers 4: a list of target names (or a dict)
    if not isinstance(keys, (dict, list, tuple)):
        return {}
    count: dict[int, int] = {}
    for _, t in hf.named_parameters(remove_duplicate=False):
        count[id(t)] = count.get(id(t), 0) + 1

    def find(name: Any) -> tuple[nn.Module | None, Tensor | None]:
        if not isinstance(name, str):
            return None, None
        path, _, local = name.rpartition(".")
        try:
            owner = hf.get_submodule(path)
        except AttributeError:  # a pattern, or a module this configuration does not build
            return None, None
        return owner, owner._parameters.get(local)

    out: dict[int, list[Tensor]] = {}
    for target in keys:
        owner, t = find(target)
        if t is None or count.get(id(t), 0) < 2:
            continue
        if isinstance(keys, dict) and find(keys[target])[1] is not t:
            continue  # not tied to its source in this configuration
        out.setdefault(id(owner), []).append(t)
    return out


def _model_class(hf: nn.Module) -> type:
    """The class a Hugging Face model was built with: ``fully_shard`` swaps a module's class for
    a subclass made in ``torch.distributed`` (``FSDPGPT2LMHeadModel``), which Hugging Face then
    takes for custom code."""
    for cls in type(hf).__mro__:
        if not cls.__module__.startswith("torch."):
            return cls
    return type(hf)


def _run_hf(hf: nn.Module, prefix: str, mode: KeyedInitMode | None) -> None:
    # transformers 5 treats a model whose class is not defined in transformers as custom code and
    # then skips, as "already initialized", every module with no parameter of its own: GPT-2's
    # attention and MLP, whose init code rescales their c_proj. FSDP2's class swap made the
    # sharded model skip it (c_proj at std 0.02 instead of 0.02/sqrt(2 n_layer)): run the init
    # as the model's own class would.
    base = _model_class(hf)
    custom = base is not type(hf) and callable(getattr(base, "is_custom_code", None))
    names = {id(m): (f"{prefix}.{n}" if prefix and n else (n or prefix)) for n, m in hf.named_modules()}
    saved_mod = [(m, m.__dict__.get("_is_hf_initialized", None)) for m in hf.modules()]
    saved_t = [(t, getattr(t, "_is_hf_initialized", None)) for t in list(hf.parameters()) + list(hf.buffers())]
    # At construction Hugging Face initializes tied targets on their own and then ties them to
    # their source (and from_pretrained marks them initialized): a rerun on the tied model must
    # not let the target's module overwrite the source's init (BERT's decoder Linear would
    # redraw the word embeddings' zeroed padding row).
    tied = _tied_targets(hf)
    orig = hf._init_weights
    patched = mode is not None or bool(tied)
    try:
        if custom:
            hf.__dict__["is_custom_code"] = base.is_custom_code
        for m, _ in saved_mod:
            m.__dict__.pop("_is_hf_initialized", None)
        for t, v in saved_t:
            if v is not None:
                t._is_hf_initialized = False
        if patched:
            def scoped(module, _orig=orig):
                targets = tied.get(id(module), ())
                if mode is None:  # torch's RNG: draw as construction does, then put the tied tensor back
                    saved = [(t, t.detach().clone()) for t in targets if not t.is_meta]
                    try:
                        return _orig(module)
                    finally:
                        with torch.no_grad():
                            for t, v in saved:
                                t.copy_(v)
                mode.scope = names.get(id(module), prefix)
                found = (mode.attribute(t) for t in targets)
                skip = {f.name for f in found if f is not None} - mode.protect
                mode.protect |= skip
                try:
                    return _orig(module)
                finally:
                    mode.protect -= skip

            hf._init_weights = scoped
        init_all = getattr(hf, "initialize_weights", None)
        with torch.no_grad():
            if callable(init_all):
                init_all()
            else:  # older transformers
                hf.apply(hf._initialize_weights)
    finally:
        if custom:
            hf.__dict__.pop("is_custom_code", None)
        if patched:
            hf.__dict__.pop("_init_weights", None)
        for m, v in saved_mod:
            if v is None:
                m.__dict__.pop("_is_hf_initialized", None)
            else:
                m.__dict__["_is_hf_initialized"] = v
        for t, v in saved_t:
            if v is not None:
                t._is_hf_initialized = v


def run_module_init(model: nn.Module, steps: list[tuple[str, str]], mode: KeyedInitMode | None = None) -> None:
    """Run the given init ``steps`` (from :func:`module_init_steps`), each scoped for
    the fallback keys. With ``mode`` None the code runs plainly (torch RNG)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    for path, meth in steps:  # all checked before any runs
        check_init_step(modules, path, meth, "run_module_init")
    for path, meth in steps:
        m = modules[path]
        if mode is not None:
            mode.scope = path
        if meth == HF_INIT_STEP:
            _run_hf(m, path, mode)
        else:
            with torch.no_grad():
                getattr(m, meth)()
    if mode is not None:
        mode.scope = ""
