"""Plots and saved reports: valid, non-empty PNGs and a self-contained HTML page."""

from __future__ import annotations

import base64
import json
import re
import struct

import pytest
import torch
from torch import nn

import torchinit
from torchinit.diagnostics import Report, diagnose, save_comparison
from torchinit.plots import activation_histograms, signal_propagation, training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def net(act=nn.ReLU, depth=5, width=32):
    layers = []
    for i in range(depth):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers[:-1])


@pytest.fixture(scope="module")
def reports():
    torch.manual_seed(0)
    inp = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, fn in (("xavier", torchinit.xavier_normal_), ("kaiming", torchinit.kaiming_normal_)):
        m = net()
        for lin in m:
            if isinstance(lin, nn.Linear):
                fn(lin.weight) if name == "xavier" else fn(lin.weight, nonlinearity="relu")
                nn.init.zeros_(lin.bias)
        out[name] = diagnose(m, inp, label=name)
    return out


def test_signal_propagation_png(tmp_path, reports):
    path = tmp_path / "sub" / "signal.png"
    fig = signal_propagation(reports, path, theory={"kaiming": [1.41] * 5, "xavier": [2 ** (-k / 2) for k in range(5)]})
    data = path.read_bytes()
    w, h = png_size(data)
    assert w > 300 and h > 150 and len(data) > 5000
    ax_std = fig.axes[0]
    labels = [l.get_label() for l in ax_std.get_lines()]
    assert labels[:3] == ["xavier", "kaiming", "theory"] and len(labels) == 4
    # the plotted values are the reports' stds by depth
    ys = list(ax_std.get_lines()[0].get_ydata())
    assert ys == pytest.approx([r.std for r in reports["xavier"].signal()])
    assert ax_std.get_yscale() == "log"


def test_signal_propagation_accepts_plain_records(tmp_path):
    recs = [{"std": 1.0, "sq_mean": 0.1}, {"std": 0.5, "sq_mean": 0.0}, {"std": 0.25, "sq_mean": 0.01}]
    fig = signal_propagation({"a": recs}, tmp_path / "p.png")
    assert list(fig.axes[1].get_lines()[0].get_xdata()) == [1, 3]  # the 0 is not drawn on a log axis
    with pytest.raises(ValueError, match="series is empty"):
        signal_propagation({})


def test_histograms_glorot_style_for_tanh_and_preactivations_for_relu(tmp_path, reports):
    m = net(nn.Tanh, depth=8)
    rep = diagnose(m, torch.randn(32, 32, generator=torch.Generator().manual_seed(0)), label="tanh")
    fig = activation_histograms(rep, tmp_path / "tanh.png", max_layers=4)
    assert len(fig.axes[0].get_lines()) == 4
    assert fig.axes[0].get_xlabel() == "activation value"
    assert png_size((tmp_path / "tanh.png").read_bytes())[0] > 200
    fig = activation_histograms(reports["kaiming"], tmp_path / "relu.png")
    assert fig.axes[0].get_xlabel().startswith("pre-activation")
    assert len(fig.axes[0].get_lines()) == 5


def test_training_curves(tmp_path):
    training_curves({"a": [3, 2, 1], "b": [3, 3, 3]}, tmp_path / "t.png", logy=True)
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG_MAGIC


def test_report_save_writes_self_contained_html(tmp_path, reports):
    rep = reports["xavier"]
    html_path = rep.save(tmp_path / "out")
    assert html_path.name == "report.html"
    text = html_path.read_text()
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(imgs) == 3  # forward, backward, histograms
    for b64 in imgs:
        assert base64.b64decode(b64)[:8] == PNG_MAGIC
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched from outside
    assert "wrong_nonlinearity" in text
    for name in ("signal.png", "gradients.png", "histograms.png", "report.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    again = Report.from_json((tmp_path / "out" / "report.json").read_text())
    assert again.to_dict() == rep.to_dict()


def test_save_comparison_one_json_per_scheme(tmp_path, reports):
    page = save_comparison(reports, tmp_path, title="cmp")
    for name in ("signal.png", "histograms.png", "report_xavier.json", "report_kaiming.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "report_kaiming.json").read_text())["meta"]["label"] == "kaiming"
    assert page.read_text().count("data:image/png;base64,") == 3  # forward, backward, histograms
    fig = activation_histograms(reports)
    assert [ax.get_title() for ax in fig.axes] == ["xavier", "kaiming"]  # one panel per scheme
    with pytest.raises(ValueError, match="reports is empty"):
        save_comparison({}, tmp_path)


def test_training_curves_empty_is_a_clear_error_and_hidden_labels_do_not_warn(recwarn):
    with pytest.raises(ValueError, match=r"training_curves: curves is empty"):
        training_curves({})
    fig = training_curves({"_hidden": [3, 2, 1]})  # matplotlib hides "_" labels: no legend
    assert fig.axes[0].get_legend() is None
    fig = signal_propagation({"_hidden": [{"std": 1.0, "sq_mean": 0.1}]})
    assert fig.axes[0].get_legend() is None
    assert recwarn.list == [], [str(w.message) for w in recwarn.list]


def test_save_comparison_names_differing_in_punctuation_or_case_get_their_own_json(tmp_path, reports):
    named = {"run.1": reports["xavier"], "run 1": reports["kaiming"], "RUN_1": reports["xavier"],
             "other": reports["kaiming"]}
    save_comparison(named, tmp_path / "a")
    files = sorted(p.name for p in (tmp_path / "a").glob("report_*.json"))
    assert len(files) == 4 and "report_other.json" in files  # no name clashes: kept as is
    labels = sorted(json.loads((tmp_path / "a" / f).read_text())["meta"]["label"] for f in files)
    assert labels == ["kaiming", "kaiming", "xavier", "xavier"]
    # the file of each name does not depend on the order of the others
    save_comparison(dict(reversed(list(named.items()))), tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").glob("report_*.json")) == files
    for f in files:
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text()
