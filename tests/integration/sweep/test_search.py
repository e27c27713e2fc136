"""`bplab sweep`: Optuna asks, DVC runs each trial as a queued experiment, MLflow records them.

The search-space checks and the sampler are unit tests. The end-to-end test runs real sweeps in a
scratch copy of the repository (boston_module, 3 epochs): a sweep stopped with Ctrl-C once its
experiment is queued, the sweep that takes it over while a second worker joins the same study,
and beside them a study whose trial fails in its train stage.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from bplab.sweep import dvc_queue, space
from bplab.testing.local_servers import free_port
from bplab.testing.scratch import REPO, copy_repository, stage_env
from support.processes import BPLAB, run

VARIANT = "boston_module"
SPACE = ["--param", "lr=log:1e-3:0.1", "--param", "batch_size=choice:32,64,128"]


def _raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize(("spec", "key", "extremes"), [
    ("lr=log:1e-3:1", "train.boston_module.lr", (0.001, 1.0)),
    ("batch_size=choice:32,64,128", "train.boston_module.batch_size", (32, 64, 128)),
    ("momentum=float:0:0.9", "train.boston_module.momentum", (0.0, 0.9)),
    ("epochs=int:5:50", "train.boston_module.epochs", (5, 50)),
    ("init=choice:default,kaiming", "train.boston_module.init", ("default", "kaiming")),
    ("data.boston.preprocess.test_size=float:0.1:0.3", "data.boston.preprocess.test_size", (0.1, 0.3)),
])
def test_a_param_spec_names_a_key_and_a_distribution(spec: str, key: str, extremes: tuple) -> None:
    dimension = space.parse(spec, VARIANT)
    space.check([dimension], _raw(), VARIANT)
    assert (dimension.key, dimension.extremes()) == (key, extremes)
    assert type(dimension.extremes()[0]) is type(extremes[0])


@pytest.mark.parametrize(("spec", "message"), [
    ("lr", "expected KEY=KIND:ARGS"),
    ("lr=lg:1e-3:1", "unknown distribution 'lg'"),
    ("lr=log:0:1", "a log range needs a positive low bound"),
    ("lr=float:0.5:0.1", "the low bound 0.5 must be below the high bound 0.1"),
    ("epochs=int:5:7.5", "'7.5' is not an integer"),
    ("batch_size=choice:32,,64", "choice takes one or more values"),
    ("lrr=log:1e-3:1", "train.boston_module.lrr: unknown key"),
    ("optimizer=choice:sgd,adamx", "train.boston_module.optimizer: Input should be"),
    ("epochs=int:0:5", "train.boston_module.epochs: Input should be greater than 0"),
    ("train.boston_adam.lr=log:1e-3:1", "does not reach train@boston_module"),
])
def test_a_bad_param_spec_is_refused_naming_it(spec: str, message: str) -> None:
    with pytest.raises(space.SearchSpaceError) as refused:
        space.check([space.parse(spec, VARIANT)], _raw(), VARIANT)
    assert str(refused.value).startswith(f"--param {spec!r}: ") and message in str(refused.value)


def test_overrides_are_dvc_set_params() -> None:
    assert space.override("train.v.lr", 0.0123, True) == "train.v.lr=0.0123"
    assert space.override("train.v.lr", 1e-05, True) == "train.v.lr=1e-05"
    assert space.override("train.v.momentum", 0.5, False) == "++train.v.momentum=0.5"  # not in params.yaml
    assert space.override("train.v.batch_size", None, True) == "train.v.batch_size=null"
    assert space.override("train.v.shuffle", False, True) == "train.v.shuffle=false"


def test_the_command_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo")
    nobody = f"127.0.0.1:{free_port()}/optuna"  # a database storage nothing answers at
    for args, message in [
        ([VARIANT, "--param", "lr=log:-1:1"], "--param 'lr=log:-1:1': a log range needs a positive low bound"),
        ([VARIANT, *SPACE, "--metric", "test_rmse"], "--metric test_rmse: the test split is reported, never "
                                                     "optimized; use the validation metric val_rmse"),
        ([VARIANT, *SPACE, "--metric", "val_acc"], "--metric val_acc: boston has the validation metrics val_mse, "
                                                   "val_rmse, val_mae, val_r2"),
        ([VARIANT, *SPACE, "--storage", f"postgresql+psycopg://bob:s3cret@{nobody}"],
         f"cannot open the sweep storage postgresql+psycopg://***@{nobody}: connection failed: "),
    ]:
        result = subprocess.run([str(BPLAB), "sweep", *args], cwd=repo, env=stage_env(repo), capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2 and result.stdout == "", result
        assert result.stderr.startswith(f"bplab sweep: error: {message}") and result.stderr.count("\n") == 1, result
        assert "s3cret" not in result.stderr
    assert not (repo / "sweeps").exists()


def test_queue_status_is_read_by_name() -> None:
    listing = """\
Task     Name         Created    Status
a1b2c3d  s-t0         06:41 AM   Success
e4f5a6b  s-t1         06:41 AM   Running
c7d8e9f  s-t2         Nov 27, 2026  Failed
0a1b2c3  s-t3         06:42 AM   Queued

