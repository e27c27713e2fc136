"""What MLflow's system metrics cost a training: the MNIST stage with them off and on.

    .venv/bin/python bench/system_metrics.py                  # full MNIST, 3 pairs: about 5 minutes
    .venv/bin/python bench/system_metrics.py --quick --out /tmp/s   # tiny, what the tests run

Two measures, written to ``system-metrics.md`` and ``.json`` in ``--out`` (default ``bench/``):

- **The stage, off and on.** ``train@mnist_mlp`` in a scratch copy, run alternately with
  ``tracking.system_metrics: null`` and with the default interval, ``--pairs`` times; the
  overhead is the difference of the median training-phase (and whole-stage) seconds. On two
  shared cores this difference is within the run-to-run noise, which the report gives too.
- **One sample, alone.** The work MLflow's monitor thread does per sample (read CPU, memory,
  disk and network counters; check the run is still open; log the values), timed over many
  samples against a real run in a scratch sqlite store. Its cost over the sampling interval is
  the share of one core the monitor takes: a bound that does not drown in noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bplab.testing import scratch

REPO = Path(__file__).resolve().parents[1]
VARIANT = "mnist_mlp"
QUICK = {"data.mnist.preprocess.train_limit": 2000, "data.mnist.preprocess.test_limit": 500,
         f"train.{VARIANT}.epochs": 2}


def _stage_once(repo: Path, interval: float | None, timings: Path) -> dict[str, float]:
    scratch.set_params(repo, {"tracking.system_metrics": interval})
    for leftover in (repo / "checkpoints" / f"{VARIANT}.pt", repo / "models" / VARIANT):
        subprocess.run(["rm", "-rf", str(leftover)], check=True)
    timings.unlink(missing_ok=True)
    result = subprocess.run([sys.executable, "stages/train.py", VARIANT], cwd=repo, capture_output=True, text=True,
                            env=scratch.stage_env(repo, BPLAB_TIMINGS=str(timings)))
    if result.returncode != 0:
        sys.exit(f"bench: train@{VARIANT} failed:\n{result.stderr[-3000:]}")
    record = json.loads(timings.read_text().splitlines()[-1])
    return {"total_s": record["total_s"], "training_s": record["phases_s"]["training"]}


def stage_pairs(pairs: int, interval: float, overrides: dict[str, Any], work: Path) -> dict[str, Any]:
    """``train@mnist_mlp`` with system metrics off and on, alternately, ``pairs`` times."""
    repo = scratch.copy_repository(work / "repo", overrides)
    prepared = subprocess.run(["dvc", "repro", "preprocess@mnist"], cwd=repo, capture_output=True, text=True,
                              env=scratch.stage_env(repo))
    if prepared.returncode != 0:
        sys.exit(f"bench: preprocess@mnist failed:\n{prepared.stderr[-3000:]}")
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for pair in range(pairs):
        for label, value in (("off", None), ("on", interval)) if pair % 2 == 0 else (("on", interval), ("off", None)):
            runs[label].append(_stage_once(repo, value, work / "timings.jsonl"))
            print(f"bench: pair {pair + 1}/{pairs}, {label}: {runs[label][-1]}", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {"interval_s": interval, "pairs": pairs, "runs": runs}
    for measure in ("training_s", "total_s"):
        off = statistics.median(r[measure] for r in runs["off"])
        on = statistics.median(r[measure] for r in runs["on"])
        every = [r[measure] for r in runs["off"] + runs["on"]]
        summary[measure] = {"off": off, "on": on, "overhead": (on - off) / off,
                            "spread": (max(every) - min(every)) / statistics.median(every)}
    return summary


def one_sample(samples: int, interval: float, work: Path) -> dict[str, float]:
    """Seconds (wall and CPU) of one monitor sample, the median of ``samples``, against a real run."""
    from mlflow import MlflowClient
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    uri = f"sqlite:///{work / 'sample.db'}"
    client = MlflowClient(uri)  # no global tracking URI is set: the caller's MLflow is left as it was
    run = client.create_run("0")
    monitor = SystemMetricsMonitor(run.info.run_id, sampling_interval=interval, tracking_uri=uri)
    monitor.collect_metrics()  # psutil's first CPU reading is a baseline
    walls, cpus = [], []
    for _ in range(samples):
        wall, cpu = time.perf_counter(), time.thread_time()
        monitor.collect_metrics()  # the loop's work per sample, as SystemMetricsMonitor.monitor does it
        client.get_run(run.info.run_id)
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()  # each sample stored at once: the most it can cost
        walls.append(time.perf_counter() - wall)
        cpus.append(time.thread_time() - cpu)
    client.set_terminated(run.info.run_id)
    logged = len(MlflowClient(uri).get_metric_history(run.info.run_id, "system/cpu_utilization_percentage"))
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {"samples": samples, "logged": logged, "wall_s": wall, "cpu_s": cpu, "interval_s": interval,
            "share_of_a_core": cpu / interval}


def markdown(results: dict[str, Any]) -> str:
    """The report: the stage off and on, and the cost of one sample."""
    stage, sample = results["stage"], results["sample"]
    lines = [f"# System metrics overhead ({results['mode']}, {results['date']})", "",
             f"train@{VARIANT}, system metrics off and on (every {stage['interval_s']:g} s), "
             f"{stage['pairs']} alternating pairs, medians:", "",
             "| measure | off (s) | on (s) | overhead | spread of all runs |", "| --- | --- | --- | --- | --- |"]
    for measure in ("training_s", "total_s"):
        m = stage[measure]
        lines.append(f"| {measure[:-2]} | {m['off']:.2f} | {m['on']:.2f} | {100 * m['overhead']:+.2f}% | "
                     f"{100 * m['spread']:.1f}% |")
    noise = stage["training_s"]["spread"]
    if abs(stage["training_s"]["overhead"]) < noise or stage["training_s"]["overhead"] < 0:
        lines += ["", f"The difference is noise: the runs' own spread is {100 * noise:.1f}% (and a monitor thread "
                      "cannot make training faster). On a shared 2-core machine, whole-stage timings cannot resolve "
                      "it; the figure below can."]
    lines += ["", f"One sample (CPU, memory, disk and network counters, the run-status check, the logged values), "
                  f"median of {sample['samples']}: {1000 * sample['wall_s']:.1f} ms wall, "
                  f"{1000 * sample['cpu_s']:.1f} ms CPU; every {sample['interval_s']:g} s that is "
                  f"**{100 * sample['share_of_a_core']:.3f}% of one core**.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny MNIST and one pair: checks that it runs")
    parser.add_argument("--pairs", type=int, default=3, help="alternating off/on stage runs (full mode)")
    parser.add_argument("--out", type=Path, default=REPO / "bench", help="where system-metrics.md/json go")
    args = parser.parse_args()
    from bplab.params.load import load_params

    interval = load_params(REPO / "params.yaml").tracking.system_metrics or 2.0  # what the pipeline uses
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="bplab-sysmetrics-") as tmp:
        work = Path(tmp)
        results["stage"] = stage_pairs(1 if args.quick else args.pairs, interval, QUICK if args.quick else {}, work)
        results["sample"] = one_sample(20 if args.quick else 200, interval, work)
    report = markdown(results)
    (args.out / "system-metrics.md").write_text(report)
    (args.out / "system-metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    print(report)


if __name__ == "__main__":
    main()
