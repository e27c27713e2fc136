"""The ``evaluate@<variant>`` stage: final validation and test metrics, pictures and a registry version.

It reloads the trained model both ways the tutorials save it (the whole pickled model and the
state_dict), checks they predict the same, logs into the variant's train run (found through
``models/<variant>/run.json``), and writes ``metrics/<variant>.json`` (DVC metrics) and
``plots/<variant>/*.png``.
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bplab import plots
from bplab.data import catalog, committed, processed
from bplab.data.committed import SplitOrigin
from bplab.errors import BplabError, DataError
from bplab.outputs import publish_directory, write_text_atomic
from bplab.params.metrics import EPOCH_METRICS
from bplab.params.schema import Params
from bplab.paths import RUN_FILE, STATE_DICT_FILE, WHOLE_MODEL_FILE, metrics_file, model_dir, plots_dir, processed_dir
from bplab.timings import StageClock
from bplab.tracking import registry
from bplab.tracking.recorder import Recorder

if TYPE_CHECKING:
    import torch

# Both forms hold the same weights; any difference beyond rounding means a file was altered.
AGREEMENT_ATOL = 1e-4


class EvaluationError(BplabError):
    """The saved forms of a model disagree, or the model cannot be evaluated."""


def load_run_record(variant: str, root: Path = Path(".")) -> dict[str, Any]:
    """The train stage's ``run.json`` for ``variant``."""
    path = model_dir(variant, root) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run train@{variant} first") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """Outputs of ``model`` on all rows of ``x``, in batches, without gradients."""
    import torch

    size = batch_size or len(x)
    with torch.no_grad():
        return torch.cat([model(x[i: i + size]) for i in range(0, len(x), size)])


def compute_metrics(task_kind: str, outputs: torch.Tensor, target: torch.Tensor, split: str) -> dict[str, float]:
    """The task's scores (:data:`bplab.params.metrics.SCORES`) of ``outputs`` against ``target``, each
    named ``<split>_<score>``: ``loss``/``acc`` for classification, ``mse``/``rmse``/``mae``/``r2`` for
    regression."""
    from bplab.train.loop import Task

    task = Task(task_kind)  # type: ignore[arg-type]
    if task.has_accuracy:
        return {f"{split}_loss": float(task.loss(outputs, target)),
                f"{split}_acc": float(task.correct(outputs, target)) / len(target)}
    # Computed here rather than with sklearn.metrics, whose import costs this stage two seconds;
    # the tests check these against sklearn.
    actual, predicted = target.double().ravel(), outputs.double().ravel()
    residual_ss = float(((actual - predicted) ** 2).sum())
    total_ss = float(((actual - actual.mean()) ** 2).sum())
    if total_ss == 0:
        raise EvaluationError(f"{split}_r2 is undefined: the {len(actual)} {split} target(s) are all "
                              f"{float(actual[0])}; use a larger {split} split")
    mse = residual_ss / len(actual)
    return {f"{split}_mse": mse, f"{split}_rmse": mse ** 0.5, f"{split}_mae": float((actual - predicted).abs().mean()),
            f"{split}_r2": 1.0 - residual_ss / total_ss}


def evaluation_of(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     outputs: torch.Tensor) -> catalog.Evaluation:
    """The test split's rows, targets and outputs as NumPy arrays, for a dataset's pictures."""
    import torch

    def on_rows(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(rows)).numpy()

    return catalog.Evaluation(name, x.numpy(), y.numpy(), outputs.numpy(), on_rows)


def _load_both_forms(record: dict[str, Any], params: Params, name: str, root: Path):
    """The state_dict in a freshly built model, and the whole saved model; neither load can run code.

    Both files may come from a DVC remote, so both load with ``weights_only=True`` (the whole
    model with the allowlist of :data:`bplab.models.networks.WHOLE_MODEL_CLASSES`). The MLflow-logged pt2
    model is not loaded here: loading it imports ``torch._dynamo`` and takes seconds per stage;
    the tests check that it predicts alike.
    """
    from bplab.models.architectures import build_model
    from bplab.models.safe_load import load_state_dict, load_whole_model

    variant = params.variant(name)
    fresh = build_model(variant.model, record["n_inputs"], record["n_outputs"])
    state_path = model_dir(name, root) / STATE_DICT_FILE
    state = load_state_dict(state_path)
    try:
        fresh.load_state_dict(state)
    except RuntimeError as exc:  # keys or shapes differ from the model params.yaml describes
        raise EvaluationError(f"{state_path} does not fit model {variant.model.arch}: {exc}") from None
    return fresh.eval(), load_whole_model(model_dir(name, root) / WHOLE_MODEL_FILE)


def _outputs(record: dict[str, Any], params: Params, name: str, root: Path, splits: dict[str, tuple[torch.Tensor, ...]]
             ) -> tuple[torch.nn.Module, dict[str, torch.Tensor], float]:
    """The model (from its state_dict) and its outputs on each split; how far the whole saved
    model's outputs on the test split are from them (an :class:`EvaluationError` beyond rounding)."""
    batch = params.variant(name).eval_batch_size
    fresh, whole = _load_both_forms(record, params, name, root)
    outputs = {split: predict(fresh, x, batch) for split, (x, _) in splits.items()}
    disagreement = float((predict(whole, splits["test"][0], batch) - outputs["test"]).abs().max())
    if disagreement > AGREEMENT_ATOL:
        raise EvaluationError(
            f"{name}: models/{name}/model.pt and models/{name}/state_dict.pt predict "
            f"differently on the test split (max |difference| {disagreement:.3g} > {AGREEMENT_ATOL})")
    return fresh, outputs, disagreement


