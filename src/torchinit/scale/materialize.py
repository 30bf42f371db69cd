"""Materialize a model built on the meta device: allocate and initialize it
in module order, a batch of modules at a time, so peak memory stays near the
final model size.

::

    with torch.device("meta"):
        model = MyModel(...)            # no storage, no init work
    torchinit.materialize(model, "cpu", policy="gpt2", seed=0)

``materialize`` computes the plan on the meta model (shapes are all it needs),
then walks the modules in order, allocating each module's own meta parameters
and buffers on ``device`` (same sizes, strides and dtype); as soon as
:data:`BATCH_ELEMENTS` elements (64 M) are pending, it initializes them with
one ``apply_plan`` call on just their plan entries (keyed engine) and goes on
(with the ``"module"`` initializer on a Hugging Face model, whose init code runs over
the whole model in every batch, batches grow to keep at most
:data:`MAX_WHOLE_MODEL_PASSES` of them).
If that fails midway (out of memory, an interrupt), the unfilled batch is put
back on meta: the model then holds initialized tensors and meta tensors only,
and calling ``materialize`` again finishes the job.
Nothing is ever allocated twice and every allocation is part of the final
model, so peak ~= final model size + the engine's working memory for one
tensor. Values are bitwise identical to ``init_model(model_on_device,
policy, seed=seed)``: every tensor is keyed by its qualified name, not by the
order in which it is filled.

Behaviour for models that are not entirely on meta (documented, never a
silent second allocation):

* no meta tensor at all: ``ValueError`` (use :func:`torchinit.init_model`);
* some meta tensors (e.g. part of the weights loaded from a checkpoint with
  ``load_state_dict(assign=True)``): only the meta tensors are allocated and
  initialized; the others are left exactly as they are. A non-meta tensor on
  another device than ``device`` raises ``ValueError`` (moving it would be a
  copy the caller did not ask for).

Tied parameters (one ``Parameter`` registered under several names, e.g. a GPT
``lm_head.weight`` tied to the token embedding) are allocated once and stay
tied. Sharded models (FSDP2 ``fully_shard`` / tensor parallel applied on meta)
work too: each parameter becomes a DTensor whose local shard is allocated and
filled from its global indices (see :mod:`torchinit.sharding`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import warnings
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

# the bar shared with diagnose, lsuv_, weight files; PROGRESS_AFTER_S (seconds before it
# appears) is read from this module at each call
from .._progress import PROGRESS_AFTER_S, _Progress
from ..engines.keyed import backend as B
from ..engines.keyed.engine import native_writes_in_place
from ..model.buffer_code import uncovered, with_own_code
from ..model.module_init import HF_INIT_STEP
from ..model.plan import Plan
from ..model.policy import Policy
from ..model.presets import experts_hint
from ..model.registry import DEFAULT_POLICY, PresetName

__all__ = ["materialize", "meta_tensors"]

#: Modules are allocated, in order, until this many elements are pending, then initialized
#: with one ``apply_plan`` call (allocated-but-unfilled memory is at most this batch, and it
#: is part of the final model anyway: it does not raise the peak).
BATCH_ELEMENTS = 1 << 26
#: With the ``"module"`` initializer on a Hugging Face model, each batch runs the model's
#: ``_init_weights`` over every module (init code may write outside its own module, so the
#: pass cannot be narrowed to the batch): batches then grow so that there are at most this
#: many passes, keeping the Python work near linear in the model size.
MAX_WHOLE_MODEL_PASSES = 16


def meta_tensors(model: nn.Module) -> Iterator[tuple[str, str, Tensor]]:
    """Yield ``(qualified_name, kind, tensor)`` for every parameter and buffer of
    ``model`` (tied tensors once per name) whose storage is on the meta device."""
    for mname, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mname}." if mname else ""
        for kind, store in (("parameter", module._parameters), ("buffer", module._buffers)):
            for n, t in store.items():
                if t is not None and t.is_meta:
                    yield prefix + n, kind, t


def _locations(model: nn.Module) -> dict[int, tuple[Tensor, list[tuple[dict, str, str]]]]:
    """id(tensor) -> (the tensor, every (store dict, key, qualified name) it is registered
    under): a tied tensor has several. The tensor is kept so that a lookup can check it is
    the same object, and so that its id cannot be reused while the map is in use."""
    out: dict[int, tuple[Tensor, list[tuple[dict, str, str]]]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mname}." if mname else ""
        for store in (module._parameters, module._buffers):
            for n, t in store.items():
                if t is not None:
                    locs = out.setdefault(id(t), (t, []))[1]
                    if all(q != prefix + n for _, _, q in locs):
                        locs.append((store, n, prefix + n))
    return out


def _check_model(model: nn.Module, device: torch.device) -> int:
    """Validate before allocating anything; returns the number of meta elements."""
    n_meta = 0
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if t.is_meta:
            n_meta += t.numel()
            continue
        tdev = t.device
        if tdev.type != device.type or (device.index is not None and tdev.index not in (None, device.index)):
            raise ValueError(
                f"materialize: {name!r} is already allocated on {tdev}, not on the target device {device}; "
                f"materialize only allocates meta tensors and never moves allocated ones (move the model or "
                f"pass device={str(tdev)!r})"
            )
    return n_meta


def _stray_allocated(model: nn.Module) -> list[str]:
    """Parameters already allocated while other tensors of their module (itself or below) are on
    meta: a constructor's ``torch.Tensor(n).uniform_()`` (the legacy constructor ignores
    ``with torch.device("meta")``; Wav2Vec2's ``masked_spec_embed``) made them on the CPU with
    the global RNG. materialize keeps allocated tensors, so their values are not an init with
    the seed. A whole module loaded with ``assign=True`` has no meta tensor left: not listed."""
    out: list[str] = []
    for mname, module in model.named_modules():
        own = [n for n, t in module._parameters.items() if t is not None and not t.is_meta]
        if own and any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
            out += [f"{mname}.{n}" if mname else n for n in own]
    return out


def _plan_with_buffer_code(model: nn.Module, policy: Any, plan_obj: Any, meta_names: set[str],
                           example_inputs: Any) -> Any:
    """Meta buffers and frozen tables the policy gives no rule (a rotary embedding's
    ``inv_freq``, Whisper's sinusoidal positions) get their module's own init code where it
    has some (model/buffer_code.py; if the code leaves one unwritten, the batch raises
    instead of keeping garbage). Returns the plan, re-made if needed."""
    buffers = {n for n, _ in model.named_buffers()}
    # frozen tables the presets keep (Whisper's sinusoidal positions) have nothing to keep on meta
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    wanted = [n for n in meta_names if n in buffers or n in frozen]
    return with_own_code(model, policy, plan_obj, wanted, example_inputs, "materialize", "on meta they have no value")


def _check_coverage(model: nn.Module, plan_obj: Any, meta_names: set[str]) -> None:
    """Every meta tensor must get an initializer: an allocated tensor nobody fills holds garbage."""
    missing = uncovered(plan_obj, meta_names)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        unused = list(getattr(plan_obj, "unused_rules", None) or ())
        # a rule that matched nothing is the usual cause (a typo such as modules: Linaer)
        hint = f"; rules that matched nothing: {', '.join(unused)}" if unused else ""
        hint += experts_hint(model, missing)
        raise ValueError(
            f"materialize: no initializer in the plan for meta tensor(s) {', '.join(map(repr, missing[:5]))}{more} "
            f"(unmatched or 'keep' under policy {getattr(plan_obj, 'policy', '?')!r}{hint}); allocating them would "
            f"leave uninitialized memory. Add a rule for them, or allocate and set them before calling materialize"
        )


def _new_like(t: Tensor, device: torch.device) -> Tensor:
    if type(t) in (torch.Tensor, nn.Parameter) or type(t).__name__ == "Buffer":
        # same sizes, strides (memory format) and dtype; torch.empty_like on a meta tensor goes
        # through torch._refs, whose first call imports sympy (~1.5 s)
        new = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=device)
    else:  # tensor subclasses (DTensor, ...) know how to allocate themselves
        new = torch.empty_like(t, device=device)
    if isinstance(t, nn.Parameter):
        new = nn.Parameter(new, requires_grad=t.requires_grad)
        new.__dict__.update({k: v for k, v in t.__dict__.items() if k not in new.__dict__})
    return new


#: Plain CPU tensors at least this large have their pages faulted in before the fill.
PREFAULT_MIN_BYTES = 1 << 20


@functools.lru_cache(maxsize=None)
def _thp_size() -> int:
    """The (PMD) transparent huge page size in bytes, or 0 where the kernel has huge pages
    off: the global setting at ``never`` and no multi-size size (``hugepages-<n>kB``, which
    can be enabled on its own) at ``always`` or ``madvise``."""
    base = "/sys/kernel/mm/transparent_hugepage/"
    setting = _thp_setting(base)
    try:
        if setting is None or setting == "never" and not any(
                _thp_setting(f"{base}{d}/") in ("always", "madvise") for d in os.listdir(base)
                if d.startswith("hugepages-")):
            return 0
        with open(base + "hpage_pmd_size") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 0


def _thp_setting(folder: str) -> str | None:
    """The selected word of ``folder``'s ``enabled`` file ("always [madvise] never" -> "madvise"),
    "" where none is selected, None where the file cannot be read."""
    try:
        with open(folder + "enabled") as fh:
            words = [w[1:-1] for w in fh.read().split() if w.startswith("[") and w.endswith("]")]
    except OSError:
        return None
    return words[0] if words else ""


def _fills_natively(entry: Any, t: Tensor) -> bool:
    """Whether the keyed engine's native kernel writes plain tensor ``t`` for plan ``entry``
    (under :func:`~torchinit.engines.keyed.backend.prefaulting` it then faults the pages in
    itself, each thread just ahead of its own writes)."""
    return entry is not None and type(t.data) is torch.Tensor and native_writes_in_place(entry.spec, t)


def _prefault(t: Tensor, huge_pages: bool) -> None:
    """Fault in the pages of a fresh CPU tensor, on the keyed engine's threads, before it is
    filled. First-touch faults are most of the cost of materializing into fresh memory; taken
    in one madvise(MADV_POPULATE_WRITE) per thread they cost up to a third less than when the
    fill's stores take them page by page, and as transparent huge pages (``huge_pages``: the
    tensor's whole pages advised MADV_HUGEPAGE; the kernel maps no folio past them, so no
    memory is added) less again where huge pages come cheap (docs/scale.md). Contents are
    unchanged, and where the kernel or the native extension lacks it nothing happens."""
    if t.device.type != "cpu" or type(t.data) is not torch.Tensor or not B.native_available():
        return
    nbytes = t.untyped_storage().nbytes()
    if nbytes >= PREFAULT_MIN_BYTES:
        huge = _thp_size() if huge_pages else 0
        B.native_module().populate(t.untyped_storage().data_ptr(), nbytes, B.get_num_threads(), huge)


def _refuse_unwritten(unwritten: list[str], partly: dict[str, tuple[int, int]], model: nn.Module | None = None) -> None:
    """Refuse a batch whose init code (plan entries 'module') left fresh tensors unwritten,
    wholly or in part: they would hold garbage (zero-element tensors are never listed)."""
    from ..model.apply import _shown
    from ..model.parametrized import weight_norm_hint

    if partly:
        raise ValueError(
            f"materialize: the model's own init code (policy entry 'module') wrote only part of "
            f"{_shown([f'{n!r} ({k} of {t} elements)' for n, (k, t) in partly.items()], 5, fmt=str)}: freshly "
            "allocated, the elements it did not write would hold garbage. This batch was put back on meta, the "
            "earlier ones are done: give these tensors a rule (the whole tensor), or complete the init code, and "
            "call materialize again")
    if unwritten:
        raise ValueError(
            f"materialize: the model's own init code (policy entry 'module') ran for {_shown(unwritten, 5)} but "
            "did not write them: values its constructor computes (rotary-embedding inv_freq, causal masks) are "
            "not recomputed by init code, and freshly allocated they would hold garbage. This batch was put back "
            "on meta, the earlier ones are done: set these tensors on the model (allocated, with their values) "
            "and call materialize again, which fills only what is still on meta; or give them a rule"
            + (weight_norm_hint(model, unwritten) if model is not None else ""))


def materialize(
    model: nn.Module,
    device: torch.device | str = "cpu",
    policy: PresetName | Policy | Plan | str | Mapping | Sequence = DEFAULT_POLICY,
    *,
    seed: int,
    progress: bool | None = None,
    example_inputs: Any = None,
    huge_pages: bool = False,
) -> Any:
    """Allocate the meta tensors of ``model`` on ``device`` and initialize them with
    ``policy`` and the keyed engine, in module order; returns the applied ``Plan``.

    Args:
        model: a model built under ``torch.device("meta")`` (possibly sharded with
            FSDP2 / tensor parallel while on meta).
        device: where the tensors are allocated.
        policy: a preset name (``"pytorch"``, ``"module"``, ``"kaiming"``, ``"gpt2"``,
            ``"llama"``, ...), a policy object, or a ready ``Plan`` (applied as is).
        seed: the seed of ``Key(seed)``; tensor ``name`` is filled with
            ``Key(seed).child(name)``, so the result equals
            ``init_model(model, policy, seed=seed)`` on an allocated copy, bitwise.
        progress: ``None`` (default): a progress bar on stderr when it runs longer
            than ~2 s and stderr is a terminal; ``True``: also when not a terminal
            (still only after ~2 s); ``False``: never.
        example_inputs: passed to ``torchinit.plan`` (policies that trace the model).
        huge_pages: on CPU, back each tensor of 1 MiB or more with transparent huge pages
            where the kernel offers them (``madvise`` of the tensor's whole pages: no memory
            is added). Off by default: where huge pages are costly to find (compaction on
            demand, or a VM host that has taken free memory back) the faults stall, 1.3-8x
            slower than small pages on the project machines (docs/scale.md); ``True`` wins
            where huge pages come cheap (free memory the host still backs, or 64-512 KiB
            multi-size huge pages enabled) and for the TLB misses saved later. Values never
            depend on it.

    Peak memory: the final size of the allocated tensors plus the keyed engine's
    working memory for one tensor. dtypes are those of the meta tensors (convert
    the meta model with ``model.to(torch.bfloat16)`` first: free on meta).

    Raises (before anything is allocated):
        ValueError: the model has no meta tensor (use ``init_model``), an
            allocated tensor lives on another device than ``device``, or the plan
            gives some meta tensor no initializer (it would hold garbage).
    """
    from ..model.apply import _apply_plan
    from ..model.resolve import plan as _plan

    if torch.get_default_device().type == "meta":
        # called inside the `with torch.device("meta"):` that built the model: the model's own init code
        # (module preset, HF init) made its temporaries (inv_freq, sinusoids) on meta and copy_ failed
        with torch.device("cpu"):
            return materialize(model, device, policy, seed=seed, progress=progress, example_inputs=example_inputs,
                               huge_pages=huge_pages)
    if not isinstance(model, nn.Module):
        raise TypeError(f"materialize expects an nn.Module, got {type(model).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"materialize: seed must be an int, got {seed!r}")
    if not isinstance(huge_pages, bool):
        raise TypeError(f"materialize: huge_pages must be True or False, got {huge_pages!r}")
    device = torch.device(device)
    if device.type == "meta":
        raise ValueError("materialize: device='meta' allocates nothing; pass a real device such as 'cpu' or 'cuda'")
    total = _check_model(model, device)
    metas = list(meta_tensors(model))
    meta_names = {name for name, _, _ in metas}
    empty = {name for name, _, t in metas if t.numel() == 0}  # nothing to initialize
    if not meta_names:
        raise ValueError(
            "materialize: the model has no tensors on the meta device (nothing to allocate); "
            "to initialize an allocated model use torchinit.init_model(model, policy, seed=...)"
        )

    is_plan = hasattr(policy, "entries") and hasattr(policy, "to_dict")
    plan_obj = policy if is_plan else _plan(model, policy, example_inputs)
    if not is_plan:
        plan_obj = _plan_with_buffer_code(model, policy, plan_obj, meta_names, example_inputs)
    _check_coverage(model, plan_obj, meta_names - empty)
    # dry run: apply_plan validates every entry against the model (names, shapes, specs)
    # and writes nothing, so a bad plan fails before anything is allocated
    _apply_plan(model, plan_obj, seed=seed, engine="keyed", dry_run=True)
    stray = _stray_allocated(model)
    if stray:
        from ..model.apply import _shown

        msg = (f"materialize: {_shown(stray, 5)} {'is' if len(stray) == 1 else 'are'} already allocated (not on "
               "meta) while the rest of its module is on meta: materialize keeps allocated tensors, so "
               f"{'it keeps its' if len(stray) == 1 else 'they keep their'} values (whatever its constructor "
               "drew, e.g. torch.Tensor(n).uniform_(), which ignores `with torch.device('meta')`), not an init "
               f"with seed={seed}, unlike init_model on an allocated copy. To have it initialized, "
               "put it on meta before materialize (setattr(module, name, nn.Parameter(t.to('meta')))); if its "
               "current values are wanted (loaded weights), ignore this warning")
        warnings.warn(msg, UserWarning, stacklevel=2)
    locations = _locations(model)
    by_name = {}
    for e in plan_obj.entries:
        for n in (e.name, *(getattr(e, "aliases", ()) or ())):
            by_name[n] = e
    applied: dict[str, Any] = {}

    def run_batch(names: set[str]) -> None:
        # apply a sub-plan holding just this batch's entries: apply_plan validates what it is
        # given, so the total validation work stays linear in the model size
        wanted = {id(by_name[n]) for n in names if n in by_name}
        sub = dataclasses.replace(plan_obj, entries=[e for e in plan_obj.entries if id(e) in wanted])
        with contextlib.nullcontext() if huge_pages else B.prefaulting():
            done = _apply_plan(model, sub, seed=seed, engine="keyed", restore_on_error=False,
                               on_unwritten=functools.partial(_refuse_unwritten, model=model),  # before its specs
                               validated=True)  # by the dry run, on the same shapes and dtypes
        applied.update({e.name: e for e in done.entries})

    # init code that runs over the whole model in every batch: fewer, larger batches
    whole_model = any(meth == HF_INIT_STEP for e in plan_obj.entries if e.initializer == "module"
                      for _, meth in (getattr(e, "code", None) or ()))
    limit = max(BATCH_ELEMENTS, -(-total // MAX_WHOLE_MODEL_PASSES)) if whole_model else BATCH_ELEMENTS
    bar = _Progress("materialize", total, progress, after=PROGRESS_AFTER_S)
    pending: list[tuple[dict, str, Tensor]] = []  # (store, key, meta tensor) of the unfilled batch
    try:
        with torch.no_grad():
            batch: set[str] = set()
            n_batch = 0
            last = ""
            for mname, module in model.named_modules():
                for store in (module._parameters, module._buffers):
                    for n, t in list(store.items()):
                        if t is None or not t.is_meta:
                            continue
                        new = _new_like(t, device)
                        hit = locations.get(id(t))
                        # every name of a tied tensor at once (keeps it tied); a tensor that init
                        # code put on the model after the map was made has only its own name
                        locs = hit[1] if hit is not None and hit[0] is t else [
                            (store, n, f"{mname}.{n}" if mname else n)]
                        if huge_pages or not _fills_natively(by_name.get(locs[0][2]), new):
                            _prefault(new, huge_pages)
                        for loc_store, loc_key, qname in locs:
                            pending.append((loc_store, loc_key, t))
                            loc_store[loc_key] = new
                            batch.add(qname)
                        n_batch += t.numel()
                        last = mname
                if batch and n_batch >= limit:
                    run_batch(batch)
                    pending.clear()
                    bar.advance(n_batch, last or "(root)")
                    batch, n_batch = set(), 0
            if batch:
                run_batch(batch)
                pending.clear()
                bar.advance(n_batch, last or "(root)")
    except BaseException:
        # e.g. out of memory: put the unfilled batch back on meta, so the model holds only
        # initialized tensors and meta tensors (calling materialize again finishes the job)
        for loc_store, loc_key, meta in pending:
            loc_store[loc_key] = meta
        raise
    finally:
        bar.close()
    # entries no batch applied (tensors that were not on meta) are copied too, as apply_plan does
    return dataclasses.replace(plan_obj, entries=[applied[e.name] if e.name in applied else dataclasses.replace(e)
                                                  for e in plan_obj.entries],
                               seed=seed, engine="keyed", applied=True,
                               notes=list(getattr(plan_obj, "notes", [])) + ([msg] if stray else []))
