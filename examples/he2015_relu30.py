"""Reproduce He et al. 2015 ("Delving deep into rectifiers", section 2.2 and figure 3):
a 30-layer plain ReLU network trained with plain SGD converges with Kaiming's init
and stalls with Xavier's, whose signal and gradients vanish with depth.

1. Signal propagation at init (30 bias-free Linear layers of width 512, N(0, 1)
   batch of 256): the std of every layer's pre-activation, measured with
   ``torchinit.diagnose``, against theory: each layer multiplies the variance by
   ``fan_in * Var(w) / 2`` = 1 (Kaiming, ``Var w = 2/n``), 1/2 (Xavier gain 1,
   ``Var w = 1/n`` for square layers), 1/6 (PyTorch's default ``U(+-1/sqrt(n))``,
   ``Var w = 1/(3n)``).
2. Training: the same depth on a synthetic binary task (labels from a random
   linear teacher), plain SGD, identical data and learning rate for both inits.

Run ``python examples/he2015_relu30.py`` (about half a minute on 2 CPU cores);
plots go to ``docs/img/`` (``--out DIR`` to change). ``--quick`` runs a smaller
version (what ``tests/test_reproductions.py`` checks).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

import torchinit
from torchinit.plots import signal_propagation, training_curves

#: per-layer variance factor of a ReLU layer, and the variance of layer 1 for a unit input
THEORY = {"pytorch": (1 / 6, 1 / 3), "xavier": (1 / 2, 1.0), "kaiming": (1.0, 2.0)}


def relu_net(depth: int, width: int, d_in: int, d_out: int, bias: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    dims = [d_in] + [width] * (depth - 1) + [d_out]
    for i in range(depth):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def init_(model: nn.Module, scheme: str, seed: int) -> nn.Module:
    """pytorch: U(+-1/sqrt(fan_in)) (torch's default, kaiming_uniform_ a=sqrt(5));
    xavier: Glorot normal, gain 1; kaiming: He normal, fan_in, gain sqrt(2). Biases 0."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if scheme == "pytorch":
                torchinit.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
            elif scheme == "xavier":
                torchinit.xavier_normal_(m.weight, generator=g)
            elif scheme == "kaiming":
                torchinit.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
            else:
                raise ValueError(f"unknown scheme {scheme!r}")
            if m.bias is not None:
                torchinit.zeros_(m.bias)
    return model


def theory_std(scheme: str, depth: int) -> list[float]:
    factor, first = THEORY[scheme]
    return [math.sqrt(first * factor ** k) for k in range(depth)]


def signal_at_init(depth: int = 30, width: int = 512, batch: int = 256, seed: int = 0) -> dict:
    """``{scheme: Report}`` of bias-free ``depth``-layer ReLU nets on an N(0, 1) batch."""
    x = torch.randn(batch, width, generator=torch.Generator().manual_seed(seed + 1))
    out = {}
    for scheme in THEORY:
        model = init_(relu_net(depth, width, width, width, bias=False), scheme, seed)
        out[scheme] = torchinit.diagnose(model, x, label=scheme)
    return out


def fitted_factor(report) -> float:
    """Geometric mean of the measured per-layer variance factor ``(s_k / s_{k-1})^2``
    over the hidden layers 2..L (layer 1 sees the raw input)."""
    s = [r.std for r in report.signal()]
    logs = [2 * math.log(s[k] / s[k - 1]) for k in range(1, len(s))]
    return math.exp(sum(logs) / len(logs))


def teacher_task(n: int, d: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, classes, generator=g)
    return x, (x @ w).argmax(1)


def train(scheme: str, *, depth: int = 30, width: int = 256, d_in: int = 64, classes: int = 2,
          steps: int = 300, batch: int = 128, lr: float = 0.02, seed: int = 0) -> dict:
    """Plain SGD (no momentum, no weight decay) on the teacher task; returns the
    per-step training loss and the gradient std of the first and last layer at step 0."""
    torch.manual_seed(seed)
    x, y = teacher_task(8192, d_in, classes, seed)
    model = init_(relu_net(depth, width, d_in, classes, bias=True), scheme, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 2)
    losses, grads = [], None
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        if grads is None:
            lin = [m for m in model if isinstance(m, nn.Linear)]
            grads = (float(lin[0].weight.grad.std()), float(lin[-1].weight.grad.std()))
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        acc = float((model(x[:2048]).argmax(1) == y[:2048]).float().mean())
    return {"loss": losses, "first_last_grad": grads, "accuracy": acc}


def smooth(v: list[float], k: int = 10) -> list[float]:
    return [sum(v[max(0, i - k + 1): i + 1]) / len(v[max(0, i - k + 1): i + 1]) for i in range(len(v))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "img"))
    ap.add_argument("--quick", action="store_true", help="smaller sizes (seconds)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # small tensors: one thread is as fast and deterministic in timing
    out = Path(args.out)
    depth = 30
    width, batch, steps, lr = (128, 128, 150, 0.05) if args.quick else (512, 256, 300, 0.02)
    reports = signal_at_init(depth, width, batch)
    print(f"30-layer bias-free ReLU net, width {width}: pre-activation std at layers 1 / 10 / 30")
    for scheme, rep in reports.items():
        s = [r.std for r in rep.signal()]
        th = theory_std(scheme, depth)
        print(f"  {scheme:8s} measured {s[0]:.3g} / {s[9]:.3g} / {s[29]:.3g}   theory {th[0]:.3g} / {th[9]:.3g} / "
              f"{th[29]:.3g}   per-layer variance factor {fitted_factor(rep):.3f} (theory {THEORY[scheme][0]:.3f})")
    signal_propagation(reports, out / "he2015_signal.png",
                       theory={s: theory_std(s, depth) for s in THEORY},
                       title=f"30-layer ReLU net at init (width {width}): measured (solid) vs theory (dashed)")
    curves = {}
    for scheme in ("xavier", "kaiming"):
        res = train(scheme, depth=depth, steps=steps, width=64 if args.quick else 256, lr=lr)
        curves[scheme] = smooth(res["loss"])
        g0, gl = res["first_last_grad"]
        print(f"  train {scheme:8s} loss {res['loss'][0]:.3f} -> {sum(res['loss'][-20:]) / 20:.3f}, "
              f"accuracy {res['accuracy']:.1%}, weight-gradient std layer 1 / layer 30 at step 0: {g0:.2e} / {gl:.2e}")
    training_curves(curves, out / "he2015_training.png", xlabel="SGD step", ylabel="training loss (smoothed)",
                    title=f"30-layer plain ReLU net, plain SGD (lr {lr}): Kaiming trains, Xavier stalls")
    print(f"wrote {out / 'he2015_signal.png'} and {out / 'he2015_training.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
