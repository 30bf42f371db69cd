"""What the multi-process (gloo) tests share: a rank's checks reported through a file."""

from __future__ import annotations

import contextlib
import os
import traceback
from typing import Iterator

import torch.distributed as dist


@contextlib.contextmanager
def rank_report(rank: int, result_dir: str, failures: list[str]) -> Iterator[None]:
    """Run a rank's checks: an exception becomes a failure; the failures go to
    ``rank{rank}.txt`` (empty: all passed) and the process group is destroyed."""
    try:
        yield
    except Exception:
        failures.append(traceback.format_exc())
    finally:
        with open(os.path.join(str(result_dir), f"rank{rank}.txt"), "w") as fh:
            fh.write("\n".join(failures))
        if dist.is_initialized():
            dist.destroy_process_group()
