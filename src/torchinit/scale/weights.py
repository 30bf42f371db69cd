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

The two files are a pair that cannot be mixed up silently:

* the plan JSON records a SHA-256 digest of every tensor's bytes (``"tensor_digests"``,
  hashed on a thread pool while the weights are written), and
  the weights file's metadata records the SHA-256 of the plan file's bytes
  (``"torchinit.plan_sha256"``): :func:`load_plan_file` refuses a plan that is not the
  one written with the weights beside it, :func:`load_weights` refuses a tensor whose
  bytes changed (a flipped byte) and warns about a plan beside that is not its own;
* both are written to temporaries (``.NAME.torchinit-tmp-PID``) and fsynced before
  either is renamed into place, so a failed save (disk full while writing the plan, say)
  leaves the previous pair as it was; a kill between the two renames leaves new
  weights beside the old plan, which the recorded hash reveals. Temporaries that a dead
  process left behind are removed by the next save to the same names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["save_weights", "load_weights", "load_plan_file", "plan_path", "check_destination"]

PLAN_FORMAT = "torchinit-plan"
_TMP = ".torchinit-tmp-"  # temporaries: .NAME.torchinit-tmp-PID (stale ones, of dead pids, are removed)
#: Largest safetensors header read when checking a file (the format's own limit is 100 MB).
_MAX_HEADER = 100_000_000


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


#: ``torchinit.plan_sha256`` while the weights are written (a SHA-256 hex digest's length)
_PLACEHOLDER = "0" * 64


