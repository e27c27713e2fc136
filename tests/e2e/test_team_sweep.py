"""One study, many machines: `bplab sweep` workers in separate clones (each standing for a machine:
its own workspace, DVC cache and queue) against one PostgreSQL (Optuna's RDB storage), one
`mlflow server`, one shared bare git remote and one DVC remote on S3 (moto's server on 127.0.0.1,
keys in each clone's `.dvc/config.local`). A worker is killed mid-trial with
its machine's queue; a worker of another clone finds the trial by Optuna's heartbeat and runs its
params again. A third clone pulls the best experiment and reproduces its metric.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from bplab.testing.local_servers import MlflowServer, PostgreSQL, S3Server, postgres_bin
from bplab.testing.scratch import commit, set_params, stage_env
from support.processes import BPLAB, run, unavailable

VARIANT = "boston_module"
BUCKET = "team"
TRIALS = 8
# Learning rates that do not diverge on Boston in 3 epochs: every trial run to its end completes.
SPACE = ["--param", "lr=log:1e-3:1e-2", "--param", "batch_size=choice:32,64,128"]


@pytest.fixture(scope="module")
def team_servers(tmp_path_factory: pytest.TempPathFactory) -> tuple[PostgreSQL, MlflowServer, S3Server]:
    """The team's PostgreSQL (the study), tracking server and S3 endpoint (its bucket made)."""
    if postgres_bin() is None:
        unavailable("PostgreSQL is not installed: `make postgres` installs Debian's package")
    with PostgreSQL(database="optuna", role="optuna") as postgres, \
            MlflowServer(tmp_path_factory.mktemp("tracking")) as tracking, S3Server() as s3:
        s3.create_bucket(BUCKET)
        yield postgres, tracking, s3


def _keyed(clone: Path, s3: S3Server) -> None:
    """The S3 remote's endpoint and keys in the clone's own config.local, as each machine sets them."""
    for option, value in {"endpointurl": s3.endpoint_url, "access_key_id": s3.access_key_id,
                          "secret_access_key": s3.secret_access_key}.items():
        run(["dvc", "remote", "modify", "--local", "team", option, value], clone)


def _team(pipeline_clone: Path, root: Path, s3: S3Server) -> Path:
    """The team's bare git remote, holding the pipeline at its sweep commit, its data on S3."""
    remote = root / "team.git"
    set_params(pipeline_clone, {f"train.{VARIANT}.epochs": 3})
    run(["dvc", "remote", "add", "-d", "team", f"s3://{BUCKET}/dvc"], pipeline_clone)
    _keyed(pipeline_clone, s3)
    commit(pipeline_clone, "sweep epochs, the team's DVC remote")
    run(["dvc", "push", "-q"], pipeline_clone)
    run(["git", "clone", "-q", "--bare", str(pipeline_clone), str(remote)], root)
    return remote


def _machine(remote: Path, dest: Path, s3: S3Server) -> Path:
    """A clone of the team's repository with its own DVC cache, its data pulled from S3."""
    run(["git", "clone", "-q", str(remote), str(dest)], dest.parent)
    _keyed(dest, s3)
    run(["dvc", "pull", "-q"], dest)
    return dest


def _worker(clone: Path, storage: str, tracking: str) -> subprocess.Popen[str]:
    """A sweep worker in ``clone``; what it prints goes to ``clone``.log."""
    with clone.with_suffix(".log").open("w") as log:
        return subprocess.Popen([str(BPLAB), "sweep", VARIANT, "--study", "team", "--trials", str(TRIALS), "-j", "2",
                                 *SPACE, "--storage", storage, "--heartbeat", "2", "--push", "origin"],
                                cwd=clone, env=stage_env(clone, MLFLOW_TRACKING_URI=tracking),
                                stdout=log, stderr=subprocess.STDOUT, text=True)


def _running(clone: Path) -> bool:
    return "Running" in run(["dvc", "queue", "status"], clone).stdout


