"""Every ```python block of every docs/*.md file (and of README.md) runs.

Blocks of one file run in order in one shared namespace (a later block may use
names an earlier one defined); each file gets a fresh namespace and runs in a
temporary working directory, so samples that write files leave nothing behind.
Use ```text / ```bash fences for anything that is not meant to run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: pages whose samples need optional extras (`make install` installs them): skipped, saying which, without
REQUIRES = {"integrations.md": ("lightning", "transformers", "accelerate", "tensorboard", "wandb")}
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, source) of each ```python block of a markdown text."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def test_block_extraction():
    text = "intro\n```python\nx = 1\n```\n```text\nnot code\n```\n```python\ny = x + 1\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = x + 1\n")]


def test_docs_exist():
    assert (DOCS / "initializers.md").is_file()
    assert python_blocks((DOCS / "initializers.md").read_text())


@pytest.mark.parametrize("path", sorted(DOCS.glob("*.md")) + [DOCS.parent / "README.md"], ids=lambda p: p.name)
def test_doc_samples_run(path, tmp_path, monkeypatch):
    for module in REQUIRES.get(path.name, ()):
        pytest.importorskip(module, reason=f"{path.name} needs the optional {module}")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs.{path.stem}"}
    for line, source in python_blocks(path.read_text(encoding="utf-8")):
        code = compile(source, f"{path.name}:{line}", "exec")
        try:
            exec(code, namespace)  # noqa: S102 - the point of the test
        except Exception as exc:
            raise AssertionError(f"{path.name}, python block at line {line} failed: {exc!r}") from exc
