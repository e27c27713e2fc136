"""A shared tracking server under a team's load: PostgreSQL and sqlite behind `mlflow server`, side by side.

For each backend it starts a real `mlflow server` (2 workers, artifacts proxied to a folder) over
a throwaway PostgreSQL cluster or a sqlite file, then:

1. **Stage load**: 8 real training processes (4 in the short version; `stages/train.py boston_module`, each in its own
   workspace with its own learning rate, synthetic Boston-shaped data) and 2 evaluate stages of
   `boston` (of two trainings made beforehand, registering versions), all started at once.
   Every metric point each training
   recorded (its `history/boston_module.csv`, and the steps of `train_loss_step`) must be in the
   store exactly once, every run must end FINISHED, and `boston@champion` must be the version with
   the best test score. Each training times its own `log_batch` calls (`BPLAB_TIMINGS`).
2. **Log-only load**: 8 client processes (4 in the short version) each log runs the way a
   training does (params and tags, then batches of 100 epoch metrics) with nothing else to do:
   what the store itself takes. Every point must arrive.
3. **A server restart** (PostgreSQL only): 3 trainings (2 in the short version) are logging
   when `mlflow server` is killed and started again on the same port and database. Each rides it
   out on its bounded retries, or exits 2 naming the server and is started again, resuming from
   its checkpoint; either way each run must hold every epoch exactly once and end FINISHED. The
   full version does it twice: started again at once, and 25 s later (longer than the retries
   hold out).

Writes bench/tracking-load.{md,json}. `--quick` is the short version; the test suite runs it on
PostgreSQL (tests/e2e/test_shared_server.py uses these functions directly).

    .venv/bin/python bench/tracking_load.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bplab.params.metrics import SECONDS
from bplab.params.schema import record_stride
from bplab.testing.local_servers import MlflowServer, PostgreSQL
from bplab.testing.scratch import REPO, set_params, stage_env
from bplab.tracking.recorder import LOGGED_THROUGH_TAG

VARIANT, DATASET = "boston_module", "boston"
BACKENDS = ("postgresql", "sqlite")
LONG_OUTAGE_S = 25.0
FAILED_ON_SERVER = "failed ("  # in a stage's error line: "writing to the MLflow tracking store ... failed (...)"


@dataclass(frozen=True)
class Sizes:
    """How much load: the suite's short version or the bench's full one."""

    trainings: int = 8
    evaluates: int = 2
    epochs: int = 1500
    train_rows: int = 400
    batch_size: int = 16
    max_epoch_points: int | None = 1000
    clients: int = 8
    runs_per_client: int = 12
    batches_per_run: int = 10
    restart_trainings: int = 3
    restart_epochs: int = 4000
    server_workers: int = 2


QUICK = Sizes(trainings=4, epochs=150, train_rows=160, clients=4, runs_per_client=2, batches_per_run=5,
              restart_trainings=2, restart_epochs=2000)


# ---------------------------------------------------------------------------------------------
# servers


@contextmanager
def tracking_server(backend: str, root: Path, workers: int = 2) -> Iterator[MlflowServer]:
    """A running `mlflow server` over ``backend`` ("postgresql": a new cluster; "sqlite": a file in ``root``)."""
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        backend_uri = stack.enter_context(PostgreSQL()).uri if backend == "postgresql" else None
        yield stack.enter_context(MlflowServer(root, backend_uri, workers=workers))


# ---------------------------------------------------------------------------------------------
# workspaces and stage processes


def workspace(path: Path, sizes: Sizes, lr: float, epochs: int | None = None) -> Path:
    """A folder the train and evaluate stages run in: the stage scripts, params.yaml with
    ``boston_module`` at ``lr``, and synthetic Boston-shaped data (13 features, a linear target)."""
    from bplab.data import processed

    path.mkdir(parents=True)
    shutil.copytree(REPO / "stages", path / "stages")
    shutil.copy(REPO / "params.yaml", path / "params.yaml")
    set_params(path, {f"train.{VARIANT}.epochs": epochs or sizes.epochs, f"train.{VARIANT}.lr": lr,
                      f"train.{VARIANT}.batch_size": sizes.batch_size,
                      "tracking.max_epoch_points": sizes.max_epoch_points})
    rng = np.random.default_rng(0)
    rows = sizes.train_rows + 2 * (sizes.train_rows // 4)
    features = rng.normal(size=(rows, 13)).astype(np.float32)
    target = (features @ rng.normal(size=(13, 1)) + 20).astype(np.float32)
    n, m = sizes.train_rows, sizes.train_rows + sizes.train_rows // 4
    processed.save(processed.Prepared({"train": (features[:n], target[:n]), "val": (features[n:m], target[n:m]),
                                       "test": (features[m:], target[m:])}), path / "data" / "processed" / DATASET)
    return path


def start_stage(stage: str, where: Path, uri: str) -> subprocess.Popen[str]:
    """``stages/<stage>.py boston_module`` in ``where``, logging to ``uri``, its stage timings in
    ``where/timings.jsonl``."""
    with (where / f"{stage}.log").open("a") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, f"stages/{stage}.py", VARIANT], cwd=where, text=True,
                                env=stage_env(MLFLOW_TRACKING_URI=uri, BPLAB_TIMINGS=str(where / "timings.jsonl")),
                                stdout=log, stderr=subprocess.STDOUT)


def finish(processes: dict[Path, subprocess.Popen[str]], timeout_s: float = 900) -> dict[Path, int]:
    """Wait for every process; their exit statuses."""
    deadline = time.monotonic() + timeout_s
    return {where: process.wait(timeout=max(1.0, deadline - time.monotonic())) for where, process in processes.items()}


def check_succeeded(codes: dict[Path, int], stage: str) -> None:
    failed = {where: code for where, code in codes.items() if code != 0}
    if failed:
        where, code = next(iter(failed.items()))
        raise AssertionError(f"{len(failed)} {stage} stage(s) failed; {where} exited {code}:\n"
                             f"{(where / f'{stage}.log').read_text()[-3000:]}")


def run_id(where: Path) -> str:
    return json.loads((where / "models" / VARIANT / "run.json").read_text())["run_id"]


def timing_records(where: Path) -> list[dict[str, Any]]:
    path = where / "timings.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------------------------------------
# what the store must hold


def expected_points(where: Path) -> dict[str, list[int]]:
    """Each metric's steps a training in ``where`` recorded, from its own files: the epochs of
    ``history/<variant>.csv`` for every column, and the steps of those epochs that
    ``train_loss_step`` keeps (every k-th of the training, the first and the last)."""
    from bplab.params.load import load_params

    with (where / "history" / f"{VARIANT}.csv").open() as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    columns = [c for c in rows[0] if c != "epoch" and all(r[c] != "" for r in rows)]
    expected = {column: epochs for column in columns}
    params = load_params(where / "params.yaml")
    variant = params.train[VARIANT]
    per_epoch = math.ceil(np.load(where / "data" / "processed" / DATASET / "x_train.npy", mmap_mode="r").shape[0]
                          / variant.batch_size)
    total = variant.epochs * per_epoch
    stride = record_stride(total, params.tracking.max_epoch_points)
    expected["train_loss_step"] = [step for e in epochs for step in range((e - 1) * per_epoch + 1, e * per_epoch + 1)
                                   if step == 1 or step % stride == 0 or step == total]
    return expected


def stored_points(client: Any, run: str, keys: list[str]) -> dict[str, list[int]]:
    """The steps of each metric in ``keys`` as the store holds them, sorted, duplicates kept."""
    return {key: sorted(m.step for m in client.get_metric_history(run, key)) for key in keys}


def check_every_point_once(client: Any, where: Path) -> int:
    """Fail unless the run of the training in ``where`` holds each recorded point exactly once
    and ended FINISHED with every epoch counted; the number of points."""
    run = run_id(where)
    expected = expected_points(where)
    stored = stored_points(client, run, list(expected))
    for key, steps in expected.items():
        if stored[key] != steps:
            missing, doubled = sorted(set(steps) - set(stored[key])), len(stored[key]) - len(set(stored[key]))
            raise AssertionError(f"run {run} ({where.name}), {key}: {len(stored[key])} points stored, "
                                 f"{len(steps)} recorded; missing steps {missing[:10]}, {doubled} doubled")
    info = client.get_run(run)
    assert info.info.status == "FINISHED", f"run {run} ({where.name}) is {info.info.status}"
    assert info.data.tags[LOGGED_THROUGH_TAG] == str(expected[SECONDS][-1]), info.data.tags
    return sum(len(steps) for steps in expected.values())


def check_champion(client: Any, judged_runs: set[str], metric: str, higher_is_better: bool) -> dict[str, Any]:
    """Fail unless ``boston@champion`` is the best of the versions scored on the split the
    ``judged_runs`` were (ties keep the earlier version); those versions' scores."""
    from bplab.tracking.registry import SPLIT_TAG

    versions = client.search_model_versions(f"name = '{DATASET}'")
    splits = {v.tags[SPLIT_TAG] for v in versions if v.run_id in judged_runs}
    assert len(splits) == 1, f"the evaluated runs {judged_runs} have versions on splits {splits}"
    scores = {int(v.version): float(v.tags[metric]) for v in versions if v.tags[SPLIT_TAG] in splits}
    assert {v.run_id for v in versions if int(v.version) in scores} >= judged_runs, "an evaluated run has no version"
    best = (max if higher_is_better else min)(scores.values())
    champion = int(client.get_model_version_by_alias(DATASET, "champion").version)
    first_best = min(v for v, score in scores.items() if score == best)
    assert champion == first_best, f"champion is version {champion}, the best is {first_best}: {scores}"
    return {"versions": scores, "champion": champion}


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_ms(seconds: list[float]) -> dict[str, float]:
    return {"calls": len(seconds), "p50_ms": round(percentile(seconds, 50) * 1000, 1),
            "p95_ms": round(percentile(seconds, 95) * 1000, 1), "max_ms": round(max(seconds) * 1000, 1)}


