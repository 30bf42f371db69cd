"""Run every benchmarks/bench_*.py in turn (``make bench``); extra arguments go to each.

``bench_sharded_init.py`` (spawns gloo groups of 1, 2 and 4 ranks per case) runs with
``--small`` unless ``--sharded-full`` is given (the ~1 B parameter figures of
docs/performance.md; several minutes on this host)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    scripts = sorted(glob.glob(os.path.join(here, "bench_*.py")))
    failed = []
    args = [a for a in sys.argv[1:] if a != "--sharded-full"]
    for path in scripts:
        print(f"\n=== {os.path.basename(path)} ===", flush=True)
        extra = []
        if os.path.basename(path) == "bench_sharded_init.py" and "--sharded-full" not in sys.argv[1:]:
            extra = ["--small"]
        rc = subprocess.call([sys.executable, path, *args, *extra])
        if rc != 0:
            failed.append(os.path.basename(path))
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
