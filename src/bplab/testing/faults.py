"""Faults injected at a stage's phases, for the fault campaign (``bench/soak.py``) and the tests.

With ``BPLAB_KILL_AT=<stage>/<phase>:<n>`` (or ``...:<n>:end``) a stage process sends itself
SIGKILL on entering (or leaving) that phase of its :class:`~bplab.timings.StageClock` for the n-th
time, the way a power cut or the OOM killer would. The clock imports this module only when the
variable is set, so a stage run without it never loads testing code.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass

# Printed just before the kill: how a caller tells the injected kill from any other failure, whatever
# the shell between DVC and the stage reports (bash execs and says -9, dash forks and says 137).
KILL_ANNOUNCEMENT = "killing this process with SIGKILL"


@dataclass(frozen=True)
class KillPoint:
    """Where ``BPLAB_KILL_AT`` says to kill: the n-th entry into (or exit from) a stage's phase."""

    stage: str
    phase: str
    count: int
    at_end: bool
    setting: str  # as the environment said it, for the announcement

    @classmethod
    def parse(cls, variable: str, value: str) -> KillPoint | None:
        """``value``, ``<stage>/<phase>:<n>[:end]``, parsed; None when not understood."""
        stage, _, point = value.partition("/")
        phase, _, rest = point.partition(":")
        count, _, end = rest.partition(":")
        if not (stage and phase and count.isdigit()) or end not in {"", "end"}:
            return None
        return cls(stage, phase, int(count), end == "end", f"{variable}={value}")

    def check(self, stage: str, phase: str, count: int, at_end: bool) -> None:
        """Kill this process with SIGKILL if it is at this point."""
        if (stage, phase, count, at_end) == (self.stage, self.phase, self.count, self.at_end):
            print(f"{stage}: {self.setting}: {KILL_ANNOUNCEMENT}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
