"""Keys of the keyed engine: ``Key(seed, path)`` -> a 64-bit Philox key.

Derivation (stream version 1, docs/keyed-stream.md)::

    digest = blake2b(seed.to_bytes(8, "little") + path.encode("utf-8"),
                     digest_size=8, person=b"torchinit-key-v1")
    k0 = int.from_bytes(digest[0:4], "little")    # Philox key word 0
    k1 = int.from_bytes(digest[4:8], "little")    # Philox key word 1

No Python ``hash()`` is involved, so keys are identical across Python versions,
processes (PYTHONHASHSEED) and machines.
"""

from __future__ import annotations

import hashlib

from ._constants import KEY_PERSON

__all__ = ["Key"]

_MAX_SEED = 2**64


class Key:
    """An immutable, hashable key: ``(seed, path)``.

    ``seed`` is an integer in ``[0, 2**64)`` and ``path`` a string (usually a
    qualified parameter name). ``Key(s).child("a").child("b") == Key(s, "a.b")``:
    children join path components with ``"."``, like ``named_parameters()``.
    The Philox key is ``(k0, k1)`` from :attr:`philox_key`.
    """

    __slots__ = ("_seed", "_path", "_pk")

    def __init__(self, seed: int, path: str = "") -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            # accept numpy / torch integer scalars that know __index__ (not booleans:
            # torch.tensor(True) has __index__ too)
            index = getattr(seed, "__index__", None)
            is_bool = "bool" in str(getattr(seed, "dtype", ""))
            bad = f"Key: seed must be an int in [0, 2**64), got {type(seed).__name__} {seed!r}"
            if isinstance(seed, bool) or index is None or isinstance(seed, float) or is_bool:
                raise TypeError(bad)
            try:
                seed = index()
            except TypeError:  # e.g. a float or multi-element tensor
                raise TypeError(bad) from None
        if not 0 <= seed < _MAX_SEED:
            raise ValueError(f"Key: seed must be in [0, 2**64), got {seed}")
        if not isinstance(path, str):
            raise TypeError(f"Key: path must be a str, got {type(path).__name__} {path!r}")
        try:
            data = seed.to_bytes(8, "little") + path.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"Key: path must be encodable as UTF-8, got {path!r} ({exc})") from None
        digest = hashlib.blake2b(data, digest_size=8, person=KEY_PERSON).digest()
        object.__setattr__(self, "_seed", int(seed))
        object.__setattr__(self, "_path", path)
        object.__setattr__(
            self, "_pk", (int.from_bytes(digest[0:4], "little"), int.from_bytes(digest[4:8], "little"))
        )

    # immutability
    def __setattr__(self, name, value):
        raise AttributeError("Key is immutable")

    def __delattr__(self, name):
        raise AttributeError("Key is immutable")

    @property
    def seed(self) -> int:
        """The integer seed."""
        return self._seed

    @property
    def path(self) -> str:
        """The path string ("" for a root key)."""
        return self._path

    @property
    def philox_key(self) -> tuple[int, int]:
        """The 64-bit Philox key as two 32-bit words ``(k0, k1)``."""
        return self._pk

    def child(self, name: str) -> "Key":
        """The key of ``name`` below this one: path ``f"{path}.{name}"`` (or ``name`` at the root)."""
        if not isinstance(name, str):
            raise TypeError(f"Key.child: name must be a str, got {type(name).__name__} {name!r}")
        if name == "":
            raise ValueError("Key.child: name must be a non-empty string")
        return Key(self._seed, f"{self._path}.{name}" if self._path else name)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Key):
            return NotImplemented
        return self._seed == other._seed and self._path == other._path

    def __hash__(self) -> int:
        return hash((Key, self._seed, self._path))

    def __repr__(self) -> str:
        return f"Key({self._seed}, {self._path!r})" if self._path else f"Key({self._seed})"

    def __reduce__(self):
        return (Key, (self._seed, self._path))
