"""A fan-based rule with torch's fans (the default) on a Hugging Face Conv1D, stored (in, out)
for x @ w, reads its dims swapped: plan says so (model/fan_notes.py)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import torchinit


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 layer (transformers.pytorch_utils.Conv1D): y = x @ w + b, w of shape (in, out)."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        return x @ self.weight + self.bias


def _mlp() -> nn.Sequential:
    return nn.Sequential(Conv1D(256, 64), nn.ReLU(), Conv1D(64, 256))  # c_fc (64, 256), c_proj (256, 64)


_KAIMING = {"modules": "Conv1D", "params": "weight", "init": "kaiming_normal", "args": {"nonlinearity": "relu"}}
_MSG = ("rule 'kaiming_normal' (kaiming_normal, fan_in) uses torch's fans (fans: torch{default}) on 2 Hugging Face "
        "Conv1D weight(s), stored (in, out) for x @ w: torch's rule reads them swapped, so the fan_in is not the "
        "layer's (0.weight: fan_in 256 (true 64), std 0.08839 (true fans: 0.1768); 2.weight: fan_in 64 (true 256), "
        "std 0.1768 (true fans: 0.08839)); give the rule args fans: module for the layer's fans")


def test_torch_fans_on_a_conv1d_are_named_with_both_stds():
    # before: c_fc got std sqrt(2 / 256) (half of He's sqrt(2 / 64)), c_proj twice its, and nothing said so
    with pytest.warns(UserWarning) as caught:
        p = torchinit.plan(_mlp(), [_KAIMING])
    msgs = [str(w.message) for w in caught if "Conv1D" in str(w.message)]
    assert msgs == [_MSG.format(default=", the default") + " (or fans: torch to keep these)"]
    assert _MSG.format(default=", the default") in p.notes
    assert p["0.weight"].spec.std == pytest.approx(math.sqrt(2 / 256))  # what was asked: torch's fans, kept


def test_true_fans_or_an_explicit_choice_say_nothing_or_note_it():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = torchinit.plan(_mlp(), [dict(_KAIMING, args={"nonlinearity": "relu", "fans": "module"})])
        assert p["0.weight"].spec.std == pytest.approx(math.sqrt(2 / 64))
        assert p["2.weight"].spec.std == pytest.approx(math.sqrt(2 / 256))
        assert not [n for n in p.notes if "Conv1D" in n]
        p = torchinit.plan(_mlp(), [dict(_KAIMING, args={"nonlinearity": "relu", "fans": "torch"})])
        assert _MSG.format(default="") in p.notes  # said, not warned: the rule chose torch's fans
        for preset in ("kaiming", "xavier", "lecun", "gpt2", "llama"):  # true fans, or no fans
            p = torchinit.plan(_mlp(), preset)
            assert not [n for n in p.notes if "Conv1D" in n], preset
        # a Linear has torch's layout: nothing to say
        torchinit.plan(nn.Sequential(nn.Linear(64, 256)), [dict(_KAIMING, modules="Linear")])


def test_a_std_of_one_over_sqrt_fan_in_on_a_conv1d_is_named():
    rule = {"modules": "Conv1D", "params": "weight", "init": "normal", "args": {"std": "1/sqrt(fan_in)"}}
    with pytest.warns(UserWarning, match=r"rule 'normal' \(normal, fan_in\) uses torch's fans \(fans: torch, the "
                                         r"default\) on 2 Hugging Face Conv1D weight\(s\)"):
        torchinit.plan(_mlp(), [rule])


def test_gpt2():
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=16,
                                                                 vocab_size=64, bos_token_id=0, eos_token_id=0))
    with pytest.warns(UserWarning, match=r"on 3 Hugging Face Conv1D weight\(s\).*transformer\.h\.0\.attn\.c_attn\."
                                         r"weight: fan_in 96 \(true 32\)"):
        torchinit.plan(model, {"preset": "gpt2", "rules": [_KAIMING]})
