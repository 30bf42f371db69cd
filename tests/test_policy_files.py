"""Policy files are data from elsewhere: hostile or damaged ones fail fast, with a short
message naming the file (model/policy_files.py)."""

import json
import re

import pytest

from torchinit.model.errors import PolicyError
from torchinit.model.policy import Policy, load_policy


def _laughs(levels: int) -> str:
    """A "billion laughs" policy: 9**levels strings in a rule's name, from a few hundred bytes."""
    names = [chr(ord("a") + i) for i in range(levels)]
    parts = [f"&{names[0]} [" + ",".join(["lol"] * 9) + "]"]
    parts += [f"&{n} [" + ",".join([f"*{p}"] * 9) + "]" for p, n in zip(names, names[1:])]
    return "rules:\n  - init: zeros\n    name: [" + ", ".join(parts) + "]\n"


@pytest.mark.parametrize("levels", [5, 9])
def test_billion_laughs_policy_fails_at_once_with_a_short_message_naming_the_file(tmp_path, levels):
    # 9 levels: 436 bytes that expand to 3.9e8 strings (the file took 39 s, 5.7 GB and
    # 702 MB of stderr, the error message embedding repr(name)); 5 levels fit the size bounds
    # and fail in the rule, whose message must still be short
    f = tmp_path / "laughs.yaml"
    f.write_text(_laughs(levels))
    assert len(f.read_bytes()) < 500
    with pytest.raises(PolicyError) as info:
        load_policy(f)
    msg = str(info.value)
    assert msg.startswith(f"policy file {f}: ") and len(msg) <= 2000, (len(msg), msg[:200])
    if levels == 9:
        assert "too large once YAML aliases are expanded" in msg and len(msg) < 300
    else:
        assert "field 'name': expected a string, got [['lol'" in msg and len(msg) < 500, msg


def test_recursive_alias_is_refused_naming_the_file(tmp_path):
    f = tmp_path / "loop.yaml"
    f.write_text("rules:\n  - init: zeros\n    name: &n [1, *n]\n")
    with pytest.raises(PolicyError, match=rf"^policy file {re.escape(str(f))}: a YAML alias refers to a node "
                                          r"that contains it"):
        load_policy(f)


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_deeply_nested_policy_is_a_clear_error_not_a_recursion_error(tmp_path, suffix):
    f = tmp_path / f"deep.{suffix}"
    f.write_text('{"rules": [{"init": "zeros", "name": ' + "[" * 100_000 + "]" * 100_000 + "}]}")
    with pytest.raises(PolicyError, match=rf"^policy file {re.escape(str(f))}: (invalid YAML: )?nested (too deeply|deeper "
                                          r"than 32 "
                                          r"levels)"):
        load_policy(f)
    f.write_text('{"rules": [{"init": "zeros", "name": ' + "[" * 40 + "]" * 40 + "}]}")  # parses; too deep
    with pytest.raises(PolicyError, match=rf"^policy file {re.escape(str(f))}: (invalid YAML: )?nested deeper than 32 "
                                          r"levels"):
        load_policy(f)


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_non_utf8_policy_file_is_an_error_naming_the_file_and_byte(tmp_path, suffix):
    f = tmp_path / f"latin1.{suffix}"
    f.write_bytes('{"rules": [{"init": "zeros", "name": "caf\u00e9"}]}'.encode("latin-1"))
    with pytest.raises(PolicyError, match=rf"^policy file {re.escape(str(f))}: not UTF-8 text \(byte 0xe9 at "
                                          r"offset 41\)"):
        load_policy(f)


def test_duplicate_keys_are_errors_naming_key_and_lines(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("rules:\n  - init: zeros\n    role: bias\n    init: ones\n")
    with pytest.raises(PolicyError, match=rf"^policy file {re.escape(str(f))}: invalid YAML: .*duplicate key "
                                          r"'init' at line 4 \(first at line 2\)"):
        load_policy(f)
    f.write_text("rules: []\nname: a\nrules: [{init: zeros}]\n")
    with pytest.raises(PolicyError, match=r"duplicate key 'rules' at line 3 \(first at line 1\)"):
        load_policy(f)
    j = tmp_path / "dup.json"
    j.write_text('{"rules": [{"init": "zeros", "init": "ones"}]}')
    with pytest.raises(PolicyError, match=rf"^policy file {re.escape(str(j))}: duplicate key 'init' in a JSON "
                                          r"object"):
        load_policy(j)
    with pytest.raises(PolicyError, match=r"^policy: invalid YAML: .*duplicate key 'init'"):
        Policy.from_yaml("- {init: zeros, init: ones}\n")


def test_ordinary_anchors_and_merge_keys_still_load(tmp_path):
    f = tmp_path / "anchors.yaml"
    f.write_text("rules:\n"
                 "  - &conv {modules: Conv2d, params: weight, init: kaiming_normal, args: &relu {nonlinearity: relu}}\n"
                 "  - {modules: Linear, params: weight, init: kaiming_uniform, args: *relu}\n"
                 "  - {<<: *conv, modules: Conv1d}\n")
    pol = load_policy(f)
    assert [r.init for r in pol.rules] == ["kaiming_normal", "kaiming_uniform", "kaiming_normal"]
    assert pol.rules[1].args == {"nonlinearity": "relu"} and pol.rules[2].modules == ("Conv1d",)


def test_policy_file_over_the_size_bound_is_refused_before_parsing(tmp_path):
    f = tmp_path / "big.json"
    f.write_text(json.dumps({"rules": [{"init": "zeros", "name": "x" * (5 * 2**20)}]}))
    with pytest.raises(PolicyError, match=rf"^policy file {re.escape(str(f))}: larger than 4194304 bytes"):
        load_policy(f)


def test_inline_policy_text_is_parsed_with_the_same_bounds():
    assert [r.init for r in load_policy('{"preset": "kaiming", "rules": [{"role": "bias", "init": "ones"}]}')
            .rules][-1] == "ones"
    assert load_policy("rules: [{init: zeros, role: bias, args: {}}]").rules[0].init == "zeros"
    assert load_policy('[{"init": "normal", "args": {"std": "1/sqrt(fan_in)"}}]').rules[0].init == "normal"
    with pytest.raises(PolicyError, match=r"^inline policy: too large once YAML aliases are expanded"):
        load_policy(_laughs(9))
    with pytest.raises(PolicyError, match=r"^inline policy: invalid YAML"):
        load_policy("{rules: [")
