"""The registered champion loads with mlflow.pyfunc and serves with `bplab serve`, on any machine.

Answers are compared with the evaluate stage's own predictions: the state_dict loaded into a
freshly built network, on the processed test rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from bplab.data import processed
from bplab.models.architectures import build_model
from bplab.models.safe_load import load_state_dict
from bplab.params.schema import Params
from bplab.paths import model_dir, processed_dir
from bplab.pipeline.evaluate import evaluate, predict
from bplab.pipeline.train_stage import train
from bplab.testing.local_servers import free_port, wait_for_http
from bplab.tracking.recorder import SERVING_DEVICE
from support.pipeline import tiny
from support.processes import BPLAB

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAME_AS_EVALUATE = 1e-5
# One small variant per dataset, each the only (so the champion) version of its registered model.
CHAMPIONS = {"flower": ("flower_module", {"epochs": 30}), "boston": ("boston_module", {"epochs": 3}),
             "mnist": ("mnist_batchnet", {"epochs": 1})}


def _test_rows(dataset: str) -> np.ndarray:
    return processed.load(processed_dir(dataset), ("test",)).splits["test"][0]


def _evaluate_stage_outputs(variant: str, params: Params, rows: np.ndarray) -> np.ndarray:
    """What evaluate@variant predicts: the saved state_dict in a freshly built network."""
    record = json.loads((model_dir(variant) / "run.json").read_text())
    network = build_model(params.variant(variant).model, record["n_inputs"], record["n_outputs"])
    network.load_state_dict(load_state_dict(model_dir(variant) / "state_dict.pt"))
    return predict(network.eval(), torch.from_numpy(rows), None).numpy()


def test_pyfunc_picks_the_cpu_even_where_cuda_is_available(workspace: Path, params: Params,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    """Pins the GPU decision without a GPU: MLflow's loader would pick CUDA here and refuse the model.

    Training (on the CPU) logs the model while MLflow believes a GPU is present, as on a GPU
    machine: log_model's own check of the input example loads it through pyfunc and must pass.
    """
    import mlflow
    from mlflow.models import Model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what mlflow.pytorch asks
    small = tiny(params, "boston_module", epochs=2, batch_size=16).model_copy(update={"device": "cpu"})
    record = train("boston_module", small)
    output = capfd.readouterr()
    assert "Failed to validate serving input" not in output.out + output.err
    flavor = Model.load(record["model_uri"]).flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pytorch" and flavor["config"] == {"device": SERVING_DEVICE}

    rows = _test_rows("boston")
    answers = mlflow.pyfunc.load_model(record["model_uri"]).predict(rows)
    np.testing.assert_allclose(answers, _evaluate_stage_outputs("boston_module", small, rows),
                               rtol=0, atol=SAME_AS_EVALUATE)
    module = mlflow.pytorch.load_model(record["model_uri"])  # the flavor itself still gives a module
    assert isinstance(module, torch.nn.Module)
    assert module(torch.from_numpy(rows[:5])).shape == (5, 1)


def _invoke(url: str, rows: np.ndarray) -> np.ndarray:
    body = json.dumps({"inputs": rows.tolist()}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)


@pytest.fixture
def champions(workspace: Path, params: Params, capfd: pytest.CaptureFixture[str]) -> dict[str, tuple[str, Params]]:
    """Train and evaluate one tiny variant per dataset: each becomes ``models:/<dataset>@champion``.

    Trained on the machine's own device (``device: auto``: CUDA where there is a GPU).
    """
    trained = {}
    for dataset, (variant, changes) in CHAMPIONS.items():
        small = tiny(params, variant, **changes)
        train(variant, small)
        assert evaluate(variant, small)["promoted"]
        trained[dataset] = (variant, small)
    output = capfd.readouterr()
    assert "Failed to validate serving input" not in output.out + output.err
    return trained




@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path


@pytest.fixture
def servers(champions: dict[str, tuple[str, Params]], workspace: Path) -> Iterator[dict[str, Server]]:
    """`bplab serve <dataset>` (so `mlflow models serve --env-manager local`), one per dataset, at once.

    Started with the venv's bin directory off PATH: `bplab serve` must find uvicorn by itself.
    """
    assert BPLAB.is_file(), f"{BPLAB} is missing: `make setup` (or `pip install -e .`) installs it"
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BPLAB.parent)
    env = {**os.environ, "PATH": path}
    env.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store, resolved from the repository root (cwd)
    started = {}
    try:
        for dataset in champions:
            port = free_port()
            log = workspace / f"serve-{dataset}.log"
            process = subprocess.Popen([str(BPLAB), "serve", dataset, "--port", str(port), "--workers", "1"],
                                       stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=workspace)
            started[dataset] = Server(f"http://127.0.0.1:{port}", process, log)
        for server in started.values():
            wait_for_http(f"{server.url}/ping", server.process, server.log)
        yield started
    finally:
        for server in started.values():
            server.process.terminate()
        for server in started.values():
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.process.kill()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2):
            return True
    except OSError:
        return False


def test_each_champion_serves_the_evaluate_stage_predictions_over_http(
        champions: dict[str, tuple[str, Params]], servers: dict[str, Server]) -> None:
    import mlflow

    for dataset, (variant, small) in champions.items():
        rows = _test_rows(dataset)[:25]  # real processed test rows, several at once
        expected = _evaluate_stage_outputs(variant, small, rows)
        served = _invoke(servers[dataset].url, rows)
        assert served.shape == expected.shape, dataset
        np.testing.assert_allclose(served, expected, rtol=0, atol=SAME_AS_EVALUATE, err_msg=dataset)
        loaded = mlflow.pyfunc.load_model(f"models:/{dataset}@champion").predict(rows)
        np.testing.assert_allclose(loaded, expected, rtol=0, atol=SAME_AS_EVALUATE, err_msg=dataset)
        trained_on = mlflow.get_run(json.loads((model_dir(variant) / "run.json").read_text())["run_id"]).data.params
        print(f"{dataset}@champion ({variant}, trained on {trained_on['device']}, served on "
              f"{'a GPU machine' if torch.cuda.is_available() else 'a CPU-only machine'}): {len(rows)} rows, "
              f"max |served - evaluate| {np.abs(served - expected).max():.2g}, "
              f"max |pyfunc - evaluate| {np.abs(loaded - expected).max():.2g}")
        # `bplab serve` became the server (exec), and said which version it serves, without credentials
        assert servers[dataset].process.args[:3] == [str(BPLAB), "serve", dataset]
        assert f"models:/{dataset}@champion is version 1 ({variant})" in servers[dataset].log.read_text()

    # SIGTERM to the process `bplab serve` started stops the whole server, its uvicorn worker included
    for server in servers.values():
        server.process.terminate()
    for dataset, server in servers.items():
        assert server.process.wait(timeout=30) != 0, dataset
        deadline = time.monotonic() + 30
        while _answers(server.url) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not _answers(server.url), f"{dataset}: still answering after SIGTERM:\n{server.log.read_text()}"
