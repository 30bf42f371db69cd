"""Run every benchmarks/bench_*.py in turn (``make bench``); extra arguments go to each.

``bench_sharded_init.py`` (spawns gloo groups of 1, 2 and 4 ranks per case) runs with
``--small`` unless ``--sharded-full`` is given (the ~1 B parameter figures of
docs/performance.md; several minutes on this host). ``bench_materialize.py`` runs twice:
at its default size (1.56 B parameters, every case) and with ``--medium`` (the 124 M
GPT-2 small shape, the floor, the stream's bound for two presets (``draw:``) and the
materialize cases: issue 18's floor target)."""

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
    runs = []
    for path in scripts:
        name = os.path.basename(path)
        if name == "bench_sharded_init.py" and "--sharded-full" not in sys.argv[1:]:
            runs.append((path, ["--small"]))
        elif name == "bench_materialize.py":
            runs.append((path, []))
            runs.append((path, ["--medium", "--cases", "floor", "draw:pytorch", "draw:llama", "materialize:pytorch",
                                "materialize:gpt2", "materialize:llama"]))
        else:
            runs.append((path, []))
    for path, extra in runs:
        label = " ".join([os.path.basename(path), *extra])
        print(f"\n=== {label} ===", flush=True)
        rc = subprocess.call([sys.executable, path, *args, *extra])
        if rc != 0:
            failed.append(label)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
