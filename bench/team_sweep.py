"""One study on one machine against one study across machines, on the same trials.

The same 8 trials of `bplab sweep boston_module` (full Boston data, the variant's own epochs, TPE
seed 0: its first 10 trials are random and seeded by trial number, so both runs draw the same
params), run twice, with 2 trials at a time in both:

- **one machine**: one repository, `-j 2`, the study in its journal file (`sweeps/`), the
  experiments in its own DVC cache, an `mlflow server` (sqlite) with artifacts in a folder;
- **a team**: two clones of a bare git remote (each standing for a machine: its own workspace,
  DVC cache and queue), a worker in each with `-j 1`, the study in PostgreSQL, the data in an S3
  DVC remote, every finished trial shared with `dvc exp push origin` (git remote + S3), and an
  `mlflow server` (sqlite) proxying artifacts to the same S3 bucket. S3 is moto's server on
  127.0.0.1 (`bplab.testing.local_servers.S3Server`, without key checks: MLflow's clients download
  through presigned links, which moto cannot check), not AWS: the push times are this machine's
  disk and loopback, not a network's.

Per run: wall time (first worker started to last worker ended), trials per minute, Optuna's
`ask` and `tell` (each worker's clock, `BPLAB_TIMINGS`) p50 and p95, and the `dvc exp push`
times. Writes bench/team-sweep.{md,json}.

    .venv/bin/python bench/team_sweep.py [--trials 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bplab.testing.local_servers import MlflowServer, PostgreSQL, S3Server
from bplab.testing.scratch import commit, copy_repository, stage_env

VARIANT = "boston_module"
SPACE = ["--param", "lr=log:1e-3:1e-2", "--param", "batch_size=choice:32,64,128"]
BUCKET = "bplab-team"


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run ``cmd``; its output, or exit the bench naming what failed."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def prepared(dest: Path) -> Path:
    """A copy of this repository with Boston's data downloaded and preprocessed, committed."""
    dest.mkdir(parents=True)
    repo = copy_repository(dest)
    sh(["dvc", "repro", "-q", "preprocess@boston"], repo, stage_env(repo))
    commit(repo, "Boston prepared")
    return repo


def sweep(clone: Path, env: dict[str, str], trials: int, jobs: int, *extra: str) -> subprocess.Popen[str]:
    """A worker of study ``bench`` in ``clone``, its output in ``clone``.log."""
    with clone.with_suffix(".log").open("w") as log:
        return subprocess.Popen(["bplab", "sweep", VARIANT, "--study", "bench", "--trials", str(trials),
                                 "-j", str(jobs), *SPACE, *extra], cwd=clone, env=env, stdout=log,
                                stderr=subprocess.STDOUT, text=True)


def finish(workers: list[tuple[Path, subprocess.Popen[str]]], started: float) -> float:
    """Wait for every worker; the wall time since ``started``."""
    for clone, worker in workers:
        if worker.wait(timeout=3600) != 0:
            sys.exit(f"the worker in {clone} exited {worker.returncode}:\n{clone.with_suffix('.log').read_text()}")
    return time.monotonic() - started


def clocks(timings: Path) -> dict[str, list[float]]:
    """Every worker's ask/tell/push durations, from their ``BPLAB_TIMINGS`` lines."""
    found: dict[str, list[float]] = {"ask_s": [], "tell_s": [], "push_s": []}
    for line in timings.read_text().splitlines():
        record = json.loads(line)
        if record.get("stage") == "bplab sweep":
            for key in found:
                found[key] += record.get(key, [])
    return found


def summary(wall: float, trials: list[dict[str, Any]], durations: dict[str, list[float]]) -> dict[str, Any]:
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    ms = {key: {"n": len(v), "p50_ms": round(float(np.percentile(v, 50)) * 1000, 1),
                "p95_ms": round(float(np.percentile(v, 95)) * 1000, 1)} if v else None
          for key, v in durations.items()}
    return {"wall_s": round(wall, 1), "trials_per_min": round(len(complete) / wall * 60, 2),
            "complete": len(complete), "trials": trials, "optuna_ask": ms["ask_s"], "optuna_tell": ms["tell_s"],
            "dvc_exp_push": ms["push_s"]}


def study_trials(storage: Any) -> list[dict[str, Any]]:
    import optuna

    return [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "worker": Path(t.user_attrs.get("sweep_repo", "?")).name}
            for t in optuna.load_study(study_name="bench", storage=storage).get_trials()]


