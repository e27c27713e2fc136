"""Shared fixtures: the repository's own files, a temporary copy of it, and a clean environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    return result


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


@pytest.fixture
def mirror() -> Path:
    """The offline data mirror; tests that need real MNIST/Boston skip without it."""
    found = data_mirror()
    if found is None:
        pytest.skip("no data mirror: set BPLAB_DATA_MIRROR (CI uses ../shared/data)")
    return found
