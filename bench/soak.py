"""Fault campaign: kill stages anywhere, feed params.yaml anything, and check that nothing is lost.

    make soak                                     # the full campaign: writes bench/soak-results.md/json
    .venv/bin/python bench/soak.py --quick --out /tmp/s   # the short one the test suite runs

**Kills.** In a scratch copy of the repository with tiny params, ``dvc repro train@V evaluate@V``
is run once per kill point with ``BPLAB_KILL_AT`` set (the stage sends itself SIGKILL on entering
or leaving that phase: see ``bplab.timings``), then once without. The finished result is compared
with an uninterrupted run in a second copy: the training run's MLflow metric history (every
epoch once, same values; wall times aside), ``models/V`` (weights and run.json, ids aside),
``history/V.csv`` (wall times aside) and ``metrics/V.json`` (byte for byte). After every step no
run but the one just killed may be RUNNING, and at the end none; no ``.part``/``.tmp``/``.old``
leftover may remain.

**Params.** Seeded random mutations of params.yaml (wrong types, negatives, zero, NaN and
infinities, huge values, missing and unknown keys) are validated, and a sample is run through
real stages. Each must load, or fail with a ParamsError naming the mutated key; a stage must exit
0 or 2, never with a traceback.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bplab.commands.reproduce import UNREPEATABLE
from bplab.testing import scratch
from bplab.testing.faults import KILL_ANNOUNCEMENT

REPO = Path(__file__).resolve().parents[1]
LEFTOVER_SUFFIXES = (".part", ".tmp", ".old")


@dataclass(frozen=True)
class Campaign:
    variants: dict[str, dict[str, Any]]  # variant -> its params overrides (tiny, but several reports long)
    points: tuple[str, ...]  # "<stage kind>/<phase>:<n>[:end]", for each variant
    mutations: int
    stage_samples: int
    train_samples: bool  # run the samples that touch training through train@flower_logreg too


# Kill points across a training's life, then an evaluation's. Train phases: mlflow_setup (opening
# the run), mlflow (1: params and inputs, 2: pictures, 3: ending the run), training, mlflow_metrics
# and checkpoints (each progress report), pictures, mlflow_model, outputs.
TRAIN_POINTS = ("train/mlflow_setup:1", "train/mlflow:1", "train/training:1", "train/mlflow_metrics:1",
                "train/checkpoints:2:end", "train/pictures:1", "train/mlflow_model:1", "train/mlflow_model:1:end",
                "train/outputs:1", "train/outputs:1:end", "train/mlflow:3")
EVALUATE_POINTS = ("evaluate/mlflow_setup:1:end", "evaluate/mlflow:1:end", "evaluate/pictures:1:end",
                   "evaluate/registry:1:end", "evaluate/outputs:1:end", "evaluate/mlflow:3")
# Each variant trains for a few seconds: a start resumed after a kill still sees two progress reports.
BOSTON = {"train.boston_module.epochs": 600, "train.boston_module.batch_size": 16}
# The test suite's: one kill per kind of record a stage writes (the run, its epochs, the checkpoint,
# the logged model, the outputs, the registry version and its card); `make soak` kills at every point.
QUICK = Campaign({"boston_module": BOSTON},
                 ("train/mlflow:1", "train/training:1", "train/checkpoints:2:end", "train/mlflow_model:1",
                  "train/outputs:1", "evaluate/registry:1:end"),
                 mutations=240, stage_samples=3, train_samples=False)
FULL = Campaign({"boston_module": BOSTON,
                 "flower_module": {"train.flower_module.epochs": 6000},
                 "mnist_batchnet": {"train.mnist_batchnet.epochs": 40, "data.mnist.preprocess.train_limit": 6000,
                                    "data.mnist.preprocess.test_limit": 1000}},
                TRAIN_POINTS + EVALUATE_POINTS, mutations=1000, stage_samples=12, train_samples=True)


# --- kills ---------------------------------------------------------------------------------------

def _dvc(repo: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=900)


def _client(repo: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def _runs(repo: Path, dataset: str, variant: str) -> list[Any]:
    client = _client(repo)
    experiment = client.get_experiment_by_name(dataset)
    return [] if experiment is None else client.search_runs(
        [experiment.experiment_id], f"attributes.run_name = '{variant}'", order_by=["attributes.start_time ASC"])


def _histories(repo: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = _client(repo)
    names = [m for m in client.get_run(run_id).data.metrics if not m.startswith(UNREPEATABLE)]
    return {name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name)) for name in names}


def _outputs(repo: Path, variant: str) -> dict[str, Any]:
    """What the stages wrote, less what differs between any two runs (ids, wall times)."""
    from bplab.models.safe_load import load_state_dict, load_whole_model

    folder = repo / "models" / variant
    record = json.loads((folder / "run.json").read_text())
    whole = load_whole_model(folder / "model.pt").state_dict()
    return {
        "run.json": {k: v for k, v in record.items() if k not in {"run_id", "experiment_id", "model_uri", "model_id"}},
        "state_dict": {k: v.tolist() for k, v in load_state_dict(folder / "state_dict.pt").items()},
        "model.pt": {k: v.tolist() for k, v in whole.items()},
        "history": [line.split(",")[:-1] for line in (repo / "history" / f"{variant}.csv").read_text().splitlines()],
        "metrics": (repo / "metrics" / f"{variant}.json").read_text(),
    }


def _leftovers(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in repo.rglob(".*")
                  if p.name.endswith(LEFTOVER_SUFFIXES) and ".git" not in p.parts and ".dvc" not in p.parts)


def kill_campaign(variant: str, overrides: dict[str, Any], points: tuple[str, ...], scratch_dir: Path) -> dict:
    """Kill ``variant``'s stages at each point, finish, and compare with an uninterrupted run."""
    from bplab.params.load import load_params

    dataset = load_params(REPO / "params.yaml").variant(variant).dataset
    targets = [f"train@{variant}", f"evaluate@{variant}"]
    straight = scratch.copy_repository(scratch_dir / f"{variant}-straight", overrides)
    env = scratch.stage_env(straight)
    done = _dvc(straight, "repro", *targets, env=env)
    if done.returncode != 0:
        raise SystemExit(f"soak: the uninterrupted run failed:\n{done.stdout}\n{done.stderr}")
    [baseline_run] = _runs(straight, dataset, variant)

    repo = scratch.copy_repository(scratch_dir / f"{variant}-killed", overrides)
    env = scratch.stage_env(repo)
    steps, problems = [], []
    for point in points:
        kind, _, phase = point.partition("/")
        result = _dvc(repo, "repro", *targets, env=env | {"BPLAB_KILL_AT": f"{kind}@{variant}/{phase}"})
        killed = result.returncode != 0 and KILL_ANNOUNCEMENT in result.stderr
        running = [r.info.run_id for r in _runs(repo, dataset, variant) if r.info.status == "RUNNING"]
        steps.append({"point": point, "killed": killed, "exit": result.returncode, "running_after": len(running)})
        if len(running) > 1:
            problems.append(f"after {point}: {len(running)} runs RUNNING")
        if result.returncode == 0 and not killed:
            problems.append(f"{point}: not reached (the stages finished)")
        if "Traceback" in result.stderr and not killed:
            problems.append(f"{point}: traceback\n{result.stderr[-2000:]}")
    final = _dvc(repo, "repro", *targets, env=env)
    if final.returncode != 0:
        problems.append(f"the final repro failed:\n{final.stdout[-2000:]}\n{final.stderr[-2000:]}")
        return {"variant": variant, "steps": steps, "problems": problems, "lost": ["everything"]}
    runs = _runs(repo, dataset, variant)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    lost = []
    if any(r.info.status == "RUNNING" for r in runs):
        lost.append("a run left RUNNING")
    if _histories(repo, finished[-1].info.run_id) != _histories(straight, baseline_run.info.run_id):
        lost.append("the MLflow metric history differs from the uninterrupted run's")
    mine, theirs = _outputs(repo, variant), _outputs(straight, variant)
    lost += [f"{name} differs from the uninterrupted run's" for name in mine if mine[name] != theirs[name]]
    if leftovers := _leftovers(repo):
        lost.append(f"leftovers: {', '.join(leftovers)}")
    versions = _client(repo).search_model_versions(f"name = '{dataset}'")
    # a kill between registering a version and writing its card (evaluate/registry:1:end) must not
    # leave the version without it: the killed stage's rerun writes it
    lost += [f"version {v.version}'s model card" for v in versions if not v.description]
    return {"variant": variant, "steps": steps, "problems": problems, "lost": lost,
            "kills": sum(s["killed"] for s in steps), "runs": {s: sum(r.info.status == s for r in runs)
                                                              for s in ("FINISHED", "KILLED", "FAILED", "RUNNING")},
            "registry_versions": len(versions)}


