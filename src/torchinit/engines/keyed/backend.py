"""Backend selection for the keyed engine: the native C kernel or the torch reference.

* ``TORCHINIT_BACKEND=reference|native`` (environment, read at import) or
  :func:`set_backend` chooses; the default is ``native`` when the extension
  loads, else ``reference`` with ONE warning.
* ``TORCHINIT_KERNEL=portable|avx2|avx512`` (environment, read at the first fill) or
  :func:`set_kernel_path` forces the native kernel's code path; the default is the best
  the CPU has (:func:`kernel_paths` says which it has, :func:`get_kernel_path` which
  runs). Every path gives the same bits; forcing one the CPU lacks is an error.
* :func:`set_num_threads` sets the kernel's thread count (default:
  ``torch.get_num_threads()``). Results never depend on it.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from typing import Iterator

import torch

__all__ = [
    "native_available",
    "get_backend",
    "set_backend",
    "set_num_threads",
    "get_num_threads",
    "set_chunk_size",
    "get_chunk_size",
    "kernel_paths",
    "get_kernel_path",
    "set_kernel_path",
]

_native = None
_native_error: str | None = None
try:  # pragma: no cover - depends on the build
    from . import _native as _native_mod  # type: ignore[attr-defined]

    if getattr(_native_mod, "STREAM_VERSION", None) != 1:
        raise ImportError(f"native kernel has stream version {getattr(_native_mod, 'STREAM_VERSION', None)}, need 1")
    _native = _native_mod
except Exception as exc:  # ImportError, or a broken build
    from importlib.machinery import EXTENSION_SUFFIXES as _SUFFIXES

    _here = os.path.dirname(__file__)
    if isinstance(exc, ImportError) and not any(os.path.exists(os.path.join(_here, "_native" + sfx))
                                                 for sfx in _SUFFIXES):
        # the usual case: pip could not compile it (no C compiler) and installed without it
        _native_error = ("the C extension was not built when torchinit was installed, probably for lack of a "
                         "C compiler; to get it, install gcc and reinstall torchinit with "
                         "`pip install --force-reinstall --no-deps --no-cache-dir ...`")
    else:
        _native_error = f"{type(exc).__name__}: {exc}"

_warned = False
_backend: str | None = None
_num_threads: int | None = None
#: elements per work chunk handed to one thread (results never depend on it)
_chunk = 1 << 16


def _warn_once(msg: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(msg, RuntimeWarning, stacklevel=_caller_level())


def _caller_level() -> int:
    """``stacklevel`` of the first frame outside torchinit, so the warning names user code."""
    import sys

    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(2), 2  # 1: _warn_once's caller's frame is level 2 from warn()
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def native_available() -> bool:
    """Whether the native C kernel is built and loaded."""
    return _native is not None


def _initial_backend() -> str:
    env = os.environ.get("TORCHINIT_BACKEND", "").strip().lower()
    if env not in ("", "native", "reference"):
        raise ValueError(f"TORCHINIT_BACKEND must be 'native' or 'reference', got {env!r}")
    if env == "reference":
        return "reference"
    if _native is None:
        return "reference"
    return "native"


def get_backend() -> str:
    """The active backend, ``"native"`` or ``"reference"``."""
    global _backend
    if _backend is None:
        _backend = _initial_backend()
        if not _kernel_chosen:
            env = os.environ.get("TORCHINIT_KERNEL", "").strip().lower()
            if env:
                _set_path(env, "TORCHINIT_KERNEL")
    if _backend == "reference" and _native is None and os.environ.get("TORCHINIT_BACKEND", "") != "reference":
        _warn_once(
            "torchinit: the native keyed-engine kernel is not available "
            f"({_native_error}); using the pure-torch reference backend (same values, slower)."
        )
    return _backend


def set_backend(name: str) -> None:
    """Force the backend: ``"native"`` (raises RuntimeError if not built) or ``"reference"``."""
    global _backend
    if name not in ("native", "reference"):
        raise ValueError(f"set_backend: name must be 'native' or 'reference', got {name!r}")
    if name == "native" and _native is None:
        raise RuntimeError(f"set_backend('native'): the native kernel is not available ({_native_error})")
    _backend = name


def set_num_threads(n: int | None) -> None:
    """Threads used by the native kernel (``None``: follow ``torch.get_num_threads()``)."""
    global _num_threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < 2**31):
        raise ValueError(f"set_num_threads: n must be a positive int or None, got {n!r} (at most 2**31 - 1)")
    _num_threads = n


def get_num_threads() -> int:
    """Threads the native kernel will use."""
    return _num_threads if _num_threads is not None else max(1, torch.get_num_threads())


def set_chunk_size(n: int) -> None:
    """Elements per work chunk (a tuning knob; values never depend on it)."""
    global _chunk
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < 2**63:
        raise ValueError(f"set_chunk_size: n must be a positive int, got {n!r} (at most 2**63 - 1)")
    _chunk = n


def get_chunk_size() -> int:
    """Elements per work chunk."""
    return _chunk


def native_module():
    """The loaded extension module (or None)."""
    return _native


#: bytes faulted in at a time ahead of a native fill, inside :func:`prefaulting` (0: off)
_prefault = contextvars.ContextVar("torchinit_keyed_prefault", default=0)


@contextlib.contextmanager
def prefaulting(nbytes: int = 1 << 20) -> Iterator[None]:
    """Inside, native fills first fault in their output's pages (``madvise(MADV_POPULATE_WRITE)``,
    ``nbytes`` at a time just ahead of the writes, on the fill's own threads): cheaper than the
    stores' page-by-page first-touch faults, for filling fresh memory (``materialize``).
    Values never depend on it; where the kernel lacks it the stores take the faults."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"prefaulting: nbytes must be an int >= 0 (0: off), got {nbytes!r}")
    token = _prefault.set(nbytes)
    try:
        yield
    finally:
        _prefault.reset(token)


