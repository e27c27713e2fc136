"""A process that registers versions in lockstep with another, for the registry concurrency test.

Usage: registry_worker.py MODEL_URI NAME WORKER ROUNDS_DIR VALUE [VALUE ...]

For round r it waits until ROUNDS_DIR/go-r exists, calls :func:`bplab.tracking.registry.register` with
the r-th value (higher is better), then writes ROUNDS_DIR/done-WORKER-r holding the version (whole:
written aside, then renamed).

With ``REGISTRY_WORKER_HOLD=FILE`` it stops once, right after its first read of the registry's
versions: it writes FILE.read and waits until FILE exists before it moves the alias (a process on
another machine overtaking it between its read and its move).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bplab.tracking import registry


def _held_after_first_read(hold: Path) -> None:
    read_versions = registry.best_version
    held = []

    def best_version(*args, **kwargs):
        best = read_versions(*args, **kwargs)
        if not held:
            held.append(True)
            hold.with_name(hold.name + ".read").touch()
            while not hold.exists():
                time.sleep(0.01)
        return best

    registry.best_version = best_version


def main(model_uri: str, name: str, worker: str, rounds_dir: str, *values: str) -> None:
    if hold := os.environ.get("REGISTRY_WORKER_HOLD"):
        _held_after_first_read(Path(hold))
    rounds = Path(rounds_dir)
    for index, value in enumerate(values):
        while not (rounds / f"go-{index}").exists():
            time.sleep(0.002)
        score = registry.Score("test_acc", float(value), True, "split-a")
        result = registry.register(model_uri, name, f"{worker}-{index}", "run", score)
        # Written, then renamed: the test polls for the file and reads it the moment it appears.
        done = rounds / f"done-{worker}-{index}"
        done.with_suffix(".partial").write_text(result.version)
        done.with_suffix(".partial").replace(done)


if __name__ == "__main__":
    main(*sys.argv[1:])