@pytest.mark.timeout(1500)  # about 4 minutes on an idle 2-core machine; the suite's other files load it
def test_workers_in_two_clones_share_one_study_and_survive_a_killed_machine(
        pipeline_clone: Path, tmp_path: Path, team_servers: tuple[PostgreSQL, MlflowServer, S3Server]) -> None:
    postgres, tracking, s3 = team_servers
    remote = _team(pipeline_clone, tmp_path, s3)
    clone_a, clone_b = _machine(remote, tmp_path / "clone-a", s3), _machine(remote, tmp_path / "clone-b", s3)

    worker_a = _worker(clone_a, postgres.uri, tracking.uri)
    worker_b = _worker(clone_b, postgres.uri, tracking.uri)
    # Machine A dies once one of its trials is training: its sweep and its DVC queue, at once.
    deadline = time.monotonic() + 240
    while not _running(clone_a):
        assert worker_a.poll() is None and time.monotonic() < deadline, _printed(clone_a)
        time.sleep(1)
    worker_a.kill()
    run(["dvc", "queue", "stop", "--kill"], clone_a)
    worker_a.wait()
    try:
        worker_b.wait(timeout=1200)
    finally:
        worker_b.kill()
        run(["dvc", "queue", "stop", "--kill"], clone_b)
    printed_a, printed_b = _printed(clone_a), _printed(clone_b)
    assert worker_b.returncode == 0, printed_b
    assert postgres.password not in printed_a + printed_b and s3.secret_access_key not in printed_a + printed_b

    trials = _study(postgres.uri)
    lost = [t for t in trials if t.state.name == "FAIL"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert lost and len(complete) == TRIALS, [(t.number, t.state.name) for t in trials]
    assert len(trials) == TRIALS + len(lost)  # each lost trial run again once, under a new number
    for trial in lost:  # A's, found by B's heartbeat check and handed on
        assert trial.user_attrs["sweep_repo"] == str(clone_a)
        assert f"trial {trial.number} lost its worker (" in printed_b
        (again,) = [t for t in complete if t.system_attrs.get("failed_trial") == trial.number]
        assert again.params == trial.params and again.user_attrs["sweep_repo"] == str(clone_b)
        assert re.search(rf"\n +{trial.number}  FAIL .*clone-a +lost; run again as trial {again.number}\n", printed_b)
    # Each trial number ran as one experiment, by one worker, and each complete one was shared.
    shared = _remote_experiments(remote)
    assert sorted(shared) == sorted(f"team-t{t.number}" for t in complete)
    by_worker = {t.number: Path(t.user_attrs["sweep_repo"]).name for t in complete}
    assert set(by_worker.values()) <= {"clone-a", "clone-b"} and "clone-b" in by_worker.values()
    _check_mlflow(tracking.uri, complete)

    # A third machine pulls the best experiment and reproduces its metric.
    best = min(complete, key=lambda t: t.value)
    assert f"keep it: dvc exp pull origin team-t{best.number} && dvc exp apply team-t{best.number}" in printed_b
    clone_c = tmp_path / "clone-c"
    run(["git", "clone", "-q", str(remote), str(clone_c)], tmp_path)
    _keyed(clone_c, s3)
    run(["dvc", "exp", "pull", "origin", f"team-t{best.number}"], clone_c)
    run(["dvc", "exp", "apply", f"team-t{best.number}"], clone_c)
    assert json.loads((clone_c / "metrics" / f"{VARIANT}.json").read_text())["val_rmse"] == best.value
    env = stage_env(clone_c, MLFLOW_TRACKING_URI=tracking.uri)
    run(["dvc", "pull", "-q"], clone_c, env=env)
    # the best trial's model and checkpoint came from S3, as it pushed them: nothing to reproduce
    assert "up to date" in run(["dvc", "status", f"evaluate@{VARIANT}"], clone_c, env=env).stdout
    run(["dvc", "repro", "-f", "-s", f"train@{VARIANT}", f"evaluate@{VARIANT}"], clone_c, env=env)
    retrained = json.loads((clone_c / "metrics" / f"{VARIANT}.json").read_text())["val_rmse"]
    assert retrained == pytest.approx(best.value, rel=1e-6)
    _report(trials, printed_b, shared)


def _printed(clone: Path) -> str:
    return clone.with_suffix(".log").read_text()


def _study(uri: str) -> list:
    import optuna

    return optuna.load_study(study_name="team", storage=uri).get_trials()


def _remote_experiments(remote: Path) -> list[str]:
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], remote).stdout.split()
    return [ref.rsplit("/", 1)[1] for ref in refs]


def _check_mlflow(uri: str, complete: list) -> None:
    """Every complete trial's training run on the shared server carries its study and number."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("boston").experiment_id
    runs = client.search_runs([experiment], "tags.sweep_study = 'team'")
    tagged = {int(r.data.tags["sweep_trial"]): (r.data.tags["dvc_exp"], r.data.metrics["val_rmse"])
              for r in runs if "sweep_trial" in r.data.tags}
    assert tagged == {t.number: (f"team-t{t.number}", t.value) for t in complete}


def _report(trials: list, printed: str, shared: list[str]) -> None:
    """What the test saw, for the closing note and the docs (printed under `pytest -s`)."""
    if os.environ.get("BPLAB_TEAM_SWEEP_REPORT"):
        pushes = [float(s) for s in re.findall(r"pushed team-t\d+ to origin in ([\d.]+) s", printed)]
        Path(os.environ["BPLAB_TEAM_SWEEP_REPORT"]).write_text(json.dumps({
            "trials": [{"number": t.number, "state": t.state.name, "value": t.value,
                        "worker": Path(t.user_attrs.get("sweep_repo", "?")).name,
                        "retry_of": t.system_attrs.get("failed_trial")} for t in trials],
            "pushed": shared, "push_seconds": pushes, "worker_b_output": printed}, indent=1))
