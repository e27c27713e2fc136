"""Fixtures every tier uses: the repository's params, a temporary copy of it, a clean MLflow
cwd with tiny data, the offline mirror, the tiny pipeline built once per session and clones of
it, a local HTTP server. What tests import lives in :mod:`support`; nothing imports this file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from bplab.testing.scratch import REPO, copy_repository, data_mirror
from support.mirror_server import LocalHTTPServer
from support.pipeline import TinyPipeline, build_tiny_pipeline, clone_tiny_pipeline
from support.processes import NO_MIRROR, unavailable

# Stages the tests start go through the warm runner (bplab.runner), as under `dvc repro`; one the
# suite started exits after two idle minutes (not at once: another session may be using it).
os.environ.setdefault("BPLAB_RUNNER_IDLE", "120")
# Stages on tiny data, two test workers per two cores: a stage's second torch thread would only wait
# for a core the other worker holds (measured on a busy 2-core machine: the same training steps
# 10x slower with 2 threads than with 1). OMP_NUM_THREADS is read as torch loads, so the stages'
# runner is started with it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")


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


@pytest.fixture
def params():
    """The repository's params.yaml, validated."""
    from bplab.params.load import load_params

    return load_params(REPO / "params.yaml")


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


@pytest.fixture
def mirror() -> Path:
    """The offline data mirror; tests that need real MNIST/Boston skip without it (fail under CI)."""
    found = data_mirror()
    if found is None:
        unavailable(NO_MIRROR)
    return found


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
                build_tiny_pipeline(root)
            except BaseException as exc:
                (root / "FAILED").write_text(f"{type(exc).__name__}: {exc}")
                raise
    return TinyPipeline(root / "repo", (root / "stdout.txt").read_text(), root / "snapshot" / "mlflow.db")


@pytest.fixture
def pipeline_clone(tiny_pipeline: TinyPipeline, tmp_path: Path) -> Path:
    """The test's own clone of the tiny pipeline's baseline (:func:`support.pipeline.clone_tiny_pipeline`):
    on the tiny params, every stage run and committed, every output in place, the store and its
    artifacts copied; stages run there only when the test changes what they depend on."""
    return clone_tiny_pipeline(tiny_pipeline, tmp_path / "clone")


# The files that take longest (about a minute or more each, mostly stage processes), longest
# first: `make test` hands whole files to its workers in this order (--no-loadscope-reorder: by
# default pytest-xdist would sort files by their number of tests, and the four-minute fault
# campaign, one test, would start last, alone on one core). test_pipeline.py builds the tiny
# pipeline; the files that start from a clone of it (``pipeline_clone``: test_team_sweep, test_sweep, the e2e
# test_reliability, test_reproduce, test_secrets, test_pipeline_clone) come after files that keep
# the other workers busy meanwhile, so none waits for it idle.
LONGEST_FIRST = ["test_pipeline.py", "test_shared_server.py", "test_soak.py", "test_tracking_server.py",
                 "test_bench.py", "test_reliability.py", "test_distributed.py", "test_team_sweep.py", "test_sweep.py",
                 "test_readme.py", "test_reproduce.py", "test_shared_server_docs.py", "test_s3_store.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run :data:`LONGEST_FIRST` before the rest, each file's tests in their own order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[LocalHTTPServer]:
    """A real ThreadingHTTPServer on 127.0.0.1 (free port) serving ``server.root``; shut down after the test."""
    root = tmp_path / "http_root"
    root.mkdir()
    server = LocalHTTPServer(root)
    try:
        yield server
    finally:
        server.close()
