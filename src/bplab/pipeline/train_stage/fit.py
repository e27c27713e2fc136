"""Fit a prepared training: the one training loop, its epochs sent to MLflow, a checkpoint and the
progress bar as they come."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bplab.outputs import write_bytes_atomic
from bplab.pipeline import process
from bplab.pipeline.train_stage.prepare import PreparedTraining
from bplab.timings import StageClock
from bplab.tracking.recorder import Recorder

if TYPE_CHECKING:
    from bplab.train.loop import EpochRecord


def fit_share(job: PreparedTraining, on_epochs: Callable[[list[EpochRecord]], None] = lambda records: None) -> int:
    """Train the job's model (under torchrun, this rank's share of each batch); the last epoch trained."""
    from bplab.train import distributed
    from bplab.train.loop import fit

    state = job.state
    return fit(distributed.wrap(state.model, job.placement), state.optimizer, job.data.task, job.data.train_xy,
               job.data.val_xy, job.schedule, state.generator, on_epochs, first_epoch=job.first_epoch,
               placement=job.placement, controls=state.controls)


def _start_run_record(job: PreparedTraining, recorder: Recorder, checkpoint: Callable[[int], bytes]) -> None:
    """A new run's params, training data and reproduction; a resumed run's tag."""
    if job.resume is not None:
        recorder.set_tags({"resumed_after_epoch": str(job.resume.epoch)})
        return
    recording = job.recording
    recorder.log_params(recording.params)
    x, y = job.data.prepared.splits["train"]
    recorder.log_training_data(x, y, job.data.source, f"{recording.dataset}-train", job.data.digests["train"])
    recorder.log_reproduction(**recording.reproduction)
    write_bytes_atomic(job.checkpoint, checkpoint(0))  # a kill in the first epoch resumes this run


def fit_recorded(job: PreparedTraining, recorder: Recorder,
                 clock: StageClock) -> tuple[list[EpochRecord], dict[str, Any]]:
    """Train, sending each report's epochs to MLflow, a checkpoint and the progress bar; the history
    and how training stopped."""
    from bplab.train.checkpoint import Checkpoint

    history = list(job.resume.history) if job.resume else []
    state = job.state

    def checkpoint(epoch: int) -> bytes:  # the state now, to be written once its epochs are stored
        return Checkpoint(job.fingerprint, recorder.run_id, epoch, state.model.state_dict(),
                          state.optimizer.state_dict(), state.generator.get_state(), state.initial_weights, history,
                          state.controls.state_dict(), job.variant.epochs).to_bytes()

    with clock.phase("mlflow"):
        _start_run_record(job, recorder, checkpoint)
        logger = recorder.epoch_logger(job.variant.epochs, job.recording.max_epoch_points,
                                       record_steps=job.data.task.kind == "regression")
    try:
        with process.progress_bar(total=job.variant.epochs, initial=job.first_epoch - 1, desc=f"train@{job.name}",
                                  unit="epoch", mininterval=1.0) as bar:
            def on_epochs(records: list[EpochRecord]) -> None:
                with clock.phase("mlflow_metrics"):
                    logger(records)
                history.extend(records)
                with clock.phase("checkpoints"):
                    payload = checkpoint(records[-1].epoch)
                    logger.after_stored(lambda: write_bytes_atomic(job.checkpoint, payload))
                bar.set_postfix({k: f"{v:.4g}" for k, v in records[-1].metrics.items()}, refresh=False)
                bar.update(records[-1].epoch - bar.n)

            process.started()
            clock.first_step = time.time()
            with clock.phase("training"):
                last_epoch = fit_share(job, on_epochs)
        with clock.phase("mlflow_metrics"):
            logger.wait()
        clock.samples["log_batch_s"] = logger.write_seconds
        clock.last_step = time.time()  # the wind-down starts once every epoch is stored, not before
    finally:
        logger.close()  # on an error, the epochs logged so far are kept
    stop = state.controls.stop_record(last_epoch, job.variant.epochs)
    if state.controls.stopped:
        print(f"train@{job.name}: stopped after epoch {stop['stopped_epoch']}: {stop['stop_reason']}",
              file=sys.stderr)
    with clock.phase("mlflow"):
        recorder.set_tags(stop)
    return history, stop
