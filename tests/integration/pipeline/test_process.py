"""How a stage process starts and ends (bplab.pipeline.process): the garbage collector around start-up, exit codes."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bplab.errors import ParamsError
from bplab.pipeline.process import stage_process, started


@pytest.fixture
def collector():
    """The test process's collector as it was, whatever the test leaves behind."""
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_the_collector_is_off_during_start_up_and_back_on_after_started(collector) -> None:
    gc.enable()
    seen = []
    with stage_process("train@x"):
        seen.append(gc.isenabled())
        survivor = [object() for _ in range(1000)]  # what start-up creates and keeps
        frozen_before = gc.get_freeze_count()
        started()
        seen.append(gc.isenabled())
        assert gc.get_freeze_count() >= frozen_before + len(survivor)  # frozen, not walked again
    assert seen == [False, True]
    assert gc.isenabled()  # used in-process, the caller's collector is on again


def test_a_failing_stage_restores_the_collector_too(collector, capsys: pytest.CaptureFixture[str]) -> None:
    gc.enable()
    with pytest.raises(SystemExit) as ended, stage_process("evaluate@x"):
        assert not gc.isenabled()
        raise ParamsError("train.x.lr: must be > 0")
    assert ended.value.code == 2
    assert capsys.readouterr().err == "evaluate@x: error: train.x.lr: must be > 0\n"
    assert gc.isenabled()


def test_a_stage_process_that_leaves_cycles_after_started_gets_them_collected() -> None:
    # In a fresh process, as a stage runs: cycles made after started() are reclaimed by the
    # collector on its own, without anyone calling gc.collect().
    code = """
import gc, weakref
from bplab.pipeline.process import stage_process, started

class Node:
    pass

with stage_process("train@x"):
    started()
    probes = []
    for _ in range(5000):
        a, b = Node(), Node()
        a.other, b.other = b, a
        probes.append(weakref.ref(a))
    print(sum(p() is not None for p in probes))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(result.stdout) < 5000 // 2, result.stdout  # without started() all 5000 would be alive


def test_errors_a_stage_prints_have_their_urls_redacted(collector, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit), stage_process("download@x"):
        raise ParamsError("data.x.download.mirrors.0: invalid (got 'https://alice:pa/ss@mirror.example/x/')")
    assert capsys.readouterr().err == \
        "download@x: error: data.x.download.mirrors.0: invalid (got 'https://***@mirror.example/x/')\n"
    # An error nobody expected ends the process with its traceback, as Python prints it, redacted.
    code = ("from bplab.pipeline.process import stage_process\nwith stage_process('train@x'):\n"
            "    raise RuntimeError('API request to http://bob:Pa55/w#rd@tracking.example/api failed')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("Traceback (most recent call last):\n")
    assert result.stderr.endswith("RuntimeError: API request to http://***@tracking.example/api failed\n")
    assert "Pa55" not in result.stderr


def test_an_s3_error_a_stage_prints_shows_neither_key_nor_signature() -> None:
    """botocore names the URL it could not reach: an endpoint with a key in it, a presigned link."""
    secret, signature = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "5e3d0c2b9a"
    url = (f"http://AKIAIOSFODNN7EXAMPLE:{secret}@127.0.0.1:9000/team/mlflow/1/m/model.pth"
           f"?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261207&X-Amz-Signature={signature}")
    code = ("import sys\nfrom bplab.pipeline.process import stage_process\nwith stage_process('train@x'):\n"
            "    raise ConnectionError(f'Could not connect to the endpoint URL: \"{sys.argv[1]}\"')\n")
    result = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.endswith('ConnectionError: Could not connect to the endpoint URL: '
                                  '"http://***@127.0.0.1:9000/team/mlflow/1/m/model.pth\n')
    for hidden in (secret, *secret.split("/"), "AKIAIOSFODNN7EXAMPLE", signature):
        assert hidden not in result.stderr


DEFERRED = """
import os, signal, sys
from bplab.interrupts import interrupts_deferred
from bplab.pipeline.process import progress_bar
from bplab.tracking.store import Terminated

def terminated(signum, frame):
    raise Terminated(f"received signal {signum}")

