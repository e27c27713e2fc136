"""`torchrun` with DistributedDataParallel (gloo, 2 ranks on 127.0.0.1) trains the same weights as
one process with the same global batch, and logs exactly one MLflow run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bplab.errors import ParamsError
from bplab.testing.local_servers import free_port
from bplab.testing.scratch import REPO, set_params, stage_env
from bplab.train.distributed import Placement, resolve_device
from support.pipeline import mlflow_client


def test_shards_cover_each_batch_once() -> None:
    for size in (1, 7, 32, 33):
        parts = [Placement(rank, 3, torch.device("cpu")).shard(10, size) for rank in range(3)]
        assert parts[0][0] == 10 and sum(length for _, length in parts) == size
        assert all(a[0] + a[1] == b[0] for a, b in zip(parts, parts[1:]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_device_auto_is_cpu_and_cuda_without_a_gpu_is_a_params_error() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ParamsError, match="device: 'cuda' was asked for but no CUDA device is available"):
        resolve_device("cuda")


def test_two_gloo_ranks_match_one_process(workspace: Path) -> None:
    shutil.copytree(REPO / "stages", workspace / "stages")
    shutil.copy(REPO / "params.yaml", workspace / "params.yaml")
    # 64 flower points in global batches of 22 (the last is 20): shards of 11/11 and 10/10 rows.
    set_params(workspace, {"train.flower_sequential.epochs": 40, "train.flower_sequential.batch_size": 22})
    env = stage_env(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")

    single = subprocess.run([sys.executable, "stages/train.py", "flower_sequential"], cwd=workspace, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    expected = torch.load(workspace / "models/flower_sequential/state_dict.pt", weights_only=True)

    torchrun = Path(sys.executable).parent / "torchrun"
    ddp = subprocess.run([str(torchrun), "--nnodes=1", "--nproc_per_node=2", "--rdzv-backend=c10d",
                          f"--rdzv-endpoint=127.0.0.1:{free_port()}", "stages/train.py", "flower_sequential"],
                         cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr
    assert "on 2 ranks" in ddp.stderr
    trained = torch.load(workspace / "models/flower_sequential/state_dict.pt", weights_only=True)
    assert trained.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(trained[key], expected[key], rtol=1e-4, atol=1e-5)

    client = mlflow_client()
    runs = client.search_runs([client.get_experiment_by_name("flower").experiment_id])
    assert sorted(r.data.params["world_size"] for r in runs) == ["1", "2"]  # one run per training, rank 0's
    ddp_run = next(r for r in runs if r.data.params["world_size"] == "2")
    assert ddp_run.info.status == "FINISHED"
    assert len(client.get_metric_history(ddp_run.info.run_id, "train_loss")) == 40
    single_run = next(r for r in runs if r.data.params["world_size"] == "1")
    for metric in ("train_loss", "train_acc", "val_acc"):  # the per-epoch sums gathered across ranks
        single_history = [m.value for m in sorted(client.get_metric_history(single_run.info.run_id, metric),
                                                  key=lambda m: m.step)]
        ddp_history = [m.value for m in sorted(client.get_metric_history(ddp_run.info.run_id, metric),
                                               key=lambda m: m.step)]
        assert ddp_history == pytest.approx(single_history, rel=1e-4, abs=1e-6), metric


def _node(workspace: Path, name: str, overrides: dict) -> Path:
    """A directory laid out like a node's checkout: stages, params.yaml and the processed data."""
    node = workspace / name
    shutil.copytree(REPO / "stages", node / "stages")
    shutil.copy(REPO / "params.yaml", node / "params.yaml")
    shutil.copytree(workspace / "data", node / "data")
    (node / ".dvc").mkdir()
    set_params(node, overrides)
    return node