def _register(record: dict[str, Any], name: str, dataset: str, score: registry.Score, origin: SplitOrigin,
              recorder: Recorder) -> registry.Registration:
    registration = registry.register(record["model_uri"], dataset, name, record["run_id"], score)
    recorder.set_tags({"registered_model": registration.name, "registered_version": registration.version,
                       "champion_version": registration.champion_version or "none"})
    scored = f"{score.metric} {score.value:.6g} ({', '.join(f'{k} {v:.6g}' for k, v in score.reported.items())})"
    held = "no version" if registration.champion_version is None else (
        f"version {registration.champion_version}" + (f" ({score.metric} {registration.champion_value:.6g})"
                                                      if registration.champion_value is not None else ""))
    if origin.committed:
        outcome = f"{registry.CHAMPION}: {held}"
    else:
        outcome = (f"not on the committed split ({origin.why}), so {registry.CHAMPION} stays on {held}; "
                   f"`bplab promote {dataset} {registration.version}` moves it on purpose")
    print(f"evaluate@{name}: {scored}; registered {registration.name} version {registration.version}; {outcome}",
          file=sys.stderr)
    return registration


def _write_card(registration: registry.Registration, run_id: str, recorder: Recorder) -> None:
    """The registered version's model card (:mod:`bplab.lineage.card`), as its description and as the
    run's ``model_card.md``. Part of the stage's work, like the rest of its logging: a failure fails
    the stage, the version stays registered, and the stage's next run (which finds the version
    again) writes the card."""
    from bplab.lineage import card

    text = card.card_of_version(registration.name, registration.version, run_id)
    registry.describe(registration.name, registration.version, text)
    recorder.log_text(text, card.CARD_FILE)


def evaluate(name: str, params: Params, root: Path = Path(".")) -> dict[str, Any]:
    """Score variant ``name`` on the validation and test splits, log into its train run, register the model.

    The validation metrics rank the registry's versions; the test metrics are reported. Returns
    the metrics with the registry outcome.
    """
    variant = params.variant(name)
    dataset = catalog.dataset(variant.dataset)
    record = load_run_record(name, root)
    import torch

    clock = StageClock(f"evaluate@{name}")
    arrays = processed.load(processed_dir(variant.dataset, root), ("val", "test")).splits
    splits = {split: tuple(torch.from_numpy(a) for a in pair) for split, pair in arrays.items()}
    origin = committed.origin(variant.dataset, getattr(params.data, variant.dataset), root)
    split_tags = {registry.TEST_DIGEST_TAG: processed.content_digest(*arrays["test"]),
                  "val_digest": processed.content_digest(*arrays["val"]),
                  registry.COMMITTED_TAG: str(origin.committed).lower()}
    with ExitStack() as run:
        with clock.phase("mlflow_setup"):
            recorder = run.enter_context(Recorder.into(record["run_id"], split_tags))
        with clock.phase("predict"):
            fresh, outputs, disagreement = _outputs(record, params, name, root, splits)
            metrics = {key: value for split, (_, y) in splits.items()
                       for key, value in compute_metrics(record["task"], outputs[split], y, split).items()}
        with clock.phase("mlflow"):  # the validation metrics that are per-epoch curves stay curves
            recorder.log_metrics({k: v for k, v in metrics.items() if k not in EPOCH_METRICS}
                                 | {"saved_forms_max_abs_diff": disagreement})
        with clock.phase("pictures"):
            pictures = dataset.evaluation_pictures(evaluation_of(name, fresh, *splits["test"], outputs["test"]))
            publish_directory(plots_dir(name, root), lambda staging: _save_all(pictures, staging))
        with clock.phase("mlflow"):
            recorder.log_directory(plots_dir(name, root), "plots")
        champion = dataset.champion
        score = registry.Score(champion.selection, metrics[champion.selection], champion.higher_is_better,
                               processed.content_digest(*arrays["val"], *arrays["test"]),
                               {m: metrics[m] for m in dataset.test_metrics}, split_tags[registry.TEST_DIGEST_TAG],
                               origin.committed)
        with clock.phase("registry"):
            registration = _register(record, name, variant.dataset, score, origin, recorder)
        with clock.phase("model_card"):
            _write_card(registration, record["run_id"], recorder)
        with clock.phase("outputs"):
            write_text_atomic(metrics_file(name, root), json.dumps(metrics, indent=2) + "\n")
        with clock.phase("mlflow"):
            recorder.end()
    clock.finish()
    return metrics | {"registered_version": registration.version, "promoted": registration.promoted}


def _save_all(figures, folder: Path) -> None:
    for file_name, figure in figures.items():
        plots.save(figure, folder / file_name)
