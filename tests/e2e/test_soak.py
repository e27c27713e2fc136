"""The fault campaign in its short form: kill a training and its evaluation at 6 points, then
finish; 240 params mutations, 3 of them through a real stage. Nothing may be lost."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bplab.testing.scratch import REPO, data_mirror, stage_env
from support.processes import NO_MIRROR, run, unavailable


def test_killed_anywhere_and_fed_anything_the_record_stays_whole(tmp_path: Path) -> None:
    if data_mirror() is None:
        unavailable(NO_MIRROR)
    result = run([sys.executable, "bench/soak.py", "--quick", "--out", str(tmp_path)], REPO, env=stage_env(),
                 check=False, timeout=900)
    results = json.loads((tmp_path / "soak-results.json").read_text())
    assert result.returncode == 0, (tmp_path / "soak-results.md").read_text()

    [kills] = results["kills"]
    assert len(kills["steps"]) == 6 and kills["kills"] == len(kills["steps"])  # every point was reached
    assert {s["point"] for s in kills["steps"]} == {"train/mlflow:1", "train/training:1", "train/checkpoints:2:end",
                                                    "train/mlflow_model:1", "train/outputs:1",
                                                    "evaluate/registry:1:end"}
    assert all(s["running_after"] <= 1 for s in kills["steps"])
    assert kills["lost"] == [] and kills["problems"] == []
    assert kills["runs"]["RUNNING"] == 0 and kills["runs"]["FINISHED"] == 1
    assert kills["registry_versions"] == 1

    params = results["params"]
    assert params["mutations"] >= 200 and params["problems"] == []
    assert sum(params["outcomes"].values()) == params["mutations"] and params["outcomes"]["refused naming the key"]
    assert [r["exit"] in (0, 2) and not r["traceback"] for r in params["stage_runs"]] == [True] * 3
