"""`bplab sweep` end to end: real sweeps in a clone of the tiny pipeline, each trial a DVC
experiment trained and evaluated; a stopped sweep is taken over, two workers share a study.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from bplab.testing.scratch import commit, set_params, stage_env
from support.processes import BPLAB, run

VARIANT = "boston_module"
SPACE = ["--param", "lr=log:1e-3:0.1", "--param", "batch_size=choice:32,64,128"]


def _sweep(repo: Path, *args: str, study: str = "s", space: list[str] = SPACE) -> subprocess.Popen[str]:
    # SIGINT as a terminal delivers it: a suite started in the background (`make test &`) has it
    # ignored, and children inherit that, so Python would never turn it into KeyboardInterrupt.
    return subprocess.Popen([str(BPLAB), "sweep", VARIANT, "--study", study, "--trials", "3", *space, *args],
                            cwd=repo, env=stage_env(repo), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _read_until(process: subprocess.Popen[str], text: str) -> str:
    """What ``process`` printed up to and including the line that holds ``text``."""
    lines = []
    while not lines or text not in lines[-1]:
        lines.append(process.stdout.readline())
        assert lines[-1], f"the sweep ended before printing {text!r}:\n{''.join(lines)}{process.stderr.read()}"
    return "".join(lines)


def _finish(process: subprocess.Popen[str], printed: str = "") -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, f"exit {process.returncode}\n--- stdout\n{printed}{out}\n--- stderr\n{err}"
    return printed + out


def _queued(output: str) -> list[int]:
    return [int(line.split()[1]) for line in output.splitlines() if " queued as s-t" in line]


@pytest.fixture
def sweep_repo(pipeline_clone: Path) -> Path:
    """A clone of the tiny pipeline, Boston's data prepared, with the variant's epochs committed:
    each trial trains and evaluates only."""
    set_params(pipeline_clone, {f"train.{VARIANT}.epochs": 3})
    commit(pipeline_clone, "sweep epochs")
    return pipeline_clone


def test_a_stopped_sweep_is_taken_over_and_two_workers_share_the_study(sweep_repo: Path) -> None:
    repo = sweep_repo
    # A sweep stopped with Ctrl-C once its first experiment is queued...
    stopped = _sweep(repo)
    _read_until(stopped, "trial 0 queued as s-t0")
    stopped.send_signal(signal.SIGINT)
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 130 and "experiments s-t0 go on in DVC's queue" in err, err
    assert err.rstrip().endswith("bplab sweep: interrupted"), err
    # ...is taken over by the next one, with -j 2, while a second worker joins the study.
    first = _sweep(repo, "-j", "2")
    printed = _read_until(first, "trial 0: taking over s-t0 from a sweep that stopped")
    second = _sweep(repo)
    # Meanwhile, in a study of its own, a trial whose training fails (boston_module has no layer
    # "hidden"; only the stage can tell) is told FAIL with the stage's reason.
    failing = _sweep(repo, "--trials", "1", study="bad", space=["--param", "param_groups.hidden=log:1e-3:1e-2"])
    out_first, out_second = _finish(first, printed), _finish(second)
    out_failing, _ = failing.communicate(timeout=300)
    assert failing.returncode == 1, out_failing  # no trial completed
    assert "trial 0 failed: train@boston_module: error: train.boston_module.param_groups.hidden: model mlp_model " \
           "has no layer 'hidden'" in out_failing, out_failing
    assert "study bad: 1 trials (1 fail)" in out_failing and "nothing to apply" in out_failing, out_failing
    assert sorted(_queued(out_first) + _queued(out_second)) == [1, 2], out_first + out_second
    assert len(_queued(out_second)) == 1, out_second

    trials = _study(repo)
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert all(t["state"] == "COMPLETE" for t in trials), trials
    _check_experiments(repo, trials)
    # The worker that finished last reports the whole study: the best trial and how to keep it.
    out = next((o for o in (out_first, out_second) if "study s: 3 trials (3 complete)" in o), out_first + out_second)
    best = min(trials, key=lambda t: t["value"])
    assert f"best: trial {best['number']}, val_rmse {best['value']:.6g}" in out, out
    assert out.rstrip().endswith(f"keep it: dvc exp apply s-t{best['number']}"), out
    _check_mlflow(repo, trials)


def _study(repo: Path) -> list[dict]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(repo / "sweeps" / "s.journal")))
    study = optuna.load_study(study_name="s", storage=storage)
    return [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
            for t in study.get_trials()]


def _check_experiments(repo: Path, trials: list[dict]) -> None:
    """Each trial is a DVC experiment named after it, with its params and its metric."""
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], repo).stdout.split()
    for trial in trials:
        (ref,) = [r for r in refs if r.endswith(f"/s-t{trial['number']}")]
        params = yaml.safe_load(run(["git", "show", f"{ref}:params.yaml"], repo).stdout)["train"][VARIANT]
        assert (params["lr"], params["batch_size"]) == (trial["params"]["lr"], trial["params"]["batch_size"])
        metrics = json.loads(run(["git", "show", f"{ref}:metrics/{VARIANT}.json"], repo).stdout)
        assert metrics["val_rmse"] == trial["value"]


def _check_mlflow(repo: Path, trials: list[dict]) -> None:
    """Each trial's run carries the study and trial number; the study's run the best value so far."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("boston").experiment_id
    runs = client.search_runs([experiment], "tags.sweep_study = 's'")
    tagged = sorted((int(r.data.tags["sweep_trial"]), r.data.tags["sweep_study"], r.data.tags["dvc_exp"],
                     r.data.metrics["val_rmse"]) for r in runs if "sweep_trial" in r.data.tags)
    assert tagged == [(t["number"], "s", f"s-t{t['number']}", t["value"]) for t in trials]
    (study_run,) = client.search_runs([experiment], "attributes.run_name = 'sweep-s'")
    # Each worker logs the steps all of whose trials have finished: two finishing at once may both log one.
    history = sorted({(m.step, m.value) for m in client.get_metric_history(study_run.info.run_id, "best_value")})
    values = [t["value"] for t in trials]
    assert history == [(n, min(values[: n + 1])) for n in range(len(values))]
    artifacts = {a.path for a in client.list_artifacts(study_run.info.run_id, "sweep")}
    assert {"sweep/param_importances.png", "sweep/trials.json"} <= artifacts
    assert study_run.data.tags["best_exp"] == f"s-t{values.index(min(values))}"
