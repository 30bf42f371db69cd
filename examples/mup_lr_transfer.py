"""muP's headline (Yang et al., Tensor Programs V, 2022, figure 1) on this machine: under
muP the best learning rate of a narrow model is still the best for a wide one; under
standard parametrization (SP) it moves with width.

The task is real text, not random data: a character-level language model of the Python
license shipped with every CPython (``LICENSE.txt`` next to the standard library, about
14k characters; its text varies slightly between Python versions, so the exact numbers
do too). The model is an MLP over the one-hot codes of the previous ``CONTEXT``
characters: Linear(CONTEXT*V, w), ReLU, Linear(w, w), ReLU, Linear(w, V), trained with
Adam for ``--steps`` steps on minibatches drawn with a fixed seed.

* SP: PyTorch's default init, one learning rate for every parameter.
* muP: ``torchinit.MuP(base=model at width 64 on meta, delta=width 128)`` (kaiming init,
  zero readout) and ``mup.param_groups(model, lr, "adam")`` (hidden and output weights
  at ``lr / width_mult``).

For each width and LR the script reports the training loss (mean of the last 10 steps)
and plots loss against LR, one curve per width, SP and muP side by side.

Run ``python examples/mup_lr_transfer.py`` (110 to 150 s on the project's 2 shared CPU
cores, one thread; ``--steps 200`` about 270 s); the figure
goes to ``docs/img/mup_lr_transfer.png`` (``--out`` to change); ``--quick`` runs a tiny
version.
"""

from __future__ import annotations

import argparse
import math
import sysconfig
import time
from pathlib import Path

import torch
from torch import nn

import torchinit

CONTEXT = 4
BASE_WIDTH = 64


def load_text() -> str:
    path = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if not path.exists():
        raise SystemExit(f"{path} not found: this example needs CPython's LICENSE.txt")
    return path.read_text(encoding="utf-8")


def dataset(text: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(inputs: one-hot contexts flattened, targets: next character ids, vocabulary size)."""
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    V = len(chars)
    ctx = torch.stack([ids[i:len(ids) - CONTEXT + i] for i in range(CONTEXT)], dim=1)
    x = torch.nn.functional.one_hot(ctx, V).float().reshape(len(ctx), CONTEXT * V)
    return x, ids[CONTEXT:], V


def build(width: int, vocab: int) -> nn.Module:
    return nn.Sequential(nn.Linear(CONTEXT * vocab, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, vocab))


def train(width: int, lr: float, parametrization: str, data, steps: int, batch: int, seed: int = 0) -> float:
    x, y, V = data
    torch.manual_seed(seed)
    model = build(width, V)
    if parametrization == "mup":
        with torch.device("meta"):
            mup = torchinit.MuP(build(BASE_WIDTH, V), delta=build(2 * BASE_WIDTH, V))
        torchinit.init_model(model, mup, seed=seed)
        opt = torch.optim.Adam(mup.param_groups(model, lr=lr, optimizer="adam"))
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)  # the same minibatches for every run
    losses = []
    for _ in range(steps):
        i = torch.randint(0, len(x), (batch,), generator=g)
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    tail = losses[-10:]
    out = sum(tail) / len(tail)
    return out if math.isfinite(out) else float("nan")


def plot(results, widths, lrs, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    cmap = __import__("matplotlib").colormaps["viridis"]
    for ax, par, title in zip(axes, ("sp", "mup"), ("standard parametrization", "muP (torchinit.MuP)")):
        for k, w in enumerate(widths):
            ys = [results[par, w, lr] for lr in lrs]
            c = cmap(k / max(len(widths) - 1, 1))
            ax.plot(lrs, ys, marker="o", ms=3, color=c, label=f"width {w}")
            best = min(range(len(lrs)), key=lambda i: ys[i] if math.isfinite(ys[i]) else math.inf)
            ax.plot([lrs[best]], [ys[best]], marker="*", ms=10, color=c)
        ax.set_xscale("log", base=2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("Adam learning rate (base width)", fontsize=9)
    axes[0].set_ylabel("training loss", fontsize=9)
    finite = [v for v in results.values() if math.isfinite(v)]
    axes[0].set_ylim(min(finite) - 0.1, min(max(finite), min(finite) + 2.5))
    axes[1].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=80)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--log2-lrs", type=float, nargs="+", default=[-10, -9, -8, -7, -6, -5, -4, -3, -2])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "img"
                    / "mup_lr_transfer.png")
    ap.add_argument("--quick", action="store_true", help="widths 32 64, three LRs, 20 steps")
    a = ap.parse_args(argv)
    if a.quick:
        a.widths, a.log2_lrs, a.steps = [32, 64], [-10, -8, -6], 20
    torch.set_num_threads(1)  # the project machine is shared: one thread wastes no time spinning
    data = dataset(load_text())
    lrs = [2.0 ** e for e in a.log2_lrs]
    results = {}
    t0 = time.time()
    for par in ("sp", "mup"):
        for w in a.widths:
            for lr in lrs:
                results[par, w, lr] = train(w, lr, par, data, a.steps, a.batch)
            print(f"  {par} width {w}: done ({time.time() - t0:.0f} s)", flush=True)
    best = {}
    for par in ("sp", "mup"):
        print(f"{par}:")
        for w in a.widths:
            ys = [results[par, w, lr] for lr in lrs]
            i = min(range(len(lrs)), key=lambda j: ys[j] if math.isfinite(ys[j]) else math.inf)
            best[par, w] = a.log2_lrs[i]
            print(f"  width {w:5d}: best lr 2^{a.log2_lrs[i]:g}, loss " + " ".join(f"{v:.3f}" for v in ys))
    plot(results, a.widths, lrs, a.out)
    print(f"figure: {a.out} ({a.out.stat().st_size // 1024} KB), {time.time() - t0:.0f} s")
    return {"results": results, "best": best}


if __name__ == "__main__":
    main()
