"""The tiny pipeline (the whole DAG on tiny params, built once per test session) and tiny params."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from bplab.testing.scratch import REPO, commit, copy_repository
from support.processes import run


def tiny(params, variant: str, **changes):
    """``params`` with one variant's settings changed (e.g. fewer epochs for a test)."""
    updated = params.train[variant].model_copy(update=changes)
    return params.model_copy(update={"train": {**params.train, variant: updated}})


def mlflow_client():
    """A client of the store the pipeline resolves to from the current directory."""
    from mlflow import MlflowClient

    from bplab.tracking import store

    return MlflowClient(store.tracking_uri())


def _tiny_epochs(epochs: int, full_batch: bool) -> int:
    """A few epochs: full-batch epochs are one step each (the flower's 10000 become 300, its
    logistic regression's 100 become 50); mini-batch ones go over every row (at most 4)."""
    return max(1, min(epochs // 2, 300)) if full_batch else min(epochs, 4)


def _tiny_pipeline_params() -> dict[str, int]:
    """Dotted overrides that shrink every variant params.yaml has, and MNIST's rows."""
    import yaml

    variants = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    return {"data.mnist.preprocess.train_limit": 1000, "data.mnist.preprocess.test_limit": 200} | {
        f"train.{name}.epochs": _tiny_epochs(v["epochs"], v.get("batch_size") is None) for name, v in variants.items()}


# The small end-to-end pipeline: the whole DAG on tiny params (test_pipeline.py, test_ui.py).
TINY_PIPELINE = _tiny_pipeline_params()


@dataclass(frozen=True)
class TinyPipeline:
    """A scratch copy after `dvc repro` on :data:`TINY_PIPELINE`, committed as the baseline."""

    repo: Path  # the copy; test_pipeline.py goes on changing it
    stdout: str  # what `dvc repro` printed
    store: Path  # a copy of the copy's mlflow.db taken right after the repro, for readers only


def build_tiny_pipeline(root: Path) -> None:
    repo = copy_repository(root / "repo", TINY_PIPELINE)  # committed: the split the champions live on
    result = run(["dvc", "repro"], repo)
    commit(repo, "baseline")  # what `dvc metrics diff` and `dvc plots diff` compare with
    (root / "snapshot").mkdir()
    with closing(sqlite3.connect(repo / "mlflow.db")) as source, \
            closing(sqlite3.connect(root / "snapshot" / "mlflow.db")) as snapshot:
        source.backup(snapshot)
    (root / "stdout.txt").write_text(result.stdout)


