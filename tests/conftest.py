"""Shared fixtures: the repository's own files, a temporary copy of it, and a clean environment."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def data_mirror() -> Path | None:
    """``BPLAB_DATA_MIRROR`` if set, else ``../shared/data`` beside the repository, if present."""
    value = os.environ.get("BPLAB_DATA_MIRROR")
    candidate = Path(value) if value else REPO.parent / "shared" / "data"
    candidate = candidate if candidate.is_absolute() else (REPO / candidate)
    return candidate.resolve() if (candidate / "mnist").is_dir() else None


def stage_env(**extra: str) -> dict[str, str]:
    """Environment for stage subprocesses: this venv's python first on PATH, the default MLflow store."""
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "DVC_EXP_NAME"}}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    mirror = data_mirror()
    if mirror is not None:
        env["BPLAB_DATA_MIRROR"] = str(mirror)
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command, returning its output; on an unexpected exit status fail with its output."""
    result = subprocess.run(cmd, cwd=cwd, env=env or stage_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}\n"
                    f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    return result


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert process.poll() is None, f"{process.args[:4]} exited {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{url} did not answer in {timeout_s} s:\n{log.read_text()}"
        time.sleep(0.3)


def copy_repo(dest: Path) -> Path:
    """Copy the working tree's tracked and unignored files to ``dest`` as a fresh git repository."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / "dvc.lock").unlink(missing_ok=True)  # the copy starts with nothing run
    git = ["git", "-c", "user.name=bplab-tests", "-c", "user.email=tests@bplab.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "test copy"], cwd=dest, check=True)
    return dest


def set_params(repo: Path, overrides: dict[str, Any]) -> None:
    """Apply dotted-key overrides (``{"data.mnist.preprocess.train_limit": 512}``) to params.yaml."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


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

    def split(x, y, n_train):
        return Prepared({"train": (x[:n_train], y[:n_train]), "test": (x[n_train:], y[n_train:])})

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
    from bplab.config import load_params

    return load_params(REPO / "params.yaml")


def mlflow_client():
    """A client of the store the pipeline resolves to from the current directory."""
    from mlflow import MlflowClient

    from bplab import track

    return MlflowClient(track.tracking_uri())


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
    yield copy_repo(tmp_path / "repo")


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