# ---------------------------------------------------------------------------------------------
# 1. the stage load


def stage_load(uri: str, root: Path, sizes: Sizes) -> dict[str, Any]:
    """Trainings and evaluate stages at once against ``uri`` (see the module's docstring), checked."""
    from mlflow import MlflowClient

    from bplab.data import catalog

    # The two to evaluate, trained first: learning rates far apart, so their test scores differ.
    judged = [workspace(root / f"judged-{i}", sizes, lr) for i, lr in enumerate((1e-4, 1e-2)[:sizes.evaluates])]
    check_succeeded(finish({w: start_stage("train", w, uri) for w in judged}), "train")
    trainings = [workspace(root / f"train-{i}", sizes, 10 ** (-4 + 2 * i / max(1, sizes.trainings - 1)))
                 for i in range(sizes.trainings)]
    started = time.perf_counter()
    training = {w: start_stage("train", w, uri) for w in trainings}
    evaluating = {w: start_stage("evaluate", w, uri) for w in judged}
    trained, evaluated = finish(training), finish(evaluating)
    wall = time.perf_counter() - started
    check_succeeded(trained, "train")
    check_succeeded(evaluated, "evaluate")

    client = MlflowClient(uri)
    points = sum(check_every_point_once(client, w) for w in trainings)  # logged during the load
    points_before = sum(check_every_point_once(client, w) for w in judged)
    rule = catalog.dataset(DATASET).champion
    registry = check_champion(client, {run_id(w) for w in judged}, rule.selection, rule.higher_is_better)
    seconds = [s for w in trainings for r in timing_records(w) if r["stage"].startswith("train@")
               for s in r.get("log_batch_s", [])]
    return {"trainings": len(training), "evaluates": len(evaluating), "wall_s": round(wall, 2),
            "stage_runs_per_min": round((len(training) + len(evaluating)) / wall * 60, 1),
            "points_checked": points + points_before, "points_per_s": round(points / wall, 1),
            "log_batch": latency_ms(seconds), **registry}


