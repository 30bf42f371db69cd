"""`torchinit init` / `plan` under faults: an existing --out, a factory that exits, a model
folder whose module names shadow the command's dependencies."""

import os
import subprocess
import sys

from safetensors.torch import load_file

from torchinit.cli import main
from torchinit.weights import load_plan_file, plan_path


def test_init_refuses_to_overwrite_out_unless_forced(tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    common = ["init", "mlp", "--kwargs", '{"depth": 2, "width": 8}', "--policy", "kaiming", "-q", "--out", str(out)]
    assert main(common + ["--seed", "0"]) == 0
    before = (out.read_bytes(), plan_path(out).read_bytes())
    assert main(common + ["--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"'{out}' and '{plan_path(out)}' already exist: pass --force to overwrite" in err
    assert (out.read_bytes(), plan_path(out).read_bytes()) == before
    plan_path(out).unlink()  # either file of the pair is protected
    assert main(common + ["--seed", "1"]) == 2
    assert f"'{out}' already exists: pass --force" in capsys.readouterr().err
    assert main(common + ["--seed", "1", "--force"]) == 0
    assert load_plan_file(out)["seed"] == 1 and out.read_bytes() != before[0]


def test_factory_or_module_calling_sys_exit_is_a_one_line_error(tmp_path, capsys):
    f = tmp_path / "quits.py"
    f.write_text("import sys\ndef build():\n    sys.exit(3)\n")
    assert main(["plan", f"{f}:build"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"torchinit plan: error: model '{f}:build' called sys.exit(3) at {f}:3 instead of returning a model" in err
    g = tmp_path / "quits_on_import.py"
    g.write_text("import sys\nsys.exit('no GPU here')\n")
    out = tmp_path / "w.safetensors"
    assert main(["init", f"{g}:build", "--seed", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{g} called sys.exit('no GPU here') while being imported" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_model_folder_is_on_sys_path_only_while_the_model_code_runs(tmp_path, capsys):
    f = tmp_path / "net.py"
    f.write_text("import torch\ndef build():\n    from blocks import block  # imported lazily, beside it\n"
                 "    return block()\n")
    (tmp_path / "blocks.py").write_text("import torch\ndef block():\n    return torch.nn.Linear(3, 3)\n")
    path_before = list(sys.path)
    assert main(["plan", f"{f}:build", "--policy", "kaiming"]) == 0
    assert "weight" in capsys.readouterr().out
    assert sys.path == path_before


def test_a_yaml_py_beside_the_model_does_not_replace_pyyaml(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "net.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 4)\n")
    (proj / "yaml.py").write_text("raise ImportError('this is the project yaml.py, not PyYAML')\n")
    pol = tmp_path / "policy.yaml"
    pol.write_text("rules:\n  - {role: weight, init: orthogonal}\n  - {role: bias, init: zeros}\n")
    run = tmp_path / "elsewhere"
    run.mkdir()
    out = run / "w.safetensors"
    r = subprocess.run([sys.executable, "-m", "torchinit", "init", f"{proj / 'net.py'}:build", "--policy", str(pol),
                        "--seed", "0", "--out", str(out)], cwd=run, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    assert r.returncode == 0, r.stderr
    w = load_file(str(out))
    assert (w["bias"] == 0).all() and load_plan_file(out)["plan"]["entries"][0]["initializer"] == "orthogonal"


def test_hostile_policy_file_is_one_short_line_on_stderr(tmp_path, capsys):
    levels = [f"&a0 [{', '.join(['lol'] * 9)}]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    f = tmp_path / "laughs.yaml"
    f.write_text("rules:\n  - init: zeros\n    name: [" + ", ".join(levels) + "]\n")  # 9**9 strings
    assert main(["plan", "mlp", "--policy", str(f)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and len(err) < 400, err[:500]
    assert f"policy file {f}: too large once YAML aliases are expanded" in err
