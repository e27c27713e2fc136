"""The `bplab` command line: help, `bplab compare`, and what `bplab serve` and `bplab promote` refuse.

`bplab compare` runs as the console script, a real process, beside `python -m bplab.compare`.
Help and refusals run :func:`bplab.commands.main.main` in this process: each ends before MLflow
is set up or a server started, and a child process would only add its start-up. `bplab serve`
answering predictions is tested in test_serve.py, where the champions' servers start.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bplab.params.schema import Params
from bplab.pipeline.evaluate import evaluate
from bplab.pipeline.train_stage import train
from bplab.testing.local_servers import free_port
from bplab.tracking import store
from support.pipeline import mlflow_client, tiny
from support.processes import BPLAB, bplab_here


def bplab(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``bplab ARGS`` in ``cwd``, its output captured."""
    assert BPLAB.is_file(), f"{BPLAB} is missing: `make setup` (or `pip install -e .`) installs it"
    return subprocess.run([str(BPLAB), *args], cwd=cwd, env=env or dict(os.environ), capture_output=True,
                          text=True, timeout=120)


def refused(result: subprocess.CompletedProcess[str], command: str) -> str:
    """The one-line error of a ``bplab`` run that must exit 2 without a traceback."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bplab {command}: error: "), result.stderr
    return lines[0]


def test_help_shows_each_command_with_a_description_and_examples(capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # argparse's width when its output is not a terminal, whatever runs the suite
    top = bplab_here("--help", capsys=capsys)
    assert top.returncode == 0, top.stderr
    assert top.stdout.startswith("usage: bplab [-h] COMMAND ...")
    assert "compare" in top.stdout and "serve" in top.stdout and "examples:\n  bplab compare" in top.stdout
    assert "  bplab serve boston " in top.stdout

    compare = bplab_here("compare", "--help", capsys=capsys)
    assert compare.returncode == 0, compare.stderr
    assert compare.stdout.startswith("usage: bplab compare [-h] [--out OUT] [--all] [--dataset DATASET]")
    assert "one row per variant" in compare.stdout and "MLFLOW_TRACKING_URI" in compare.stdout
    assert "examples:\n  bplab compare " in compare.stdout and "  bplab compare --all " in compare.stdout

    serve = bplab_here("serve", "--help", capsys=capsys)
    assert serve.returncode == 0, serve.stderr
    assert serve.stdout.startswith("usage: bplab serve [-h] [--port PORT] [--host HOST] [--alias ALIAS]")
    assert "models:/<dataset>@champion" in serve.stdout and "mlflow models serve --env-manager local" in serve.stdout
    assert "examples:\n  bplab serve boston " in serve.stdout and "/invocations" in serve.stdout

    assert bplab_here(capsys=capsys).returncode == 2  # a command is required
    assert "'0' is not a TCP port" in bplab_here("serve", "boston", "--port", "0", capsys=capsys).stderr


@pytest.mark.usefixtures("one_torch_thread")
def test_compare_lists_the_runs_of_a_real_store_like_python_m_bplab_compare(workspace: Path, params: Params) -> None:
    small = tiny(params, "flower_logreg", epochs=10)
    train("flower_logreg", small)
    assert evaluate("flower_logreg", small)["promoted"]  # the only version: the champion

    result = bplab("compare", "--out", "study.md", cwd=workspace)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"MLflow store: sqlite:///{workspace / 'mlflow.db'}"
    assert lines[2:4] == ["flower", "======"]
    row = next(line for line in lines if line.startswith("flower_logreg "))
    assert " logreg " in row and " sgd " in row and "★" in row
    assert (workspace / "study.md").read_text().startswith("# bplab: variants compared")
    # the same program as `python -m bplab.compare`, which keeps working
    module = subprocess.run([sys.executable, "-m", "bplab.compare", "--out", "study.md"], cwd=workspace,
                            capture_output=True, text=True, timeout=120)
    assert module.returncode == 0 and module.stdout == result.stdout, module.stderr


def test_serve_refuses_with_one_line_naming_what_is_wrong(mlflow_repo: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def no_server(*args: object) -> None:  # in this process, a serve that got through would replace pytest
        pytest.fail(f"bplab serve was to refuse, and started a server: {args}")

    monkeypatch.setattr(os, "execve", no_server)
    missing = refused(bplab_here("serve", "boston", capsys=capsys), "serve")  # before any store exists
    assert f"no MLflow store at sqlite:///{mlflow_repo / 'mlflow.db'}" in missing
    assert not (mlflow_repo / "mlflow.db").exists()  # looking did not create one

    client = mlflow_client()
    client.create_registered_model("boston")  # a registered model with no version at all
    client.create_registered_model("flower")  # one version, registered by hand, under `champion`
    version = client.create_model_version("flower", str(mlflow_repo / "elsewhere"), tags={"variant": "by_hand"})
    client.set_registered_model_alias("flower", "champion", version.version)

    assert refused(bplab_here("serve", "nosuch", capsys=capsys), "serve") == \
        "bplab serve: error: unknown dataset 'nosuch'; the datasets are boston, flower, mnist"
    assert "no registered model 'mnist'" in refused(bplab_here("serve", "mnist", capsys=capsys), "serve")
    assert "has no version with the alias 'champion'" in refused(bplab_here("serve", "boston", capsys=capsys), "serve")
    assert "has no version with the alias 'best'" in \
        refused(bplab_here("serve", "flower", "--alias", "best", capsys=capsys), "serve")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert refused(bplab_here("serve", "flower", "--port", str(port), capsys=capsys), "serve") == \
            f"bplab serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"

    # a tracking server that does not answer: named without its credentials, and in seconds
    monkeypatch.setenv(store.TRACKING_ENV, f"http://ann:s3cret@127.0.0.1:{free_port()}/?token=abc")
    for command in ("serve", "compare"):
        line = refused(bplab_here(command, *(["flower"] if command == "serve" else []), capsys=capsys), command)
        assert "cannot reach the MLflow tracking server at http://***@127.0.0.1:" in line
        assert "s3cret" not in line and "token" not in line


def test_promote_moves_the_champion_and_says_from_where(mlflow_repo: Path, capsys: pytest.CaptureFixture) -> None:
    from bplab.commands.main import main

    assert main(["promote", "flower", "1"]) == 2  # no store yet: none is created by looking
    assert f"no MLflow store at sqlite:///{mlflow_repo / 'mlflow.db'}" in capsys.readouterr().err
    assert not (mlflow_repo / "mlflow.db").exists()
    client = mlflow_client()
    client.create_registered_model("flower")
    scored = {"variant": "flower_module", "val_acc": "0.9", "test_acc": "0.85", "split_committed": "true"}
    client.create_model_version("flower", str(mlflow_repo / "a"), tags=scored)
    other = {"variant": "flower_logreg", "val_acc": "0.95", "test_acc": "0.5", "split_committed": "false"}
    client.create_model_version("flower", str(mlflow_repo / "b"), tags=other)
    client.set_registered_model_alias("flower", "champion", "1")

    assert main(["promote", "flower", "2"]) == 0
    out, err = capsys.readouterr()
    assert out == ("bplab promote: flower@champion moved from version 1 to version 2 (flower_logreg; "
                   "val_acc 0.95, test_acc 0.5)\n")
    assert "version 2 was not scored on the committed split" in err
    assert str(client.get_model_version_by_alias("flower", "champion").version) == "2"
    assert main(["promote", "flower", "9"]) == 2
    assert capsys.readouterr().err == ("bplab promote: error: registered model 'flower' has no version '9'; "
                                       "its versions are 1, 2\n")
    assert main(["promote", "nosuch", "1"]) == 2
    assert "unknown dataset 'nosuch'" in capsys.readouterr().err
    assert str(client.get_model_version_by_alias("flower", "champion").version) == "2"
