"""The HTML report (Report.to_html, save_comparison, torchinit report/demo) and notebook display."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import pytest
import torch
from torch import nn

import torchinit
from torchinit.cli import main
from torchinit.cli.report_cmd import diagnose_schemes
from torchinit.diagnostics import Comparison, save_comparison
from torchinit.plots import activation_histograms

pytestmark = pytest.mark.usefixtures("one_thread")

MLP = {"depth": 8, "width": 32}
GPT = {"n_layer": 3, "n_embd": 32, "n_head": 2, "vocab_size": 64}


class _Page(HTMLParser):
    """Sections (by id, in order), figures (id -> img src), tables (class -> rows of cell texts)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.figures: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.row_classes: list[str] = []
        self._fig = self._table = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "figure":
            self._fig = a.get("id")
        elif tag == "img" and self._fig:
            self.figures[self._fig] = a["src"]
        elif tag == "table":
            self._table = a.get("class") or ""
            self.tables.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            if a.get("class"):
                self.row_classes.append(a["class"])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "figure":
            self._fig = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _png(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


@pytest.fixture(scope="module")
def mlp_reports():
    return diagnose_schemes("mlp", ["pytorch", "xavier", "kaiming"], kwargs=MLP, batch=64)


def test_page_summary_run_plots_layers(tmp_path, mlp_reports):
    assert isinstance(mlp_reports, Comparison)
    run = {"seed": "0", "command": "torchinit report mlp --compare pytorch,xavier,kaiming"}
    out = save_comparison(mlp_reports, tmp_path, title="cmp", run=run)
    page = _Page(out.read_text())
    assert page.sections == ["summary", "run", "plots", "layers"]
    # one verdict row per verdict, an "ok" row for a scheme without one
    verdicts = page.tables["verdicts"][1:]
    assert len(verdicts) == sum(max(1, len(r.verdicts)) for r in mlp_reports.values())
    assert [r[:3] for r in verdicts if r[0] == "kaiming"] == [["kaiming", "ok", "-"]]
    assert {(r[0], r[2], r[3]) for r in verdicts if r[0] == "xavier"} == {
        ("xavier", v.kind, v.layer) for v in mlp_reports["xavier"].verdicts}
    assert any(r[1] == "warning" and r[2] == "vanishing" for r in verdicts if r[0] == "xavier")
    # the terminal's comparison table: one row per weight layer, one std column per scheme
    stds = page.tables["stds"]
    assert stds[0] == ["depth", "layer", "pytorch std", "xavier std", "kaiming std"]
    assert len(stds) - 1 == len(mlp_reports["kaiming"].signal()) == 8
    assert stds[3][3] == f"{mlp_reports['xavier'].signal()[2].std:.3g}"
    meta = dict(r[:2] for r in page.tables["run"][1:])
    assert meta["torchinit"] == torchinit.__version__ and meta["torch"] == torch.__version__
    assert meta["seed"] == "0" and meta["command"] == run["command"]
    assert meta["input shape"] == "64x" + str(mlp_reports["kaiming"].meta["input_shape"][1])
    assert meta["schemes"] == "pytorch, xavier, kaiming"
    # forward beside backward, then histograms; no stream for a plain MLP
    assert set(page.figures) == {"fig-signal", "fig-gradients", "fig-histograms"}
    for stem, src in page.figures.items():
        assert _png(src) == (tmp_path / f"{stem[4:]}.png").read_bytes()
    layers = page.tables["layers"]  # one folded table per scheme, every recorded layer
    assert sum(r[0] == "#" for r in layers) == 3
    assert len(layers) == 3 + sum(len(r.layers) for r in mlp_reports.values())


def test_histograms_readable_for_every_scheme(mlp_reports):
    # xavier's deep layers are ~100x narrower than its first: log density, symmetric-log values
    fig = activation_histograms(mlp_reports)
    scales = {ax.get_title(): (ax.get_xscale(), ax.get_yscale()) for ax in fig.axes}
    assert scales["xavier"] == ("symlog", "log")
    assert scales["kaiming"] == ("linear", "log")  # layers of one width: a linear value axis
    for ax in fig.axes:
        assert ax.get_xlabel().startswith("pre-activation value (weight-layer output)") and ax.get_ylabel() == "density (log)"


def test_residual_stream_of_a_transformer(tmp_path):
    torch.manual_seed(0)
    from torchinit import zoo

    model = zoo.build("gpt", **GPT)
    torchinit.init_model(model, "gpt2", seed=0)
    x = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    seen = {}
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, (a[0].std(correction=0), o.std(correction=0))))
             for i, b in enumerate(model.transformer.h)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    rep = torchinit.diagnose(model, x)
    stream = rep.meta["stream"]
    assert [s["name"] for s in stream] == ["transformer.h.0 (input)", "transformer.h.0", "transformer.h.1",
                                          "transformer.h.2"]
    assert stream[0]["std"] == pytest.approx(float(seen[0][0]), rel=1e-5)
    assert [s["std"] for s in stream[1:]] == pytest.approx([float(seen[i][1]) for i in range(3)], rel=1e-5)
    page = _Page(rep.to_html(tmp_path / "gpt.html"))
    assert {"fig-signal", "fig-gradients", "fig-stream", "fig-histograms"} == set(page.figures)
    assert (tmp_path / "gpt.html").read_text().count("data:image/png;base64,") == 4
    assert json.loads(rep.to_json())["meta"]["stream"] == stream
    # no blocks, no stream
    mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    assert torchinit.diagnose(mlp, torch.randn(8, 8)).meta["stream"] is None


