"""A process that registers versions in lockstep with another, for the registry concurrency test.

Usage: registry_worker.py MODEL_URI NAME WORKER ROUNDS_DIR VALUE [VALUE ...]

For round r it waits until ROUNDS_DIR/go-r exists, calls :func:`bplab.registry.register` with
the r-th value (higher is better), then writes ROUNDS_DIR/done-WORKER-r holding the version.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bplab import registry


def main(model_uri: str, name: str, worker: str, rounds_dir: str, *values: str) -> None:
    rounds = Path(rounds_dir)
    for index, value in enumerate(values):
        while not (rounds / f"go-{index}").exists():
            time.sleep(0.002)
        score = registry.Score("test_acc", float(value), True, "split-a")
        result = registry.register(model_uri, name, f"{worker}-{index}", "run", score)
        (rounds / f"done-{worker}-{index}").write_text(result.version)


if __name__ == "__main__":
    main(*sys.argv[1:])
