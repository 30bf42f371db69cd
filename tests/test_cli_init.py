"""`torchinit init` / `torchinit plan`, model loading, and the weight files."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import torchinit
from torchinit import zoo
from torchinit.cli import main
from torchinit.cli._models import load_model
from torchinit.weights import load_plan_file, load_weights, plan_path, save_weights

MLP_KW = '{"depth": 3, "width": 16}'


def _ref(name, kwargs, policy, seed, dtype=None):
    m = zoo.build(name, **kwargs)
    if dtype is not None:
        m.to(dtype)
    torchinit.init_model(m, policy, seed=seed, engine="keyed")
    return m


def test_init_writes_weights_and_plan_that_restore_the_model(tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    rc = main(["init", "mlp", "--kwargs", MLP_KW, "--policy", "kaiming", "--seed", "3", "--out", str(out)])
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    ref = _ref("mlp", {"depth": 3, "width": 16}, "kaiming", 3)
    fresh = zoo.build("mlp", depth=3, width=16)
    fresh.load_state_dict(load_file(str(out)))  # strict
    for k, v in ref.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    doc = load_plan_file(out)
    assert doc["seed"] == 3 and doc["policy"] == "kaiming" and doc["model"] == "mlp"
    assert doc["kwargs"] == {"depth": 3, "width": 16}
    names = [e["name"] for e in doc["plan"]["entries"]]
    assert "layers.0.weight" in names and plan_path(out) == tmp_path / "w.plan.json"


def test_init_is_deterministic_and_meta_equals_no_meta(tmp_path):
    a, c, d = (tmp_path / f"{x}.safetensors" for x in "acd")
    (tmp_path / "again").mkdir()
    b = tmp_path / "again" / "a.safetensors"  # same name: the file records its plan file's name
    common = ["init", "cnn", "--kwargs", '{"channels": [4, 8]}', "--policy", "kaiming", "-q"]
    assert main(common + ["--seed", "1", "--out", str(a)]) == 0
    assert main(common + ["--seed", "1", "--out", str(b)]) == 0
    assert main(common + ["--seed", "1", "--out", str(c), "--no-meta"]) == 0
    assert main(common + ["--seed", "2", "--out", str(d)]) == 0
    assert a.read_bytes() == b.read_bytes()
    ta, tc, td = load_file(str(a)), load_file(str(c)), load_file(str(d))
    assert list(ta) == list(tc) and all(torch.equal(ta[k], tc[k]) for k in ta)
    assert "bn1" not in ta and "features.1.running_var" in ta  # BatchNorm buffers are saved
    assert not torch.equal(ta["features.0.weight"], td["features.0.weight"])


def test_init_huge_pages_flag_reaches_materialize_and_never_changes_values(tmp_path, monkeypatch):
    import torchinit

    seen = []
    real = torchinit.materialize
    monkeypatch.setattr(torchinit, "materialize", lambda *a, **k: (seen.append(k["huge_pages"]), real(*a, **k))[1])
    outs = []
    for flag in ("--huge-pages", "--no-huge-pages", None):
        d = tmp_path / str(len(outs))
        d.mkdir()
        outs.append(d / "w.safetensors")
        argv = ["init", "mlp", "--kwargs", '{"depth": 2, "width": 1024}', "--policy", "kaiming", "-q",
                "--seed", "4", "--out", str(outs[-1])]
        assert main(argv + ([flag] if flag else [])) == 0
    assert seen == [True, False, False]  # off by default; 4 MiB weights: the huge-page path runs with the flag
    assert outs[0].read_bytes() == outs[1].read_bytes() == outs[2].read_bytes()


def test_init_dtype_and_tied_gpt(tmp_path):
    out = tmp_path / "g.safetensors"
    kw = {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 20, "block_size": 4, "tie_weights": True}
    assert main(["init", "gpt", "--kwargs", json.dumps(kw), "--policy", "gpt2", "--seed", "0",
                 "--dtype", "bfloat16", "--out", str(out), "-q"]) == 0
    state = load_file(str(out))
    assert state["lm_head.weight"].dtype == torch.bfloat16
    assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])
    with torch.device("meta"):
        m = zoo.build("gpt", **kw).to(torch.bfloat16)
    load_weights(out, m)  # meta model: load with assign=True
    assert m.lm_head.weight is m.transformer.wte.weight and not m.lm_head.weight.is_meta
    ref = _ref("gpt", kw, "gpt2", 0, torch.bfloat16)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_plan_prints_without_allocating(capsys):
    big = json.dumps({"n_layer": 48, "n_embd": 1600, "n_head": 25, "vocab_size": 50257, "block_size": 1024})
    assert main(["plan", "gpt", "--kwargs", big, "--policy", "gpt2"]) == 0  # 1.6 B parameters: meta only
    out = capsys.readouterr().out
    assert "1,638,022,400 parameters" in out and "transformer.h.47.attn.c_proj.weight" in out
    assert main(["plan", "mlp", "--kwargs", MLP_KW, "--policy", "kaiming", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        m = zoo.build("mlp", depth=3, width=16)
    assert doc == json.loads(json.dumps(torchinit.plan(m, "kaiming").to_dict(), default=str))


def test_load_model_specs(tmp_path):
    m = load_model("torchinit.zoo:MLP", {"depth": 2, "width": 8})
    assert isinstance(m, zoo.MLP) and len(m.layers) == 3
    f = tmp_path / "mymodel.py"
    f.write_text("import torch\ndef make(n=3):\n    return torch.nn.Linear(n, 2)\ndef bad():\n    return 5\n")
    assert load_model(f"{f}:make", {"n": 4}).in_features == 4
    with pytest.raises(TypeError, match=r"factory returned int, expected a torch.nn.Module"):
        load_model(f"{f}:bad", {})
    with pytest.raises(ValueError, match=r"has no attribute 'nope'"):
        load_model(f"{f}:nope", {})
    with pytest.raises(FileNotFoundError, match=r"model file not found: .*missing.py"):
        load_model(f"{tmp_path}/missing.py:make", {})
    with pytest.raises(ImportError, match=r"cannot import module 'no_such_pkg_xyz'"):
        load_model("no_such_pkg_xyz:f", {})
    with pytest.raises(ValueError, match=r"unknown model 'vit': not a zoo name \(mlp, cnn, resnet, gpt\)"):
        load_model("vit", {})
    with pytest.raises(TypeError, match=r"rejected --kwargs \{\"m\": 1\}"):
        load_model(f"{f}:make", {"m": 1})


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["init", "mlp", "--seed", "0", "--out", str(tmp_path / "x.safetensors"), "--kwargs", "[1]"]) == 2
    assert "--kwargs must be a JSON object (a dict), got list" in capsys.readouterr().err
    assert main(["init", "mlp", "--seed", "0", "--out", str(tmp_path / "x.bin")]) == 2
    assert "--out must end with .safetensors" in capsys.readouterr().err
    assert main(["plan", "nosuch"]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # nothing written on error
    with pytest.raises(SystemExit):
        main(["init", "--help"])
    assert "RUNS with your permissions" in capsys.readouterr().out.replace("\n", " ").replace("  ", " ")


def test_save_weights_refuses_meta_and_writes_nothing(tmp_path):
    with torch.device("meta"):
        m = zoo.build("mlp", depth=2, width=4)
    with pytest.raises(ValueError, match=r"'layers.0.weight' is on the meta device"):
        save_weights(m, tmp_path / "m.safetensors")
    assert not os.listdir(tmp_path)


def test_subprocess_smoke(tmp_path):
    out = tmp_path / "r.safetensors"
    r = subprocess.run([sys.executable, "-m", "torchinit", "init", "resnet", "--kwargs",
                        '{"widths": [4, 8], "blocks": 1}', "--policy", "kaiming", "--seed", "0", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.exists() and plan_path(out).exists()


def test_python_m_torchinit_cli_runs_the_same_command():
    # `python -m torchinit.cli` is the package of the command: it must run it, as
    # `python -m torchinit` does (it used to fail: no torchinit.cli.__main__)
    runs = [subprocess.run([sys.executable, "-m", mod, "plan", "mlp", "--kwargs", '{"depth": 2, "width": 4}',
                            "--policy", "kaiming"], capture_output=True, text=True, timeout=120, check=False)
            for mod in ("torchinit.cli", "torchinit")]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert runs[0].stdout == runs[1].stdout and "layers.0.weight" in runs[0].stdout
    bad = subprocess.run([sys.executable, "-m", "torchinit.cli", "plan", "nosuchmodel"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "torchinit plan: error: unknown model 'nosuchmodel'" in bad.stderr


def test_meta_device_skips_only_meta_random_fills():
    from torchinit.cli._models import meta_device

    with meta_device():
        m = zoo.build("gpt", n_layer=1)
        cpu = torch.empty(1000, device="cpu")
        cpu.zero_()
        torch.nn.init.normal_(cpu)  # a real tensor is still filled
    assert all(t.is_meta for t in m.state_dict().values())
    assert cpu.std() > 0.5


def test_unusable_out_device_or_model_file_are_one_line_errors_before_any_work(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(torchinit, "materialize", lambda *a, **k: calls.append(a))  # must not be reached
    (tmp_path / "taken.safetensors").mkdir()  # the weights name is a directory
    (tmp_path / "p.plan.json").mkdir()  # the plan name is a directory
    (tmp_path / "file").write_text("")
    bad_out = {"taken.safetensors": "is a directory", "p.safetensors": "p.plan.json' is a directory",
               "file/w.safetensors": "is not a directory"}
    for out, msg in bad_out.items():
        assert main(["init", "mlp", "--seed", "0", "--out", str(tmp_path / out)]) == 2, out
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert main(["init", "mlp", "--seed", "0", "--device", "nodevice", "--out", str(tmp_path / "w.safetensors")]) == 2
    assert "--device 'nodevice' cannot be used" in capsys.readouterr().err
    (tmp_path / "broken.py").write_text("def build(:\n")
    assert main(["plan", f"{tmp_path / 'broken.py'}:build"]) == 2
    assert "broken.py is not valid Python: invalid syntax (line 1)" in capsys.readouterr().err
    assert not calls and not (tmp_path / "w.safetensors").exists()


def test_save_weights_reports_write_failures_as_oserror(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def failing_save_file(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    with pytest.raises(OSError, match=r"cannot write .*m\.safetensors.*No space left"):
        save_weights(zoo.build("mlp", depth=2, width=4), tmp_path / "m.safetensors")
    assert not os.listdir(tmp_path)


def test_console_script_imports_models_like_python_does(tmp_path):
    # `torchinit init pkg.models:make` from the project folder, and a model file importing a
    # module beside it, work as they would under `python -m` / `python file.py` (the console
    # script's sys.path has neither folder)
    pkg = tmp_path / "proj" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "blocks.py").write_text("import torch\ndef block(n):\n    return torch.nn.Linear(n, n)\n")
    (pkg / "models.py").write_text("from mypkg.blocks import block\ndef make(n=4):\n    return block(n)\n")
    (pkg / "net.py").write_text("from blocks import block\ndef make(n=4):\n    return block(n)\n")
    exe = os.path.join(os.path.dirname(sys.executable), "torchinit")
    env = {**os.environ, "PYTHONPATH": ""}
    for model, cwd in (("mypkg.models:make", pkg.parent), (f"{pkg / 'net.py'}:make", tmp_path)):
        r = subprocess.run([exe, "plan", model, "--policy", "kaiming"], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (model, r.stderr)
        assert "weight" in r.stdout


def test_factory_that_raises_is_a_one_line_error_naming_model_and_line(tmp_path, capsys):
    f = tmp_path / "net.py"
    f.write_text("import torch\n"
                 "def build(n=4):\n"
                 "    if n % 2:\n"
                 "        raise ValueError('n must be even')\n"
                 "    return torch.nn.Linear(n, n)\n"
                 "def scaled(n=4):\n"
                 "    s = torch.ones(1).sum().item()  # needs data: fails on meta\n"
                 "    return torch.nn.Linear(n, int(s) * n)\n")
    assert main(["plan", f"{f}:build", "--kwargs", '{"n": 3}']) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"model '{f}:build' raised ValueError with --kwargs {{\"n\": 3}} at {f}:4: n must be even" in err
    assert "--no-meta" not in err  # not a meta problem
    out = tmp_path / "w.safetensors"
    assert main(["init", f"{f}:scaled", "--seed", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"raised RuntimeError at {f}:7" in err and "pass --no-meta" in err, err
    assert not out.exists()
    assert main(["plan", f"{f}:scaled", "--no-meta"]) == 0  # plan, like init, can build normally
    assert "(built with --no-meta)" in capsys.readouterr().out
    assert main(["init", f"{f}:scaled", "--seed", "0", "--out", str(out), "--no-meta", "-q"]) == 0


def test_load_weights_warns_about_meta_buffers_the_file_cannot_hold(tmp_path):
    class Rotary(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.register_buffer("inv_freq", torch.arange(4.0), persistent=False)

        def reset_parameters(self):  # recomputes the buffer, as Hugging Face's rotary init code does
            with torch.no_grad():
                self.inv_freq.copy_(torch.arange(4.0))

    path, _ = save_weights(Rotary(), tmp_path / "r.safetensors")
    with torch.device("meta"):
        m = Rotary()
    with pytest.warns(UserWarning, match=r"'inv_freq' not in .* still on the meta device .*torchinit.materialize"):
        load_weights(path, m)
    assert not m.lin.weight.is_meta and m.inv_freq.is_meta
    torchinit.materialize(m, "cpu", {"rules": []}, seed=0)  # the fix the warning gives
    assert torch.equal(m.inv_freq, torch.arange(4.0))


def test_no_meta_keeps_seeded_constructor_values_for_tensors_the_policy_leaves_alone(tmp_path, capsys):
    f = tmp_path / "net.py"
    f.write_text("import torch\n"
                 "class Net(torch.nn.Module):\n"
                 "    def __init__(self):\n"
                 "        super().__init__()\n"
                 "        self.fc = torch.nn.Linear(4, 4)\n"
                 "        self.scale = torch.nn.Parameter(torch.randn(4))  # no rule of the kaiming preset\n"
                 "def build():\n"
                 "    return Net()\n")
    a, b, c, m = (tmp_path / f"{x}.safetensors" for x in "abcm")
    common = ["init", f"{f}:build", "--policy", "kaiming", "--no-meta"]
    assert main(common + ["--seed", "3", "--out", str(a)]) == 0
    out = capsys.readouterr().out
    assert "for 1 tensor(s) the policy leaves alone: scale (--meta would refuse them)" in out, out
    assert "torch.manual_seed(3)" in out
    torch.manual_seed(123)  # the process's RNG state does not leak into the file
    assert main(common + ["--seed", "3", "--out", str(b), "-q"]) == 0
    assert main(common + ["--seed", "4", "--out", str(c), "-q"]) == 0
    ta, tb, tc = load_file(str(a)), load_file(str(b)), load_file(str(c))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    torch.manual_seed(3)
    assert torch.equal(ta["scale"], load_model(f"{f}:build").scale.detach())
    assert not torch.equal(ta["scale"], tc["scale"])
    assert load_plan_file(plan_path(a))["constructor_values"] == ["scale"]  # recorded with the plan
    assert main(["init", f"{f}:build", "--policy", "kaiming", "--seed", "3", "--out", str(m)]) == 2  # --meta
    assert "no initializer in the plan for meta tensor(s) 'scale'" in capsys.readouterr().err
