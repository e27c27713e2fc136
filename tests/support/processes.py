"""Running what the tests run: a command in a child process, or a stage's entry point in this one."""

from __future__ import annotations

import gc
import io
import os
import runpy
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from bplab.testing.scratch import REPO, stage_env

BPLAB = Path(sys.executable).with_name("bplab")  # the console script of [project.scripts]
NO_MIRROR = "no data mirror: set BPLAB_DATA_MIRROR (CI uses ../shared/data)"


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


def unavailable(reason: str) -> None:
    """Skip a test that needs something this machine lacks; under CI (``CI=true``) fail instead,
    since there a missing mirror or tool is a broken set-up, not a choice."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: nothing may be skipped for a missing mirror or tool)")
    pytest.skip(reason)



@dataclass(frozen=True)
class StageExit:
    """How a stage entry point run in this process ended: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def stage_in_process(script: str, *args: str, cwd: Path) -> StageExit:
    """Run ``stages/<script>.py`` of this checkout with ``args`` in this process, from ``cwd``, as
    DVC would run it (``python stages/<script>.py ARGS``): for a stage's error paths, where no
    signal, kill or second process is involved and a child process would only add its start-up
    (importing torch and MLflow, seconds). The stage's own handling turns errors into its
    one-line message and an exit code; both come back here.

    ``sys.argv``, the cwd, ``sys.excepthook`` and the garbage collector (the stage freezes what is
    alive as it ends) are put back after. MLflow's tracking URI, which the stage sets (and exports
    as ``MLFLOW_TRACKING_URI``), is not: run it under a fixture that resets it (``mlflow_repo``,
    or one built on it), with any environment it needs set by ``monkeypatch.setenv``."""
    out, err = io.StringIO(), io.StringIO()
    argv, before, excepthook = sys.argv, Path.cwd(), sys.excepthook
    sys.argv = [str(REPO / "stages" / f"{script}.py"), *args]
    os.chdir(cwd)
    runner = os.environ.get("BPLAB_RUNNER")
    os.environ["BPLAB_RUNNER"] = "off"  # in this process, not forked by the warm runner
    try:
        with redirect_stdout(out), redirect_stderr(err):
            runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv, sys.excepthook = argv, excepthook  # the stage redacts tracebacks in its own process
        if runner is None:
            del os.environ["BPLAB_RUNNER"]
        else:
            os.environ["BPLAB_RUNNER"] = runner
        os.chdir(before)
        gc.unfreeze()  # what stage_process froze as the stage ended: a process would now exit
    return StageExit(code, out.getvalue(), err.getvalue())


def params_only_repository(folder: Path, overrides: dict | None = None) -> Path:
    """A folder a stage can start in without a copy of the whole repository: ``.dvc/`` (its root,
    where the MLflow store would go) and this checkout's params.yaml with dotted ``overrides``."""
    from bplab.testing.scratch import set_params

    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".dvc").mkdir(exist_ok=True)
    (folder / "params.yaml").write_text((REPO / "params.yaml").read_text())
    if overrides:
        set_params(folder, overrides)
    return folder


def bplab_here(*args: str, capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess[str]:
    """``bplab ARGS`` by :func:`bplab.commands.main.main` in this process, ended as its process would
    end (argparse's exits included), with what it printed."""
    from bplab.commands.main import main

    capsys.readouterr()  # what came before is not its output
    excepthook = sys.excepthook  # main redacts tracebacks for its whole process
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.excepthook = excepthook
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["bplab", *args], code, out, err)
