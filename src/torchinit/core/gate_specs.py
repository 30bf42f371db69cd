"""Specs for gated recurrent layers, whose tensors stack one block per gate along dim 0.

torch's ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (and their cells) store ``weight_hh`` as
``(gates * H, H)`` and the biases as ``(gates * H,)``, gates in the order
LSTM ``(i, f, g, o)``, GRU ``(r, z, n)``, RNN one block. A spec over the whole
stacked tensor cannot say "each gate's matrix is orthogonal" or "the forget gate's
bias is 1"; these two can:

* :class:`OrthogonalPerGate`: every gate block ``W[g H:(g + 1) H]`` an independent
  Haar (semi-)orthogonal matrix times ``gain`` (so ``W_g W_g^T = gain^2 I``);
* :class:`GateConstant`: block ``g`` of dim 0 filled with ``values[g]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from .specs import Spec, _finite

__all__ = ["OrthogonalPerGate", "GateConstant", "gate_block_std"]


def _gates(value: Any, cls: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{cls}: gates must be a positive int, got {value!r}")
    return value


def _check_blocks(shape: Sequence[int], gates: int, fn: str) -> None:
    if not shape or shape[0] % gates != 0:
        rows = shape[0] if shape else "none"
        raise ValueError(
            f"{fn}: dim 0 of shape {tuple(shape)} ({rows} rows) is not divisible by gates={gates}; a recurrent "
            f"layer stacks one block of hidden_size rows per gate (LSTM 4, GRU 3, RNN 1)"
        )


@dataclass(frozen=True)
class OrthogonalPerGate(Spec):
    """One independent (semi-)orthogonal block per gate, times ``gain``.

    The tensor, flattened to ``(rows, cols)``, is split along dim 0 into ``gates``
    blocks of ``h = rows / gates`` rows; block ``g`` is a Haar-distributed
    ``(h, cols)`` matrix with orthonormal rows (or columns, when ``h > cols``) times
    ``gain``. Each element has variance ``gain^2 / max(h, cols)``
    (:func:`gate_block_std`). Torch engine: the blocks are drawn in gate order
    from the generator, exactly as ``torch.nn.init.orthogonal_`` on each block in
    turn; keyed engine: block ``g`` from ``key.child(f"gate{g}")``.
    """

    kind: ClassVar[str] = "orthogonal_per_gate"
    random: ClassVar[bool] = True
    needs_whole_tensor: ClassVar[bool] = True
    gates: int = 1
    gain: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "gates", _gates(self.gates, "OrthogonalPerGate"))
        object.__setattr__(self, "gain", _finite("gain", self.gain, "OrthogonalPerGate"))

    def check_shape(self, shape: Sequence[int]) -> None:
        if len(shape) < 2:
            raise ValueError(f"orthogonal_per_gate_: needs a tensor with 2 or more dimensions, got shape "
                             f"{tuple(shape)}")
        _check_blocks(shape, self.gates, "orthogonal_per_gate_")


@dataclass(frozen=True)
class GateConstant(Spec):
    """Block ``g`` of dim 0 (``rows / len(values)`` rows each) filled with ``values[g]``.

    ``GateConstant((0, 1, 0, 0))`` on an LSTM's ``bias_ih``: forget gate 1, the others 0.
    """

    kind: ClassVar[str] = "gate_constant"
    values: tuple[float, ...] = (0.0,)

    def __post_init__(self):
        vals = self.values
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or not vals:
            raise ValueError(f"GateConstant: values must be a non-empty sequence of numbers, got {vals!r}")
        object.__setattr__(self, "values", tuple(_finite(f"values[{i}]", v, "GateConstant")
                                                 for i, v in enumerate(vals)))

    @property
    def gates(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)  # every block has the same size

    @property
    def std(self) -> float:
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / len(self.values))

    @property
    def bounds(self) -> tuple[float, float]:
        return (min(self.values), max(self.values))

    def check_shape(self, shape: Sequence[int]) -> None:
        _check_blocks(shape, len(self.values), "gate_constant")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": list(self.values)}


def gate_block_std(spec: OrthogonalPerGate, shape: Sequence[int]) -> float | None:
    """Std of the elements of a tensor of ``shape`` under ``spec``: ``|gain| / sqrt(max(h, cols))``
    with ``h = rows / gates`` (unit-norm rows or columns in each block); None for an empty or
    unfit shape."""
    if len(shape) < 2 or not shape[0] or shape[0] % spec.gates:
        return None
    h, cols = shape[0] // spec.gates, math.prod(shape[1:])
    return abs(spec.gain) / math.sqrt(max(h, cols)) if cols else None
