"""Recurrent layers (RNN/GRU/LSTM, their cells): the saturation of their gates and how far
back in time the gradient of the last step reaches.

The recorder measures a recurrent layer's output like any layer's; what happens inside
(gates, the cell state, the steps of the sequence) is measured here, after the model's
own forward and backward pass, by unrolling the layer on the input it was given (at most
:data:`_MAX_STEPS` steps of at most ``max_cosine_samples`` samples, from a zero initial
state, without dropout between layers) with its own weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .classify import _SIGMOID_SAT, _TANH_SAT

#: steps of a sequence the time probe unrolls (the ratio is measured over these)
_MAX_STEPS = 256


def _sat_sigmoid(y: Tensor) -> Tensor:
    return ((y < _SIGMOID_SAT) | (y > 1 - _SIGMOID_SAT)).float()


def _sat_tanh(y: Tensor) -> Tensor:
    return (y.abs() > _TANH_SAT).float()


def _cell_step(mod: nn.Module, sfx: str, x: Tensor, h: Tensor, c: Tensor | None,
               sat: list[Tensor]) -> tuple[Tensor, Tensor | None]:
    """One step of layer/direction ``sfx`` (``"_l0"``, ``"_l1_reverse"``; ``""`` for a cell):
    torch's formulas (see nn.LSTM/nn.GRU/nn.RNN); appends each nonlinearity's saturation."""
    w_ih, w_hh = getattr(mod, f"weight_ih{sfx}"), getattr(mod, f"weight_hh{sfx}")
    b_ih, b_hh = getattr(mod, f"bias_ih{sfx}", None), getattr(mod, f"bias_hh{sfx}", None)
    gi = x @ w_ih.T + (b_ih if b_ih is not None else 0)
    gh = h @ w_hh.T + (b_hh if b_hh is not None else 0)
    if isinstance(mod, (nn.LSTM, nn.LSTMCell)):
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        i, f, o, g = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(g)
        c = f * c + i * g
        tc = torch.tanh(c)
        h = o * tc
        sat += [_sat_sigmoid(i), _sat_sigmoid(f), _sat_sigmoid(o), _sat_tanh(g), _sat_tanh(tc)]
        w_hr = getattr(mod, f"weight_hr{sfx}", None)
        if w_hr is not None:  # proj_size > 0
            h = h @ w_hr.T
        return h, c
    if isinstance(mod, (nn.GRU, nn.GRUCell)):
        ir, iz, in_ = gi.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        sat += [_sat_sigmoid(r), _sat_sigmoid(z), _sat_tanh(n)]
        return (1 - z) * n + z * h, None
    if getattr(mod, "nonlinearity", "tanh") == "relu":
        return torch.relu(gi + gh), None
    h = torch.tanh(gi + gh)
    sat.append(_sat_tanh(h))
    return h, None


def _unroll(mod: nn.RNNBase, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``mod``'s output sequence for a batch-first ``x`` of shape (N, T, D), from a zero
    state, step by step; and the saturation indicators of every gate/tanh it computed."""
    n, steps = x.shape[0], x.shape[1]
    dirs = 2 if mod.bidirectional else 1
    out_size = mod.proj_size if getattr(mod, "proj_size", 0) else mod.hidden_size
    sat: list[Tensor] = []
    inp = x
    for layer in range(mod.num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            h = inp.new_zeros(n, out_size)
            c = inp.new_zeros(n, mod.hidden_size) if isinstance(mod, nn.LSTM) else None
            hs: list[Tensor] = [h] * steps
            for t in (range(steps - 1, -1, -1) if d else range(steps)):
                h, c = _cell_step(mod, sfx, inp[:, t], h, c, sat)
                hs[t] = h
            outs.append(torch.stack(hs, dim=1))
        inp = torch.cat(outs, dim=-1) if dirs > 1 else outs[0]
    return inp, sat


def _batch_first_input(mod: nn.RNNBase, x: object) -> Tensor | None:
    """The layer's input as a floating (N, T, D) tensor: a PackedSequence is cut to the
    steps every sample has; an unbatched (T, D) input is one sample."""
    if isinstance(x, nn.utils.rnn.PackedSequence):
        padded, lengths = nn.utils.rnn.pad_packed_sequence(x, batch_first=True)
        return padded[:, : int(lengths.min())]
    if not isinstance(x, Tensor) or not x.is_floating_point():
        return None
    if x.dim() == 2:
        return x.unsqueeze(0)
    return x if mod.batch_first else x.transpose(0, 1)


def _probe(mod: nn.RNNBase, x: Tensor, seed: int = 0) -> tuple[float | None, float | None, int]:
    """``(saturated, ratio, steps)`` of a sequence layer on batch-first ``x``:

    * ``saturated``: the fraction of its gate and tanh outputs whose derivative is below
      10% of its maximum (sigmoid gates outside ``[0.0257, 0.9743]``, ``|tanh| > sqrt(0.9)``;
      for a tanh RNN that is ``|h| > sqrt(0.9)``), over the batch, the steps and the units;
      None for a ReLU RNN (nothing saturates);
    * ``ratio``: ``||dL/dx_1|| / ||dL/dx_T||`` for ``L = <y_T, r>`` (``r ~ N(0, 1)``, seeded):
      how much of the last step's gradient reaches the first step's input, against what
      reaches the last step's own input; None for a single step.
    """
    x = x[:, :_MAX_STEPS].detach().float()
    steps = x.shape[1]
    if steps == 0 or x.shape[0] == 0:
        return None, None, steps
    dtype = next(mod.parameters()).dtype
    with torch.enable_grad():
        xl = x.to(dtype).requires_grad_(True)
        y, sat = _unroll(mod, xl)
        saturated = float(torch.cat([s.reshape(-1) for s in sat]).mean()) if sat else None
        if steps < 2 or not torch.isfinite(y).all():
            return saturated, None, steps
        g = torch.Generator().manual_seed(seed)
        r = torch.randn(y[:, -1].shape, generator=g, dtype=torch.float32).to(device=y.device, dtype=y.dtype)
        (gx,) = torch.autograd.grad((y[:, -1] * r).sum(), xl)
    per_step = gx.float().pow(2).sum(dim=(0, 2)).sqrt()
    last = float(per_step[-1])
    ratio = float(per_step[0]) / last if last > 0 and math.isfinite(last) else None
    return saturated, ratio, steps


@torch.no_grad()
def _cell_saturation(mod: nn.RNNCellBase, args: tuple) -> float | None:
    """The saturated fraction of a cell's gates for one call ``cell(x, hx)`` (see :func:`_probe`)."""
    x = args[0] if args else None
    if not isinstance(x, Tensor) or not x.is_floating_point():
        return None
    x = x if x.dim() == 2 else x.unsqueeze(0)
    hx = args[1] if len(args) > 1 else None
    if isinstance(hx, tuple):
        h, c = hx
    else:
        h, c = hx, None
    h = h if isinstance(h, Tensor) else x.new_zeros(x.shape[0], mod.hidden_size)
    h = h if h.dim() == 2 else h.unsqueeze(0)
    if isinstance(mod, nn.LSTMCell):
        c = c if isinstance(c, Tensor) else x.new_zeros(x.shape[0], mod.hidden_size)
        c = c if c.dim() == 2 else c.unsqueeze(0)
    sat: list[Tensor] = []
    _cell_step(mod, "", x, h, c, sat)
    return float(torch.cat([s.reshape(-1) for s in sat]).mean()) if sat else None
