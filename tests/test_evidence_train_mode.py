"""diagnose and lsuv_ on a model in train mode (dropout active: Hugging Face models built from a
config are): the result is a function of (model, inputs, seed), not of the global RNG state."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import torchinit

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))
from hf_models import gpt2  # noqa: E402


def _ids():
    return torch.randint(0, 50257, (4, 8), generator=torch.Generator().manual_seed(0))


def _flags(m):
    return [(n, s.training) for n, s in m.named_modules()]


def test_diagnose_in_train_mode_is_deterministic_and_leaves_rng_and_mode():
    m = gpt2()
    assert m.training  # from a config: train mode, dropout 0.1
    flags = _flags(m)
    torch.manual_seed(1)
    a = torchinit.diagnose(m, _ids()).to_json()
    state = torch.get_rng_state()
    torch.manual_seed(2)
    b = torchinit.diagnose(m, _ids()).to_json()
    assert a == b
    torch.manual_seed(123)
    before = torch.get_rng_state()
    torchinit.diagnose(m, _ids())
    assert torch.equal(torch.get_rng_state(), before) and not torch.equal(state, before)  # caller's RNG untouched
    assert _flags(m) == flags
    # the seed decides the dropout masks
    assert torchinit.diagnose(m, _ids(), seed=1).to_json() != a


def test_diagnose_seed_must_be_an_int():
    with pytest.raises(TypeError, match="diagnose: seed must be an int, got '0'"):
        torchinit.diagnose(torch.nn.Linear(2, 2), torch.randn(3, 2), seed="0")


@pytest.mark.parametrize("seed", [0, None])
def test_lsuv_in_train_mode_does_not_depend_on_the_global_rng(seed):
    base = gpt2()
    torchinit.init_model(base, "gpt2", seed=0)
    out = []
    for rng in (1, 2):
        m = gpt2()
        m.load_state_dict(base.state_dict())
        flags = _flags(m)
        torch.manual_seed(rng)  # without seed, the orthogonal pre-init draws from here: leave it out then
        torchinit.lsuv_(m, _ids(), seed=seed, orthogonal=seed is not None)
        assert _flags(m) == flags
        out.append(m.state_dict())
    assert out[0].keys() == out[1].keys()
    for k in out[0]:
        assert torch.equal(out[0][k], out[1][k]), k
