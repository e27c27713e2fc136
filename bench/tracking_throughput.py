"""How many training-like runs per minute a local `mlflow server` (sqlite backend) takes.

Each run logs what a bplab training run logs besides its model: ~15 params, 5 metrics for each
of 20 epochs in one batch, and 5 tags. Starts its own server on 127.0.0.1 in a temporary
directory, then logs with 1 and with 2 client processes at once.

    .venv/bin/python bench/tracking_throughput.py [--runs 60]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def log_runs(uri: str, count: int, worker: int) -> None:
    """Log ``count`` runs like a training stage's (without the model) to ``uri``."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("throughput")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("throughput")
    for i in range(count):
        run = client.create_run(experiment_id, run_name=f"w{worker}-{i}")
        now = int(time.time() * 1000)
        metrics = [Metric(k, 1.0 / (e + 1), now, e) for e in range(1, 21)
                   for k in ("train_loss", "eval_loss", "train_acc", "eval_acc", "epoch_seconds")]
        params = [Param(f"p{j}", str(j)) for j in range(15)]
        tags = [RunTag(k, "x") for k in ("variant", "dataset", "stage", "git_commit", "dvc_exp")]
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        client.set_terminated(run.info.run_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60, help="runs per measurement (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db", "--artifacts-destination", f"{tmp}/artifacts"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        uri = f"http://127.0.0.1:{port}"
        try:
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"{uri}/health", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.5)
            log_runs(uri, 2, 0)  # warm-up: experiment created, server code paths loaded
            for workers in (1, 2):
                started = time.perf_counter()
                with ProcessPoolExecutor(workers) as pool:
                    list(pool.map(log_runs, [uri] * workers, [args.runs // workers] * workers, range(workers)))
                seconds = time.perf_counter() - started
                rate = args.runs / seconds * 60
                print(f"{workers} client(s): {args.runs} runs in {seconds:.1f} s = {rate:.0f} runs/min")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
