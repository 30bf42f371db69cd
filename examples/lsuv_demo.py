"""LSUV (Mishkin & Matas 2016, "All you need is a good init") with torchinit.lsuv_.

On the zoo's 30-layer ReLU MLP fed with UNNORMALIZED data (std 5, as raw
features often are), compare the output std of every Linear layer after

* orthogonal init alone (LSUV's pre-initialization),
* LSUV skipping the first layer (what the ``lsuv`` / ``LSUV-pytorch`` packages do
  since 2020, because their layer counter is reset),
* ``torchinit.lsuv_``: every layer, the first included, ends within ``tol`` of 1.

Also runs it on the zoo CNN (Conv + BatchNorm) and prints the per-layer LSUV report.

Run ``python examples/lsuv_demo.py`` (a few seconds); the plot goes to
``docs/img/lsuv_std.png`` (``--out DIR`` to change).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import torchinit
from torchinit import zoo
from torchinit.keyed import Key
from torchinit.plots import signal_propagation


def compare(depth: int = 30, width: int = 256, batch: int = 256, input_scale: float = 5.0, tol: float = 0.1,
            seed: int = 0) -> tuple[dict, object]:
    """``({label: Report}, LSUVReport)`` for the three variants on the same batch."""
    x = input_scale * torch.randn(batch, width, generator=torch.Generator().manual_seed(seed + 1))
    reports = {}
    # orthogonal pre-init only: LSUV with zero rescalings allowed is not possible, so
    # apply the same keyed orthogonal fill directly
    m = zoo.build("mlp", depth=depth, width=width)
    key = Key(seed)
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear):
            torchinit.fill_(mod.weight, torchinit.specs.Orthogonal(1.0), key=key.child(f"{name}.weight"))
            torchinit.zeros_(mod.bias)
    reports["orthogonal only"] = torchinit.diagnose(m, x, label="orthogonal only")
    m = zoo.build("mlp", depth=depth, width=width)
    first = "layers.0"
    lin = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)]
    torchinit.fill_(m.layers[0].weight, torchinit.specs.Orthogonal(1.0), key=key.child(f"{first}.weight"))
    torchinit.zeros_(m.layers[0].bias)
    torchinit.lsuv_(m, x, tol=tol, seed=seed, modules=lin[1:])
    reports["LSUV, first layer skipped"] = torchinit.diagnose(m, x, label="LSUV, first layer skipped")
    m = zoo.build("mlp", depth=depth, width=width)
    lsuv_report = torchinit.lsuv_(m, x, tol=tol, seed=seed)
    reports["torchinit.lsuv_"] = torchinit.diagnose(m, x, label="torchinit.lsuv_")
    return reports, lsuv_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "img"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    reports, rep = compare()
    print(rep)
    for label, r in reports.items():
        s = [l.std for l in r.signal()]
        print(f"{label:28s} output std: layer 1 {s[0]:.3g}, layer 2 {s[1]:.3g}, layer 30 {s[-1]:.3g}, "
              f"max |std-1| {max(abs(v - 1) for v in s):.3g}")
    path = Path(args.out) / "lsuv_std.png"
    signal_propagation(reports, path, title="30-layer ReLU MLP, input std 5: output std of each Linear layer")
    m = zoo.build("cnn")
    x = zoo.example_inputs("cnn", m, 64, generator=torch.Generator().manual_seed(0))
    print(torchinit.lsuv_(m, x, seed=0))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
