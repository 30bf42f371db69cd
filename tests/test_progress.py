"""The progress bar shared by materialize, diagnose, lsuv_, save_weights and the CLI."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import torchinit
from torchinit import _progress
from torchinit._progress import _Progress, _track


@pytest.fixture
def at_once(monkeypatch):
    """Bars appear from the first moment (instead of after 2 s)."""
    monkeypatch.setattr(_progress, "PROGRESS_AFTER_S", 0.0)


def _terminal(monkeypatch):
    """The captured stderr claims to be a terminal (rich then draws its bar there); called in
    the test itself: pytest swaps sys.stderr between fixture setup and the test."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)


def test_bar_only_when_asked_or_on_a_terminal(capsys, at_once):
    with _Progress("work", 2, False) as bar:
        bar.advance(2, "x")
    with _Progress("work", 2, None) as bar:  # stderr is captured: not a terminal
        bar.advance(2, "x")
    assert capsys.readouterr().err == ""
    with _Progress("work", 2, True) as bar:
        bar.advance(1, "first")
        bar.advance(1, "second")
    assert "work" in capsys.readouterr().err
    assert _progress._open == []


def test_no_bar_before_the_delay(capsys):
    with _Progress("work", 2, True) as bar:  # 2 s default: a fast job shows nothing
        bar.advance(2)
    assert capsys.readouterr().err == ""


def test_nested_bars_stay_silent_and_an_exception_closes_the_bar(capsys, at_once):
    with pytest.raises(ValueError, match="boom"):
        for i in _track(range(3), "outer", mode=True):
            for _ in _track(range(2), "inner", mode=True):  # rich allows one live display only
                pass
            if i == 1:
                raise ValueError("boom")
    err = capsys.readouterr().err
    assert "outer" in err and "inner" not in err
    assert _progress._open == []  # closed by the exception: the next bar may show
    for _ in _track(range(1), "again", mode=True):
        pass
    assert "again" in capsys.readouterr().err


def test_diagnose_lsuv_and_save_weights_show_progress(tmp_path, capsys, at_once, monkeypatch):
    from torchinit.scale.weights import save_weights

    _terminal(monkeypatch)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(16, 8)
    torchinit.lsuv_(model, x, seed=0)
    assert "lsuv" in capsys.readouterr().err
    rep = torchinit.diagnose(model, x)
    assert "diagnose" in capsys.readouterr().err
    assert torchinit.diagnose(model, x, progress=False).to_json() == rep.to_json()
    assert capsys.readouterr().err == ""
    save_weights(model, tmp_path / "w.safetensors")
    assert "save_weights" in capsys.readouterr().err
    with pytest.raises(TypeError, match="diagnose: progress must be None, True or False, got 'yes'"):
        torchinit.diagnose(model, x, progress="yes")


def test_report_shows_one_bar_over_its_schemes(tmp_path, capsys, at_once, monkeypatch):
    from torchinit.cli import main

    _terminal(monkeypatch)
    # every label change draws a frame: rich redraws on a 10 Hz timer, and whether a frame fell
    # inside the (fast) lsuv scheme was luck (the test failed after other tests had warmed up imports)
    set_label = _Progress.set_label

    def set_label_and_draw(self, label):
        set_label(self, label)
        if self.bar is not None:
            self.bar.refresh()

    monkeypatch.setattr(_Progress, "set_label", set_label_and_draw)
    # diagnose and lsuv_ run inside report's bar: a second live display would raise rich's LiveError
    assert main(["report", "mlp", "--kwargs", '{"depth": 3, "width": 8}', "--compare", "kaiming,lsuv",
                 "--out", str(tmp_path), "--batch", "8"]) == 0
    err = capsys.readouterr().err
    assert "report" in err and "lsuv" in err  # the scheme's name is the bar's label
    assert "diagnose" not in err
