"""Weight files: the weights/plan pair survives faults (disk full, a kill between steps,
a flipped byte), loading keeps the model's dtype and says what it could not load."""

import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

import torchinit
from torchinit import zoo
from torchinit.weights import load_plan_file, load_weights, plan_path, save_weights


def _pair(tmp_path, seed, name="w.safetensors"):
    m = zoo.build("mlp", depth=2, width=8)
    plan = torchinit.init_model(m, "kaiming", seed=seed)
    return save_weights(m, tmp_path / name, plan=plan, info={"seed": seed})


# -- item: one dtype rule, counts for strict=False, clear errors -----------------------------------

def test_meta_model_keeps_its_dtype_like_an_allocated_one(tmp_path):
    src = zoo.build("mlp", depth=2, width=8).double()
    path, _ = save_weights(src, tmp_path / "f64.safetensors")
    with torch.device("meta"):
        meta = zoo.build("mlp", depth=2, width=8).to(torch.bfloat16)
    alloc = zoo.build("mlp", depth=2, width=8).to(torch.bfloat16)
    load_weights(path, meta)
    load_weights(path, alloc)
    for (k, a), (_, b) in zip(meta.state_dict().items(), alloc.state_dict().items()):
        assert a.dtype == torch.bfloat16 == b.dtype, k
        assert torch.equal(a, b) and torch.equal(a, src.state_dict()[k].to(torch.bfloat16)), k


def test_strict_false_warns_with_the_counts(tmp_path):
    path, _ = save_weights(zoo.build("mlp", depth=2, width=8), tmp_path / "mlp.safetensors")
    other = zoo.build("cnn", channels=[4, 8])
    n = len(other.state_dict())
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.warns(UserWarning, match=rf"strict=False: loaded 0 of the model's {n} tensors from .*mlp.safetensors'; "
                                         rf"{n} model tensor\(s\) not in the file keep their values, 4 tensor\(s\) of "
                                         r"the file match no model tensor \(nothing loaded: is this the file of another "
                                         r"model\?\)"):
        load_weights(path, other, strict=False)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    part = torch.nn.Sequential(torch.nn.Flatten())  # no tensors: shares nothing, loads nothing
    with pytest.warns(UserWarning, match=r"loaded 0 of the model's 0 tensors"):
        load_weights(path, part, strict=False)


@pytest.mark.parametrize("damage, msg", [
    (lambda b: b[:3], r"3 bytes, too short for a header"),
    (lambda b: (10**9).to_bytes(8, "little") + b[8:], r"its header says 1,000,000,000 bytes but the file has"),
    (lambda b: b[:8] + b"\xff" * (len(b) - 8), r"its header is not JSON"),
    (lambda b: b[:-7], r"is not a readable safetensors file: "),
])
def test_damaged_weights_file_is_an_error_naming_the_path(tmp_path, damage, msg):
    path, _ = save_weights(zoo.build("mlp", depth=2, width=8), tmp_path / "d.safetensors")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=rf"^load_weights: '{path}' .*{msg}"):
        load_weights(path)


def test_unusable_device_is_an_error_naming_it(tmp_path):
    path, _ = save_weights(zoo.build("mlp", depth=2, width=8), tmp_path / "d.safetensors")
    with pytest.raises(ValueError, match=r"^load_weights: device 'cuda:9' cannot be used: "):
        load_weights(path, device="cuda:9")
    with pytest.raises(ValueError, match=r"^load_weights: device 'nodevice' cannot be used: "):
        load_weights(path, device="nodevice")


# -- item: the pair -------------------------------------------------------------------------------

def _file_digests(path):
    """The recorded digest scheme, recomputed from the file's bytes (header offsets)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        data = raw[8 + n + a:8 + n + b]
        chunks = [data[i:i + 2**24] for i in range(0, len(data), 2**24)] or [b""]
        out[name] = hashlib.sha256(b"".join(hashlib.sha256(c).digest() for c in chunks)).hexdigest()
    return out


def test_flipped_byte_in_the_weights_is_detected_naming_the_tensor(tmp_path):
    path, ppath = _pair(tmp_path, 0)
    record = load_plan_file(path)["tensor_digests"]
    assert record["chunk_bytes"] == 2**24 and record["tensors"] == _file_digests(path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10  # inside the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"^load_weights: tensor '[\w.]+' in '{path}' is not what was written "
                                         rf"\(its SHA-256 digest differs from the one in '{ppath}'\)"):
        load_weights(path)
    assert load_weights(path, verify=False)  # on request, read as it is


def test_flipped_byte_in_a_multi_chunk_tensor_is_detected(tmp_path):
    m = torch.nn.Linear(2112, 2048, bias=False)  # 17.3 MB: two 16 MiB chunks
    path, _ = save_weights(m, tmp_path / "big.safetensors", plan=torchinit.plan(m, "kaiming"))
    assert load_plan_file(path)["tensor_digests"]["tensors"] == _file_digests(path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x01  # in the first chunk
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"tensor 'weight' .* is not what was written"):
        load_weights(path, m)
    assert not torch.equal(m.weight, load_weights(path, verify=False)["weight"])  # m untouched by the refusal


def test_disk_full_while_writing_the_plan_keeps_the_previous_pair(tmp_path, monkeypatch):
    path, ppath = _pair(tmp_path, 0)
    old = (path.read_bytes(), ppath.read_bytes())
    real_open = io.open

    def full_disk_open(file, mode="r", *a, **k):
        if "plan.json" in os.fspath(file) and ("w" in mode or "a" in mode):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr("builtins.open", full_disk_open)
    monkeypatch.setattr(io, "open", full_disk_open)
    with pytest.raises(OSError, match=r"cannot write '.*w\.plan\.json': No space left on device") as info:
        _pair(tmp_path, 1)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert (path.read_bytes(), ppath.read_bytes()) == old  # the previous pair, untouched
    assert sorted(os.listdir(tmp_path)) == ["w.plan.json", "w.safetensors"]  # no temporaries
    assert load_plan_file(path)["seed"] == 0 and load_weights(path)


_KILL = textwrap.dedent("""
    import os, signal, sys
    import torchinit
    from torchinit import zoo
    from torchinit.weights import save_weights
    real, calls = os.replace, []
    def replace(src, dst):  # the test's fault: SIGKILL at the given rename
        calls.append(dst)
        if len(calls) == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)
    os.replace = replace
    m = zoo.build("mlp", depth=2, width=8)
    plan = torchinit.init_model(m, "kaiming", seed=1)
    save_weights(m, sys.argv[1], plan=plan, info={"seed": 1})
