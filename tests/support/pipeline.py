"""The tiny pipeline (the whole DAG on tiny params, built once per test session), clones of its
baseline for the tests that start from a finished pipeline, and tiny params."""

from __future__ import annotations

import shutil
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


# The tag of the baseline's commit in the tiny pipeline's copy, whose branch test_pipeline.py moves on.
BASELINE = "baseline"


@dataclass(frozen=True)
class TinyPipeline:
    """A scratch copy after `dvc repro` on :data:`TINY_PIPELINE`, committed as the baseline."""

    repo: Path  # the copy; test_pipeline.py goes on changing it
    stdout: str  # what `dvc repro` printed
    store: Path  # a copy of the copy's mlflow.db taken right after the repro, for readers only

    @property
    def artifacts(self) -> Path:
        """A copy of the copy's ``mlartifacts/`` taken with :attr:`store`, for clones to copy."""
        return self.store.with_name("mlartifacts")


def build_tiny_pipeline(root: Path) -> None:
    """Run the whole DAG on :data:`TINY_PIPELINE` in ``root/repo``, commit it and tag it
    :data:`BASELINE`, and keep its store and artifacts as they are then in ``root/snapshot``."""
    repo = copy_repository(root / "repo", TINY_PIPELINE)  # committed: the split the champions live on
    result = run(["dvc", "repro"], repo)
    commit(repo, "baseline")  # what `dvc metrics diff` and `dvc plots diff` compare with
    run(["git", "tag", BASELINE], repo)
    (root / "snapshot").mkdir()
    with closing(sqlite3.connect(repo / "mlflow.db")) as source, \
            closing(sqlite3.connect(root / "snapshot" / "mlflow.db")) as snapshot:
        source.backup(snapshot)
    shutil.copytree(repo / "mlartifacts", root / "snapshot" / "mlartifacts")
    (root / "stdout.txt").write_text(result.stdout)


def clone_tiny_pipeline(baseline: TinyPipeline, dest: Path) -> Path:
    """A repository of its own at ``dest`` where the baseline's `dvc repro` has run, for a test that
    starts from a finished pipeline without running its stages again.

    A `git clone` at the :data:`BASELINE` commit (not the baseline's working tree, which
    test_pipeline.py changes meanwhile); DVC's cache shared with the baseline (its entries are
    content-addressed and nothing in the suite removes one), every output checked out from it; and
    the baseline's store and artifacts as they were after the repro (:attr:`TinyPipeline.store`),
    copied, with every location in it pointed at the clone: new runs, in the experiments the
    baseline made, put their artifacts under the clone, and the runs and models already there
    load from the clone's copy.
    Processes started with :func:`~bplab.testing.scratch.stage_env` of ``dest`` run its own code.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["git", "clone", "-q", "--no-checkout", str(baseline.repo), str(dest)], dest.parent)
    run(["git", "reset", "-q", "--hard", BASELINE], dest)  # the clone's branch, at the baseline's commit
    # As `dvc cache dir --local` writes it, without starting a process for it.
    (dest / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {baseline.repo / '.dvc' / 'cache'}\n")
    run(["dvc", "checkout", "--quiet"], dest)
    shutil.copytree(baseline.artifacts, dest / "mlartifacts")
    shutil.copyfile(baseline.store, dest / "mlflow.db")
    _point_store_at(dest / "mlflow.db", baseline.repo.resolve(), dest.resolve())
    return dest


def _point_store_at(database: Path, old: Path, new: Path) -> None:
    """Rewrite every place in the repository ``old`` that the sqlite store ``database`` names to the
    same place in ``new``. MLflow keeps them absolute: an experiment's artifact location (the
    Default experiment's ``mlruns/0`` too), a run's artifact URI, a logged model's location, a
    model version's storage location, a logged dataset's source."""
    with closing(sqlite3.connect(database)) as db, db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]:
                for before, after in ((f"{old.as_uri()}/", f"{new.as_uri()}/"), (f"{old}/", f"{new}/")):
                    db.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                               f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                               (before, after, before))