def one_machine(base: Path, root: Path, trials: int) -> dict[str, Any]:
    """The single-machine sweep: one repository, -j 2, a journal file."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    repo = root / "single"
    sh(["git", "clone", "-q", str(base), str(repo)], root, stage_env())
    sh(["dvc", "cache", "dir", "--local", str(base / ".dvc" / "cache")], repo, stage_env(repo))
    sh(["dvc", "checkout", "-q", "preprocess@boston"], repo, stage_env(repo))
    timings = root / "single-timings.jsonl"
    (root / "single-tracking-root").mkdir()
    with MlflowServer(root / "single-tracking-root") as tracking:
        env = stage_env(repo, MLFLOW_TRACKING_URI=tracking.uri, BPLAB_TIMINGS=str(timings))
        started = time.monotonic()
        wall = finish([(repo, sweep(repo, env, trials, 2))], started)
    storage = JournalStorage(JournalFileBackend(str(repo / "sweeps" / "bench.journal")))
    return summary(wall, study_trials(storage), clocks(timings))


def team(base: Path, root: Path, trials: int) -> dict[str, Any]:
    """The team's sweep: two clones x -j 1, PostgreSQL, S3, dvc exp push."""
    with ExitStack() as stack:
        s3 = stack.enter_context(S3Server(check_keys=False))  # MLflow's presigned downloads: moto cannot check them
        s3.create_bucket(BUCKET)
        postgres = stack.enter_context(PostgreSQL(database="optuna", role="optuna"))
        (root / "team-tracking-root").mkdir()
        tracking = stack.enter_context(MlflowServer(
            root / "team-tracking-root", artifacts_destination=f"s3://{BUCKET}/mlflow",
            env={"MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url, **s3.env}))
        env_base = stage_env(base, **s3.env)
        sh(["dvc", "remote", "add", "-d", "team", f"s3://{BUCKET}/dvc"], base, env_base)
        sh(["dvc", "remote", "modify", "--local", "team", "endpointurl", s3.endpoint_url], base, env_base)
        commit(base, "the team's DVC remote")
        sh(["dvc", "push", "-q", "preprocess@boston"], base, env_base)
        remote = root / "team.git"
        sh(["git", "clone", "-q", "--bare", str(base), str(remote)], root, env_base)
        timings = root / "team-timings.jsonl"
        workers = []
        clones = [root / "machine-a", root / "machine-b"]
        for clone in clones:
            sh(["git", "clone", "-q", str(remote), str(clone)], root, env_base)
            env = stage_env(clone, MLFLOW_TRACKING_URI=tracking.uri, BPLAB_TIMINGS=str(timings), **s3.env)
            sh(["dvc", "remote", "modify", "--local", "team", "endpointurl", s3.endpoint_url], clone, env)
            sh(["dvc", "pull", "-q", "preprocess@boston"], clone, env)
        started = time.monotonic()
        for clone in clones:
            env = stage_env(clone, MLFLOW_TRACKING_URI=tracking.uri, BPLAB_TIMINGS=str(timings), **s3.env)
            workers.append((clone, sweep(clone, env, trials, 1, "--storage", postgres.uri, "--push", "origin")))
        wall = finish(workers, started)
        result = summary(wall, study_trials(postgres.uri), clocks(timings))
        result["objects_in_s3"] = {"dvc": len(s3.keys(BUCKET, "dvc/")), "mlflow": len(s3.keys(BUCKET, "mlflow/"))}
        result["experiments_on_the_git_remote"] = len(sh(["git", "for-each-ref", "refs/exps/"], remote, env_base)
                                                      .splitlines())
        return result


def _value(trial: dict[str, Any]) -> str:
    return trial["state"] if trial["value"] is None else f"{trial['value']:.6g}"


def markdown(results: dict[str, Any]) -> str:
    one, many = results["one_machine"], results["team"]

    def timing(entry: dict[str, Any] | None) -> str:
        return "-" if entry is None else f"{entry['p50_ms']:.0f} / {entry['p95_ms']:.0f} ms ({entry['n']})"

    same = [a["params"] == b["params"] for a, b in zip(one["trials"], many["trials"], strict=False)]
    lines = ["# A sweep on one machine and across two (`bench/team_sweep.py`)", "",
             f"{results['trials']} trials of `bplab sweep {VARIANT}` (full Boston data, TPE seed 0, "
             f"`{' '.join(SPACE)}`), 2 at a time in both, on {results['machine']}, {results['date']}. "
             f"Same params trial by trial: {'yes' if all(same) else 'no'} ({sum(same)} of {len(same)}).", "",
             "| run | storage | wall | trials/min | Optuna ask p50 / p95 (n) | tell p50 / p95 (n) "
             "| `dvc exp push` p50 / p95 (n) |",
             "| --- | --- | --- | --- | --- | --- | --- |",
             f"| one machine, `-j 2` | journal file | {one['wall_s']} s | {one['trials_per_min']} | "
             f"{timing(one['optuna_ask'])} | {timing(one['optuna_tell'])} | - |",
             f"| two clones, `-j 1` each | PostgreSQL, S3 | {many['wall_s']} s | {many['trials_per_min']} | "
             f"{timing(many['optuna_ask'])} | {timing(many['optuna_tell'])} | {timing(many['dvc_exp_push'])} |",
             "", "| trial | one machine: val_rmse | team: val_rmse | team: worker |", "| --- | --- | --- | --- |"]
    for a, b in zip(one["trials"], many["trials"], strict=False):
        lines.append(f"| {a['number']} | {_value(a)} | {_value(b)} | {b['worker']} |")
    lines += ["", f"S3 after the team's run: {many['objects_in_s3']['dvc']} DVC objects, "
                  f"{many['objects_in_s3']['mlflow']} MLflow artifacts; "
                  f"{many['experiments_on_the_git_remote']} experiments on the git remote.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    results: dict[str, Any] = {"trials": args.trials, "date": time.strftime("%Y-%m-%d"),
                               "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs"}
    with tempfile.TemporaryDirectory(prefix="bplab-team-bench-") as tmp:
        root = Path(tmp)
        base = prepared(root / "base")
        results["one_machine"] = one_machine(base, root, args.trials)
        print(json.dumps({k: v for k, v in results["one_machine"].items() if k != "trials"}), file=sys.stderr)
        results["team"] = team(base, root, args.trials)
        shutil.rmtree(root, ignore_errors=True)
    (args.out / "team-sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "team-sweep.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
