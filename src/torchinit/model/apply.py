"""apply_plan() and init_model(): write a Plan's values into a model with the torch or the keyed engine."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..core import specs as S
from ..core.gate_specs import OrthogonalPerGate
from ..engines.argcheck import check_keyed_overflow
from ..engines.keyed.engine import checked_spec, fill_checked_
from .buffer_code import non_persistent_buffers, with_own_code
from .parametrized import orthogonal_hint
from .plan import ENGINES, EngineName, Plan, PlanEntry
from .policy import Policy, PolicyError
from .presets import experts_hint
from .registry import DEFAULT_POLICY, PresetName
from .resolve import plan

__all__ = ["apply_plan", "init_model"]


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


def apply_plan(model: nn.Module, plan: Plan, *, seed: int, engine: EngineName = "keyed",
               only: Iterable[str] | None = None, restore_on_error: bool = True) -> Plan:
    """Write ``plan`` into ``model``; return the applied plan.

    Validates everything first (seed, engine, every entry's tensor exists with the
    planned shape, specs fit, ``only`` names exist): on any error nothing is written.
    Module-code entries run first (each module's init code once, in post-order,
    routed through the keyed engine for ``engine="keyed"``), then spec entries in
    plan order. ``only``: apply just the entries with these names (aliases accepted);
    module code then leaves every other tensor as it was.

    Module code is the model's own and may raise at run time, after validation. With
    ``restore_on_error`` (default) the tensors it may write are copied first and put
    back if it raises, so a failed call leaves the model as it was, at the cost of one
    copy of those tensors; ``materialize`` turns it off (its fresh tensors hold
    nothing to lose, and it returns a failed batch to meta itself).

    Module code that never writes a tensor of its entries leaves it as it was: the
    applied plan's notes name such tensors, and a ``UserWarning`` names the learned
    parameters among them (buffers and frozen tables are usually computed by the
    constructor, which init code does not redo).
    """
    unwritten: list[str] = []
    partly: dict[str, tuple[int, int]] = {}
    applied = _apply_plan(model, plan, seed=seed, engine=engine, only=only, restore_on_error=restore_on_error,
                          unwritten=unwritten, partly=partly)
    _report_unwritten(model, applied, unwritten, "apply_plan", partly=partly)
    if only is None:
        _warn_unplanned(model, applied)
    return applied


def _warn_unplanned(model: nn.Module, p: Plan) -> None:
    """Warn naming the learned parameters that the plan neither initializes nor lists as
    unmatched: the model has tensors the planned model did not (a plan saved before a layer
    was added), and they would keep their values without a word."""
    known = set(p.unmatched)
    for e in p.entries:
        known.add(e.name)
        known.update(e.aliases)
    new = [n for n, t in model.named_parameters(remove_duplicate=False) if t.requires_grad and n not in known]
    if new:
        more = f" and {len(new) - 20} more" if len(new) > 20 else ""
        warnings.warn(f"apply_plan: the plan has no entry for {len(new)} learned parameter(s) of the model: "
                      f"{', '.join(map(repr, new[:20]))}{more}; they keep their current values (was the plan "
                      "made for another model? torchinit.plan(model, policy) plans every tensor)",
                      UserWarning, stacklevel=3)


def _apply_plan(model: nn.Module, plan: Plan, *, seed: int, engine: EngineName = "keyed",
                only: Iterable[str] | None = None, restore_on_error: bool = True,
                unwritten: list[str] | None = None, partly: dict[str, tuple[int, int]] | None = None,
                on_unwritten: Callable[[list[str], dict[str, tuple[int, int]]], None] | None = None,
                validated: bool = False, dry_run: bool = False) -> Plan | None:
    """:func:`apply_plan`; with ``unwritten`` (a list), also appends the names of the
    module-code entries whose tensors the code left unwritten (see :func:`_unwritten`), with
    ``partly`` (a dict) those it wrote only in part: name -> (elements never written, elements);
    ``on_unwritten(names, partly)`` runs as soon as they are known, before the spec entries are
    written: if it raises, module code's writes are undone as for its own errors. ``validated``:
    the caller checked these entries against tensors of the same shapes and dtypes already
    (``materialize``'s dry run): the per-entry checks are skipped. ``dry_run``: check the
    seed, engine and every entry against the model, write nothing and return None."""
    from ..engines.dtensor import is_dtensor, zero_rows_
    from .parametrized import refresh_spectral_norms

    seed = _check_seed(seed)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a Plan, got {type(plan).__name__}")
    # every parameter and buffer under every name (named_parameters/named_buffers with
    # remove_duplicate=False), from one walk of the modules
    modules = dict(model.named_modules(remove_duplicate=False))
    tensors: dict[str, Tensor] = {}
    for mname, mod in modules.items():
        for store in (mod._parameters, mod._buffers):
            for n, t in store.items():
                if t is not None:
                    tensors[f"{mname}.{n}" if mname else n] = t
    by_name: dict[str, PlanEntry] = {}
    for e in plan.entries:
        t = tensors.get(e.name)
        if t is None:
            raise ValueError(f"plan entry {e.name!r} has no tensor in the model (was the plan made for another model?)")
        if not validated:
            _check_entry(e, t, engine, modules)
        by_name[e.name] = e
        for a in e.aliases:
            by_name[a] = e
    if dry_run:
        return None
    selected_names: set[str] | None = None
    if only is not None:
        only = [only] if isinstance(only, str) else list(only)
        missing = [n for n in only if n not in by_name]
        if missing:
            raise ValueError(f"only: no plan entry named {missing[0]!r}" + (
                f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        selected_names = {by_name[n].name for n in only}
    selected = [e for e in plan.entries if selected_names is None or e.name in selected_names]
    on_meta = [e.name for e in selected if e.initializer != "keep" and tensors[e.name].is_meta]
    if on_meta:  # a write into a meta tensor stores nothing: the call would silently do nothing
        more = f" and {len(on_meta) - 3} more" if len(on_meta) > 3 else ""
        raise ValueError(
            f"plan entries {', '.join(map(repr, on_meta[:3]))}{more} are on the meta device (no storage: "
            "nothing would be written); allocate and initialize them with "
            "torchinit.materialize(model, device, policy, seed=...)")
    needs_keyed = engine == "keyed" and any(
        (e.spec is not None and e.spec.random) or e.initializer == "module" for e in selected)
    if needs_keyed:
        try:
            from ..engines.keyed import Key
        except ImportError as exc:
            raise ImportError(f"engine='keyed' needs torchinit.keyed: {exc}") from None

    # ---- everything validated: write ----
    from ..engines.torch_engine import torch_fill_
    from ..initializers import fill_ as fill_any_

    observed: dict[str, tuple[S.Spec, ...]] = {}
    module_entries = [e for e in selected if e.initializer == "module"]
    if engine == "torch":
        torch.manual_seed(seed)
    if module_entries:
        from .module_init import run_module_init
        from .routing import keyed_init_mode

        steps: list[tuple[str, str]] = []
        for e in module_entries:
            for s in e.code:
                if s not in steps:
                    steps.append(s)
        order = {s: i for i, s in enumerate(_ctx_steps(model))}
        steps.sort(key=lambda s: order.get(s, len(order)))
        allowed = {e.name for e in module_entries}
        outside = {n for n in tensors if by_name.get(n) is None or by_name[n].name not in allowed}
        undo: list[tuple[Tensor, Tensor]] = []
        if restore_on_error:
            undo_ids: set[int] = set()
            for n in allowed:
                t = tensors.get(n)
                if t is not None and id(t) not in undo_ids and not t.is_meta:
                    undo.append((t, t.detach().clone()))
                    undo_ids.add(id(t))
        try:
            # what the code wrote is recorded, so that a tensor it forgot is named, not kept silently
            before = {e.name: (tensors[e.name], _storage_ptr(tensors[e.name])) for e in module_entries}
            if engine == "keyed":
                # the routing mode skips the code's writes to tensors outside these entries
                with keyed_init_mode(model, seed, protect=outside) as mode:
                    run_module_init(model, steps, mode)
                observed = {n: tuple(v) for n, v in mode.log.specs.items()}
                written, part = mode.log.written, mode.partial()
            else:
                written, part = _run_module_init_torch(model, steps, tensors, outside, run_module_init)
            missed = _unwritten(model, module_entries, before, written)
            # written only in part (w[:4].normal_() and nothing else): the rest keeps its old values
            # (freshly allocated: garbage), found element by element by the init audit
            names = {n: e for e in module_entries for n in (e.name, *e.aliases)}
            halves = {names[n].name: (k, tensors[names[n].name].numel()) for n, k in part.items()
                      if n in names and names[n].name not in missed}
            if unwritten is not None:
                unwritten.extend(missed)
            if partly is not None:
                partly.update(halves)
            if (missed or halves) and on_unwritten is not None:
                on_unwritten(missed, halves)
        except BaseException:
            with torch.no_grad():
                for t, v in undo:
                    t.copy_(v)
            raise
    with torch.no_grad():
        for e in selected:
            spec = e.spec
            if spec is None:
                continue
            t = tensors[e.name]
            if type(spec) is S.Constant and not is_dtensor(t):
                t.fill_(spec.value)  # torch_fill_'s own code for a constant, without its dispatch
            elif engine == "torch" or (not spec.random and not is_dtensor(t)):
                torch_fill_(t, spec)
            elif validated and not is_dtensor(t):
                # the dry run checked the spec against this shape: only the checks that depend
                # on the tensor itself (as fill_ makes them, in its order)
                spec = checked_spec(spec)
                check_keyed_overflow(type(spec).__name__, t, spec)
                fill_checked_(t, spec, Key(seed, e.name))
            else:  # random specs, and every spec of a DTensor: filled shard-locally (issue 5)
                fill_any_(t, spec, key=Key(seed, e.name))  # Key(seed).child(name), one hash less
            if e.zero_rows:
                zero_rows_(t, e.zero_rows)
    # a spectral norm's u and v were computed from the weight before: recomputed from the one written
    refresh_spectral_norms(model, {n for e in selected if e.spec is not None or e.code for n in (e.name, *e.aliases)},
                           seed)
    applied = replace(plan, entries=[replace(e, observed=observed.get(e.name, e.observed)) for e in plan.entries],
                      seed=seed, engine=engine, applied=True, notes=list(plan.notes))
    if only is not None:
        applied.notes.append(f"applied only {len(selected)} of {len(plan.entries)} entries")
    return applied


def _check_entry(e: PlanEntry, t: Tensor, engine: str, modules: Mapping[str, nn.Module]) -> None:
    """Raise ValueError if plan entry ``e`` cannot be applied to its tensor ``t``."""
    from ..engines.dtensor import check_no_dtensor
    from .module_init import check_init_step

    if tuple(t.shape) != tuple(e.shape):
        raise ValueError(f"plan entry {e.name!r}: planned shape {tuple(e.shape)} but the model's tensor has "
                         f"shape {tuple(t.shape)}")
    if e.spec is not None:
        try:
            checked_spec(e.spec).check_shape(tuple(t.shape))  # once per distinct spec
        except (TypeError, ValueError) as exc:
            raise ValueError(f"plan entry {e.name!r}: spec {e.spec!r} does not fit: {exc}") from None
        if e.spec.random and not t.is_floating_point():
            raise ValueError(f"plan entry {e.name!r}: random spec for dtype {t.dtype}")
        if (engine == "torch" and isinstance(e.spec, (S.Orthogonal, S.DeltaOrthogonal, OrthogonalPerGate))
                and t.dtype not in (torch.float32, torch.float64) and not t.is_meta):
            raise ValueError(f"plan entry {e.name!r}: engine='torch' cannot draw {type(e.spec).__name__} "
                             f"for dtype {t.dtype} (torch's QR needs float32/float64); use engine='keyed'")
    if engine == "torch":  # sharded tensors need the keyed engine (issue 5)
        check_no_dtensor(t, e.name, engine)
    for r in e.zero_rows:
        if not (t.dim() >= 1 and -t.shape[0] <= r < t.shape[0]):
            raise ValueError(f"plan entry {e.name!r}: zero row {r} out of range for shape {tuple(t.shape)}")
    for path, meth in e.code:  # only init methods: a plan may come from a file
        check_init_step(modules, path, meth, f"plan entry {e.name!r}")


def _storage_ptr(t: Tensor) -> int | None:
    from .routing_shards import storage_key

    return storage_key(t)  # a DTensor's: its local tensor's


def _unwritten(model: nn.Module, entries: list[PlanEntry], before: dict[str, tuple[Tensor, int | None]],
               written: set[str]) -> list[str]:
    """Module-code entries (plain tensors) the code neither wrote through torch calls nor
    replaced (``p.data = ...`` moves the storage, ``module.buf = ...`` the object). A
    zero-element tensor has no value to keep, and a tied tensor written under any of its
    names is written."""
    out = []
    for e in entries:
        t0, ptr0 = before[e.name]
        if ptr0 is None or t0.numel() == 0 or e.name in written or any(a in written for a in e.aliases):
            continue
        path, _, local = e.name.rpartition(".")
        owner = model.get_submodule(path)
        t1 = owner._parameters.get(local, owner._buffers.get(local))
        if t1 is not t0 or _storage_ptr(t1) != ptr0:
            continue
        out.append(e.name)
    return out


def _split_unwritten(model: nn.Module, names: list[str], partly: Mapping[str, tuple[int, int]]
                     ) -> tuple[list[str], list[str], dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """``names`` (never written) and ``partly`` (written in part) each split into learned
    parameters and the rest (buffers, frozen parameters): (learned, rest, learned in part,
    rest in part). A constructor computes the rest (rotary ``inv_freq``, causal masks,
    sinusoidal tables) and init code need not redo it; a learned parameter is the init
    code's to write."""
    params = dict(model.named_parameters(remove_duplicate=False))
    learned = {n for n in (*names, *partly) if n in params and params[n].requires_grad}
    return ([n for n in names if n in learned], [n for n in names if n not in learned],
            {n: v for n, v in partly.items() if n in learned}, {n: v for n, v in partly.items() if n not in learned})


def _shown(items: list[str], limit: int = 20, fmt: Callable[[str], str] = repr) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(map(fmt, items[:limit])) + more


def _partly_shown(partly: Mapping[str, tuple[int, int]]) -> str:
    return _shown([f"{n} ({k} of {t} elements)" for n, (k, t) in partly.items()], fmt=str)


def _unwritten_message(who: str, learned: list[str], partly: Mapping[str, tuple[int, int]] | None = None) -> str:
    """``learned``: parameters the code never wrote; ``partly``: parameters it wrote only in
    part -> (elements never written, elements)."""
    partly = partly or {}
    what = []
    if learned:
        what.append(f"never wrote {len(learned)} parameter(s) it ran for: {_shown(learned)}")
    if partly:
        what.append(f"wrote only part of {len(partly)} parameter(s), leaving elements unwritten: "
                    f"{_partly_shown(partly)}")
    first = (learned or list(partly))[0]
    return (f"{who}: the model's own init code (plan entries 'module') {'; and '.join(what)}; "
            f"{'they keep their' if learned else 'those elements keep their'} current values (the constructor's, "
            f"or whatever memory held after to_empty()). Give them a rule (e.g. "
            f"{{'qualnames': {first!r}, 'init': 'zeros'}}) or, if their current values are the intended init, "
            f"accept them with a 'keep' rule ({{'qualnames': {first!r}, 'init': 'keep'}})")


def _report_unwritten(model: nn.Module, applied: Plan, names: list[str], who: str, tail: str = "",
                      partly: Mapping[str, tuple[int, int]] | None = None) -> None:
    """Name the tensors module code left as they were, wholly (``names``) or in part
    (``partly``): a note for each kind, and a ``UserWarning`` for learned parameters
    (``stacklevel``: the caller of ``who``) ending in ``tail``."""
    if not names and not partly:
        return
    learned, computed, part_learned, part_computed = _split_unwritten(model, names, partly or {})
    if part_computed:
        applied.notes.append(f"kept in part: the model's own init code wrote only part of buffer(s)/frozen "
                             f"table(s) {_partly_shown(part_computed)}: the other elements "
                             "keep the values their constructor computed (materialize from meta refuses them)")
    if part_learned:
        applied.notes.append(f"kept in part: the model's own init code wrote only part of parameter(s) "
                             f"{_partly_shown(part_learned)}: the other elements keep their current values")
    if learned:
        applied.notes.append(f"kept: the model's own init code never wrote parameter(s) {_shown(learned)}: "
                             "they keep their current values (give them a rule, or a 'keep' rule to accept them)")
    if learned or part_learned:
        from .parametrized import weight_norm_hint

        warnings.warn(_unwritten_message(who, learned, part_learned) + weight_norm_hint(model, learned) + tail,
                      UserWarning, stacklevel=3)
    if computed:
        applied.notes.append(f"kept: the model's own init code never wrote buffer(s)/frozen table(s) "
                             f"{_shown(computed)}: they keep the values their constructor computed (materialize "
                             "from meta refuses them)")


def _run_module_init_torch(model: nn.Module, steps: list[tuple[str, str]], tensors: dict[str, Tensor],
                           outside: set[str], run_module_init: Any) -> tuple[set[str], dict[str, int]]:
    """Run module init code on torch's RNG, then put back every tensor outside the
    selected entries that the code may have written (torch has no way to skip writes).
    Returns the names of the model's tensors the code wrote, and of those it wrote only in
    part with their elements never written (audited by ``track_init``, which changes no value)."""
    from .routing import track_init

    prefixes = [p for p, _ in steps]
    saved: dict[str, Tensor] = {}
    seen_ids: set[int] = set()
    for n in outside:
        t = tensors[n]
        if id(t) in seen_ids or t.is_meta or not any(p == "" or n.startswith(p + ".") for p in prefixes):
            continue
        saved[n] = t.detach().clone()
        seen_ids.add(id(t))
    try:
        with track_init(model) as mode:
            run_module_init(model, steps, None)
        return mode.log.written, mode.partial()
    finally:
        with torch.no_grad():
            for n, v in saved.items():
                tensors[n].copy_(v)


def _ctx_steps(model: nn.Module) -> list[tuple[str, str]]:
    from .module_init import module_init_steps

    return module_init_steps(model)


def init_model(model: nn.Module, policy: PresetName | Policy | str | Mapping | Sequence = DEFAULT_POLICY, *, seed: int,
               engine: EngineName = "keyed", example_inputs: Any = None, strict: bool = False) -> Plan:
    """Plan and apply ``policy`` (default ``"pytorch"``, as everywhere) to ``model``; returns the applied :class:`Plan`.

    Tensors no rule covers (a module's own ``nn.Parameter`` used through a functional op,
    say) keep their values: a ``UserWarning`` names each of them; ``strict=True`` raises
    :class:`PolicyError` instead, before anything is written. Likewise for learned
    parameters that the model's own init code (``module`` entries: the ``module`` preset,
    the ``pytorch`` preset's fallback) runs for but never writes: the plan's notes and a
    ``UserWarning`` name them; ``strict=True`` raises :class:`PolicyError` once the code
    has run, with its writes undone and nothing else written. Buffers and frozen tables
    the code leaves alone (constructor-computed, as rotary ``inv_freq``) get a note only.
    With the keyed engine, buffers registered ``persistent=False`` that no rule covers (a
    rotary ``inv_freq``: computed, never loaded) get their module's own init code where it
    has some, so that after ``to_empty`` they are not kept as garbage (the same values on a
    model built normally; a note names them).

    >>> import torch, torchinit
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> p = torchinit.init_model(net, "kaiming", seed=0)
    >>> p["0.weight"].nonlinearity, round(p["0.weight"].gain, 4)
    ('relu', 1.4142)
    """
    _check_seed(seed)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    p = plan(model, policy, example_inputs=example_inputs)
    if engine == "keyed":  # its routing skips the code's other writes (torch's RNG would move: not for "torch")
        # constructor-computed buffers no rule covers (rotary inv_freq): after to_empty they hold garbage,
        # which keeping would keep silently; their module's own code recomputes them (the same values otherwise)
        p = with_own_code(model, policy, p, non_persistent_buffers(model), example_inputs, "init_model",
                          "buffers registered persistent=False are computed, never loaded: after to_empty they "
                          "would hold garbage")
    if p.unmatched:
        shown = ", ".join(map(repr, p.unmatched[:20]))
        more = f" and {len(p.unmatched) - 20} more (plan.unmatched lists them all)" if len(p.unmatched) > 20 else ""
        msg = (f"init_model: no rule of policy {p.policy!r} covers {len(p.unmatched)} tensor(s): {shown}{more}"
               f"{experts_hint(model, p.unmatched)}{orthogonal_hint(model, p.unmatched)}; "
               f"{'nothing was written' if strict else 'they keep their current values'}. Give them a rule "
               "(e.g. {'qualnames': '<name>', 'init': 'ones'}) or a preset that covers them")
        if strict:
            raise PolicyError(msg + "; strict=False warns and initializes the rest", field="rules")
        warnings.warn(msg + "; strict=True makes this an error", UserWarning, stacklevel=2)

    def refuse(names: list[str], partly: dict[str, tuple[int, int]]) -> None:
        learned, _, part_learned, _ = _split_unwritten(model, names, partly)
        if learned or part_learned:  # raised inside apply: the code's writes are undone, the specs not yet written
            raise PolicyError(_unwritten_message("init_model", learned, part_learned)
                              + "; nothing was written (strict=True)", field="rules")

    unwritten: list[str] = []
    partly: dict[str, tuple[int, int]] = {}
    applied = _apply_plan(model, p, seed=seed, engine=engine, unwritten=unwritten, partly=partly,
                          on_unwritten=refuse if strict else None)
    _report_unwritten(model, applied, unwritten, "init_model", "; strict=True makes this an error", partly=partly)
    return applied
