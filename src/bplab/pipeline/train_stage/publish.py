"""Publish a fitted training: its pictures, model and weights to MLflow, then ``models/<variant>/``
and ``history/<variant>.csv`` (staged, then renamed into place), then the run's end."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bplab import plots
from bplab.outputs import publish_directory, write_text_atomic
from bplab.paths import RUN_FILE, STATE_DICT_FILE, WHOLE_MODEL_FILE, history_file, model_dir
from bplab.pipeline.train_stage.prepare import PreparedTraining, matrix_weights
from bplab.timings import StageClock
from bplab.tracking.recorder import Recorder

if TYPE_CHECKING:
    from bplab.train.loop import EpochRecord


def write_history(path: Path, history: list[EpochRecord]) -> None:
    """``history/<variant>.csv``: one row per epoch, every variant's files with the same columns."""
    from bplab.params.metrics import EPOCH_METRICS, SECONDS

    # Every epoch metric, empty where the task has none, so that all variants' files share columns;
    # then the learning rates.
    names = [*EPOCH_METRICS, *(k for k in history[0].metrics if k not in EPOCH_METRICS)]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("epoch", *names, SECONDS))
    for r in history:
        writer.writerow([r.epoch, *(r.metrics.get(name, "") for name in names), round(r.seconds, 6)])
    write_text_atomic(path, text.getvalue())


def _figures(job: PreparedTraining, history: list[EpochRecord]) -> dict[str, Any]:
    from bplab.params.metrics import SECONDS
    from bplab.train.loop import history_columns

    step_losses = steps = None
    if job.data.task.kind == "regression":  # the steps of the recorded epochs
        step_losses = [v for r in history for v in r.step_losses]
        steps = [n for r in history for n in r.step_numbers()]
    metrics = history_columns(history)
    epochs, _ = metrics.pop("epoch"), metrics.pop(SECONDS)
    initial = {k: v.cpu().numpy() for k, v in job.state.initial_weights.items()}
    return {
        "learning_curves.png": plots.learning_curves(epochs, metrics, f"{job.name}: learning curves",
                                                     step_losses, steps),
        "weights.png": plots.weight_histograms(initial, matrix_weights(job.state.model),
                                               f"{job.name}: weights ({job.variant.init} init)"),
    }


def publish(job: PreparedTraining, history: list[EpochRecord], stop: dict[str, Any], recorder: Recorder,
            clock: StageClock, root: Path) -> dict[str, Any]:
    """Log the pictures, model and weights; write ``models/<variant>/`` and the history; end the run.
    Returns what ``run.json`` holds."""
    import torch

    model = job.state.model.cpu()  # saved and logged for CPU, wherever it trained
    with clock.phase("pictures"):
        figures = _figures(job, history)
    with clock.phase("mlflow"):
        recorder.log_figures(figures)
    with clock.phase("mlflow_model"):
        model_info = recorder.log_model(model, job.data.val_xy[0][:8].cpu())
        recorder.log_state_dict(model.state_dict())
    record = {"run_id": recorder.run_id, "experiment_id": recorder.experiment_id, "model_uri": model_info.model_uri,
              "model_id": model_info.model_id, "variant": job.name, "dataset": job.variant.dataset,
              "task": job.data.task.kind, "n_inputs": int(job.data.train_xy[0].shape[1]), "n_outputs": job.data.n_out,
              "final": history[-1].metrics, **stop}

    def fill(staging: Path) -> None:
        torch.save(model, staging / WHOLE_MODEL_FILE)
        torch.save(model.state_dict(), staging / STATE_DICT_FILE)
        (staging / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")

    with clock.phase("outputs"):
        publish_directory(model_dir(job.name, root), fill)
        write_history(history_file(job.name, root), history)
    with clock.phase("mlflow"):
        recorder.end()
    return record