Worker status: 1 active, 0 idle
"""
    assert dvc_queue.parse_statuses(listing) == {"s-t0": "Success", "s-t1": "Running", "s-t2": "Failed",
                                                 "s-t3": "Queued"}


def test_each_trial_draws_from_its_own_number() -> None:
    import optuna

    from bplab.sweep import optuna_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dimension = space.parse("lr=log:1e-4:1", VARIANT)

    def draws(seed: int, count: int) -> list[float]:
        study = optuna.create_study(sampler=optuna_study.sampler("tpe", seed))
        trials = [study.ask({"lr": dimension.distribution()}) for _ in range(count)]
        return [t.params["lr"] for t in trials]

    assert draws(0, 3) == draws(0, 3)  # seeded
    assert draws(0, 3)[1:] == draws(1, 2)  # trial n draws with seed + n, whichever process asks
    assert len(set(draws(0, 3))) == 3


# --- end to end ---------------------------------------------------------------------------------




















def test_collecting_waits_for_the_experiment_commit(tmp_path: Path) -> None:
    repo = tmp_path
    run(["git", "init", "-q"], repo)
    assert dvc_queue.state(repo, "ab" * 20, "x", {"x": "Success"}) == "missing"
    assert dvc_queue.state(repo, "ab" * 20, "x", {"x": "Running"}) == "pending"
    assert dvc_queue.state(repo, "ab" * 20, "x", {"x": "Failed"}) == "failed"
    assert dvc_queue.state(repo, "ab" * 20, "x", {}) == "missing"
    assert dvc_queue.state(repo, "ab" * 20, "x", None) == "pending"  # between two listings of the queue



def test_a_trial_whose_experiment_left_the_queue_is_told_fail(mlflow_repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    import optuna
    from mlflow import MlflowClient

    from bplab.sweep import search
    from bplab.tracking import store

    repo = mlflow_repo / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)  # a real, empty queue: s-t0 is in none of its listings, as after
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # `dvc queue remove s-t0`
    study = optuna.create_study(study_name="s")
    study.ask()
    client = MlflowClient(store.tracking_uri())
    run_id = client.create_run(client.create_experiment("boston")).info.run_id
    setup = search.Setup(repo, VARIANT, "boston", "test_rmse", False, (), {}, "s", 1, 1, "tpe", 0)
    sweeper = search.Sweeper(setup, study, run_id, pending={0: search.Pending(0, 0, "s-t0", "ab" * 20)})
    monkeypatch.setattr(search, "POLL_S", 0.05)  # a listing of the queue every 0.25 s, not every 5 s

    waiting = threading.Thread(target=sweeper.wait, daemon=True)
    waiting.start()
    waiting.join(timeout=60)

    assert not waiting.is_alive(), "the sweep still waits for an experiment that left the queue"
    assert study.trials[0].state == optuna.trial.TrialState.FAIL and not sweeper.pending
    assert "trial 0 failed: experiment s-t0 is neither queued nor done (removed from the queue?)" in \
        capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_whose_worker_stopped_beating_runs_again_under_a_new_number(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Optuna's heartbeat on a database storage (sqlite here; PostgreSQL in the e2e test): the trial
    of a worker on another clone that stopped beating is failed once, and its params wait for the
    next ask of any worker; it does not count towards the study's size. The worker's own trial,
    beaten by its heartbeat thread, stays running."""
    import threading
    import time

    from optuna.trial import TrialState

    from bplab.sweep import optuna_study, search

    takeovers = optuna_study.Takeovers()
    where, shown = optuna_study.storage(f"sqlite:///{tmp_path / 'study.db'}", tmp_path, "s", 1, takeovers)
    assert shown == f"sqlite:///{tmp_path / 'study.db'}" and optuna_study.beats(where)
    study, _ = optuna_study.open_study("s", where, shown, False, optuna_study.sampler("tpe", 0), {})
    dimensions = (space.parse("lr=log:1e-3:0.1", VARIANT),)
    distributions = {d.name: d.distribution() for d in dimensions}
    setup = search.Setup(tmp_path, VARIANT, "boston", "val_rmse", False, dimensions, _raw(), "s", 3, 2, "tpe", 0,
                         heartbeat_s=1)
    # The worker of another clone: it asked for trial 0, beat once, and died.
    lost = study.ask(distributions)
    for key, value in {search.HOST: "other-host", search.REPO: "/srv/clone-a", search.PID: 4242}.items():
        lost.set_user_attr(key, value)
    where.record_heartbeat(lost._trial_id)
    own = study.ask(distributions)  # this worker's, queued and running
    sweeper = search.Sweeper(setup, study, "", where, takeovers,
                             pending={own.number: search.Pending(own.number, own._trial_id, "s-t1", "ab" * 20)})
    sweeper._beat(sweeper.pending[own.number])
    assert sweeper._room() == 1 and not sweeper.find_lost()  # all alive: one more trial to ask, none lost

    stop = threading.Event()
    heartbeat = threading.Thread(target=sweeper.beat_forever, args=(stop,), daemon=True)
    heartbeat.start()
    try:
        time.sleep(optuna_study.HEARTBEAT_GRACE + 2.5)  # trial 0 missed four heartbeats of 1 s
    finally:
        stop.set()
        heartbeat.join()
    assert sweeper.find_lost()
    assert capsys.readouterr().out == ("trial 0 lost its worker (other-host:/srv/clone-a pid 4242: no heartbeat for "
                                       "4 s): told FAIL, its params run again\n")
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert sweeper._room() == 1  # the lost params waiting (0 is run again, not counted), with trial 1 running
    assert not sweeper.find_lost()  # told once
    again = study.ask(distributions)
    assert (again.number, again.params) == (2, lost.params)
    assert optuna_study.retried_from(study.get_trials()[2]) == 0
