"""Throwaway copies of this repository, for the tests and the benchmark.

A copy holds the working tree's tracked and unignored files in a new git repository, with nothing
run yet. Processes started with :func:`stage_env` of a copy import the copy's own ``src/``, so an
edit made to a copy (a new dataset module, say) is the code its stages run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from bplab.pipeline.process import this_environment_first


def _checkout_root() -> Path:
    """The checkout this code runs from (the folder with dvc.yaml above ``src/bplab``), else the
    current directory's: tests and bench run either from an editable checkout or inside one."""
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / "dvc.yaml").is_file() and (folder / "params.yaml").is_file():
                return folder
    raise RuntimeError("bplab.testing.scratch: no checkout of bplab (a folder with dvc.yaml) above "
                       f"{Path(__file__).parent} or the current directory")


REPO = _checkout_root()
_GIT = ["git", "-c", "user.name=bplab-scratch", "-c", "user.email=scratch@bplab.invalid"]


def copy_repository(dest: Path, params: dict[str, Any] | None = None, source: Path = REPO) -> Path:
    """Copy ``source``'s working tree to ``dest`` as a fresh git repository, without ``dvc.lock``.

    ``params`` are dotted-key overrides applied to the copy's params.yaml before the first commit.
    """
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=source, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (source / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
    (dest / "dvc.lock").unlink(missing_ok=True)  # the copy starts with nothing run
    if params:
        set_params(dest, params)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True, capture_output=True)
    commit(dest, "scratch copy")
    return dest


def commit(repo: Path, message: str) -> None:
    """Commit everything in ``repo`` that git does not ignore (``dvc.lock``, ``metrics/`` after a run)."""
    for command in ([*_GIT, "add", "-A"], [*_GIT, "commit", "-qm", message]):
        subprocess.run(command, cwd=repo, check=True, capture_output=True)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any = None, delete: bool = False) -> None:
    """Set (or with ``delete``, remove) ``tree``'s entry at a dotted key such as ``train.mnist_mlp.lr``."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree[key]
    if delete:
        del tree[leaf]
    else:
        tree[leaf] = value


def set_params(repo: Path, overrides: dict[str, Any]) -> None:
    """Apply dotted-key overrides (``{"data.mnist.preprocess.train_limit": 512}``) to params.yaml."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        set_dotted(params, dotted, value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def data_mirror(repo: Path = REPO) -> Path | None:
    """``BPLAB_DATA_MIRROR`` if set, else ``../shared/data`` beside ``repo``, if it holds ``mnist/``."""
    value = os.environ.get("BPLAB_DATA_MIRROR")
    candidate = Path(value) if value else repo.parent / "shared" / "data"
    candidate = candidate if candidate.is_absolute() else (repo / candidate)
    return candidate.resolve() if (candidate / "mnist").is_dir() else None


def stage_env(repo: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for processes that run stages: this venv's python first on PATH (DVC stages call
    ``python``), MLflow's default store (no ``MLFLOW_TRACKING_URI``), the data mirror, and with a
    ``repo`` that has ``src/bplab``, that repository's own code first on the import path."""
    env = {k: v for k, v in this_environment_first().items() if k not in {"MLFLOW_TRACKING_URI", "DVC_EXP_NAME"}}
    mirror = data_mirror()
    if mirror is not None:
        env["BPLAB_DATA_MIRROR"] = str(mirror)
    if repo is not None and (repo / "src" / "bplab").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo.resolve() / "src"), env.get("PYTHONPATH")]))
    return env | extra