def _canonical_header_(path: Path, metadata: dict[str, str] | None = None) -> None:
    """Rewrite the safetensors JSON header of ``path`` in place with sorted keys (and
    ``metadata`` values replacing those of the same keys and lengths).

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
        if metadata:
            header["__metadata__"].update(metadata)
        canon = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(canon) == len(text):
            fh.seek(8)
            fh.write(canon + raw[len(text):])
        elif metadata:  # never leave the placeholder in a file  # pragma: no cover
            raise OSError(f"save_weights: cannot record the plan's hash in {str(path)!r}: the header changed size")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP}{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _remove_stale_temporaries(paths: list[Path]) -> None:
    """Remove ``.NAME.torchinit-tmp-PID`` files beside ``paths`` whose process is gone (a
    save that was killed): a full-size copy of the weights must not stay behind."""
    for path in paths:
        pattern = re.compile(re.escape(f".{path.name}{_TMP}") + r"(\d+)$")
        try:
            names = os.listdir(path.parent)
        except OSError:
            return
        for name in names:
            m = pattern.match(name)
            if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                try:
                    os.unlink(path.parent / name)
                except OSError:
                    pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # not supported here (some file systems): the renames are still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: Tensors are hashed in chunks of this many bytes, in parallel (hashlib releases the GIL):
#: a tensor's digest is the SHA-256 of its chunks' SHA-256 digests, concatenated in order.
_CHUNK = 16 * 2**20
_DIGEST = {"algorithm": "sha256 of the SHA-256 digests of the chunks of the tensor's bytes",
           "chunk_bytes": _CHUNK}


def _digest_pool() -> Any:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1)))


def _start_digests(tensors: dict[str, Tensor], pool: Any) -> Any:
    """Submit the chunk hashes of CPU tensors' bytes as safetensors stores them (contiguous,
    native order) to ``pool``; the returned function waits and gives ``{name: digest}`` by
    :data:`_DIGEST`'s scheme. hashlib releases the GIL, so the hashing runs while the caller
    goes on (save_weights writes the file meanwhile: one pass less on the clock)."""
    views: dict[str, memoryview] = {}
    for name, t in tensors.items():
        t = t.detach().contiguous()
        views[name] = memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")
    jobs = [(name, i) for name, v in views.items() for i in range(max(1, -(-len(v) // _CHUNK)))]

    def chunk(job: tuple[str, int]) -> bytes:
        name, i = job
        return hashlib.sha256(views[name][i * _CHUNK:(i + 1) * _CHUNK]).digest()

    futures = [pool.submit(chunk, job) for job in jobs]

    def result() -> dict[str, str]:
        out: dict[str, list[bytes]] = {}
        for (name, _), f in zip(jobs, futures):
            out.setdefault(name, []).append(f.result())
        return {name: hashlib.sha256(b"".join(ds)).hexdigest() for name, ds in sorted(out.items())}

    return result


def _tensor_digests(tensors: dict[str, Tensor]) -> dict[str, str]:
    """``{name: digest}`` of CPU tensors' bytes, by :data:`_DIGEST`'s scheme."""
    with _digest_pool() as pool:
        return _start_digests(tensors, pool)()


def _publish(pairs: list[tuple[Path, Any]], remove: Path | None = None) -> None:
    """Write every ``(path, write)`` to its temporary, fsync them all, then rename each into
    place in order, then delete ``remove`` (a stale plan file) if it is a file. Until the
    first rename nothing under a final name has changed: a failure before it (disk full, ...)
    removes the temporaries and leaves the previous files as they were, raising ``OSError``
    naming the file being written."""
    tmps = [(path, _tmp_name(path)) for path, _ in pairs]
    try:
        for (path, tmp), (_, write) in zip(tmps, pairs):
            try:
                write(tmp)
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)  # the usual mode of a new file (safetensors creates 0600)
                _fsync(tmp)
            except OSError as exc:
                if str(path) in str(exc):
                    raise
                raise OSError(exc.errno, f"save_weights: cannot write {str(path)!r}: {exc.strerror or exc}") from None
        for path, tmp in tmps:
            os.replace(tmp, path)
        if remove is not None and (remove.is_file() or remove.is_symlink()):
            try:
                remove.unlink()
            except OSError as exc:
                raise OSError(exc.errno, f"save_weights: wrote {str(tmps[0][0])!r} but cannot remove the stale plan "
                                         f"{str(remove)!r} beside it: {exc.strerror or exc}") from None
        _fsync_dir(tmps[0][0].parent)
    finally:
        for _, tmp in tmps:
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

    from .._progress import _Progress
    from .._version import __version__

    path = check_destination(path, plan=plan is not None)
    info = dict(info or {})
    try:
        json.dumps(info)
    except TypeError as exc:
        raise TypeError(f"save_weights: info must be JSON-serializable: {exc}") from None
    reserved = sorted(set(info) & {"format", "torchinit_version", "weights", "plan", "tensor_digests"})
    if reserved:  # they would overwrite the plan file's own fields (and make it unreadable)
        raise ValueError(f"save_weights: info key(s) {reserved} are reserved by the plan file format")
    tensors = _state_for_file(model)  # validates before writing anything
    metadata = {"format": "pt", "torchinit_version": __version__}
    metadata.update({f"torchinit.{k}": (v if isinstance(v, str) else json.dumps(v)) for k, v in info.items()})
    ppath = None
    plan_text: list[str] = []  # the plan JSON, made once the tensor digests are known
    pool = digests = None
    if plan is not None:
        ppath = plan_path(path)
        metadata["torchinit.plan_file"] = ppath.name
        plan_dict = plan.to_dict() if hasattr(plan, "to_dict") else plan
        json.dumps(plan_dict, default=str)  # fails (TypeError) before anything is written
        # hashed while the weights are written; their header gets the plan's hash afterwards,
        # in place of a placeholder of the same length (the data offsets do not move)
        pool = _digest_pool()
        digests = _start_digests(tensors, pool)
        metadata["torchinit.plan_sha256"] = _PLACEHOLDER

    def _finish_plan() -> dict[str, str]:
        doc = {"format": PLAN_FORMAT, "torchinit_version": __version__, "weights": path.name, **info,
               "tensor_digests": {**_DIGEST, "tensors": digests()}, "plan": plan_dict}
        plan_text.append(json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n")
        # the weights name their plan by content: a plan beside them that is not this one is detected
        return {"torchinit.plan_sha256": hashlib.sha256(plan_text[0].encode()).hexdigest()}

    def _write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # I/O errors (disk full, read-only file system, ...)
            raise OSError(f"save_weights: cannot write {str(path)!r}: {exc}") from None
        _canonical_header_(tmp, _finish_plan() if ppath is not None else None)

    def _write_plan(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(plan_text[0])

    bar = _Progress("save_weights", 2 if ppath is not None else 1, progress)

    def _step(dest: Path, write: Any) -> Any:
        def run(tmp: Path) -> None:
            bar.set_label(dest.name)
            write(tmp)
            bar.advance(1)
        return run

    _remove_stale_temporaries([path] + ([ppath] if ppath is not None else []))
    # weights renamed first: a kill between the renames leaves new weights naming a plan
    # (by hash) that is not the one beside them, which load_plan_file refuses. Saved without
    # a plan, the plan file of an earlier save beside them is removed (a kill before that
    # leaves weights that record no plan, whose plan load_plan_file refuses too)
    try:
        _publish([(path, _step(path, _write))] + ([(ppath, _step(ppath, _write_plan))] if ppath is not None else []),
                 remove=plan_path(path) if ppath is None else None)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # a failed write: no hashing left running
    return path, ppath


def _read_header(path: Path) -> dict[str, Any]:
    """The JSON header of the safetensors file ``path`` (``ValueError`` naming the file when
    it is too short, its header length is impossible, or the header is not JSON)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{str(path)!r} is not a safetensors file: {size} bytes, too short for a header")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise ValueError(f"{str(path)!r} is not a safetensors file (or is truncated): its header says "
                             f"{n:,} bytes but the file has {size:,}")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a safetensors file: its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{str(path)!r} is not a safetensors file: its header is not a JSON object")
    return header


