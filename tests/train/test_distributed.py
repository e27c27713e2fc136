"""`torchrun` with DistributedDataParallel (gloo, 2 ranks on 127.0.0.1) trains the same weights as
one process with the same global batch, and logs exactly one MLflow run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bplab.errors import ParamsError
from bplab.train.distributed import Placement, resolve_device
from conftest import REPO, free_port, mlflow_client, set_params, stage_env


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


@pytest.mark.e2e
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
    for metric in ("train_loss", "train_acc", "eval_acc"):  # the per-epoch sums gathered across ranks
        single_history = [m.value for m in sorted(client.get_metric_history(single_run.info.run_id, metric),
                                                  key=lambda m: m.step)]
        ddp_history = [m.value for m in sorted(client.get_metric_history(ddp_run.info.run_id, metric),
                                               key=lambda m: m.step)]
        assert ddp_history == pytest.approx(single_history, rel=1e-4, abs=1e-6), metric
