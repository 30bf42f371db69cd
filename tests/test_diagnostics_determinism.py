"""diagnose gives the same report (to_json() equal) for the same model, input and seed:
call after call in one process, and in fresh processes (different hash seeds), on a
convolutional, a residual, a transformer and a recurrent model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = textwrap.dedent('''
    import gc, json, sys
    import torch
    from torch import nn
    import torchinit

    torch.set_num_threads(1)


    class PreActBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            with torch.no_grad():
                self.c2.weight.mul_(1e-3)

        def forward(self, x):
            out = self.c2(torch.relu(self.c1(torch.relu(x))))
            out += x
            return out


    class LSTMNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(16, 32, num_layers=2, batch_first=True)
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])


    def models():
        g = torch.Generator().manual_seed(1)
        torch.manual_seed(0)
        yield "conv", torchinit.zoo.build("cnn", channels=(4, 8), image_size=8), torch.randn(8, 3, 8, 8, generator=g)
        torch.manual_seed(0)
        res = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *[PreActBlock() for _ in range(4)])
        yield "residual", res, torch.randn(8, 3, 8, 8, generator=g)
        torch.manual_seed(0)
        enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 3,
                                    enable_nested_tensor=False)
        yield "transformer", enc, torch.randn(4, 10, 32, generator=g)
        torch.manual_seed(0)
        yield "lstm", LSTMNet(), torch.randn(8, 12, 16, generator=g)


    out = {}
    for name, model, x in models():
        runs = []
        for _ in range(int(sys.argv[1])):
            runs.append(torchinit.diagnose(model, x).to_json())
            gc.collect()  # freed tensors' ids are reused by the next call's
        out[name] = runs
    print(json.dumps(out))
''')


def run(calls: int, hash_seed: str) -> dict[str, list[str]]:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(calls)], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_diagnose_is_the_same_across_calls_and_processes():
    a = run(6, "1")  # before f0ec213 the residual net's report differed in about half of the calls
    b = run(1, "2")
    assert sorted(a) == ["conv", "lstm", "residual", "transformer"]
    for name, runs in a.items():
        assert all(r == runs[0] for r in runs), f"{name}: differs from call to call"
        assert b[name][0] == runs[0], f"{name}: differs between processes"
    # the reports hold what these models are about
    rep = {n: json.loads(r[0]) for n, r in a.items()}
    assert {l["name"] for l in rep["residual"]["layers"] if l["residual"]} == {f"{i}.c2" for i in range(1, 5)}
    assert [l["kind"] for l in rep["lstm"]["layers"]] == ["recurrent", "linear"]
    assert rep["lstm"]["layers"][0]["time_grad_ratio"] is not None
