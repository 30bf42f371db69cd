"""Weight files: a model's state dict in safetensors plus the applied plan as JSON.

``save_weights(model, "w.safetensors", plan=plan, info={...})`` writes

* ``w.safetensors``: every entry of ``model.state_dict()`` (parameters and
  persistent buffers, BatchNorm statistics included), so
  ``model.load_state_dict(safetensors.torch.load_file("w.safetensors"))``
  restores the model exactly (strict). Tied parameters are written under each
  of their names (safetensors refuses shared storage, so an alias is written
  from a copy: one extra tensor of memory while saving);
  The header is written with sorted keys, so identical weights give
  byte-identical files;
* ``w.plan.json`` (:func:`plan_path`): ``{"format": "torchinit-plan", "version",
  ..., info, "plan": plan.to_dict()}``, the record of what initialized each tensor.

Both files are written to a temporary name first and renamed, so a failed
save never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["save_weights", "load_weights", "load_plan_file", "plan_path", "check_destination"]

PLAN_FORMAT = "torchinit-plan"


def plan_path(weights_path: str | os.PathLike) -> Path:
    """The plan JSON written beside ``weights_path``: ``x.safetensors`` -> ``x.plan.json``."""
    p = Path(weights_path)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.name
    return p.with_name(stem + ".plan.json")


def check_destination(path: str | os.PathLike, *, plan: bool = True) -> Path:
    """Raise ``OSError`` (naming the path) unless ``path`` and, with ``plan``, its plan
    JSON (:func:`plan_path`) can be written: the directory exists, is a directory and is
    writable, and neither file name is taken by a directory. Returns ``Path(path)``.
    ``save_weights`` checks this before writing anything; the command line checks it
    before building the model, so a bad ``--out`` fails before the work."""
    path = Path(path)
    parent = path.parent
    if not parent.exists():
        raise FileNotFoundError(f"save_weights: directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise NotADirectoryError(f"save_weights: {str(parent)!r} is not a directory")
    for p in (path, plan_path(path)) if plan else (path,):
        if p.is_dir():
            raise IsADirectoryError(f"save_weights: {str(p)!r} is a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"save_weights: directory {str(parent)!r} is not writable")
    return path


def _state_for_file(model: nn.Module) -> dict[str, Tensor]:
    from ..engines.dtensor import is_dtensor

    state = model.state_dict()
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if is_dtensor(t):
            raise ValueError(
                f"save_weights: {name!r} is a sharded DTensor; gather it first (t.full_tensor()) or save with "
                f"torch.distributed.checkpoint"
            )
        if t.is_meta:
            raise ValueError(f"save_weights: {name!r} is on the meta device (not materialized); call torchinit.materialize first")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        out[name] = t.contiguous()
    # safetensors refuses tensors that share storage (tied parameters, views): copy the later ones
    ptrs: set[int] = set()
    for name, t in out.items():
        if t.numel() == 0:
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in ptrs:
            out[name] = t.clone()
        else:
            ptrs.add(ptr)
    return out


def _canonical_header_(path: Path) -> None:
    """Rewrite the safetensors JSON header of ``path`` in place with sorted keys.

    safetensors serializes its header from hash maps, so the key order (and the
    file's bytes) varies between runs; sorting makes identical weights give
    identical files. The sorted header has exactly the same length (same
    content, compact separators), so the data offsets are untouched; if the
    length differed the file is left as written.
    """
    import struct

    with open(path, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        raw = fh.read(n)
        text = raw.rstrip(b" ")
        header = json.loads(text)
        canon = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(canon) == len(text):
            fh.seek(8)
            fh.write(canon + raw[len(text):])


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the usual mode of a new file (safetensors creates 0600)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    plan: Any = None,
    info: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> tuple[Path, Path | None]:
    """Write ``model.state_dict()`` to ``path`` (safetensors) and, if ``plan`` is given,
    the plan JSON beside it (:func:`plan_path`). Returns ``(weights_path, plan_path or None)``.

    ``info`` (JSON-serializable: model spec, policy, seed, ...) goes into the plan
    JSON and, as strings, into the safetensors metadata. ``progress``: ``None``
    (default) shows a progress bar on stderr when the write takes longer than ~2 s and
    stderr is a terminal, ``True`` also when it is not, ``False`` never.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from .._progress import _track
    from .._version import __version__

    path = check_destination(path, plan=plan is not None)
    info = dict(info or {})
    try:
        json.dumps(info)
    except TypeError as exc:
        raise TypeError(f"save_weights: info must be JSON-serializable: {exc}") from None
    reserved = sorted(set(info) & {"format", "torchinit_version", "weights", "plan"})
    if reserved:  # they would overwrite the plan file's own fields (and make it unreadable)
        raise ValueError(f"save_weights: info key(s) {reserved} are reserved by the plan file format")
    tensors = _state_for_file(model)  # validates before writing anything
    metadata = {"format": "pt", "torchinit_version": __version__}
    metadata.update({f"torchinit.{k}": (v if isinstance(v, str) else json.dumps(v)) for k, v in info.items()})
    ppath = None
    doc = None
    if plan is not None:
        ppath = plan_path(path)
        metadata["torchinit.plan_file"] = ppath.name
        plan_dict = plan.to_dict() if hasattr(plan, "to_dict") else plan
        doc = {"format": PLAN_FORMAT, "torchinit_version": __version__, "weights": path.name, **info, "plan": plan_dict}
        text = json.dumps(doc, indent=1, sort_keys=False, default=str)
    def _write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # I/O errors (disk full, read-only file system, ...)
            raise OSError(f"save_weights: cannot write {str(path)!r}: {exc}") from None
        _canonical_header_(tmp)

    steps = [("weights", path)] + ([("plan", ppath)] if ppath is not None else [])
    for what, _dest in _track(steps, "save_weights", mode=progress, label=lambda s: s[1].name):
        if what == "weights":
            _atomic_write(path, _write)
        else:
            _atomic_write(ppath, lambda tmp: tmp.write_text(text + "\n"))
    return path, ppath


def load_weights(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    strict: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """Read a safetensors file; with ``model``, also ``model.load_state_dict(state, strict=strict)``
    (``assign=True`` when the model is on the meta device; tied parameters stay tied).
    Returns the state dict. Missing/unexpected keys (``strict``) and shape mismatches
    raise ``ValueError`` before anything is copied into ``model``. Tensors of a meta model
    that the file cannot hold (non-persistent buffers) stay on meta, with a ``UserWarning``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {str(path)}")
    state = load_file(str(path), device=str(device))
    if model is not None:
        _check_loadable(model.state_dict(), state, strict, path)
        on_meta = any(t.is_meta for t in model.state_dict().values())
        if not on_meta:
            model.load_state_dict(state, strict=strict)
        else:
            from .materialize import _locations

            # assign=True replaces each Parameter by name, which would untie tied ones: re-tie them
            groups = [locs for _, locs in _locations(model).values() if len(locs) > 1]
            model.load_state_dict(state, strict=strict, assign=True)
            for locs in groups:
                store0, key0, _ = locs[0]
                for store, key, _ in locs[1:]:
                    store[key] = store0[key0]
            # non-persistent buffers (rotary inv_freq, position ids) are not in any state dict file:
            # say so now rather than at the first forward ("Cannot copy out of meta tensor")
            left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
            if left:
                more = f" and {len(left) - 3} more" if len(left) > 3 else ""
                warnings.warn(
                    f"load_weights: {', '.join(map(repr, left[:3]))}{more} not in {str(path)!r} are still on "
                    "the meta device (non-persistent buffers are not saved; with strict=False, also missing "
                    "keys); compute them before running the "
                    "model: torchinit.materialize(model, device, {'rules': []}, seed=0) runs their modules' own "
                    "init code where there is some (Hugging Face rotary embeddings, position ids), else set them "
                    "on the model", stacklevel=2)
    return state


def _check_loadable(expected: dict[str, Tensor], state: dict[str, Tensor], strict: bool, path: Path) -> None:
    """Refuse, before anything is copied, a state dict that ``load_state_dict`` would reject:
    torch copies the matching entries first and raises afterwards, leaving the model half loaded."""
    if strict:
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"load_weights: {str(path)!r} does not match the model (strict=True): "
                f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
            )
    for name, t in state.items():
        e = expected.get(name)
        if e is not None and tuple(e.shape) != tuple(t.shape):
            raise ValueError(f"load_weights: {name!r} has shape {tuple(t.shape)} in {str(path)!r} but "
                             f"{tuple(e.shape)} in the model")


def load_plan_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a plan JSON written by :func:`save_weights` (given the JSON path or the
    weights path). ``Plan.from_dict(doc["plan"])`` rebuilds the Plan."""
    p = Path(path)
    if p.suffix == ".safetensors":
        p = plan_path(p)
    if not p.is_file():
        raise FileNotFoundError(f"plan file not found: {str(p)}")
    doc = json.loads(p.read_text())
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
        raise ValueError(f"{str(p)} is not a torchinit plan file (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    return doc
