"""Where a stage process spends its time: start-up, training, MLflow logging, pictures, outputs.

A stage keeps one :class:`StageClock`. At its end it prints a one-line summary to stderr and, when
``BPLAB_TIMINGS`` names a file, appends the numbers there as one JSON line (``bench/run.py`` sets
it around ``dvc repro`` to break each stage down).

The phases are also where the fault campaign (``bench/soak.py``) kills a stage, when
``BPLAB_KILL_AT`` is set: see :mod:`bplab.testing.faults`, imported only then.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TIMINGS_ENV = "BPLAB_TIMINGS"
FAULT_ENV = "BPLAB_KILL_AT"  # a kill point of the fault campaign: bplab.testing.faults


def _kill_point() -> Any:
    """The fault campaign's kill point when ``BPLAB_KILL_AT`` is set, else None (no testing code loaded)."""
    if not os.environ.get(FAULT_ENV):
        return None
    from bplab.testing.faults import KillPoint

    return KillPoint.parse(FAULT_ENV, os.environ[FAULT_ENV])


def process_start_time() -> float:
    """Wall-clock time (``time.time()``) at which this stage's process started, to about 10 ms: the
    process DVC started (:func:`bplab.runner.client.stage_pid`), so that a stage forked by the
    warm runner counts its client's start-up too.

    On Linux it is the process's age from ``/proc`` (start ticks against the uptime, one clock)
    subtracted from now. psutil's ``create_time()`` adds the start ticks to the boot time, which
    ``/proc/stat`` gives in whole seconds: every stage would look up to a second older.
    """
    from bplab.runner.client import stage_pid

    try:
        ticks = int(Path(f"/proc/{stage_pid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process(stage_pid()).create_time()


class StageClock:
    """Seconds per phase of one stage process; phases may nest, and time counts for the innermost.

    ``first_step`` and ``last_step`` are the wall-clock times training began and ended, so that
    start-up (process start to first step) and wind-down (last step to the end) can be told apart.
    """

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.started = process_start_time()
        self.seconds: dict[str, float] = {}
        self.first_step: float | None = None
        self.last_step: float | None = None
        self._stack: list[tuple[str, float]] = []
        self._entries: dict[str, int] = {}
        self._kill_at = _kill_point()
        self.samples: dict[str, list[float]] = {}  # per-call durations kept whole (``log_batch_s``)

    def _maybe_killed(self, name: str, at_end: bool) -> None:
        if self._kill_at is not None:
            self._kill_at.check(self.stage, name, self._entries[name], at_end)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the time spent inside the block as ``name`` (minus nested phases)."""
        self._entries[name] = self._entries.get(name, 0) + 1
        self._maybe_killed(name, at_end=False)
        now = time.perf_counter()
        if self._stack:
            outer, since = self._stack[-1]
            self.seconds[outer] = self.seconds.get(outer, 0.0) + now - since
        self._stack.append((name, now))
        try:
            yield
            self._maybe_killed(name, at_end=True)
        finally:
            now = time.perf_counter()
            _, since = self._stack.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + now - since
            if self._stack:
                self._stack[-1] = (self._stack[-1][0], now)

    def finish(self) -> dict[str, Any]:
        """The stage's breakdown; printed to stderr and appended to ``$BPLAB_TIMINGS`` when set."""
        ended = time.time()
        total = ended - self.started
        record: dict[str, Any] = {
            "stage": self.stage,
            "total_s": round(total, 4),
            "phases_s": {k: round(v, 4) for k, v in self.seconds.items()},
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        record |= {name: [round(v, 5) for v in values] for name, values in self.samples.items()}
        if self.first_step is not None and self.last_step is not None:
            record["startup_s"] = round(self.first_step - self.started, 4)
            record["wind_down_s"] = round(ended - self.last_step, 4)
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        print(f"{self.stage}: {total:.2f} s in all ({phases}); peak RSS {record['peak_rss_mib']:.0f} MiB",
              file=sys.stderr)
        if path := os.environ.get(TIMINGS_ENV):
            with Path(path).open("a") as out:
                out.write(json.dumps(record) + "\n")
        return record