def test_notebook_display_and_short_repr(mlp_reports):
    rep = mlp_reports["xavier"]
    text = repr(rep)
    kinds = ", ".join(dict.fromkeys(v.kind for v in rep.verdicts))
    assert text == (f"<Report 'xavier': {len(rep.layers)} layers, {len(rep.params)} parameters, "
                    f"{len(rep.verdicts)} verdicts ({kinds}); .print(), .to_html(), .save(dir)>")
    assert len(text) < 200
    page = _Page(rep._repr_html_())
    assert "<html" not in rep._repr_html_()
    assert page.sections == ["summary", "run", "plots"]
    assert set(page.figures) == {"fig-signal", "fig-gradients"}
    assert len(page.tables["verdicts"]) - 1 == len(rep.verdicts)
    cmp_page = _Page(mlp_reports._repr_html_())
    assert cmp_page.tables["stds"][0][2:] == ["pytorch std", "xavier std", "kaiming std"]
    assert repr(mlp_reports).startswith("<Comparison of 3 schemes: pytorch (")
    plan = torchinit.plan(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "kaiming")
    ptab = _Page(plan._repr_html_()).tables[""]
    assert [r[0] for r in ptab[1:]] == plan.names and ptab[0][:3] == ["tensor", "shape", "rule"]
    assert ptab[1][1] == "8x4"


def test_report_and_demo_share_the_layout(tmp_path, capsys):
    assert main(["report", "gpt", "--kwargs", json.dumps(GPT), "--compare", "pytorch,gpt2", "--batch", "4",
                 "--out", str(tmp_path / "r"), "--html", str(tmp_path / "page.html")]) == 0
    text = (tmp_path / "page.html").read_text()
    assert text == (tmp_path / "r" / "report.html").read_text()
    page = _Page(text)
    assert page.sections == ["summary", "run", "plots", "layers"]
    assert "fig-stream" in page.figures
    meta = dict(r[:2] for r in page.tables["run"][1:])
    assert meta["command"] == ("torchinit report gpt --kwargs '" + json.dumps(GPT) + "' --compare pytorch,gpt2 "
                               "--batch 4 --seed 0")
    assert meta["schemes"] == "pytorch, gpt2" and meta["input shape"] == "4x32" and meta["seed"] == "0"


def test_residual_stream_of_blocks_called_with_keyword_arguments():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(16)
            self.proj = nn.Linear(16, 16)

        def forward(self, hidden_states):
            return hidden_states + self.proj(self.ln(hidden_states))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(3))

        def forward(self, x):
            for b in self.blocks:
                x = b(hidden_states=x)
            return x

    torch.manual_seed(0)
    x = torch.randn(8, 16) * 3
    stream = torchinit.diagnose(Net(), x).meta["stream"]
    assert [s["name"] for s in stream] == ["blocks.0 (input)", "blocks.0", "blocks.1", "blocks.2"]
    assert stream[0]["std"] == pytest.approx(float(x.std(correction=0)), rel=1e-5)
