"""Faults injected into stages: each ends with a clear message, an honest MLflow status, and no
output that DVC could take for a result.

Signals, kills and concurrent stages need real stage processes. The other faults (bad data,
divergence, an unreachable server) run the stage's entry point in this process
(``stage_in_process``), which ends as its process would; ``stage_dir`` rests on ``mlflow_repo``,
which resets MLflow's tracking URI after each test, and environment goes through ``monkeypatch``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bplab.commands.reproduce import UNREPEATABLE
from bplab.data import processed
from bplab.data.processed import Prepared
from bplab.testing.local_servers import free_port
from bplab.testing.scratch import REPO, set_params, stage_env
from bplab.timings import FAULT_ENV
from support.pipeline import mlflow_client
from support.processes import stage_in_process


@pytest.fixture
def stage_dir(workspace: Path) -> Path:
    """The tiny-data workspace with the repository's stages and params.yaml, for stage processes
    (and stages in this process: through ``workspace``, MLflow's tracking URI is reset after)."""
    shutil.copytree(REPO / "stages", workspace / "stages")
    shutil.copy(REPO / "params.yaml", workspace / "params.yaml")
    return workspace


def stage(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run a stage entry point to completion."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env or stage_env(), capture_output=True,
                          text=True, timeout=timeout)


def _as_from_a_terminal() -> None:
    # A terminal's child gets the default SIGINT disposition; under `nohup make test &` the suite
    # itself ignores SIGINT, and a child would inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env or stage_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_as_from_a_terminal)


# Signals and kills are tested both ways a stage runs: forked by the warm runner (the default, as
# under `dvc repro`), and in its own process.
BOTH_MODES = pytest.mark.parametrize("runner", ["on", "off"], ids=["warm-runner", "own-process"])


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"process ended before {path} appeared: {process.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def wait_for_epoch(checkpoint: Path, process: subprocess.Popen[str], epoch: int, timeout: float = 120) -> int:
    """Wait until ``checkpoint`` holds at least ``epoch`` (it is written whole, by rename); its epoch."""
    from bplab.models.safe_load import load_without_code

    deadline = time.monotonic() + timeout
    while True:
        if checkpoint.exists():
            found = load_without_code(checkpoint, "a checkpoint")["epoch"]
            if found >= epoch:
                return found
        assert process.poll() is None, f"process ended before epoch {epoch} was saved: {process.communicate()}"
        assert time.monotonic() < deadline, f"{checkpoint} did not reach epoch {epoch}"
        time.sleep(0.05)


def metric_histories(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every per-epoch metric of a run as (step, value) pairs; wall times and the machine's
    ``system/...`` samples, which differ between any two runs, left out."""
    client = mlflow_client()
    names = [m for m in client.get_run(run_id).data.metrics if not m.startswith(UNREPEATABLE)]
    return {name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name)) for name in names}


def runs_of(experiment: str, variant: str):
    found = mlflow_client().get_experiment_by_name(experiment)
    return [] if found is None else mlflow_client().search_runs(
        [found.experiment_id], f"attributes.run_name = '{variant}'", order_by=["attributes.start_time ASC"])


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob(".*.tmp")) if directory.exists() else []


# --- bad data ---------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    header = (2048 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_truncated_raw_file_fails_naming_it_and_keeps_the_previous_output(stage_dir: Path) -> None:
    raw = stage_dir / "data/raw/mnist"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 8)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    assert stage_in_process("preprocess", "mnist", cwd=stage_dir).returncode == 0
    good = (stage_dir / "data/processed/mnist/x_train.npy").read_bytes()
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])

    result = stage_in_process("preprocess", "mnist", cwd=stage_dir)
    assert result.returncode == 2
    assert "preprocess@mnist: error: data/raw/mnist/train-images-idx3-ubyte: truncated or padded" in result.stderr
    assert "Traceback" not in result.stderr
    assert (stage_dir / "data/processed/mnist/x_train.npy").read_bytes() == good
    assert leftovers(stage_dir / "data/processed") == []
    assert [r.info.status for r in runs_of("mnist-data", "preprocess")] == ["FINISHED", "FAILED"]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda text: text.replace("CRIM,", "CRIME,", 1), "header must be CRIM,ZN"),
    (lambda text: text.replace("\n0.02731,", "\n0.02731x,", 1), "line 3, column CRIM: '0.02731x' is not a number"),
])
def test_bad_boston_csv_fails_naming_file_and_column(stage_dir: Path, mirror: Path, edit, message: str) -> None:
    raw = stage_dir / "data/raw/boston"
    raw.mkdir(parents=True)
    (raw / "boston.csv").write_text(edit((mirror / "boston/boston.csv").read_text()))
    before = (stage_dir / "data/processed/boston/x_train.npy").read_bytes()
    result = stage_in_process("preprocess", "boston", cwd=stage_dir)
    assert result.returncode == 2
    assert f"data/raw/boston/boston.csv: {message}" in result.stderr
    assert (stage_dir / "data/processed/boston/x_train.npy").read_bytes() == before


@pytest.mark.usefixtures("one_torch_thread")
def test_processed_tensor_of_wrong_dtype_stops_training_before_a_run(stage_dir: Path) -> None:
    np.save(stage_dir / "data/processed/flower/x_train.npy", np.zeros((48, 2), np.float64))
    result = stage_in_process("train", "flower_logreg", cwd=stage_dir)
    assert result.returncode == 2
    assert "x_train must be a 2-D float32 array, found 2-D float64" in result.stderr
    assert runs_of("flower", "flower_logreg") == []
    assert not (stage_dir / "models").exists()


# --- interrupted and failed training ----------------------------------------------------------

@BOTH_MODES
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_training_marks_the_run_killed_and_writes_no_model(
        stage_dir: Path, signum: int, code: int, runner: str) -> None:
    set_params(stage_dir, {"train.flower_twolayer.epochs": 1_000_000})
    process = start(stage_dir, "stages/train.py", "flower_twolayer", env=stage_env(BPLAB_RUNNER=runner))
    wait_for(stage_dir / "checkpoints/flower_twolayer.pt", process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert "nothing was written as a result" in stderr and "Traceback" not in stderr
    (run,) = runs_of("flower", "flower_twolayer")
    assert run.info.status == "KILLED"
    assert not (stage_dir / "models" / "flower_twolayer").exists()
    assert not (stage_dir / "history" / "flower_twolayer.csv").exists()
    assert leftovers(stage_dir / "models") == []


@pytest.mark.usefixtures("one_torch_thread")
def test_diverging_loss_fails_the_run_naming_epoch_and_step(stage_dir: Path) -> None:
    set_params(stage_dir, {"train.boston_module.lr": 1e6, "train.boston_module.batch_size": 16})
    result = stage_in_process("train", "boston_module", cwd=stage_dir)
    assert result.returncode == 2
    assert "train@boston_module: error: training diverged: loss is" in result.stderr
    assert "at epoch 1, step" in result.stderr or "at epoch 2, step" in result.stderr
    (run,) = runs_of("boston", "boston_module")
    assert run.info.status == "FAILED"
    assert not (stage_dir / "models").exists()


def test_unreachable_tracking_server_fails_fast_naming_it(stage_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nobody listens on it
    uri = f"http://alice:s3cret@127.0.0.1:{port}/?token=t0ken"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    result = stage_in_process("download", "flower", cwd=stage_dir)
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    assert f"cannot reach the MLflow tracking server at http://***@127.0.0.1:{port}/" in result.stderr
    assert "s3cret" not in result.stderr and "t0ken" not in result.stderr and "alice" not in result.stderr
    assert not (stage_dir / "data/raw/flower").exists()


# --- concurrency and resume ------------------------------------------------------------------

def test_four_concurrent_trainings_record_every_metric(stage_dir: Path) -> None:
    variants = ["flower_logreg", "flower_twolayer", "flower_sequential", "flower_module"]
    set_params(stage_dir, {f"train.{v}.epochs": 300 for v in variants})
    processes = [start(stage_dir, "stages/train.py", v) for v in variants]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    client = mlflow_client()
    for variant in variants:
        (run,) = runs_of("flower", variant)
        assert run.info.status == "FINISHED"
        for metric in ("train_loss", "val_loss", "train_acc", "val_acc", "epoch_seconds"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))
            assert steps == list(range(1, 301)), (variant, metric)


def test_killed_training_resumes_and_ends_like_an_uninterrupted_one(stage_dir: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.uniform(-1, 1, size=(2400, 784)).astype(np.float32)
    digits = (pixels @ rng.normal(size=(784, 10))).argmax(axis=1).astype(np.int64)
    processed.save(Prepared({"train": (pixels[:2000], digits[:2000]), "val": (pixels[2000:2200], digits[2000:2200]),
                             "test": (pixels[2200:], digits[2200:])}), stage_dir / "data/processed/mnist")
    set_params(stage_dir, {"train.mnist_mlp.epochs": 60})
    checkpoint = stage_dir / "checkpoints/mnist_mlp.pt"

    process = start(stage_dir, "stages/train.py", "mnist_mlp")
    wait_for_epoch(checkpoint, process, 1)
    process.kill()  # SIGKILL: no handler runs, the worst case
    process.communicate(timeout=60)
    assert not (stage_dir / "models/mnist_mlp").exists()
    import torch

    stopped_after = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= stopped_after < 60

    resumed = stage(stage_dir, "stages/train.py", "mnist_mlp", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from checkpoints/mnist_mlp.pt after epoch {stopped_after} of 60" in resumed.stderr
    interrupted_history = (stage_dir / "history/mnist_mlp.csv").read_text()
    (run,) = runs_of("mnist", "mnist_mlp")  # the same MLflow run, finished
    assert run.info.status == "FINISHED" and run.data.tags["resumed_after_epoch"] == str(stopped_after)

    shutil.rmtree(stage_dir / "models")
    checkpoint.unlink()
    straight = stage(stage_dir, "stages/train.py", "mnist_mlp", timeout=300)
    assert straight.returncode == 0, straight.stderr
    assert "no checkpoint" in straight.stderr

    def without_timing(history: str) -> list[list[str]]:
        return [line.split(",")[:-1] for line in history.splitlines()]  # epoch_seconds differ, nothing else

    assert without_timing(interrupted_history) == without_timing((stage_dir / "history/mnist_mlp.csv").read_text())
    assert len(interrupted_history.splitlines()) == 61
    # MLflow holds every epoch once, with the values of the uninterrupted run
    resumed_run, straight_run = (r.info.run_id for r in runs_of("mnist", "mnist_mlp"))
    expected = metric_histories(straight_run)
    assert [step for step, _ in expected["val_loss"]] == list(range(1, 61))
    assert metric_histories(resumed_run) == expected


# --- resume is right, or does not happen -----------------------------------------------------------



def killed_boston_training(stage_dir: Path, runner: str = "on") -> int:
    """Train boston_module until its second progress report, then SIGKILL it; the saved epoch."""
    set_params(stage_dir, {"train.boston_module.epochs": 3000, "train.boston_module.batch_size": 16})
    killed = stage(stage_dir, "stages/train.py", "boston_module",
                   env=stage_env(BPLAB_RUNNER=runner, **{FAULT_ENV: "train@boston_module/checkpoints:2:end"}))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    from bplab.models.safe_load import load_without_code

    return load_without_code(stage_dir / "checkpoints/boston_module.pt", "a checkpoint")["epoch"]


@BOTH_MODES
def test_new_training_data_sets_an_unfinished_checkpoint_aside_and_starts_afresh(stage_dir: Path, runner: str) -> None:
    saved_epoch = killed_boston_training(stage_dir, runner)
    source = stage_dir / "data/processed/boston"
    data = processed.load(source)
    x, y = data.splits["train"]
    order = np.random.default_rng(5).permutation(len(x))  # same shapes, other rows: another split_seed
    processed.save(Prepared({"train": (x[order], y[order]), "val": data.splits["val"], "test": data.splits["test"]}),
                   source)

    again = stage(stage_dir, "stages/train.py", "boston_module", timeout=300)

    assert again.returncode == 0, again.stderr
    assert (f"checkpoint checkpoints/boston_module.pt (epoch {saved_epoch} of 3000) was trained with other data; "
            "kept as checkpoints/boston_module.pt.set-aside-") in again.stderr
    [kept] = (stage_dir / "checkpoints").glob("boston_module.pt.set-aside-*")
    from bplab.models.safe_load import load_without_code

    assert load_without_code(kept, "a checkpoint")["epoch"] == saved_epoch
    killed_run, new_run = runs_of("boston", "boston_module")
    assert (killed_run.info.status, new_run.info.status) == ("KILLED", "FINISHED")  # none left RUNNING
    assert "resumed_after_epoch" not in new_run.data.tags


def test_a_checkpoint_whose_mlflow_run_was_deleted_is_set_aside(stage_dir: Path) -> None:
    killed_boston_training(stage_dir)
    [killed_run] = runs_of("boston", "boston_module")
    mlflow_client().delete_run(killed_run.info.run_id)

    again = stage(stage_dir, "stages/train.py", "boston_module", timeout=300)

    assert again.returncode == 0, again.stderr
    assert (f"belongs to MLflow run {killed_run.info.run_id}, which no longer exists; kept as "
            "checkpoints/boston_module.pt.set-aside-") in again.stderr
    [new_run] = runs_of("boston", "boston_module")
    assert new_run.info.status == "FINISHED" and new_run.info.run_id != killed_run.info.run_id


