"""The ``train@<variant>`` stage: data, model and optimizer from params; the loop; MLflow; outputs.

Outputs, written only after training and logging succeeded (staged, then renamed into place):

- ``models/<variant>/model.pt``: the whole model, saved by ``torch.save`` as in the tutorials
  (load it with :func:`bplab.models.load_whole_model`, which runs no code from the file);
- ``models/<variant>/state_dict.pt``: the weights (:func:`bplab.models.load_state_dict`);
- ``models/<variant>/run.json``: the MLflow run id and the logged model's URI;
- ``history/<variant>.csv``: per-epoch metrics, a DVC plots file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bplab import plots, track
from bplab.config import Params, VariantParams
from bplab.data import processed
from bplab.errors import ParamsError
from bplab.outputs import publish_directory, write_text_atomic
from bplab.paths import (
    RUN_FILE,
    STATE_DICT_FILE,
    WHOLE_MODEL_FILE,
    checkpoint_file,
    history_file,
    model_dir,
    processed_dir,
)
from bplab.timings import StageClock

if TYPE_CHECKING:
    import torch
    from mlflow.entities import Metric

    from bplab.train.distributed import Placement
    from bplab.train.loop import EpochRecord

METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call
HISTORY_COLUMNS = ("epoch", "train_loss", "eval_loss", "train_acc", "eval_acc", "epoch_seconds")


def logged_params(params: Params, name: str, n_parameters: int, shapes: dict[str, list[int]]) -> dict[str, Any]:
    """Every training knob, flattened (``lr``, ``model.hidden``, ``param_groups.hidden``, ...)."""
    variant = params.train[name]
    flat = track.flatten(variant.model_dump(mode="json"))
    flat |= {"seed": params.seed, "variant": name, "n_parameters": n_parameters,
             "n_train": shapes["x_train"][0], "n_test": shapes["x_test"][0], "n_features": shapes["x_train"][1]}
    return flat


class _MetricSink:
    """Sends epoch records to MLflow in batches, asynchronously, and keeps the history.

    With ``max_points`` set, a run longer than that logs every k-th epoch (and step), plus the
    first and the last, so a metric gets at most about ``max_points`` points.
    """

    def __init__(self, run_id: str, record_steps: bool, epochs: int, max_points: int | None,
                 history: list[EpochRecord] | None = None) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient()
        # One worker thread calling the synchronous log_batch, in order. MLflow's own
        # asynchronous mode (synchronous=False) would do too, but ending a run joins its queue
        # thread, which polls with a one-second timeout: about 2 s added to every training stage.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bplab-metrics")
        self.run_id = run_id
        self.record_steps = record_steps
        self.epochs = epochs
        self.max_points = max_points
        self.history: list[EpochRecord] = list(history or [])  # epochs logged before a resume
        self._operations: list[Any] = []
        self._steps_done = sum(len(r.step_losses) for r in self.history)

    def _logged(self, index: int, count: int) -> bool:
        """Whether point ``index`` (1-based) of ``count`` is logged: the first, the last, every k-th."""
        stride = 1 if self.max_points is None else math.ceil(count / self.max_points)
        return index == 1 or index % stride == 0 or index == count

    def __call__(self, records: list[EpochRecord]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics: list[Metric] = []
        for r in records:
            if self._logged(r.epoch, self.epochs):
                values = {"train_loss": r.train_loss, "eval_loss": r.eval_loss, "epoch_seconds": r.seconds}
                if r.train_acc is not None:
                    values |= {"train_acc": r.train_acc, "eval_acc": r.eval_acc}
                metrics += [Metric(k, v, now, r.epoch) for k, v in values.items()]
            if self.record_steps:
                total_steps = self.epochs * len(r.step_losses)
                metrics += [Metric("train_loss_step", v, now, step)
                            for step, v in enumerate(r.step_losses, start=self._steps_done + 1)
                            if self._logged(step, total_steps)]
            self._steps_done += len(r.step_losses)
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self._operations.append(
                self._writer.submit(self.client.log_batch, self.run_id, metrics[i: i + METRICS_PER_BATCH]))
        self.history.extend(records)

    def wait(self) -> None:
        """Block until every batch has been written (raises if one failed)."""
        try:
            for operation in self._operations:
                operation.result()
        finally:
            self._operations.clear()
            self._writer.shutdown(wait=True)

    def close(self) -> None:
        """Let pending writes finish, without raising: for a run ending on an error (its first
        epochs are kept), where the error in flight is the one to report."""
        self._writer.shutdown(wait=True)


def _history_columns(history: list[EpochRecord]) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = {
        "epoch": [r.epoch for r in history],
        "train_loss": [r.train_loss for r in history],
        "eval_loss": [r.eval_loss for r in history],
    }
    if history and history[0].train_acc is not None:
        columns |= {"train_acc": [r.train_acc for r in history], "eval_acc": [r.eval_acc for r in history]}
    return columns


def _write_history(path: Path, history: list[EpochRecord]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for r in history:
        writer.writerow([r.epoch, r.train_loss, r.eval_loss,
                         "" if r.train_acc is None else r.train_acc,
                         "" if r.eval_acc is None else r.eval_acc, round(r.seconds, 6)])
    write_text_atomic(path, text.getvalue())


def _weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: p.detach().cpu().numpy().copy() for name, p in model.named_parameters() if p.dim() >= 2}


def _dataset(data: processed.Prepared, source: Path, dataset: str):
    """The training split as an MLflow dataset (name, digest, schema, source path)."""
    import mlflow

    x, y = data.splits["train"]
    with warnings.catch_warnings():
        # MLflow registers its local-file source for two URI schemes and warns it is ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        return mlflow.data.from_numpy(x, targets=y, source=str(source.resolve()), name=f"{dataset}-train",
                                      digest=processed.content_digest(x, y))


def train(name: str, params: Params, root: Path = Path(".")) -> dict[str, Any] | None:
    """Train variant ``name`` per params.yaml, log it to MLflow, and write its DVC outputs.

    Resumes from ``checkpoints/<variant>.pt`` when an earlier start with the same params was
    interrupted. Under ``torchrun`` every rank trains its share and rank 0 alone logs and writes.
    Returns the contents of ``run.json`` (run id, experiment id, model URI, final metrics); None
    on the other ranks.
    """
    variant = params.variant(name)
    from bplab.train import distributed

    clock = StageClock(f"train@{name}")
    placement = distributed.start(params.device)
    try:
        return _train(name, params, variant, placement, root, clock)
    finally:
        distributed.stop(placement)


def _train(name: str, params: Params, variant: VariantParams, placement: Placement,
           root: Path, clock: StageClock) -> dict[str, Any] | None:
    import mlflow
    import torch
    from tqdm.auto import tqdm

    from bplab.models import build_model, initialize
    from bplab.train import distributed
    from bplab.train.checkpoint import Checkpoint, fingerprint, load_resumable
    from bplab.train.loop import TASK_OF_DATASET, BatchSizeError, Schedule, Task, check_schedule, fit
    from bplab.train.optim import build_optimizer, check_param_groups

    source = processed_dir(variant.dataset, root)
    data = processed.load(source)
    task = Task(TASK_OF_DATASET[variant.dataset])
    train_xy = tuple(torch.from_numpy(a).to(placement.device) for a in data.splits["train"])
    test_xy = tuple(torch.from_numpy(a).to(placement.device) for a in data.splits["test"])
    n_out = int(train_xy[1].max()) + 1 if task.kind == "multiclass" else 1

    torch.manual_seed(params.seed)
    model = initialize(build_model(variant.model, train_xy[0].shape[1], n_out), variant.init)
    check_param_groups(model, variant, f"train.{name}")
    schedule = Schedule(variant.epochs, variant.batch_size, variant.eval_batch_size, variant.shuffle)
    try:
        check_schedule(model, len(train_xy[0]), schedule)
    except BatchSizeError as exc:
        raise ParamsError(f"train.{name}.batch_size: {exc}") from None
    initial_weights = {k: torch.from_numpy(v) for k, v in _weights(model).items()}

    checkpoint_path = checkpoint_file(name, root)
    shapes = data.shapes()
    digest = fingerprint({"variant": variant.model_dump(mode="json"), "seed": params.seed, "shapes": shapes})
    resume, why = load_resumable(checkpoint_path, digest, variant.epochs)
    model = model.to(placement.device)
    optimizer = build_optimizer(model, variant)
    generator = torch.Generator().manual_seed(params.seed)
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        generator.set_state(resume.generator)
        initial_weights = resume.initial_weights
    net = distributed.wrap(model, placement)
    done = resume.epoch if resume else 0

    if not placement.is_main:  # the other ranks train their shares; rank 0 logs and writes
        fit(net, optimizer, task, train_xy, test_xy, schedule, generator, lambda records: None,
            first_epoch=done + 1, placement=placement)
        return None
    where = f" on {placement.world} ranks" if placement.world > 1 else ""
    print(f"train@{name}: {why}; device {placement.device}{where}", file=sys.stderr)

    tags = track.run_tags(dataset=variant.dataset, stage="train", variant=name)
    with ExitStack() as run_scope:
        with clock.phase("mlflow_setup"):
            run = run_scope.enter_context(
                track.stage_run(variant.dataset, name, tags, run_id=resume and resume.run_id))
            run_id = run.info.run_id
        with clock.phase("mlflow"):
            if resume is None:
                n_parameters = sum(p.numel() for p in model.parameters())
                mlflow.log_params(logged_params(params, name, n_parameters, shapes)
                                  | {"device": str(placement.device), "world_size": placement.world})
                mlflow.log_input(_dataset(data, source, variant.dataset), context="training")
            else:
                mlflow.set_tag("resumed_after_epoch", str(resume.epoch))
            sink = _MetricSink(run_id, record_steps=task.kind == "regression", epochs=variant.epochs,
                               max_points=params.tracking.max_epoch_points, history=resume and resume.history)
            run_scope.callback(sink.close)  # before the run ends, also on errors
        with tqdm(total=variant.epochs, initial=done, desc=f"train@{name}", unit="epoch", mininterval=1.0) as bar:
            def on_epochs(records: list[EpochRecord]) -> None:
                with clock.phase("mlflow_metrics"):
                    sink(records)
                with clock.phase("checkpoints"):
                    Checkpoint(digest, run_id, records[-1].epoch, model.state_dict(), optimizer.state_dict(),
                               generator.get_state(), initial_weights, sink.history).save(checkpoint_path)
                last = records[-1]
                shown = {"loss": f"{last.train_loss:.4g}", "eval_loss": f"{last.eval_loss:.4g}"}
                if last.eval_acc is not None:
                    shown["eval_acc"] = f"{last.eval_acc:.4f}"
                bar.set_postfix(shown, refresh=False)
                bar.update(len(records))

            clock.first_step = time.time()
            with clock.phase("training"):
                fit(net, optimizer, task, train_xy, test_xy, schedule, generator, on_epochs,
                    first_epoch=done + 1, placement=placement)
            clock.last_step = time.time()

        model = model.cpu()  # saved and logged for CPU, wherever it trained
        columns = _history_columns(sink.history)
        steps = [v for r in sink.history for v in r.step_losses] if task.kind == "regression" else None
        with tempfile.TemporaryDirectory() as pictures:
            with clock.phase("pictures"):
                plots.save(plots.learning_curves(columns, f"{name}: learning curves", steps),
                           Path(pictures, "learning_curves.png"))
                plots.save(plots.weight_histograms({k: v.cpu().numpy() for k, v in initial_weights.items()},
                                                   _weights(model), f"{name}: weights ({variant.init} init)"),
                           Path(pictures, "weights.png"))
            with clock.phase("mlflow"):
                mlflow.log_artifacts(pictures, "plots")
        with clock.phase("mlflow_model"):
            model_info = track.log_model(model, test_xy[0][:8].cpu())
            mlflow.pytorch.log_state_dict(model.state_dict(), artifact_path="state_dict")
        with clock.phase("mlflow_metrics"):
            sink.wait()

        final = sink.history[-1]
        record = {
            "run_id": run_id,
            "experiment_id": run.info.experiment_id,
            "model_uri": model_info.model_uri,
            "model_id": model_info.model_id,
            "variant": name,
            "dataset": variant.dataset,
            "task": task.kind,
            "n_inputs": int(train_xy[0].shape[1]),
            "n_outputs": n_out,
            "final": {k: v for k, v in {"train_loss": final.train_loss, "eval_loss": final.eval_loss,
                                        "train_acc": final.train_acc, "eval_acc": final.eval_acc}.items()
                      if v is not None},
        }

        def fill(staging: Path) -> None:
            torch.save(model, staging / WHOLE_MODEL_FILE)
            torch.save(model.state_dict(), staging / STATE_DICT_FILE)
            (staging / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")

        with clock.phase("outputs"):
            publish_directory(model_dir(name, root), fill)
            _write_history(history_file(name, root), sink.history)
        with clock.phase("mlflow"):
            run_scope.close()  # ends the run as FINISHED
    clock.finish()
    return record
