"""A real `mlflow server` behind a real HTTP proxy on 127.0.0.1 that sees every request and can lose
an answer: what MLflow's client sends, and what it does when an answer never comes."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bplab.testing.local_servers import MlflowServer
from bplab.tracking import store
from bplab.tracking.recorder import CREATION_TAG, LOGGED_THROUGH_TAG, Recorder

CREATE_RUN, LOG_BATCH = "/api/2.0/mlflow/runs/create", "/api/2.0/mlflow/runs/log-batch"


@dataclass
class Proxy:
    """What the proxy saw, and the answers it is to lose."""

    uri: str
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)  # method, path, body
    lose: dict[str, int] = field(default_factory=dict)  # path: how many of its next answers to lose


def _forwarding_handler(upstream: tuple[str, int], proxy: Proxy) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?")[0]
            proxy.seen.append((self.command, path, body))
            connection = http.client.HTTPConnection(*upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "connection"}}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            answer = connection.getresponse()
            content = answer.read()
            connection.close()
            if proxy.lose.get(path):  # the server has done the work; the client never hears of it
                proxy.lose[path] -= 1
                self.close_connection = True
                return
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in {"transfer-encoding", "connection", "content-length", "server", "date"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        def log_message(self, *args: object) -> None:
            pass

    return Forward


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path_factory.mktemp("lost-answers")) as running:
        yield running


@pytest.fixture
def proxy(server: MlflowServer, mlflow_repo: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    """The proxy, as the pipeline's tracking server (``MLFLOW_TRACKING_URI``)."""
    seen = Proxy("")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _forwarding_handler(("127.0.0.1", server.port), seen))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    seen.uri = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv(store.TRACKING_ENV, seen.uri)
    yield seen
    httpd.shutdown()
    httpd.server_close()


def test_a_create_run_whose_answer_was_lost_leaves_one_run(proxy: Proxy, server: MlflowServer) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    proxy.lose[CREATE_RUN] = 1
    with Recorder.run("lost-create", "step", {}) as recorder:
        pass
    creations = [body for method, path, body in proxy.seen if path == CREATE_RUN]
    assert len(creations) == 2  # MLflow's client sent the POST again, and the server made a run each time
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("lost-create").experiment_id
    runs = client.search_runs([experiment])  # live runs only
    assert [(r.info.run_id, r.info.status) for r in runs] == [(recorder.run_id, "FINISHED")]
    everything = client.search_runs([experiment], run_view_type=ViewType.ALL)
    assert {r.data.tags[CREATION_TAG] for r in everything} == {recorder.creation} and len(everything) == 2


def _epoch(epoch: int, steps: int):
    from bplab.train.loop import EpochRecord

    return EpochRecord(epoch, {"train_loss": 1.0 / epoch}, [0.5] * steps, 0.01)


# An epoch logs its steps' losses, train_loss and epoch_seconds: (epoch, steps) sized so that what
# the recorder used to send as one batch held exactly MLflow's 1000 metrics per request (the tag
# then made 1001 entities), and one epoch over the limit, stored in parts.
SHAPES = {"one epoch of 1000 metrics": [(1, 998)], "two epochs of 500": [(1, 498), (2, 498)],
          "one epoch of 2000": [(1, 1998)]}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_the_logged_through_tag_travels_with_the_epochs_it_counts(proxy: Proxy, shape) -> None:
    with Recorder.run("marker", "step", {}) as recorder:
        epochs = [_epoch(epoch, steps) for epoch, steps in shape]
        logger = recorder.epoch_logger(epochs=len(epochs), max_points=None, record_steps=True)
        logger(epochs)
        logger.wait()
    requests = [r for r in (json.loads(body) for _, path, body in proxy.seen if path == LOG_BATCH) if r.get("metrics")]
    assert requests and all(len(r.get("metrics", [])) + len(r.get("tags", [])) <= 1000 for r in requests)
    for request in requests:
        tags = {t["key"]: int(t["value"]) for t in request.get("tags", [])}
        assert LOGGED_THROUGH_TAG in tags, f"a request of {len(request['metrics'])} metrics without the tag"
        complete = [m["step"] for m in request["metrics"] if m["key"] == "epoch_seconds"]
        assert tags[LOGGED_THROUGH_TAG] == max(complete, default=tags[LOGGED_THROUGH_TAG])
