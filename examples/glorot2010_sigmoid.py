"""Reproduce Glorot & Bengio 2010 ("Understanding the difficulty of training deep
feedforward neural networks", section 3.1 and figure 2): with sigmoid units and the
"standard" init ``W ~ U(-1/sqrt(n), 1/sqrt(n))``, the TOP hidden layer saturates
towards 0 early in training while the lower layers stay around 0.5.

We train 4 hidden sigmoid layers + softmax with plain SGD (mini-batches of 10, as
in the paper) on a synthetic 10-class task with inputs in [0, 1] (the paper used
Shapeset-3x2 images; no download here), and record the mean and std of every
hidden layer's activations on 300 fixed examples during training, for the
standard init and for Glorot's normalized init ``U(+-sqrt(6 / (n_in + n_out)))``.
At init we also measure, with ``torchinit.diagnose``, the std of the
back-propagated gradient at every layer (the paper's section 4.2.2 argument for
the normalized init).

Run ``python examples/glorot2010_sigmoid.py`` (about a minute on 2 CPU cores); the
plot goes to ``docs/img/glorot2010_sigmoid.png`` (``--out DIR`` to change).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

import torchinit
from torchinit.plots import _figure, save_figure

SCHEMES = ("standard", "normalized")


def sigmoid_net(depth: int = 4, width: int = 256, d_in: int = 256, classes: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.Sigmoid()]
        d = width
    layers.append(nn.Linear(d, classes))
    return nn.Sequential(*layers)


def init_(model: nn.Module, scheme: str, generator: torch.Generator) -> nn.Module:
    """standard: U(+-1/sqrt(n_in)); normalized: U(+-sqrt(6/(n_in+n_out))) (xavier_uniform_, gain 1).
    Biases 0."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if scheme == "standard":
                a = 1.0 / math.sqrt(m.in_features)
                torchinit.uniform_(m.weight, -a, a, generator=generator)
            elif scheme == "normalized":
                torchinit.xavier_uniform_(m.weight, generator=generator)
            else:
                raise ValueError(f"unknown scheme {scheme!r}")
            torchinit.zeros_(m.bias)
    return model


def task(n: int, d_in: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs uniform in [0, 1] (like pixel intensities); labels from a random
    one-hidden-layer tanh teacher."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d_in, generator=g)
    w1 = torch.randn(d_in, 64, generator=g)
    w2 = torch.randn(64, classes, generator=g)
    y = (torch.tanh((x - 0.5) @ w1 / 4) @ w2).argmax(1)
    return x, y


def train(scheme: str, *, depth: int = 4, width: int = 256, d_in: int = 256, steps: int = 3000, lr: float = 0.1,
          batch: int = 10, every: int = 100, seed: int = 0) -> dict:
    """Returns ``{"steps": [...], "mean": [[per layer] per record], "std": [...], "loss": [...]}``."""
    x, y = task(20000, d_in, 10, seed)
    g = torch.Generator().manual_seed(seed + 1)
    model = init_(sigmoid_net(depth, width, d_in), scheme, g)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    probe = x[:300]
    rec: dict = {"steps": [], "mean": [], "std": [], "loss": []}
    for step in range(steps + 1):
        if step % every == 0:
            with torch.no_grad():
                h, means, stds = probe, [], []
                for layer in model:
                    h = layer(h)
                    if isinstance(layer, nn.Sigmoid):
                        means.append(float(h.mean()))
                        stds.append(float(h.std()))
            rec["steps"].append(step)
            rec["mean"].append(means)
            rec["std"].append(stds)
        if step == steps:
            break
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec["loss"].append(float(loss.detach()))
    return rec


def gradients_at_init(scheme: str, *, depth: int = 4, width: int = 256, d_in: int = 256, seed: int = 0) -> list[float]:
    """Std of dLoss/d(pre-activation) at every Linear layer at init (cross-entropy on 300 examples)."""
    x, y = task(300, d_in, 10, seed)
    model = init_(sigmoid_net(depth, width, d_in), scheme, torch.Generator().manual_seed(seed + 1))
    rep = torchinit.diagnose(model, x, target=y, label=scheme)
    return [r.grad_std for r in rep.signal()]


def saturation_step(rec: dict, layer: int = -1, level: float = 0.1) -> int | None:
    """First recorded step at which the mean activation of ``layer`` is below ``level``."""
    return next((s for s, m in zip(rec["steps"], rec["mean"]) if m[layer] < level), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "img"))
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    fig = _figure(13, 3.6)
    axes = fig.subplots(1, 3)
    colors = ["#1f77b4", "#2ca02c", "#ff7f0e", "#d62728"]
    for ax, scheme in zip(axes, SCHEMES):
        rec = train(scheme, steps=args.steps)
        means = list(zip(*rec["mean"]))
        stds = list(zip(*rec["std"]))
        for i, (m, s) in enumerate(zip(means, stds)):
            ax.plot(rec["steps"], m, "-", color=colors[i], label=f"layer {i + 1}")
            ax.fill_between(rec["steps"], [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)],
                            color=colors[i], alpha=0.12)
        ax.set_ylim(0, 1)
        ax.set_xlabel("SGD step (mini-batch 10)")
        ax.set_ylabel("sigmoid activation: mean +- std")
        ax.set_title(f"{scheme} init", fontsize=10)
        ax.legend(fontsize=7)
        first, last = rec["mean"][0], rec["mean"][-1]
        print(f"{scheme:10s} mean activation per hidden layer: step 0 {[round(v, 3) for v in first]}, "
              f"step {rec['steps'][-1]} {[round(v, 3) for v in last]}; top layer below 0.1 from step "
              f"{saturation_step(rec)}; loss {sum(rec['loss'][:100]) / 100:.3f} -> {sum(rec['loss'][-100:]) / 100:.3f}")
    ax = axes[2]
    for scheme, c in zip(SCHEMES, ("#d62728", "#1f77b4")):
        g = gradients_at_init(scheme)
        ax.plot(range(1, len(g) + 1), g, "o-", color=c, label=scheme)
        print(f"{scheme:10s} back-propagated gradient std by layer at init (bottom -> top): "
              f"{[f'{v:.2e}' for v in g]}; layer 1 / layer 4 {g[0] / g[-2]:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("layer (5 = softmax input)")
    ax.set_ylabel("std of dLoss/d(pre-activation)")
    ax.set_title("back-propagated gradients at init", fontsize=10)
    ax.legend(fontsize=8)
    path = save_figure(fig, Path(args.out) / "glorot2010_sigmoid.png")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
