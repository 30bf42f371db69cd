"""`torchinit report` and `torchinit demo` end to end, in process."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torchinit.diagnostics import Report

from torchinit.cli import main
from torchinit.cli.report_cmd import make_inputs, scheme_policy

SMALL_MLP = json.dumps({"depth": 12, "width": 32})


pytestmark = pytest.mark.usefixtures("one_thread")


def test_compare_schemes_on_zoo_mlp(tmp_path, capsys):
    out = tmp_path / "rep"
    rc = main(["report", "mlp", "--kwargs", SMALL_MLP, "--compare", "pytorch,xavier,kaiming,lsuv",
               "--out", str(out), "--batch", "32"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "output std of each weight layer" in text
    assert "xavier: warning vanishing (starts at layers.2)" in text.replace("\n", " ")
    assert "kaiming: ok" in text and "lsuv: ok" in text
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # forward, backward (beside it), histograms
    reports = {s: Report.from_json((out / f"report_{s}.json").read_text()) for s in ("pytorch", "xavier", "kaiming", "lsuv")}
    # the paper's lesson, measured: xavier (gain 1) vanishes with ReLU depth, kaiming holds, lsuv sets std 1
    last = {s: r.signal()[-2].std for s, r in reports.items()}
    assert last["xavier"] < 0.05 < 0.5 < last["kaiming"]
    assert all(abs(r.std - 1) < 0.1 for r in reports["lsuv"].signal())


def test_single_policy_on_cnn_and_resnet(tmp_path, capsys):
    rc = main(["report", "cnn", "--kwargs", '{"channels": [4, 8], "image_size": 8}', "--policy", "kaiming",
               "--out", str(tmp_path / "cnn"), "--batch", "8"])
    assert rc == 0
    assert "signal propagation: kaiming" in capsys.readouterr().out
    assert (tmp_path / "cnn" / "signal.png").stat().st_size > 0
    assert json.loads((tmp_path / "cnn" / "report.json").read_text())["meta"]["label"] == "kaiming"
    rc = main(["report", "resnet", "--kwargs", '{"widths": [4, 8], "blocks": 1, "image_size": 8}',
               "--out", str(tmp_path / "resnet"), "--batch", "8", "--fail-on", "warning"])
    assert rc == 0  # as built, a BatchNorm ResNet is healthy


def test_gpt_tokens(tmp_path):
    rc = main(["report", "gpt", "--kwargs", '{"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 64}',
               "--policy", "gpt2", "--out", str(tmp_path), "--batch", "4"])
    assert rc == 0
    rep = Report.from_json((tmp_path / "report.json").read_text())
    assert rep.meta["input_shape"][0] == 4
    assert any(r.kind == "embedding" for r in rep.layers)


def test_model_from_file_with_input_shape(tmp_path, capsys):
    f = tmp_path / "mymodel.py"
    f.write_text(textwrap.dedent("""
        from torch import nn
        def make(width=16):
            return nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, 2))
    """))
    rc = main(["report", f"{f}:make", "--kwargs", '{"width": 12}', "--input-shape", "20,8",
               "--out", str(tmp_path / "o"), "--no-backward"])
    assert rc == 0
    rep = Report.from_json((tmp_path / "o" / "report.json").read_text())
    assert rep.meta["input_shape"] == [20, 8]
    assert rep.layers[0].grad_std is None


def test_inferred_inputs():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    assert make_inputs(conv, "x.py:f", batch=5).shape == (5, 3, 32, 32)
    emb = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    ids = make_inputs(emb, "x.py:f", batch=3)
    assert ids.shape == (3, 16) and ids.dtype == torch.int64 and int(ids.max()) < 10
    with pytest.raises(ValueError, match="cannot infer the input shape of 'x.py:f'"):
        make_inputs(torch.nn.Sequential(torch.nn.ReLU()), "x.py:f")


def test_xavier_scheme_is_gain_one():
    from torchinit import init_model

    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    init_model(m, scheme_policy("xavier"), seed=0)
    assert float(m[0].weight.detach().std()) == pytest.approx((2 / 128) ** 0.5, rel=0.05)
    assert float(m[0].bias.detach().abs().max()) == 0.0


def test_fail_on_and_user_errors(tmp_path, capsys):
    rc = main(["report", "mlp", "--kwargs", SMALL_MLP, "--policy", "xavier", "--out", str(tmp_path),
               "--batch", "16", "--fail-on", "warning"])
    assert rc == 1
    rc = main(["report", "mlp", "--kwargs", SMALL_MLP, "--policy", "xavier", "--out", str(tmp_path),
               "--batch", "16", "--fail-on", "error"])
    assert rc == 0  # 12 layers: a warning, not yet an error
    capsys.readouterr()
    assert main(["report", "mlp", "--input-shape", "4,a", "--out", str(tmp_path)]) == 2
    assert "--input-shape must be comma-separated integers such as 64,256, got '4,a'" in capsys.readouterr().err
    assert main(["report", "nosuchmodel", "--out", str(tmp_path)]) == 2
    assert "unknown model 'nosuchmodel'" in capsys.readouterr().err
    assert main(["report", "mlp", "--compare", "kaiming,kaiming", "--out", str(tmp_path)]) == 2
    assert "--compare lists a scheme twice" in capsys.readouterr().err
    # --seed -1 ran with the as-built scheme and 2**64 failed with "Overflow when unpacking long long"
    for seed in ("-1", str(2**64)):
        assert main(["report", "mlp", "--seed", seed, "--out", str(tmp_path)]) == 2
        assert capsys.readouterr().err == f"torchinit report: error: seed must be in [0, 2**63), got {seed}\n"
    with pytest.raises(SystemExit):
        main(["report", "mlp", "--policy", "kaiming", "--compare", "xavier"])


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for s in ("pytorch std", "xavier std", "kaiming std", "lsuv std"):
        assert s in text
    assert "mlp: verdicts" in text and "cnn: verdicts" in text
    assert "kaiming: ok" in text
    index = (out / "index.html").read_text()
    assert "mlp/report.html" in index and "cnn/report.html" in index
    # the layout of torchinit report: summary, run, plots (forward beside backward), layers
    page = (out / "mlp" / "report.html").read_text()
    marks = ["<section id='summary'>", "<section id='run'>", "<figure id='fig-signal'>",
             "<figure id='fig-gradients'>", "<figure id='fig-histograms'>", "<section id='layers'>"]
    assert all(m in page for m in marks) and sorted(marks, key=page.index) == marks
    assert "<td class='l'>command</td><td class='l'>torchinit demo --seed 0</td>" in page
    mlp = {s: Report.from_json((out / "mlp" / f"report_{s}.json").read_text()) for s in ("pytorch", "xavier", "kaiming")}
    assert len(mlp["kaiming"].signal()) == 30
    assert mlp["xavier"].by_kind("vanishing") and mlp["pytorch"].by_kind("vanishing")
    assert mlp["kaiming"].verdicts == []


def test_input_shape_the_model_rejects_is_a_user_error(tmp_path, capsys):
    assert main(["report", "mlp", "--kwargs", SMALL_MLP, "--input-shape", "8,3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "torchinit report: error: mlp failed on a random batch of shape 8,3" in err
    assert "--input-shape B,D" in err and "Traceback" not in err


def _report_to_pipe(tmp_path, *extra):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), COLUMNS="")
    env.pop("COLUMNS")  # rich reads it: the default for a pipe must not depend on the caller's shell
    r = subprocess.run([sys.executable, "-m", "torchinit", "report", "mlp", "--kwargs", SMALL_MLP, "--policy",
                        "xavier", "--out", str(tmp_path), "--batch", "16", "--threads", "1", *extra],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_report_to_a_pipe_is_not_cut_at_80_columns(tmp_path):
    lines = _report_to_pipe(tmp_path)
    # each verdict is one line and its fix one more, as on a wide terminal (rich's fallback cut them at 80)
    verdict = next(ln for ln in lines if "warning vanishing (starts at" in ln)
    assert len(verdict) > 80 and verdict.rstrip().endswith(".")
    assert any(ln.lstrip().startswith("fix:") and len(ln) > 80 for ln in lines)
    assert max(map(len, lines)) <= 200
    narrow = _report_to_pipe(tmp_path, "--width", "60")
    assert max(map(len, narrow)) <= 60


def test_bad_width_fails_before_the_work(tmp_path, capsys):
    assert main(["report", "mlp", "--width", "5", "--out", str(tmp_path / "w")]) == 2
    assert "--width must be an integer >= 20, got 5" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_unwritable_out_or_html_fails_before_the_work(tmp_path, capsys, monkeypatch):
    # a file where --out's folder should be: refused before the model is built, not after the
    # whole diagnosis ("[Errno 17] File exists")
    from torchinit.cli import report_cmd

    def no_work(*a, **k):
        raise AssertionError("the diagnosis ran")

    monkeypatch.setattr(report_cmd, "diagnose_schemes", no_work)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert main(["report", "mlp", "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err == f"torchinit report: error: --out {str(a_file)!r} is not a directory\n", err
    assert main(["report", "mlp", "--out", str(a_file / "sub")]) == 2
    assert f"is not a directory ({str(a_file)!r} is a file)" in capsys.readouterr().err
    missing = tmp_path / "missing" / "page.html"
    assert main(["report", "mlp", "--out", str(tmp_path / "r"), "--html", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == (f"torchinit report: error: --html {str(missing)!r}: directory {str(missing.parent)!r} "
                   "does not exist\n"), err
    assert main(["report", "mlp", "--out", str(tmp_path / "r"), "--html", str(tmp_path)]) == 2
    assert f"--html {str(tmp_path)!r} is a directory" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    monkeypatch.setattr("torchinit.cli.demo.diagnose_schemes", no_work)
    assert main(["demo", "--out", str(a_file)]) == 2
    assert capsys.readouterr().err == f"torchinit demo: error: --out {str(a_file)!r} is not a directory\n"


def test_schemes_detect_nonlinearities_with_the_report_batch():
    # the zoo's GPT cannot be traced by torch.fx: without the batch, init_model guessed its gains from
    # registration order (c_fc "linear", c_proj "gelu") and told the user to pass --example-inputs,
    # an option report does not have
    import warnings

    import torchinit

    from torchinit.cli.report_cmd import build_and_init

    with warnings.catch_warnings():
        warnings.simplefilter("error", torchinit.NonlinearityWarning)
        _, _, plan = build_and_init("gpt", {"n_layer": 1, "n_embd": 32, "n_head": 2}, "kaiming", seed=0, batch=2)
    assert plan["transformer.h.0.mlp.c_fc.weight"].nonlinearity == "gelu"
    assert plan["transformer.h.0.mlp.c_proj.weight"].nonlinearity == "linear"
