"""The MLflow side of ``bplab sweep``: each trial's run tagged with its study and trial number, and
the study's own run, ``sweep-<study>`` in the dataset's experiment, holding the best value so far
per trial (step = trial number) and what the study found.

A trial's run is the one its stages made: train and evaluate tag it ``dvc_exp`` with the DVC
experiment's name (DVC sets ``DVC_EXP_NAME``), which is how it is found here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from bplab.tracking import store
from bplab.tracking.recorder import Recorder, ensure_experiment, run_of_dvc_exp

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

STUDY_TAG, TRIAL_TAG, STORAGE_TAG = "sweep_study", "sweep_trial", "sweep_storage"


def tag_trial(experiment: str, exp_name: str, study: str, number: int) -> str | None:
    """Tag the latest run of ``experiment`` whose ``dvc_exp`` is ``exp_name`` with the study and
    trial number; its run id, or ``None`` when there is no such run."""
    client = store.ready_client()
    run = run_of_dvc_exp(experiment, exp_name)
    if run is None:
        return None
    run_id = run.info.run_id
    client.set_tag(run_id, STUDY_TAG, study)
    client.set_tag(run_id, TRIAL_TAG, str(number))
    return run_id


def _study_run_id(experiment: str, study: str, storage: str) -> str:
    """The study's run: the oldest live run of this study and storage, else a new one. Two workers
    that make it at once both settle on the older run, and the newer is deleted."""
    client = store.ready_client()
    experiment_id = ensure_experiment(experiment)

    def oldest() -> str | None:
        runs = client.search_runs([experiment_id], f"tags.{STUDY_TAG} = '{study}'",
                                  order_by=["attributes.start_time ASC"])
        return next((r.info.run_id for r in runs if r.info.run_name == f"sweep-{study}"
                     and r.data.tags.get(STORAGE_TAG) == storage and TRIAL_TAG not in r.data.tags), None)

    if (found := oldest()) is not None:
        return found
    mine = client.create_run(experiment_id, run_name=f"sweep-{study}",
                             tags={STUDY_TAG: study, STORAGE_TAG: storage}).info.run_id
    first = oldest()
    if first != mine:
        client.delete_run(mine)
    return first or mine


@contextmanager
def study_run(experiment: str, study: str, storage: str, tags: Mapping[str, str]) -> Iterator[Recorder]:
    """The study's MLflow run, open (RUNNING) while the sweep runs; resumed by later sweeps."""
    run_id = _study_run_id(experiment, study, storage)
    with Recorder.run(experiment, f"sweep-{study}", dict(tags) | {STUDY_TAG: study, STORAGE_TAG: storage},
                      run_id=run_id) as recorder:
        yield recorder


def log_progress(run_id: str, trials: list[FrozenTrial], maximize: bool) -> None:
    """Log ``value`` and ``best_value`` at step = trial number, for every trial that is finished
    and whose predecessors all are, once (steps logged before are skipped)."""
    from mlflow.entities import Metric

    client = store.ready_client()
    logged = {m.step for m in client.get_metric_history(run_id, "best_value")}
    now, best, metrics = int(time.time() * 1000), None, []
    for trial in sorted(trials, key=lambda t: t.number):
        if not trial.state.is_finished():
            break
        value = trial.value if trial.state.name == "COMPLETE" else None
        if value is not None and math.isfinite(value):
            best = value if best is None else (max if maximize else min)(best, value)
            if trial.number not in logged:
                metrics.append(Metric("value", value, now, trial.number))
        if best is not None and trial.number not in logged:
            metrics.append(Metric("best_value", best, now, trial.number))
    if metrics:
        client.log_batch(run_id, metrics=metrics)
