"""Shared fixtures: the repository's own files, a temporary copy of it, and a clean environment."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from bplab.testing.local_servers import free_port, wait_for_http  # noqa: F401 (shared: servers the tests start)
from bplab.testing.scratch import REPO, commit, copy_repository, data_mirror, set_params, stage_env  # noqa: F401 (shared)


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command, returning its output; on an unexpected exit status fail with its output.

    By default in :func:`stage_env` of ``cwd``: in a repository copy, the copy's own code runs.
    """
    result = subprocess.run(cmd, cwd=cwd, env=env or stage_env(cwd), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}\n"
                    f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    return result


@pytest.fixture
def mlflow_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A repository-like cwd (it has ``.dvc/``) whose default MLflow store is its own sqlite file."""
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    yield tmp_path
    import mlflow

    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set_tracking_uri exports it; keep tests independent


@pytest.fixture
def workspace(mlflow_repo: Path) -> Path:
    """``mlflow_repo`` with tiny processed data for all three datasets, ready for train and evaluate."""
    import numpy as np

    from bplab.data import processed
    from bplab.data.flower import generate
    from bplab.data.processed import Prepared

    def split(x, y, n_train):  # the last quarter of the training rows validate
        n_val = n_train // 4
        return Prepared({"train": (x[:n_train - n_val], y[:n_train - n_val]),
                         "val": (x[n_train - n_val:n_train], y[n_train - n_val:n_train]),
                         "test": (x[n_train:], y[n_train:])})

    x, y = (np.concatenate(parts).astype(np.float32) for parts in zip(generate(64, 4, 0.2, 1), generate(32, 4, 0.2, 2)))
    processed.save(split(x, y, 64), mlflow_repo / "data/processed/flower")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(48, 13)).astype(np.float32)
    target = (features @ rng.normal(size=(13, 1)) + 20).astype(np.float32)
    processed.save(split(features, target, 40), mlflow_repo / "data/processed/boston")
    pixels = rng.uniform(-1, 1, size=(260, 784)).astype(np.float32)
    digits = (pixels @ rng.normal(size=(784, 10))).argmax(axis=1).astype(np.int64)  # learnable labels
    digits[:10] = np.arange(10)  # every class present, so the model has 10 outputs
    processed.save(split(pixels, digits, 200), mlflow_repo / "data/processed/mnist")
    return mlflow_repo


def tiny(params, variant: str, **changes):
    """``params`` with one variant's settings changed (e.g. fewer epochs for a test)."""
    updated = params.train[variant].model_copy(update=changes)
    return params.model_copy(update={"train": {**params.train, variant: updated}})


@pytest.fixture
def params():
    """The repository's params.yaml, validated."""
    from bplab.params.load import load_params

    return load_params(REPO / "params.yaml")


def mlflow_client():
    """A client of the store the pipeline resolves to from the current directory."""
    from mlflow import MlflowClient

    from bplab.tracking import store

    return MlflowClient(store.tracking_uri())


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread (two threads on a busy 2-core machine run ~15x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Iterator[Path]:
    """A throwaway copy of the repository (git and DVC initialised, nothing run yet)."""
    yield copy_repository(tmp_path / "repo")


def unavailable(reason: str) -> None:
    """Skip a test that needs something this machine lacks; under CI (``CI=true``) fail instead,
    since there a missing mirror or tool is a broken set-up, not a choice."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: nothing may be skipped for a missing mirror or tool)")
    pytest.skip(reason)


NO_MIRROR = "no data mirror: set BPLAB_DATA_MIRROR (CI uses ../shared/data)"


@pytest.fixture
def mirror() -> Path:
    """The offline data mirror; tests that need real MNIST/Boston skip without it (fail under CI)."""
    found = data_mirror()
    if found is None:
        unavailable(NO_MIRROR)
    return found


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


def _build_tiny_pipeline(root: Path) -> None:
    repo = copy_repository(root / "repo", TINY_PIPELINE)  # committed: the split the champions live on
    result = run(["dvc", "repro"], repo)
    commit(repo, "baseline")  # what `dvc metrics diff` and `dvc plots diff` compare with
    (root / "snapshot").mkdir()
    with closing(sqlite3.connect(repo / "mlflow.db")) as source, \
            closing(sqlite3.connect(root / "snapshot" / "mlflow.db")) as snapshot:
        source.backup(snapshot)
    (root / "stdout.txt").write_text(result.stdout)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> TinyPipeline:
    """:class:`TinyPipeline`, built once per test session: the test files run in parallel workers
    (pytest-xdist), and the first worker to ask runs the `dvc repro` while the others wait for it."""
    if data_mirror() is None:
        unavailable(NO_MIRROR)
    basetemp = tmp_path_factory.getbasetemp()
    shared = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp  # the workers' common folder
    root = shared / "tiny-pipeline"
    with FileLock(shared / "tiny-pipeline.lock"):
        if (root / "FAILED").exists():
            pytest.fail(f"the tiny pipeline failed in another worker:\n{(root / 'FAILED').read_text()}")
        if not (root / "stdout.txt").exists():
            root.mkdir(exist_ok=True)
            try:
                _build_tiny_pipeline(root)
            except BaseException as exc:
                (root / "FAILED").write_text(f"{type(exc).__name__}: {exc}")
                raise
    return TinyPipeline(root / "repo", (root / "stdout.txt").read_text(), root / "snapshot" / "mlflow.db")


# The files that take longest (about a minute or more each, mostly stage processes), started
# first: `make test` hands whole files to its workers in collection order, and one of these left
# for last runs alone on one core while the other workers have finished.
LONGEST_FIRST = ["test_shared_server.py", "test_pipeline.py", "test_soak.py", "test_reliability.py", "test_sweep.py",
                 "test_tracking_server.py", "test_distributed.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run :data:`LONGEST_FIRST` before the rest, each file's tests in their own order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
