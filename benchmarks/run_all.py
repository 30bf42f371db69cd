"""Run every benchmarks/bench_*.py in turn (``make bench``); extra arguments go to each."""

from __future__ import annotations

import glob
import os
import subprocess
import sys


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    scripts = sorted(glob.glob(os.path.join(here, "bench_*.py")))
    failed = []
    for path in scripts:
        print(f"\n=== {os.path.basename(path)} ===", flush=True)
        rc = subprocess.call([sys.executable, path, *sys.argv[1:]])
        if rc != 0:
            failed.append(os.path.basename(path))
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
