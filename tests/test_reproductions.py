"""Small versions of the paper reproductions in examples/ (He 2015, Glorot 2010, LSUV)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


pytestmark = pytest.mark.usefixtures("one_thread")


def test_he2015_signal_matches_theory():
    he = load("he2015_relu30")
    reports = he.signal_at_init(depth=30, width=128, batch=128)
    for scheme, (factor, first) in he.THEORY.items():
        rep = reports[scheme]
        # per-layer variance factor: 1/6 (pytorch default), 1/2 (xavier), 1 (kaiming)
        assert he.fitted_factor(rep) == pytest.approx(factor, rel=0.12), scheme
        assert rep.signal()[0].std == pytest.approx(math.sqrt(first), rel=0.1), scheme
    assert reports["xavier"].signal()[29].std < 1e-3
    assert 0.7 < reports["kaiming"].signal()[29].std < 3
    assert reports["xavier"].by_kind("vanishing") and not reports["kaiming"].verdicts


def test_he2015_kaiming_trains_xavier_stalls():
    he = load("he2015_relu30")
    res = {s: he.train(s, depth=30, width=64, steps=150, batch=64, lr=0.05) for s in ("xavier", "kaiming")}
    tail = {s: sum(r["loss"][-20:]) / 20 for s, r in res.items()}
    # Xavier: the loss does not move from ln(2) (the output is ~0 for every input)
    assert abs(res["xavier"]["loss"][0] - math.log(2)) < 1e-3
    assert abs(tail["xavier"] - math.log(2)) < 5e-3
    assert res["xavier"]["accuracy"] < 0.55
    # Kaiming: it learns
    assert tail["kaiming"] < tail["xavier"] - 0.02
    assert res["kaiming"]["accuracy"] > res["xavier"]["accuracy"] + 0.08
    g_x, g_k = res["xavier"]["first_last_grad"], res["kaiming"]["first_last_grad"]
    assert g_x[0] < 1e-3 * g_k[0]  # the first layer's gradient has vanished under Xavier


def test_glorot2010_top_hidden_layer_saturates():
    gl = load("glorot2010_sigmoid")
    rec = gl.train("standard", width=128, d_in=128, steps=800, every=200)
    first, last = rec["mean"][0], rec["mean"][-1]
    assert all(abs(m - 0.5) < 0.05 for m in first)  # at init every layer sits at 0.5
    assert last[-1] < 0.3  # the top hidden layer moves towards saturation at 0...
    assert abs(last[0] - 0.5) < 0.05  # ...while the first stays at 0.5
    assert all(a > b for a, b in zip([m[-1] for m in rec["mean"][1:]], [m[-1] for m in rec["mean"][2:]]))
    assert last[-1] < min(last[:-1]) - 0.2


def test_glorot2010_normalized_init_keeps_gradients_more_uniform():
    gl = load("glorot2010_sigmoid")
    ratio = {}
    for s in gl.SCHEMES:
        g = gl.gradients_at_init(s, width=128, d_in=128)
        ratio[s] = g[0] / g[-2]  # first / last hidden layer
    assert ratio["standard"] < ratio["normalized"] < 1


def test_lsuv_every_layer_within_tol_first_included():
    ex = load("lsuv_demo")
    reports, rep = ex.compare(depth=10, width=32, batch=64, input_scale=5.0, tol=0.1)
    ours = [r.std for r in reports["torchinit.lsuv_"].signal()]
    assert all(abs(s - 1) < 0.1 for s in ours)
    skipped = [r.std for r in reports["LSUV, first layer skipped"].signal()]
    assert skipped[0] > 3  # the input's scale survives in layer 1
    assert all(abs(s - 1) < 0.1 for s in skipped[1:])
    assert rep.converged and rep.layers[0].name == "layers.0" and rep.layers[0].iterations >= 1
