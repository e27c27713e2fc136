"""S3 as a team's shared store: DVC's remote and MLflow's artifacts in buckets of real S3
endpoints on 127.0.0.1 (moto's server).

One `dvc repro evaluate@flower_module` for the file (tiny: the flower is generated, not
downloaded). Its stages log to an `mlflow server` that proxies artifacts to ``s3://<bucket>/mlflow``;
the S3 key is in the server's environment only. DVC reads its key from ``.dvc/config.local``;
neither the stages nor dvc have AWS's variables. A second clone of the repository pulls the data
and models from ``s3://<bucket>/dvc`` and loads the champion through the server, and the keys show
in nothing any of them printed.

Two endpoints, one bucket name: DVC's refuses requests not signed with its key (so a push or pull
that did not send the key from config.local fails); MLflow's checks no signature, since the server
hands its clients presigned links to download from, whose signatures moto cannot check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bplab.testing.local_servers import MlflowServer, S3Server
from bplab.testing.scratch import commit, copy_repository, stage_env
from support.processes import run

BUCKET = "bplab-team"
VARIANT, DATASET = "flower_module", "flower"
TINY = {f"train.{VARIANT}.epochs": 20, "tracking.system_metrics": None}
# What `dvc pull` must bring back byte for byte: the variant's stages' outputs (its data, model,
# pictures, history and checkpoint).
DVC_OUTPUTS = ("data/raw/flower", "data/processed/flower", f"models/{VARIANT}", f"plots/{VARIANT}",
               f"history/{VARIANT}.csv", f"checkpoints/{VARIANT}.pt")


def files(repo: Path) -> dict[str, bytes]:
    """The bytes of every file of :data:`DVC_OUTPUTS` in ``repo``, by path."""
    found = {}
    for output in DVC_OUTPUTS:
        top = repo / output
        for path in [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()):
            found[str(path.relative_to(repo))] = path.read_bytes()
    return found


@dataclass
class Team:
    """The file's S3 endpoint, tracking server and trained repository, and what every command printed."""

    s3: S3Server  # DVC's remote: signed requests only
    artifacts: S3Server  # MLflow's artifacts
    server: MlflowServer
    repo: Path
    printed: list[str] = field(default_factory=list)

    def env(self, cwd: Path) -> dict[str, str]:
        """A stage's or dvc's environment in ``cwd``: the team's tracking server, no AWS variable."""
        return {k: v for k, v in stage_env(cwd, MLFLOW_TRACKING_URI=self.server.uri).items()
                if not k.startswith("AWS_") and k != "MLFLOW_S3_ENDPOINT_URL"}

    def run(self, cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        """``cmd`` in ``cwd`` (:meth:`env`), its output kept for the search for the key."""
        result = run(cmd, cwd, env=self.env(cwd))
        self.printed.append(f"{cmd[:2]}:\n{result.stdout}{result.stderr}")  # what it printed, not its arguments
        return result

    def add_remote(self, repo: Path, default: bool = True) -> None:
        """The bucket as DVC remote ``team``: its URL in the committed config, where to reach it and
        the key in ``.dvc/config.local`` (git ignores it)."""
        if default:
            self.run(["dvc", "remote", "add", "-d", "team", f"s3://{BUCKET}/dvc"], repo)
        for option, value in (("endpointurl", self.s3.endpoint_url), ("access_key_id", self.s3.access_key_id),
                              ("secret_access_key", self.s3.secret_access_key)):
            self.run(["dvc", "remote", "modify", "--local", "team", option, value], repo)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    """The endpoints and their buckets, `mlflow server --artifacts-destination s3://<bucket>/mlflow`
    (the key and endpoint in its environment), and a repository copy where `dvc repro
    evaluate@flower_module` ran against it."""
    root = tmp_path_factory.mktemp("s3-store")
    with S3Server() as s3, S3Server(check_keys=False) as artifacts:
        s3.create_bucket(BUCKET)
        artifacts.create_bucket(BUCKET)
        (root / "server").mkdir()
        server_env = artifacts.env | {"MLFLOW_S3_ENDPOINT_URL": artifacts.endpoint_url}
        with MlflowServer(root / "server", env=server_env, artifacts_destination=f"s3://{BUCKET}/mlflow") as server:
            repo = copy_repository(root / "repo", TINY)
            shared = Team(s3, artifacts, server, repo)
            shared.run(["dvc", "repro", f"evaluate@{VARIANT}"], repo)
            commit(repo, "trained")
            yield shared


def test_dvc_pushes_to_s3_and_a_clone_pulls_the_same_bytes(team: Team, tmp_path: Path) -> None:
    repo = team.repo
    team.add_remote(repo)
    committed = (repo / ".dvc" / "config").read_text()
    assert f"url = s3://{BUCKET}/dvc" in committed
    for secret in (team.s3.access_key_id, team.s3.secret_access_key, team.s3.endpoint_url):
        assert secret not in committed  # where to reach it and the key stay on this machine
    assert team.s3.secret_access_key in (repo / ".dvc" / "config.local").read_text()
    run(["git", "check-ignore", "-q", ".dvc/config.local"], repo)  # exits 1 were it not ignored
    commit(repo, "the team's S3 remote")
    assert ".dvc/config.local" not in run(["git", "ls-files"], repo).stdout

    pushed = team.run(["dvc", "push"], repo).stdout
    stored = team.s3.keys(BUCKET, "dvc/")
    assert stored and all(key.startswith("dvc/files/md5/") for key in stored), stored
    assert f"{len(stored)} files pushed" in pushed  # the cache's entries, each one object

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / ".dvc" / "config.local").exists()  # the key did not travel with git
    team.add_remote(clone, default=False)  # `team`, already the default, from the committed config
    # The variant's stages and those before it: the others never ran, so nothing of theirs was pushed.
    team.run(["dvc", "pull", "--with-deps", f"evaluate@{VARIANT}"], clone)
    assert json.loads(team.run(["dvc", "status", "--json", "--with-deps", f"evaluate@{VARIANT}"], clone).stdout) == {}
    pulled, trained = files(clone), files(repo)
    assert pulled.keys() == trained.keys() and f"models/{VARIANT}/state_dict.pt" in pulled
    for path, content in trained.items():
        assert pulled[path] == content, path


