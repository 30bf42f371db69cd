"""Plans read back from files (an interchange format): only init code runs, and a
damaged entry is an error naming the entry and the field."""

import copy

import pytest
import torch
from torch import nn

import torchinit
from torchinit import Plan


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _state(m):
    return {k: (v.dtype, v.detach().clone()) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("step", [["", "half"], ["0", "__init__"], ["2", "train"], ["", "zero_grad"],
                                  ["0", "_init_weights"]])
def test_plan_code_runs_only_init_methods_and_refuses_others_before_writing(step):
    m = _model()
    d = torchinit.plan(m, "module").to_dict()
    bad = copy.deepcopy(d)
    for e in bad["entries"]:
        e["code"] = [step]
    plan = Plan.from_dict(bad)
    before = _state(m)
    msg = (rf"plan entry '0.weight': code step \('{step[0]}', '{step[1]}'\): '{step[1]}' is not an init method; "
           r"a plan's code may only run reset_parameters, _reset_parameters, init_weights, _init_weights"
           if step[1] != "_init_weights" else r"plan entry '0.weight': module '0' has no init method '_init_weights'")
    with pytest.raises(ValueError, match=msg):
        torchinit.apply_plan(m, plan, seed=0)
    after = _state(m)
    assert list(after) == list(before)
    for k, (dtype, v) in before.items():  # untouched: same dtype, same bits
        assert after[k][0] == dtype and torch.equal(after[k][1], v), k
    good = torchinit.apply_plan(m, Plan.from_dict(d), seed=0)  # the genuine plan still runs
    assert good.applied


@pytest.mark.parametrize("field", ["name", "shape", "initializer", "kind"])
def test_plan_from_dict_names_the_missing_field(field):
    d = torchinit.plan(_model(), "kaiming").to_dict()
    del d["entries"][1][field]
    who = "plan entry" if field == "name" else "plan entry '0.bias'"
    with pytest.raises(ValueError, match=rf"^plan: entries\[1\]: {who}: missing field '{field}' \(fields: name, "):
        Plan.from_dict(d)


def test_plan_from_dict_names_fields_of_the_wrong_type():
    d = torchinit.plan(_model(), "kaiming").to_dict()
    d["entries"][0]["shape"] = "4x8"
    with pytest.raises(ValueError, match=r"^plan: entries\[0\]: plan entry '0.weight': field 'shape' must be list or "
                                         r"tuple, got '4x8'"):
        Plan.from_dict(d)
    d["entries"][0]["shape"] = [8, -4]
    with pytest.raises(ValueError, match=r"field 'shape' must be a list of sizes, got \[8, -4\]"):
        Plan.from_dict(d)
    d["entries"][0]["shape"] = [8, 4]
    d["entries"][0]["code"] = [["0"]]
    with pytest.raises(ValueError, match=r"field 'code': each step must be \[module path, method\], got \['0'\]"):
        Plan.from_dict(d)
    d["entries"][0]["code"] = []
    d["entries"][0]["spec"] = {"kind": "nosuch"}
    with pytest.raises(ValueError, match=r"^plan: entries\[0\]: plan entry: "):
        Plan.from_dict(d)
    with pytest.raises(ValueError, match=r"a plan dict needs an 'entries' list"):
        Plan.from_dict({"entries": "x"})
