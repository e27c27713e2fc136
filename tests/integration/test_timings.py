"""StageClock: phase accounting (nested phases count once) and the BPLAB_TIMINGS record."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bplab.timings import TIMINGS_ENV, StageClock, process_start_time


def test_nested_phase_time_counts_only_for_the_inner_phase() -> None:
    clock = StageClock("train@x")
    with clock.phase("training"):
        time.sleep(0.05)
        with clock.phase("mlflow"):
            time.sleep(0.1)
        time.sleep(0.05)
    with clock.phase("mlflow"):
        time.sleep(0.02)
    assert clock.seconds["training"] == pytest.approx(0.1, abs=0.03)
    assert clock.seconds["mlflow"] == pytest.approx(0.12, abs=0.03)


def test_finish_appends_one_json_line_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "timings.jsonl"
    monkeypatch.setenv(TIMINGS_ENV, str(target))
    for name in ("train@a", "train@b"):
        clock = StageClock(name)
        clock.first_step = time.time()
        with clock.phase("training"):
            time.sleep(0.01)
        clock.last_step = time.time()
        if name == "train@a":
            clock.samples["log_batch_s"] = [0.0123456, 0.5]
        clock.finish()
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["stage"] for r in records] == ["train@a", "train@b"]
    assert records[0]["log_batch_s"] == [0.01235, 0.5] and "log_batch_s" not in records[1]  # each call, whole
    for r in records:
        assert r["startup_s"] > 0 and r["wind_down_s"] >= 0 and r["peak_rss_mib"] > 10
        # each figure is rounded to 1e-4 s on its own, so their sum may exceed the total by that much twice
        assert r["total_s"] >= r["startup_s"] + r["phases_s"]["training"] - 2e-4
    assert "train@b:" in capsys.readouterr().err


def test_process_start_is_in_the_past() -> None:
    assert 0 < time.time() - process_start_time() < 3600


def test_a_process_knows_when_it_started_to_within_its_interpreter_start_up() -> None:
    # The stage's start-up (process start to first step) is measured from this; psutil's
    # create_time() is off by the fraction of a second that /proc/stat's boot time drops.
    code = ("import time; now = time.time(); from bplab.timings import process_start_time; "
            "print(now - process_start_time())")
    before = time.time()
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    spawn = time.time() - before
    assert -0.02 <= age <= spawn + 0.02, (age, spawn)  # /proc counts in 10 ms ticks
