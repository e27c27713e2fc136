"""bench/run.py in quick mode: every measurement runs and the report is complete (timings are not judged)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bplab.testing.scratch import REPO, data_mirror, stage_env
from support.processes import NO_MIRROR, run, unavailable


def test_quick_benchmark_measures_everything_and_writes_its_report(tmp_path: Path) -> None:
    if data_mirror() is None:
        unavailable(NO_MIRROR)
    out = tmp_path / "results"
    result = run([sys.executable, "bench/run.py", "--quick", "--out", str(out)], REPO, env=stage_env(), timeout=600)
    results = json.loads((out / "results.json").read_text())
    report = (out / "results.md").read_text()
    assert result.stdout.strip() == report.strip()

    mnist = results["mnist_epoch"]
    assert mnist["rows"] == [2000, 500]
    assert mnist["bplab_s"] > 0 and mnist["tutorial_s"] > 0 and mnist["bound_peak_s"] > 0
    assert mnist["bound_epoch_shapes_s"] > 0  # both bounds computed (their ratio is a timing: not judged here)
    assert results["matmul"]["peak_gflops"] > 1
    assert results["flower"]["steps"] == 200 and results["flower"]["bplab_eval_acc"] > 0.5

    pipeline = results["pipeline"]
    assert [s["stage"] for s in pipeline["cold"]["stages"]] == [
        "download@boston", "preprocess@boston", "train@boston_module", "evaluate@boston_module"]
    assert all(s["seconds"] > 0 for s in pipeline["cold"]["stages"])
    assert pipeline["noop"]["stages"] == []
    edit = pipeline["edit"]  # `dvc exp run -S`, as a user makes the edit
    assert [s["stage"] for s in edit["stages"]] == ["train@boston_module", "evaluate@boston_module"]
    assert [t["stage"] for t in edit["stage_totals"]] == ["train@boston_module", "evaluate@boston_module"]
    assert 0 < edit["dvc_and_processes_s"] < edit["seconds"]
    assert set(pipeline["metrics"]["boston_module"]) >= {"test_rmse", "test_r2"}

    [stage] = results["overheads"]["train_stages"]
    assert stage["stage"] == "train@boston_module"
    assert stage["startup_s"] > 0 and stage["wind_down_s"] > 0 and 0 < stage["mlflow_share"] < 1
    during_training = sum(stage["phases_s"][k] for k in ("training", "checkpoints", "mlflow_metrics"))
    assert stage["startup_s"] + during_training + stage["wind_down_s"] == pytest.approx(stage["total_s"], abs=0.05)
    [evaluate] = results["overheads"]["evaluate_stages"]
    assert evaluate["stage"] == "evaluate@boston_module"
    assert evaluate["times_floor"] == pytest.approx(evaluate["total_s"] / results["overheads"]["floor_s"])
    assert set(results["tutorial_loops"]) >= {"mnist_mlp", "flower_twolayer", "boston_adam", "total"}
    # Every target but the MNIST stage's (train@mnist_mlp is not in the quick run) and the clean-clone suite's.
    assert [t["key"] for t in results["targets"]] == [
        "edit_to_result", "train_overhead", "evaluate_wall", "flower_speedup", "mnist_shapes_bound",
        "cold_repro", "noop_repro_s"]
    by_key = {t["key"]: t for t in results["targets"]}
    assert by_key["edit_to_result"]["value"] == pytest.approx(edit["seconds"] / results["overheads"]["floor_s"])
    assert by_key["flower_speedup"]["met"] == (results["flower"]["speedup"] >= 1.0)
    # The same pipeline with each stage in its own process, side by side with the warm runner's
    own = results["pipeline_own_process"]
    assert [s["stage"] for s in own["cold"]["stages"]] == [s["stage"] for s in pipeline["cold"]["stages"]]
    assert own["metrics"] == pipeline["metrics"]  # the same results, whichever process ran the stages
    assert by_key["edit_to_result"]["own_process"] == pytest.approx(
        own["edit"]["seconds"] / results["overheads"]["floor_s"])
    assert by_key["flower_speedup"]["own_process"] is None  # a loop in this process: no stage involved
    rest = results["runner_at_rest"]
    assert rest["served"] >= 6 and rest["rss_mib"] > 100 and 0 < rest["pss_mib"] <= rest["rss_mib"]
    for section in ("## Targets", "## Training loops", "## Pipeline", "## Training stages"):
        assert section in report
    assert "| train@boston_module |" in report and "| evaluate@boston_module |" in report


def test_system_metrics_sample_cost_is_measured_against_a_real_run(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import system_metrics

    sample = system_metrics.one_sample(4, 10.0, tmp_path)
    assert sample["logged"] == 4  # every timed sample reached the store: the work measured is the real one
    assert 0 < sample["cpu_s"] <= sample["wall_s"] * 2
    assert sample["share_of_a_core"] == pytest.approx(sample["cpu_s"] / 10.0)
    report = system_metrics.markdown({"mode": "quick", "date": "today", "sample": sample, "stage": {
        "interval_s": 10.0, "pairs": 1,
        **{m: {"off": 2.0, "on": 2.02, "overhead": 0.01, "spread": 0.0} for m in ("training_s", "total_s")}}})
    assert f"{100 * sample['share_of_a_core']:.3f}% of one core" in report and "+1.00%" in report