# --- params ----------------------------------------------------------------------------------------

def _leaves(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict):
        return [key for k, v in tree.items() for key in [f"{prefix}{k}", *_leaves(v, f"{prefix}{k}.")]]
    return []


def _get(tree: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree[key]
    return tree


KINDS = ("string", "list", "dict", "bool", "negative", "zero", "nan", "inf", "-inf", "huge", "missing", "unknown",
         "float-for-int", "empty")


def mutation(raw: dict, rng: random.Random) -> tuple[dict, str, str]:
    """A copy of ``raw`` with one random change: (params, dotted key, kind of change)."""
    params = copy.deepcopy(raw)
    key = rng.choice(_leaves(params))
    kind = rng.choice(KINDS)
    old = _get(params, key)
    values = {"string": "fast", "list": [1, "x"], "dict": {"a": 1}, "bool": True, "zero": 0, "nan": math.nan,
              "inf": math.inf, "-inf": -math.inf, "huge": 10**30, "empty": [] if isinstance(old, list) else "",
              "negative": -abs(old) if isinstance(old, (int, float)) and not isinstance(old, bool) and old else -1,
              "float-for-int": 2.5}
    if kind == "missing":
        scratch.set_dotted(params, key, None, delete=True)
    elif kind == "unknown":
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        target = _get(params, parent) if parent else params
        if isinstance(target, dict):
            target["bogus_key"] = 1
            key = f"{parent}.bogus_key" if parent else "bogus_key"
        else:
            scratch.set_dotted(params, key, {"bogus_key": 1})
    else:
        scratch.set_dotted(params, key, values[kind])
    return params, key, kind


def params_campaign(count: int, samples: int, train_samples: bool, scratch_dir: Path, seed: int = 20261128) -> dict:
    """Validate ``count`` mutations; run ``samples`` of them through real stages: ``download@flower``
    (which validates the whole file first, like every stage), and with ``train_samples``, those that
    touch training through ``train@flower_logreg``."""
    from bplab.errors import ParamsError
    from bplab.params.load import parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    rng = random.Random(seed)
    outcomes = {"valid": 0, "refused naming the key": 0}
    problems, chosen = [], []
    for _ in range(count):
        params, key, kind = mutation(raw, rng)
        try:
            parse_params(params)
            outcomes["valid"] += 1
        except ParamsError as exc:
            named = key.split(".")
            if not any(".".join(named[:i]) in str(exc) for i in range(len(named), 0, -1)):
                problems.append(f"{kind} {key}: the message does not name it: {exc}")
            outcomes["refused naming the key"] += 1
        except Exception as exc:  # noqa: BLE001 - any other exception is what this campaign looks for
            problems.append(f"{kind} {key}: {type(exc).__name__}: {exc}")
        if len(chosen) < samples and (not train_samples or key.startswith(
                ("data.flower", "train.flower_logreg", "seed", "tracking"))):
            chosen.append((params, key, kind))
    stage_runs = []
    for i, (params, key, kind) in enumerate(chosen):
        repo = scratch.copy_repository(scratch_dir / f"params-{i}", {"train.flower_logreg.epochs": 20})
        env = scratch.stage_env(repo)
        trains = train_samples and key.startswith(("train", "seed", "tracking"))
        if trains:  # the data first, with the repository's params; then the stage with the mutated ones
            _dvc(repo, "repro", "preprocess@flower", env=env)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        stage, script, argument = (("train@flower_logreg", "stages/train.py", "flower_logreg") if trains
                                   else ("download@flower", "stages/download.py", "flower"))
        result = subprocess.run([sys.executable, script, argument], cwd=repo, env=env, capture_output=True,
                                text=True, timeout=600)
        stage_runs.append({"mutation": f"{kind} {key}", "stage": stage, "exit": result.returncode,
                           "traceback": "Traceback" in result.stderr})
        if result.returncode not in (0, 2) or "Traceback" in result.stderr:
            problems.append(f"{stage} with {kind} {key}: exit {result.returncode}\n{result.stderr[-1500:]}")
    return {"mutations": count, "outcomes": outcomes, "stage_runs": stage_runs, "problems": problems}


# --- report ----------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    lines = ["# bplab fault campaign", "",
             f"{results['mode']} run, {results['date']}, {results['seconds']:.0f} s, stages run "
             f"{results.get('stages_run', 'in their own processes')}. Re-run: `make soak` (`bench/soak.py`).",
             "", "## Kills", "",
             "| variant | kill points | kills that landed | runs FINISHED / KILLED / FAILED / RUNNING "
             "| registry versions | lost |", "| --- | --- | --- | --- | --- | --- |"]
    for kill in results["kills"]:
        runs = kill.get("runs", {})
        lines.append(f"| {kill['variant']} | {len(kill['steps'])} | {kill.get('kills', 0)} | "
                     f"{runs.get('FINISHED')} / {runs.get('KILLED')} / {runs.get('FAILED')} / {runs.get('RUNNING')} | "
                     f"{kill.get('registry_versions')} | {', '.join(kill['lost']) or 'nothing'} |")
    lines += ["", "Points, per variant: " + ", ".join(s["point"] for s in results["kills"][0]["steps"]) + ".", ""]
    params = results["params"]
    lines += ["## Params", "", f"{params['mutations']} mutations: {params['outcomes']['valid']} valid, "
              f"{params['outcomes']['refused naming the key']} refused naming the key. "
              f"{len(params['stage_runs'])} run through real stages: "
              + ", ".join(f"{r['mutation']} -> {r['stage']} exit {r['exit']}" for r in params["stage_runs"]) + ".",
              "", "## Problems", ""]
    problems = [p for k in results["kills"] for p in k["problems"]] + params["problems"]
    lines += [f"- {p}" for p in problems] or ["None."]
    return "\n".join(lines) + "\n"


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short campaign of the test suite")
    parser.add_argument("--out", type=Path, default=REPO / "bench", help="where soak-results.md/json go")
    args = parser.parse_args()
    campaign = QUICK if args.quick else FULL
    started = time.perf_counter()
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "date": time.strftime("%Y-%m-%d"),
                               "stages_run": "in their own processes (BPLAB_RUNNER=off)"
                               if os.environ.get("BPLAB_RUNNER", "on").lower() in {"off", "0", "no", "false"}
                               else "by the warm stage runner (bplab.runner)"}
    with tempfile.TemporaryDirectory(prefix="bplab-soak-") as tmp:
        results["kills"] = []
        for variant, overrides in campaign.variants.items():
            print(f"soak: killing {variant} at {len(campaign.points)} points ...", file=sys.stderr, flush=True)
            results["kills"].append(kill_campaign(variant, overrides, campaign.points, Path(tmp)))
        print(f"soak: {campaign.mutations} params mutations ...", file=sys.stderr, flush=True)
        results["params"] = params_campaign(campaign.mutations, campaign.stage_samples, campaign.train_samples,
                                            Path(tmp))
    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak-results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (args.out / "soak-results.md").write_text(report)
    print(report)
    failed = [p for k in results["kills"] for p in k["problems"] + k["lost"]] + results["params"]["problems"]
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
