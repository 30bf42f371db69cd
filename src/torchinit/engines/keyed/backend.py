"""Backend selection for the keyed engine: the native C kernel or the torch reference.

* ``TORCHINIT_BACKEND=reference|native`` (environment, read at import) or
  :func:`set_backend` chooses; the default is ``native`` when the extension
  loads, else ``reference`` with ONE warning.
* :func:`set_num_threads` sets the kernel's thread count (default:
  ``torch.get_num_threads()``). Results never depend on it.
"""

from __future__ import annotations

import os
import warnings

import torch

__all__ = [
    "native_available",
    "get_backend",
    "set_backend",
    "set_num_threads",
    "get_num_threads",
    "set_chunk_size",
    "get_chunk_size",
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
