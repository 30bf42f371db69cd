"""`torchinit init` / `plan` options (issue 15): inline policies, Hugging Face models named by
their config, the summary, unused rules on request, the init's own time, no debug output."""

import json
import re

import pytest
from safetensors.torch import load_file

import torchinit
from torchinit import zoo
from torchinit.cli import init_cmd, main
from torchinit.weights import load_plan_file

MLP = ["mlp", "--kwargs", '{"depth": 3, "width": 16}']


def test_init_reports_the_init_time_not_the_build_and_prints_no_debug_line(tmp_path, capsys, monkeypatch):
    clock = [0.0]
    build, materialize = zoo.build, torchinit.materialize

    def slow_build(*a, **k):  # importing and building a model: 100 s on the fake clock
        clock[0] += 100.0
        return build(*a, **k)

    def timed_materialize(*a, **k):  # the init: 1.5 s
        clock[0] += 1.5
        return materialize(*a, **k)

    monkeypatch.setattr(init_cmd.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(zoo, "build", slow_build)
    monkeypatch.setattr(torchinit, "materialize", timed_materialize)
    assert main(["init", *MLP, "--policy", "kaiming", "--seed", "0", "--out", str(tmp_path / "w.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "seed 0 in 1.50 s (model built in 100.00 s)" in out, out
    assert "kwargs:" not in out and out.strip().splitlines()[-1].startswith("wrote ")


@pytest.mark.parametrize("policy", ['{"preset": "kaiming", "rules": [{"role": "bias", "init": "ones"}]}',
                                    "preset: kaiming\nrules:\n  - {role: bias, init: ones}\n",
                                    "rules: [{role: weight, init: orthogonal}, {role: bias, init: ones}]"])
def test_policy_option_accepts_inline_json_and_yaml(tmp_path, capsys, policy):
    out = tmp_path / "w.safetensors"
    assert main(["init", *MLP, "--policy", policy, "--seed", "0", "--out", str(out), "-q"]) == 0
    w = load_file(str(out))
    assert all((v == 1).all() for k, v in w.items() if k.endswith("bias"))
    assert load_plan_file(out)["policy"] == policy
    assert main(["plan", *MLP, "--policy", policy, "--summary"]) == 0
    assert "ones" in capsys.readouterr().out


def test_inline_policy_errors_are_one_line(capsys):
    assert main(["plan", *MLP, "--policy", '{"rules": [{"init": "zeroes"}]}']) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "unknown initializer 'zeroes'; did you mean 'zeros'" in err, err
    assert main(["plan", *MLP, "--policy", "{rules: ["]) == 2
    assert "inline policy: invalid YAML" in capsys.readouterr().err


def test_plan_summary_fits_80_columns_one_line_per_rule(capsys):
    assert main(["plan", "gpt", "--kwargs", '{"n_layer": 2}', "--policy", "gpt2", "--summary"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    assert max(map(len, lines)) <= 80, max(lines, key=len)
    plan = torchinit.plan(zoo.build("gpt", n_layer=2), "gpt2")
    rules = {e.rule for e in plan.entries}
    rows = [ln for ln in lines if re.match(r"^ +\d+ +[\d,]+ ", ln)]
    assert len(rows) == len(rules) and sum(int(r.split()[0]) for r in rows) == len(plan.entries)
    col = next(ln for ln in lines if ln.lstrip().startswith("tensors")).index("rule")
    assert {r[col:] for r in rows} == rules  # each rule's whole name: they fit here
    assert main(["plan", "gpt", "--kwargs", '{"n_layer": 2}', "--summary", "--width", "60"]) == 0
    assert max(map(len, capsys.readouterr().out.splitlines())) <= 60


def test_unused_rules_are_listed_only_on_request(capsys):
    plan = torchinit.plan(zoo.build("mlp", depth=3, width=16), "kaiming")
    assert plan.unused_rules
    assert main(["plan", *MLP, "--policy", "kaiming"]) == 0
    out = capsys.readouterr().out
    assert "rules that matched nothing" not in out
    assert f"{len(plan.unused_rules)} rule(s) matched no tensor (--show-unmatched lists them)" in out
    assert main(["plan", *MLP, "--policy", "kaiming", "--show-unmatched"]) == 0
    out = capsys.readouterr().out
    assert f"rules that matched nothing: {', '.join(plan.unused_rules)}" in out.replace("\n", "")
    assert "--show-unmatched lists them" not in out


GPT2_KW = {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 64, "n_positions": 32}


def test_hf_model_named_by_type_or_config_file_is_built_offline(tmp_path, capsys):
    pytest.importorskip("transformers")
    from transformers import AutoConfig

    assert main(["plan", "hf:gpt2", "--kwargs", json.dumps(GPT2_KW), "--policy", "gpt2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    names = {e["name"] for e in doc["entries"]}
    assert "transformer.h.0.attn.c_attn.weight" in names and {"transformer.wte.weight"} <= names
    shapes = {e["name"]: e["shape"] for e in doc["entries"]}
    assert shapes["transformer.wte.weight"] == [64, 16]
    cfg = tmp_path / "config.json"
    AutoConfig.for_model("gpt2", **GPT2_KW).to_json_file(str(cfg))
    out = tmp_path / "w.safetensors"
    assert main(["init", f"hf:{cfg}", "--policy", "gpt2", "--seed", "0", "--out", str(out), "-q"]) == 0
    w = load_file(str(out))
    assert w["transformer.wte.weight"].shape == (64, 16) and "transformer.h.0.mlp.c_fc.weight" in w
    assert main(["plan", "hf:bert:BertModel", "--kwargs", '{"num_hidden_layers": 1, "hidden_size": 8, '
                 '"num_attention_heads": 2, "intermediate_size": 16, "vocab_size": 32}', "--json"]) == 0
    assert "embeddings.word_embeddings.weight" in capsys.readouterr().out


def test_hf_model_errors_are_one_line(tmp_path, capsys):
    pytest.importorskip("transformers")
    assert main(["plan", "hf:gtp2"]) == 2
    err = capsys.readouterr().err
    assert "model 'hf:gtp2': unknown Hugging Face model type 'gtp2'; did you mean 'gpt2'" in err, err
    assert main(["plan", "hf:gpt2", "--kwargs", '{"n_layers": 1}']) == 2
    assert "model 'hf:gpt2' rejected --kwargs: GPT2Config has no field 'n_layers'" in capsys.readouterr().err
    assert main(["plan", f"hf:{tmp_path / 'missing.json'}"]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = tmp_path / "c.json"
    bad.write_text('{"n_layer": 1}')
    assert main(["plan", f"hf:{bad}"]) == 2
    assert "has no 'model_type'" in capsys.readouterr().err


@pytest.mark.parametrize("width", ["-5", "0", "19"])
def test_plan_refuses_a_width_below_20_like_report(capsys, width):
    # it printed a table of "..." lines (or, for 0, ignored the option) with exit status 0
    assert main(["plan", *MLP, "--summary", "--width", width]) == 2
    assert capsys.readouterr().err == f"torchinit plan: error: --width must be an integer >= 20, got {width}\n"


@pytest.mark.parametrize("command", ["plan", "init", "report"])
def test_help_names_every_preset(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in torchinit.PRESETS:
        assert re.search(rf"\b{name}\b", text), (command, name)
    assert "hf:TYPE" in text, command  # every command builds Hugging Face models from their config