if sys.argv[1] == "handler":
    signal.signal(signal.SIGTERM, terminated)
signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, even where a background run ignores SIGINT
try:
    with interrupts_deferred():
        os.kill(os.getpid(), signal.SIGTERM if sys.argv[1] != "ctrl-c" else signal.SIGINT)
        bar = progress_bar(total=3, disable=True)  # built whole: its exception waits for the block's end
        print("built", flush=True)
    print("not reached", flush=True)
except KeyboardInterrupt as exc:
    print(type(exc).__name__, bar.total, flush=True)
"""


@pytest.mark.parametrize(("mode", "shown", "code"), [
    ("handler", ["built", "Terminated 3"], 0),  # a stage's SIGTERM handler raises once the bar exists
    ("ctrl-c", ["built", "KeyboardInterrupt 3"], 0),
    ("default", ["built"], -15)])  # no handler: the process ends by the signal, after the block
def test_an_interrupt_during_a_progress_bars_making_takes_effect_once_it_is_made(
        mode: str, shown: list[str], code: int) -> None:
    result = subprocess.run([sys.executable, "-c", DEFERRED, mode], capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stderr
    assert result.stdout.split("\n")[:-1] == shown
    assert "Traceback" not in result.stderr


def _one_line_error(capsys: pytest.CaptureFixture[str], ended: pytest.ExceptionInfo[SystemExit], prefix: str) -> str:
    """The stage's one error line (MLflow's own INFO log lines aside), checked to be all it said."""
    assert ended.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if " INFO mlflow" not in line]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_store_ends_a_stage_with_one_line_naming_it(
        collector, mlflow_repo: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    from bplab.tracking.recorder import Recorder

    store = mlflow_repo / "mlflow.db"
    if damage == "garbage":
        store.write_bytes(os.urandom(8192))
    else:  # a real store, cut short (made under another name: MLflow keeps a store it has opened)
        from mlflow import MlflowClient

        MlflowClient(f"sqlite:///{mlflow_repo / 'whole.db'}").create_experiment("x")
        store.write_bytes((mlflow_repo / "whole.db").read_bytes()[:65536])
    with pytest.raises(SystemExit) as ended, stage_process("download@flower"):
        with Recorder.run("flower-data", "download", {}):
            pass
    line = _one_line_error(capsys, ended,
                           f"download@flower: error: the MLflow tracking store sqlite:///{store} is damaged (")
    reason = "file is not a database" if damage == "garbage" else "database disk image is malformed"
    assert line.endswith(f"({reason}): restore it from a backup, or move it aside to start an empty store")


def test_a_damaged_store_ends_a_bplab_command_with_one_line(mlflow_repo: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from bplab.commands.main import main

    (mlflow_repo / "mlflow.db").write_bytes(os.urandom(8192))
    assert main(["compare"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bplab compare: error: the MLflow tracking store sqlite:///{mlflow_repo / 'mlflow.db'} "
                          "is damaged (file is not a database)") and err.count("\n") == 1, err


def test_evaluating_a_model_whose_run_is_not_in_the_store_is_one_line(
        collector, workspace: Path, params, capsys: pytest.CaptureFixture[str]) -> None:
    # As after `dvc pull` of models trained against another store, or with MLFLOW_TRACKING_URI changed
    from bplab.paths import RUN_FILE, model_dir
    from bplab.pipeline.evaluate import evaluate

    model_dir("flower_logreg").mkdir(parents=True)
    (model_dir("flower_logreg") / RUN_FILE).write_text(json.dumps({"run_id": "0" * 32, "task": "binary"}))
    with pytest.raises(SystemExit) as ended, stage_process("evaluate@flower_logreg"):
        evaluate("flower_logreg", params)
    store = f"sqlite:///{workspace / 'mlflow.db'}"
    line = _one_line_error(capsys, ended, f"evaluate@flower_logreg: error: MLflow run {'0' * 32} is not in the "
                                          f"tracking store {store}: it was deleted, or logged to another store")
    assert "set MLFLOW_TRACKING_URI to the store that holds it, or train again" in line