def _check_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, or ``ValueError`` naming it when this torch cannot allocate there."""
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, TypeError, ValueError) as exc:  # unknown type, no CUDA, no such ordinal
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"load_weights: device {str(device)!r} cannot be used: {first}") from None
    return dev


def _own_plan(path: Path, header: dict[str, Any]) -> tuple[Path | None, bool]:
    """The plan file the weights at ``path`` name, and whether the file beside them is that
    plan (its SHA-256 is the one recorded in the weights' metadata). ``(None, True)`` for
    weights that record no plan."""
    meta = header.get("__metadata__") or {}
    name, digest = meta.get("torchinit.plan_file"), meta.get("torchinit.plan_sha256")
    if not isinstance(name, str) or not isinstance(digest, str) or os.sep in name or "/" in name:
        return None, True
    ppath = path.with_name(name)
    if not ppath.is_file():
        return ppath, True  # the weights stand alone; nothing to mix them up with
    return ppath, hashlib.sha256(ppath.read_bytes()).hexdigest() == digest


def load_weights(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    strict: bool = True,
    device: str | torch.device = "cpu",
    verify: bool = True,
) -> dict[str, Tensor]:
    """Read a safetensors file; with ``model``, also ``model.load_state_dict(state, strict=strict)``
    (``assign=True`` when the model is on the meta device; tied parameters stay tied).
    Returns the state dict (tensors as stored in the file, on ``device``).

    * Every tensor takes the MODEL's dtype, whether the model is allocated (``copy_``
      converts) or on meta (the file's tensor is converted before it is assigned): a
      bfloat16 model loading a float64 file stays bfloat16.
    * Missing/unexpected keys (``strict``) and shape mismatches raise ``ValueError``
      before anything is copied into ``model``; with ``strict=False`` a ``UserWarning``
      gives the counts of what was loaded and what was not.
    * With ``verify`` (default), when the plan file written with the weights is beside
      them, each tensor's digest is checked against the plan's record (``ValueError``
      naming the tensor: the file changed since it was written), and a plan beside them
      that is not their own gives a ``UserWarning``.
    * A file that is not safetensors, or a device this torch cannot use: ``ValueError``
      naming it.

    Tensors of a meta model that the file cannot hold (non-persistent buffers) stay on
    meta, with a ``UserWarning``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {str(path)}")
    dev = _check_device(device)
    try:
        header = _read_header(path)
        state = load_file(str(path), device="cpu")
    except (SafetensorError, ValueError) as exc:
        msg = str(exc) if str(path) in str(exc) else f"{str(path)!r} is not a readable safetensors file: {exc}"
        raise ValueError(f"load_weights: {msg}") from None
    if verify:
        _verify_tensors(path, header, state)
    if dev.type != "cpu":
        state = {k: v.to(dev) for k, v in state.items()}
    if model is not None:
        expected = model.state_dict()
        _check_loadable(expected, state, strict, path)
        on_meta = any(t.is_meta for t in expected.values())
        if not on_meta:
            model.load_state_dict(state, strict=strict)
        else:
            from .materialize import _locations

            # assign=True takes the file's tensor as it is: convert to the model's dtype first,
            # as load_state_dict's copy_ does for an allocated model
            assign = {k: (v.to(expected[k].dtype) if k in expected and v.dtype != expected[k].dtype else v)
                      for k, v in state.items()}
            # assign=True replaces each Parameter by name, which would untie tied ones: re-tie them
            groups = [locs for _, locs in _locations(model).values() if len(locs) > 1]
            model.load_state_dict(assign, strict=strict, assign=True)
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


def _verify_tensors(path: Path, header: dict[str, Any], state: dict[str, Tensor]) -> None:
    """Check ``state`` (read from ``path``) against the tensor SHA-256s of the plan written
    with it, when that plan is beside it; a plan beside it that is not its own: warn."""
    ppath, own = _own_plan(path, header)
    if ppath is None or not ppath.is_file():
        return
    if not own:
        warnings.warn(f"load_weights: {str(ppath)!r} is not the plan written with {str(path)!r} (its SHA-256 "
                      "differs from the one the weights record: a later save replaced one of the two, or was "
                      "interrupted between them); the weights are loaded, the plan beside them does not "
                      "describe them", stacklevel=3)
        return
    try:
        record = json.loads(ppath.read_text(encoding="utf-8")).get("tensor_digests")
    except (ValueError, AttributeError):
        return
    if not isinstance(record, dict) or record.get("chunk_bytes") != _CHUNK or not isinstance(record.get("tensors"),
                                                                                               dict):
        return  # written by a version that recorded no digests (or another scheme)
    digests = record["tensors"]
    got = _tensor_digests({k: v for k, v in state.items() if k in digests})
    for name in state:
        want = digests.get(name)
        if want is not None and got[name] != want:
            raise ValueError(f"load_weights: tensor {name!r} in {str(path)!r} is not what was written (its SHA-256 "
                             f"digest differs from the one in {str(ppath)!r}): the file is damaged; write it again")


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
    else:
        loaded = len(set(expected) & set(state))
        missing, unexpected = len(set(expected) - set(state)), len(set(state) - set(expected))
        if missing or unexpected:  # strict=False loads what matches: say how much that was
            warnings.warn(f"load_weights: strict=False: loaded {loaded} of the model's {len(expected)} tensors from "
                          f"{str(path)!r}; {missing} model tensor(s) not in the file keep their values, {unexpected} "
                          "tensor(s) of the file match no model tensor" + (
                              " (nothing loaded: is this the file of another model?)" if not loaded else ""),
                          stacklevel=3)
    for name, t in state.items():
        e = expected.get(name)
        if e is not None and tuple(e.shape) != tuple(t.shape):
            raise ValueError(f"load_weights: {name!r} has shape {tuple(t.shape)} in {str(path)!r} but "
                             f"{tuple(e.shape)} in the model")


def load_plan_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a plan JSON written by :func:`save_weights` (given the JSON path or the
    weights path). ``Plan.from_dict(doc["plan"])`` rebuilds the Plan.

    When the weights file the plan names is beside it, the plan must be the one written
    with those weights (the SHA-256 they record): otherwise, or when those weights record
    no plan at all, ``ValueError`` naming both (a later save replaced one of the pair, or
    was interrupted between the two)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        p = plan_path(p)
    if not p.is_file():
        raise FileNotFoundError(f"plan file not found: {str(p)}")
    raw = p.read_bytes()
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{str(p)} is not a torchinit plan file: not JSON ({type(exc).__name__}: "
                         f"{str(exc)[:200]})") from None
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
        raise ValueError(f"{str(p)} is not a torchinit plan file (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    wname = doc.get("weights")
    if isinstance(wname, str) and "/" not in wname and os.sep not in wname and p.with_name(wname).is_file():
        wpath = p.with_name(wname)
        meta = _read_header(wpath).get("__metadata__") or {}
        digest = meta.get("torchinit.plan_sha256")
        if not isinstance(digest, str):
            raise ValueError(f"{str(p)} is not the plan of {str(wpath)!r} beside it (the weights record no plan: "
                             "they were saved later without one, or that save was interrupted); write the pair "
                             "again")
        if digest != hashlib.sha256(raw).hexdigest():
            raise ValueError(f"{str(p)} is not the plan of {str(wpath)!r} beside it (the weights record another "
                             "plan's SHA-256: a later save replaced one of the two, or was interrupted between "
                             "them); write the pair again")
    return doc