# ---------------------------------------------------------------------------------------------
# 2. the log-only load


def log_runs(uri: str, worker: int, runs: int, batches: int) -> list[float]:
    """Log ``runs`` training-like runs (15 params and 5 tags, then ``batches`` batches of 20 epochs
    x 5 metrics, then FINISHED) to ``uri``; each log_batch's seconds. Every point is checked back."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tracking-load")  # one for all clients, as a team's dataset has
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("tracking-load")
    keys = ("train_loss", "val_loss", "lr", "grad_norm", SECONDS)
    seconds = []
    for i in range(runs):
        run = client.create_run(experiment_id, run_name=f"client-{worker}-{i}")
        client.log_batch(run.info.run_id, params=[Param(f"p{j}", str(j)) for j in range(15)],
                         tags=[RunTag(k, "x") for k in ("variant", "dataset", "stage", "git_commit", "dvc_exp")])
        for b in range(batches):
            now = int(time.time() * 1000)
            metrics = [Metric(k, 1.0 / e, now, e) for e in range(b * 20 + 1, b * 20 + 21) for k in keys]
            started = time.perf_counter()
            client.log_batch(run.info.run_id, metrics=metrics, tags=[RunTag(LOGGED_THROUGH_TAG, str(b * 20 + 20))])
            seconds.append(time.perf_counter() - started)
        client.set_terminated(run.info.run_id)
        stored = client.get_metric_history(run.info.run_id, SECONDS)
        assert sorted(m.step for m in stored) == list(range(1, batches * 20 + 1)), f"client {worker} run {i}"
    return seconds


def log_only_load(uri: str, sizes: Sizes) -> dict[str, Any]:
    """``sizes.clients`` processes logging at once (see :func:`log_runs`)."""
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # not a "View run" line per run
    log_runs(uri, -1, 1, 1)  # warm-up: the experiment made, the server's code paths loaded
    started = time.perf_counter()
    with ProcessPoolExecutor(sizes.clients) as pool:
        per_client = list(pool.map(log_runs, [uri] * sizes.clients, range(sizes.clients),
                                   [sizes.runs_per_client] * sizes.clients, [sizes.batches_per_run] * sizes.clients))
    wall = time.perf_counter() - started
    runs = sizes.clients * sizes.runs_per_client
    points = runs * sizes.batches_per_run * 100
    return {"clients": sizes.clients, "runs": runs, "wall_s": round(wall, 2),
            "runs_per_min": round(runs / wall * 60, 1), "points_per_s": round(points / wall, 1),
            "log_batch": latency_ms([s for seconds in per_client for s in seconds])}


# ---------------------------------------------------------------------------------------------
# 3. a restart while trainings log


def _logging_since(where: Path) -> bool:
    """Whether the training in ``where`` has stored a report (its checkpoint is past epoch 0)."""
    from bplab.models.safe_load import load_without_code

    path = where / "checkpoints" / f"{VARIANT}.pt"
    try:
        return path.exists() and load_without_code(path, "a checkpoint")["epoch"] >= 1
    except Exception:  # noqa: BLE001 (written at this instant: look again)
        return False


def restart_during_training(server: MlflowServer, root: Path, sizes: Sizes, sig: signal.Signals = signal.SIGKILL,
                            outage_s: float = 0.0) -> dict[str, Any]:
    """Restart ``server`` (down for ``outage_s`` more than its start takes) while trainings log to
    it, then check that nothing was lost or doubled.

    Trainings that exited 2 (their retries ran out) are started again once the server is back,
    as the next `dvc repro` would, and resume from their checkpoints.
    """
    from mlflow import MlflowClient

    trainings = [workspace(root / f"restart-{i}", sizes, 1e-3 * (i + 1), epochs=sizes.restart_epochs)
                 for i in range(sizes.restart_trainings)]
    processes = {w: start_stage("train", w, server.uri) for w in trainings}
    deadline = time.monotonic() + 300
    while not all(_logging_since(w) for w in trainings):
        exited = {w: p.returncode for w, p in processes.items() if p.poll() is not None}
        assert not exited, f"a training ended before the restart: {exited}"
        assert time.monotonic() < deadline, "the trainings did not start logging in 300 s"
        time.sleep(0.1)
    down = time.perf_counter()
    server.stop(sig)
    time.sleep(outage_s)
    server.start()
    downtime = time.perf_counter() - down
    first = finish(processes)
    outcomes = {}
    for where, code in first.items():
        log = (where / "train.log").read_text()
        if code == 0:
            outcomes[where.name] = "rode it out"
        elif code == 2 and f"writing to the MLflow tracking store {server.uri} {FAILED_ON_SERVER}" in log \
                and "Traceback" not in log:
            outcomes[where.name] = "failed clearly, resumed"
        else:
            raise AssertionError(f"{where.name} exited {code} after the restart:\n{log[-3000:]}")
    again = {w: start_stage("train", w, server.uri) for w, code in first.items() if code != 0}
    check_succeeded(finish(again), "train")
    for where in again:
        assert "resuming from checkpoints/" in (where / "train.log").read_text(), where
    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name(DATASET).experiment_id],
                              "attributes.run_name = 'boston_module'")
    restarted_runs = {run_id(w) for w in trainings}
    assert restarted_runs <= {r.info.run_id for r in runs} and len(restarted_runs) == len(trainings)
    points = sum(check_every_point_once(client, w) for w in trainings)
    return {"trainings": len(trainings), "signal": sig.name, "outage_s": outage_s, "downtime_s": round(downtime, 2),
            "outcomes": outcomes, "points_checked": points}


# ---------------------------------------------------------------------------------------------
# the report


def measure(backend: str, root: Path, sizes: Sizes) -> dict[str, Any]:
    """The stage load and the log-only load (and, for PostgreSQL, the restart) on one backend."""
    with tracking_server(backend, root / "server", sizes.server_workers) as server:
        result = {"stage_load": stage_load(server.uri, root / "stage-load", sizes),
                  "log_only_load": log_only_load(server.uri, sizes)}
        if backend == "postgresql":
            result["restart"] = restart_during_training(server, root / "restart", sizes)
            # Down longer than the retries hold out (14 to 18 s): the trainings fail and resume.
            result["long_outage"] = restart_during_training(server, root / "long-outage", sizes, outage_s=LONG_OUTAGE_S)
    return result


def markdown(results: dict[str, Any]) -> str:
    sizes, lines = results["sizes"], []
    lines += ["# A shared tracking server under load: PostgreSQL and sqlite behind `mlflow server`", "",
              f"`bench/tracking_load.py{' --quick' if results['quick'] else ''}` on {results['machine']}, "
              f"{results['date']}; `mlflow server --workers {sizes['server_workers']}`, artifacts proxied.", "",
              f"**Stage load**: {sizes['trainings']} `train@{VARIANT}` processes ({sizes['epochs']} epochs, "
              f"batch {sizes['batch_size']}, {sizes['train_rows']} rows) and {sizes['evaluates']} "
              f"`evaluate@{VARIANT}` (of trainings made before) started at once; every recorded point checked "
              "back once, every run FINISHED, `boston@champion` the best version.", "",
              "| backend | wall | stage runs/min | points checked | points/s | log_batch calls | p50 | p95 | max |"
              " champion |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for backend in BACKENDS:
        s = results[backend]["stage_load"]
        lb = s["log_batch"]
        lines.append(f"| {backend} | {s['wall_s']:.1f} s | {s['stage_runs_per_min']} | {s['points_checked']} | "
                     f"{s['points_per_s']} | {lb['calls']} | {lb['p50_ms']} ms | {lb['p95_ms']} ms | "
                     f"{lb['max_ms']} ms | version {s['champion']} of {len(s['versions'])} |")
    lines += ["", f"**Log-only load**: {sizes['clients']} client processes, {sizes['runs_per_client']} runs each "
              f"(15 params, 5 tags, {sizes['batches_per_run']} batches of 100 points); every point checked back.",
              "", "| backend | wall | runs/min | points/s | log_batch calls | p50 | p95 | max |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for backend in BACKENDS:
        s = results[backend]["log_only_load"]
        lb = s["log_batch"]
        lines.append(f"| {backend} | {s['wall_s']:.1f} s | {s['runs_per_min']} | {s['points_per_s']} | {lb['calls']} | "
                     f"{lb['p50_ms']} ms | {lb['p95_ms']} ms | {lb['max_ms']} ms |")
    for key, what in (("restart", "killed (SIGKILL) and started again at once"),
                      ("long_outage", f"killed and started again {LONG_OUTAGE_S:.0f} s later")):
        if key not in results["postgresql"]:
            continue
        restart = results["postgresql"][key]
        counts: dict[str, int] = {}
        for outcome in restart["outcomes"].values():
            counts[outcome] = counts.get(outcome, 0) + 1
        lines += ["", f"**{'Restart' if key == 'restart' else 'Long outage'}** (PostgreSQL): `mlflow server` {what} "
                  f"while {restart['trainings']} trainings ({sizes['restart_epochs']} epochs) logged; it answered "
                  f"again after {restart['downtime_s']} s. Outcome: "
                  + ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
                  + f"; {restart['points_checked']} points checked: none lost, none doubled, every run FINISHED."]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the test suite's short version")
    parser.add_argument("--out", type=Path, default=REPO / "bench", help="folder for tracking-load.{md,json}")
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    results: dict[str, Any] = {"quick": args.quick, "sizes": asdict(sizes), "date": time.strftime("%Y-%m-%d"),
                               "machine": f"{platform.processor() or platform.machine()}, "
                                          f"{len(os.sched_getaffinity(0))} cores"}
    with tempfile.TemporaryDirectory(prefix="bplab-tracking-load-") as tmp:
        for backend in BACKENDS:
            print(f"{backend}: measuring", file=sys.stderr)
            results[backend] = measure(backend, Path(tmp) / backend, sizes)
            print(json.dumps(results[backend]), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tracking-load.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "tracking-load.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