""")


def _killed_save(path, at):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    r = subprocess.run([sys.executable, "-c", _KILL, str(path), str(at)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr


def test_kill_before_the_renames_keeps_the_old_pair_and_the_next_save_cleans_up(tmp_path):
    path, ppath = _pair(tmp_path, 0)
    _killed_save(path, 1)
    temps = [n for n in os.listdir(tmp_path) if ".torchinit-tmp-" in n]
    assert len(temps) == 2 and any(n.startswith(".w.safetensors.") for n in temps)  # a full-size copy left
    assert load_plan_file(path)["seed"] == 0  # the old pair, whole
    load_weights(path)
    _pair(tmp_path, 2, name="w.safetensors")  # the next save to these names removes the dead process's files
    assert sorted(os.listdir(tmp_path)) == ["w.plan.json", "w.safetensors"]
    assert load_plan_file(path)["seed"] == 2


def test_kill_between_the_renames_is_detected_never_a_silent_mix(tmp_path):
    path, ppath = _pair(tmp_path, 0)
    _killed_save(path, 2)  # new weights renamed, the old plan still beside them
    assert load_file(str(path)) != {}  # the new weights are in place
    with pytest.raises(ValueError, match=rf"^{ppath} is not the plan of '{path}' beside it"):
        load_plan_file(path)
    with pytest.warns(UserWarning, match=rf"'{ppath}' is not the plan written with '{path}'"):
        load_weights(path)
    _pair(tmp_path, 3)
    assert sorted(os.listdir(tmp_path)) == ["w.plan.json", "w.safetensors"]
    assert load_plan_file(path)["seed"] == 3


def test_live_process_temporaries_are_left_alone(tmp_path):
    (tmp_path / f".w.safetensors.torchinit-tmp-{os.getppid()}").write_bytes(b"x")  # alive: not ours to remove
    (tmp_path / ".w.safetensors.tmp-1").write_bytes(b"x")  # not our naming: left alone
    _pair(tmp_path, 0)
    assert (tmp_path / f".w.safetensors.torchinit-tmp-{os.getppid()}").exists()
    assert (tmp_path / ".w.safetensors.tmp-1").exists()
    assert plan_path(tmp_path / "w.safetensors").exists()


# -- the tensor digests are computed while the weights are written (issue 19 follow-up) --------------

def test_plan_hash_replaces_the_placeholder_and_saves_are_byte_identical(tmp_path):
    """The weights header gets the plan's SHA-256 once the digests (hashed during the write)
    are known: never the placeholder, the same header length, the same bytes every save."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pa, ppa = _pair(tmp_path / "a", 3)
    pb, ppb = _pair(tmp_path / "b", 3)
    assert pa.read_bytes() == pb.read_bytes() and ppa.read_bytes() == ppb.read_bytes()
    raw = pa.read_bytes()
    meta = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    assert meta["torchinit.plan_sha256"] == hashlib.sha256(ppa.read_bytes()).hexdigest() != "0" * 64
    assert load_plan_file(pa)["tensor_digests"]["tensors"] == _file_digests(pa)
    assert load_weights(pa)  # verified against the plan


def test_failed_hashing_during_the_write_leaves_no_file(tmp_path, monkeypatch):
    """A digest that fails while the weights are being written: the save raises, the previous
    pair stays as it was, no temporary is left behind."""
    from torchinit.scale import weights as W

    path, ppath = _pair(tmp_path, 0)
    old = (path.read_bytes(), ppath.read_bytes())
    real = W._start_digests

    def broken(tensors, pool):
        wait = real(tensors, pool)

        def result():
            wait()
            raise MemoryError("hashing failed")
        return result

    monkeypatch.setattr(W, "_start_digests", broken)
    with pytest.raises(MemoryError, match="hashing failed"):
        _pair(tmp_path, 1)
    assert (path.read_bytes(), ppath.read_bytes()) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, ppath.name])
def test_save_without_a_plan_removes_the_stale_plan_and_load_plan_file_refuses_one(tmp_path):
    from torch import nn

    path = tmp_path / "m.safetensors"
    a = nn.Linear(4, 4)
    _, ppath = save_weights(a, path, plan=torchinit.plan(a, "kaiming"))
    old_plan = ppath.read_bytes()
    assert load_plan_file(path)["plan"]
    # another model saved to the same name without a plan: the [4, 4] plan must not survive beside it
    assert save_weights(nn.Linear(8, 8), path) == (path, None)
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
    with pytest.raises(FileNotFoundError, match="plan file not found"):
        load_plan_file(path)
    # a kill after the weights' rename but before the removal leaves the old plan beside weights
    # that record no plan: refused, naming both files
    ppath.write_bytes(old_plan)
    with pytest.raises(ValueError, match=rf"^{ppath} is not the plan of '{path}' beside it \(the weights record no "
                                         r"plan"):
        load_plan_file(ppath)
    assert load_weights(path)["weight"].shape == (8, 8)  # the weights themselves load