def _torchrun(*args: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """torchrun with 2 ranks; past ``timeout`` it and its ranks (each in a session of its own) are
    killed and the test fails."""
    import psutil

    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--nnodes=1", "--nproc_per_node=2", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{free_port()}", *args]
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for child in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
                child.kill()
            stdout, stderr = process.communicate()
            pytest.fail(f"torchrun still running after {timeout} s\n--- stderr\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_every_rank_resumes_from_rank_0s_checkpoint(workspace: Path) -> None:
    overrides = {"train.flower_sequential.epochs": 1500, "train.flower_sequential.batch_size": 8}
    first, second = _node(workspace, "node0", overrides), _node(workspace, "node1", overrides)
    env = stage_env(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    killed = subprocess.run([sys.executable, "stages/train.py", "flower_sequential"], cwd=first, timeout=300,
                            env=env | {"BPLAB_KILL_AT": "train@flower_sequential/checkpoints:2:end"},
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    from bplab.models.safe_load import load_without_code

    saved = load_without_code(first / "checkpoints/flower_sequential.pt", "a checkpoint")["epoch"]
    assert saved > 0 and not (second / "checkpoints").exists()  # the other node has no checkpoint at all

    resumed = _torchrun(str(REPO / "tests/support/rank_dirs.py"), str(first), str(second), "--",
                        "stages/train.py", "flower_sequential", cwd=first, env=env)

    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from checkpoints/flower_sequential.pt after epoch {saved} of 1500" in resumed.stderr
    history = (first / "history/flower_sequential.csv").read_text().splitlines()
    # every recorded epoch once (1500 epochs at tracking.max_epoch_points 1000: the first and every 2nd)
    assert [int(line.split(",")[0]) for line in history[1:]] == [1, *range(2, 1501, 2)]
    assert not (second / "models").exists()  # rank 1 trained its shares and wrote nothing


def test_an_empty_share_of_a_batch_trains_and_a_one_row_batchnorm_share_is_refused(workspace: Path) -> None:
    # 40 Boston rows in batches of 13: the last batch has 1 row, so one of 2 ranks gets none.
    node = _node(workspace, "node", {"train.boston_module.epochs": 5, "train.boston_module.batch_size": 13,
                                     "train.mnist_batchnet.epochs": 2, "train.mnist_batchnet.batch_size": 3})
    env = stage_env(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "stages/train.py", "boston_module"], cwd=node, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    expected = (node / "history/boston_module.csv").read_text().splitlines()

    ddp = _torchrun("stages/train.py", "boston_module", cwd=node, env=env)

    assert ddp.returncode == 0, ddp.stderr  # was "training diverged: loss is nan"
    rows = [line.split(",") for line in (node / "history/boston_module.csv").read_text().splitlines()[1:]]
    for got, want in zip(rows, (line.split(",") for line in expected[1:])):
        assert [float(v) for v in got[1:3]] == pytest.approx([float(v) for v in want[1:3]], rel=1e-4)

    refused = _torchrun("stages/train.py", "mnist_batchnet", cwd=node, env=env)
    assert refused.returncode != 0
    assert ("train@mnist_batchnet: error: train.mnist_batchnet.batch_size: batch_size 3 with 2 ranks gives a "
            "rank 1 row(s) of a batch of") in refused.stderr
    # torchrun prints its own traceback when a rank fails; none of the stage's frames are in it
    assert "src/bplab/" not in refused.stderr and 'stages/train.py", line' not in refused.stderr


def test_a_rank_that_fails_ends_every_rank_at_once_with_its_one_line_error(workspace: Path) -> None:
    overrides = {"train.flower_sequential.epochs": 5}
    first, second = _node(workspace, "node0", overrides), _node(workspace, "node1", overrides)
    (second / "data/processed/flower/transform.json").unlink()  # only rank 1's node lacks the processed data
    env = stage_env(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")

    started = time.monotonic()
    failed = _torchrun(str(REPO / "tests/support/rank_dirs.py"), str(first), str(second), "--",
                       "stages/train.py", "flower_sequential", cwd=first, env=env, timeout=90)

    assert failed.returncode != 0
    assert time.monotonic() - started < 60  # was a hang of 30 minutes (gloo's timeout) on a barrier
    error = "data/processed/flower/transform.json: missing; run the preprocess stage first"
    lines = failed.stderr.splitlines()
    assert f"train@flower_sequential: error: {error}" in lines  # rank 1's own
    assert f"train@flower_sequential: error: rank 1 failed: {error}" in lines  # rank 0 ends with it
    assert "src/bplab/" not in failed.stderr and 'stages/train.py", line' not in failed.stderr
    assert not (first / "checkpoints").exists() and not (first / "models").exists()
