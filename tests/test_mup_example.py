"""examples/mup_lr_transfer.py in its --quick form: it runs, trains both parametrizations
on real text, and writes its figure."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mup_lr_transfer.py"


def test_mup_lr_transfer_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("_example_mup_lr_transfer", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    x, y, V = mod.dataset(mod.load_text())
    assert x.shape == (len(y), mod.CONTEXT * V) and 30 < V < 128  # one-hot contexts of real characters
    out = mod.main(["--quick", "--out", str(tmp_path / "fig.png")])
    assert len(out["results"]) == 2 * 2 * 3 and all(math.isfinite(v) for v in out["results"].values())
    # at the largest LR every run learns something: below the uniform guess log(V)
    lr = 2.0 ** -6
    assert all(out["results"][par, w, lr] < math.log(V) - 0.5 for par in ("sp", "mup") for w in (32, 64))
    assert (tmp_path / "fig.png").stat().st_size > 5000
