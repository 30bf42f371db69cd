"""Report.log: a diagnostics report written to TensorBoard and W&B, read back from the files
the real packages write (tensorboard's EventAccumulator; the W&B offline run's record log)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import torchinit

pytestmark = pytest.mark.integrations


def _report():
    """A small ReLU MLP whose middle weight is all zero: one ``symmetry`` error verdict."""
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    torchinit.init_model(m, "kaiming", seed=0)
    with torch.no_grad():
        m[2].weight.zero_()
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    rep = torchinit.diagnose(m, x, progress=False)
    assert [(v.severity, v.kind, v.layer) for v in rep.verdicts] == [("error", "symmetry", "2.weight")]
    return m, rep


EXPECTED_SCALARS = {f"torchinit/activation_std/{n}" for n in "01234"} | {
    f"torchinit/grad_std/{n}" for n in "01234"} | {f"torchinit/verdict_count/{s}" for s in ("error", "warning", "info")}
EXPECTED_HISTS = {f"torchinit/activation_hist/{n}" for n in "01234"} | {
    f"torchinit/weight_hist/{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")}
EXPECTED_IMAGES = {"torchinit/signal_propagation", "torchinit/histograms"}


def test_tensorboard_event_file_has_the_report(tmp_path):
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    model, rep = _report()
    with SummaryWriter(str(tmp_path)) as w:
        tags = rep.log(w, step=7, model=model)
    ea = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    ea.Reload()
    got = ea.Tags()
    assert set(got["scalars"]) == EXPECTED_SCALARS
    assert set(got["histograms"]) == EXPECTED_HISTS
    assert set(got["images"]) == EXPECTED_IMAGES
    assert got["tensors"] == ["torchinit/verdicts/text_summary"]
    assert set(tags) == EXPECTED_SCALARS | EXPECTED_HISTS | EXPECTED_IMAGES | {"torchinit/verdicts"}
    # the values are the report's: stds (float32 in the event file), histogram counts, verdicts
    for r in rep.layers:
        (ev,) = ea.Scalars(f"torchinit/activation_std/{r.name}")
        assert ev.step == 7 and ev.value == pytest.approx(r.std, rel=1e-6)
        (ev,) = ea.Scalars(f"torchinit/grad_std/{r.name}")
        assert ev.value == pytest.approx(r.grad_std, rel=1e-6)
        (h,) = ea.Histograms(f"torchinit/activation_hist/{r.name}")
        assert list(h.histogram_value.bucket) == r.hist
        assert h.histogram_value.num == sum(r.hist)
    assert ea.Scalars("torchinit/verdict_count/error")[0].value == 1.0
    assert ea.Scalars("torchinit/verdict_count/warning")[0].value == 0.0
    (wh,) = ea.Histograms("torchinit/weight_hist/2.weight")
    assert wh.histogram_value.num == 16 * 16 and wh.histogram_value.min == wh.histogram_value.max == 0.0
    (text,) = ea.Tensors("torchinit/verdicts/text_summary")
    assert "symmetry" in text.tensor_proto.string_val[0].decode() and "2.weight" in text.tensor_proto.string_val[0].decode()
    (img,) = ea.Images("torchinit/signal_propagation")
    assert img.width > 100 and img.height > 100 and img.encoded_image_string[:4] == b"\x89PNG"


def test_log_refuses_other_writers_before_writing(tmp_path):
    _, rep = _report()
    with pytest.raises(TypeError, match=r"cannot write to a builtins\.list; pass a TensorBoard SummaryWriter"):
        rep.log([])
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as w:
        with pytest.raises(ValueError, match=r"step must be None or an int >= 0, got -1"):
            rep.log(w, step=-1)
        with pytest.raises(TypeError, match=r"model must be an nn.Module \(its weights are logged\) or None, got str"):
            rep.log(w, step=0, model="mlp")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    assert ea.Tags()["scalars"] == [] and ea.Tags()["images"] == []


def _wandb_records(run_dir: Path):
    """The records of an offline run's ``run-*.wandb`` file: a 7-byte header, then LevelDB-log
    framing (32 KiB blocks; each chunk: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        n, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            rec = pb2.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_wandb_offline_run_has_the_report(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="the [wandb] extra is not installed")
    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                 "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(k, v)
    model, rep = _report()
    run = wandb.init(project="torchinit-test", dir=str(tmp_path), mode="offline")  # explicit: W&B keeps the settings of its first init
    try:
        keys = rep.log(run, step=3, model=model)
        files = Path(run.dir)
    finally:
        run.finish()
        wandb.teardown()  # waits for W&B's service process: the run file is complete after it
    expected = EXPECTED_SCALARS | EXPECTED_HISTS | EXPECTED_IMAGES | {"torchinit/layers", "torchinit/verdicts"}
    assert set(keys) == expected
    records = _wandb_records(files.parent)
    history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    assert len(history) == 1 and records[-1].WhichOneof("record_type") == "exit"  # the whole run was read
    items = {(i.key or "/".join(i.nested_key)): i.value_json for i in history[0].item}
    assert json.loads(items["_step"]) == 3
    for k in EXPECTED_SCALARS:
        assert k in items, k
    for r in rep.layers:
        assert json.loads(items[f"torchinit/activation_std/{r.name}"]) == pytest.approx(r.std, rel=1e-12)
    assert json.loads(items["torchinit/verdict_count/error"]) == 1
    for k in EXPECTED_HISTS:
        assert json.loads(items[f"{k}/_type"]) == "histogram"
    assert json.loads(items["torchinit/activation_hist/0/values"]) == rep.layers[0].hist
    for k in EXPECTED_IMAGES:
        assert json.loads(items[f"{k}/_type"]) == "image-file"
    # the tables, read back from the run's media files
    (verdicts,) = files.glob("media/table/torchinit/verdicts_*.table.json")
    table = json.loads(verdicts.read_text())
    assert table["columns"] == ["severity", "kind", "layer", "message", "fix"]
    assert [row[:3] for row in table["data"]] == [["error", "symmetry", "2.weight"]]
    (layers,) = files.glob("media/table/torchinit/layers_*.table.json")
    assert [row[0] for row in json.loads(layers.read_text())["data"]] == [r.name for r in rep.layers]


def test_a_module_called_twice_gets_one_tag_per_call(tmp_path):
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            return self.lin(torch.tanh(self.lin(x)))

    m = Twice()
    torchinit.init_model(m, "xavier", seed=0)
    rep = torchinit.diagnose(m, torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), progress=False)
    assert [r.name for r in rep.signal()] == ["lin", "lin#2"]
    with SummaryWriter(str(tmp_path)) as w:
        rep.log(w, step=0)
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    stds = [ea.Scalars(f"torchinit/activation_std/{t}")[0].value for t in ("lin", "lin#2")]
    assert stds == pytest.approx([r.std for r in rep.signal()], rel=1e-6) and stds[0] != stds[1]