def test_mlflow_artifacts_go_to_s3_through_the_server_and_load_from_another_clone(team: Team,
                                                                                  tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(team.server.uri)
    champion = client.get_model_version_by_alias(DATASET, "champion")
    run_info = client.get_run(champion.run_id).info
    assert run_info.artifact_uri.startswith("mlflow-artifacts:")  # the clients see the proxy, never S3
    stored = team.artifacts.keys(BUCKET, "mlflow/")
    run_keys = [key for key in stored if f"/{run_info.run_id}/artifacts/" in key]
    for name in ("plots/decision_boundary.png", "plots/learning_curves.png", "state_dict/state_dict.pth"):
        assert any(key.endswith(f"/artifacts/{name}") for key in run_keys), (name, run_keys)
    model_files = {key.rsplit("/artifacts/", 1)[1] for key in stored if "/models/m-" in key}  # the logged model
    assert {"MLmodel", "data/model.pt2"} <= model_files, model_files
    assert not (team.server.root / "artifacts").exists()  # nothing went to the server's disk

    elsewhere = tmp_path / "elsewhere"
    run(["git", "clone", "-q", str(team.repo), str(elsewhere)], tmp_path)
    # The champion through the server, compared with the weights `dvc repro` left in the repository.
    script = (
        "import sys, mlflow, torch\n"
        f"model = mlflow.pytorch.load_model('models:/{DATASET}@champion')\n"
        "weights = torch.load(sys.argv[1], weights_only=True)\n"
        "assert weights.keys() == model.state_dict().keys()\n"
        "assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())\n"
        "print(tuple(model(torch.randn(7, 2)).shape))\n")
    shown = team.run([sys.executable, "-c", script, str(team.repo / "models" / VARIANT / "state_dict.pt")],
                     elsewhere)
    assert shown.stdout.strip() == "(7, 1)"
    assert not (elsewhere / "mlflow.db").exists() and not (elsewhere / "mlartifacts").exists()


def test_the_key_shows_nowhere(team: Team) -> None:
    """Run last in the file: searches what every command above printed."""
    assert len(team.printed) >= 2  # the repro at least, whatever ran before
    printed = "\n".join(team.printed)
    assert "Running stage 'evaluate@flower_module'" in printed
    store = (team.server.root / "mlflow.db").read_bytes()  # the server's runs, params and tags
    for secret in (team.s3.secret_access_key, team.artifacts.secret_access_key):
        assert secret not in printed
        assert secret.encode() not in store
        committed = run(["git", "grep", "-I", "-l", "-F", secret], team.repo, check=False)
        assert committed.returncode == 1 and not committed.stdout  # in no committed file
