"""The examples of docs/integrations.md are the files in examples/, verbatim: tests/test_docs.py runs
the page's samples, so it runs the examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_docs import python_blocks

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("integrations_lightning.py", "integrations_hf_trainer.py", "integrations_logging.py")


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_is_a_sample_of_the_integrations_page(name):
    blocks = [src for _, src in python_blocks((ROOT / "docs" / "integrations.md").read_text(encoding="utf-8"))]
    assert (ROOT / "examples" / name).read_text(encoding="utf-8") in blocks


def test_the_page_has_no_other_sample():
    blocks = python_blocks((ROOT / "docs" / "integrations.md").read_text(encoding="utf-8"))
    assert len(blocks) == len(EXAMPLES)