def get_prefault() -> int:
    """Bytes a native fill faults in at a time ahead of its writes (0: none; see :func:`prefaulting`)."""
    return _prefault.get()


_KERNEL_PATHS = ("portable", "avx2", "avx512")
_kernel_chosen = False  # set_kernel_path was called: TORCHINIT_KERNEL no longer applies


def kernel_paths() -> dict[str, tuple[str, ...]]:
    """Each native kernel path (``portable``, ``avx2``, ``avx512``) -> the CPU flags it needs
    that this machine lacks (an empty tuple: the path runs here). Empty dict without the
    native kernel."""
    return dict(_native.paths()) if _native is not None else {}


def get_kernel_path() -> str | None:
    """The native kernel path that runs (``None`` without the native kernel)."""
    if _native is None:
        return None
    get_backend()  # applies TORCHINIT_KERNEL on first use
    return _native.get_path()


def _set_path(name: str, who: str) -> None:
    if name not in _KERNEL_PATHS:
        raise ValueError(f"{who} must be one of {', '.join(_KERNEL_PATHS)}, got {name!r}")
    if _native is None:
        raise RuntimeError(f"{who}={name!r}: the native kernel is not available ({_native_error})")
    missing = _native.paths()[name]
    if missing:
        raise RuntimeError(f"{who}={name!r}: this CPU lacks {', '.join(missing)} (paths it has: "
                           f"{', '.join(p for p, m in _native.paths().items() if not m)})")
    _native.set_path(name)


def set_kernel_path(name: str | None) -> None:
    """Force the native kernel's code path (``None``: the best this CPU has). Values never
    depend on it; it exists for tests and benchmarks. Raises ValueError for an unknown name
    and RuntimeError (naming the missing CPU flags) for a path this machine cannot run."""
    global _kernel_chosen
    if name is None:
        if _native is not None:
            best = [p for p in _KERNEL_PATHS if not _native.paths()[p]][-1]
            _native.set_path(best)
    else:
        _set_path(name, "set_kernel_path")
    _kernel_chosen = True
