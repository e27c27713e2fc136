"""docs/scaling.md's "Shared tracking server", stood up from the page's own commands, so the page
cannot drift from what works.

The blocks the page marks with ``<!-- shared-server-test: NAME -->`` are read from it and run as
written, with a substitution map for what only this machine knows: the host and ports (a real
PostgreSQL cluster and `mlflow server` on 127.0.0.1), the passwords (made up here), the paths
(a temporary folder for /etc/mlflow, this environment's mlflow, a folder for the S3 bucket), and
`runuser -u postgres --` dropped where the cluster is not the `postgres` account's. The systemd
unit is not handed to systemd: its ExecStart runs with its EnvironmentFile's variables.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from bplab.testing.local_servers import MlflowServer, PostgreSQL, free_port, postgres_bin
from bplab.testing.scratch import REPO, copy_repository, stage_env
from support.pipeline import TINY_PIPELINE
from support.processes import unavailable

PAGE = REPO / "docs" / "scaling.md"
_MARKED = re.compile(r"<!-- shared-server-test: (?P<name>[\w-]+) -->\n```\w+\n(?P<body>.*?)\n```", re.S)
# Placeholders the page writes in capitals; replaced as whole words (MLFLOW_AUTH_ADMIN_PASSWORD stays).
PLACEHOLDERS = ("DB_PASSWORD", "ADMIN_PASSWORD", "SECRET_KEY", "ALICE_PASSWORD")


def documented_blocks() -> dict[str, str]:
    """The page's marked fenced blocks, by their marker's name."""
    blocks = {match["name"]: match["body"] for match in _MARKED.finditer(PAGE.read_text())}
    missing = {"database", "auth-ini", "server-env", "file-modes", "service", "users", "grants", "user"} - set(blocks)
    assert not missing, f"{PAGE.name} lost the marked blocks {sorted(missing)}"
    return blocks


@dataclass(frozen=True)
class Setup:
    """What the test knows of the documented set-up: the values it put in place of the page's."""

    replacements: dict[str, str]  # literal text of the page -> this machine's
    secrets: dict[str, str]  # placeholder -> value
    etc: Path  # /etc/mlflow
    port: int  # the server's
    passwords: dict[str, str]  # alice's (the page's ALICE_PASSWORD), and bob's and carol's, made by the same block

    def user(self, name: str) -> dict[str, str]:
        """The substitutions that make the page's alice the user ``name``."""
        return {"alice": name, "ALICE_PASSWORD": self.passwords[name]}

    def apply(self, text: str, **more: str) -> str:
        """``text`` with this machine's values put in: placeholders (names in capitals, ``more``'s
        too) as whole words, then literal text (the replacements and ``more``'s other keys)."""
        for placeholder, value in (self.secrets | {k: v for k, v in more.items() if k.isupper()}).items():
            text = re.sub(rf"\b{placeholder}\b", value, text)
        for old, new in (self.replacements | {k: v for k, v in more.items() if not k.isupper()}).items():
            text = text.replace(old, new)
        return text

    def run(self, script: str, cwd: Path, env: dict[str, str], **more: str) -> subprocess.CompletedProcess[str]:
        """Run a block (or blocks) of the page in bash, as substituted."""
        return subprocess.run(["bash", "-euo", "pipefail", "-c", self.apply(script, **more)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=600)


def _setup(root: Path, cluster: PostgreSQL) -> Setup:
    port = free_port()
    as_postgres = os.geteuid() == 0 and cluster.user is not None and cluster.user.pw_name == "postgres"
    replacements = {
        "https://mlflow.example.org": f"http://localhost:{port}",
        "mlflow.example.org:5000": f"localhost:{port}",
        "mlflow.example.org": "localhost",
        "--host 0.0.0.0": "--host 127.0.0.1",  # nothing outside this machine reaches a test's server
        "--port 5000": f"--port {port}",
        "--workers 4": "--workers 1",  # a start of seconds, not of four workers' imports on two cores
        "db-host:5432": f"127.0.0.1:{cluster.port}",
        "/opt/mlflow/bin/mlflow": str(Path(sys.executable).with_name("mlflow")),
        "s3://my-bucket/mlflow": str(root / "bucket"),
        "/etc/mlflow": str(root / "etc"),
        "chown mlflow:mlflow": f"chown {os.getuid()}:{os.getgid()}",
        **({} if as_postgres else {"runuser -u postgres -- ": ""}),  # the cluster is this user's: trusted socket
    }
    values = {name: secrets.token_hex(16) for name in PLACEHOLDERS}
    (root / "etc").mkdir(mode=0o700)
    passwords = {"alice": values["ALICE_PASSWORD"]} | {user: secrets.token_hex(16) for user in ("bob", "carol")}
    return Setup(replacements, values, root / "etc", port, passwords)


def _write_config(setup: Setup, block: str) -> Path:
    """Write a block whose first line is ``# <path>`` to that path; the path."""
    first, _, content = setup.apply(block).partition("\n")
    path = Path(first.removeprefix("# ").strip())
    path.write_text(content + "\n")
    return path


def _environment_file(path: Path) -> dict[str, str]:
    """The variables of a systemd EnvironmentFile (KEY=VALUE lines; # starts a comment)."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _exec_start(unit: str) -> list[str]:
    """The ExecStart command of a unit file, its backslash-continued lines joined."""
    joined = re.sub(r"\\\n\s*", " ", unit)
    return shlex.split(next(line for line in joined.splitlines() if line.startswith("ExecStart=")).split("=", 1)[1])


@dataclass(frozen=True)
class Documented:
    """The server as the page stands it up, with the values put in place of the page's."""

    server: MlflowServer
    setup: Setup
    blocks: dict[str, str]

    def as_admin(self, method: str, endpoint: str, **kwargs) -> requests.Response:
        """A REST call with the admin's credentials, to the name the server's --allowed-hosts lists."""
        return requests.request(method, f"http://localhost:{self.setup.port}{endpoint}", timeout=30,
                                auth=("admin", self.setup.secrets["ADMIN_PASSWORD"]), **kwargs)


@pytest.fixture(scope="module")
def documented(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Documented]:
    """PostgreSQL, the ini, the environment file, the service's command, the users and the grants,
    each from the page; alice and bob are granted, carol is a user without grants."""
    if postgres_bin() is None:
        unavailable("PostgreSQL is not installed: `make postgres` installs Debian's package")
    root, blocks = tmp_path_factory.mktemp("documented-server"), documented_blocks()
    with PostgreSQL(database="setup_unused", role="setup_unused") as cluster:  # the page makes MLflow's own
        setup = _setup(root, cluster)
        shell = {**os.environ, "PATH": f"{cluster.bin}{os.pathsep}{os.environ['PATH']}",
                 "PGHOST": str(cluster.root), "PGPORT": str(cluster.port), "PGUSER": "postgres"}
        database = setup.run(blocks["database"], root, shell)
        assert database.returncode == 0, database.stdout + database.stderr
        for config in ("auth-ini", "server-env"):
            _write_config(setup, blocks[config])
        modes = setup.run(blocks["file-modes"], root, shell)
        assert modes.returncode == 0, modes.stdout + modes.stderr
        unit = setup.apply(blocks["service"])
        env_file = Path(re.search(r"^EnvironmentFile=(.+)$", unit, re.M).group(1))
        with MlflowServer(root, env=_environment_file(env_file), command=_exec_start(unit), port=setup.port) as server:
            admin = {**shell, "MLFLOW_AUTH_ADMIN_PASSWORD": setup.secrets["ADMIN_PASSWORD"]}
            for user in ("bob", "carol"):
                made = setup.run(blocks["users"], root, admin, **setup.user(user))
                assert made.returncode == 0 and "error" not in made.stdout.lower(), made.stdout + made.stderr
            granted = setup.run(f"{blocks['users']}\n{blocks['grants']}", root, admin)
            assert granted.returncode == 0 and "error_code" not in granted.stdout, granted.stdout + granted.stderr
            yield Documented(server, setup, blocks)


def _as_user(documented: Documented, repo: Path, user: str, command: str) -> subprocess.CompletedProcess[str]:
    """The page's block of what each user sets, for ``user``, with ``dvc repro`` made ``command``."""
    env = {k: v for k, v in stage_env(repo).items() if not k.startswith("MLFLOW_TRACKING_")}
    return documented.setup.run(documented.blocks["user"], repo, env, **documented.setup.user(user),
                                **{"dvc repro": command})


def test_a_granted_teammate_runs_the_pipeline_and_an_ungranted_one_is_refused(
        documented: Documented, tmp_path: Path, mirror: Path) -> None:
    repo = copy_repository(tmp_path / "repo", TINY_PIPELINE)
    done = _as_user(documented, repo, "alice", "dvc repro evaluate@boston_module")
    assert done.returncode == 0, done.stdout + done.stderr
    champion = documented.as_admin("GET", "/api/2.0/mlflow/registered-models/alias",
                                   params={"name": "boston", "alias": "champion"})
    assert champion.status_code == 200 and champion.json()["model_version"]["tags"], champion.text
    for name in ("boston", "boston-data"):  # the admin made both and owns them: alice writes by her grants
        experiment = documented.as_admin("GET", "/api/2.0/mlflow/experiments/get-by-name",
                                         params={"experiment_name": name}).json()["experiment"]
        granted = documented.as_admin("GET", "/api/3.0/mlflow/users/permissions/get", params={
            "username": "alice", "resource_type": "experiment", "resource_id": experiment["experiment_id"]})
        assert granted.json()["permission"] == "EDIT", granted.text

    refused = _as_user(documented, repo, "carol", "dvc repro --force --single-item train@boston_module")
    assert refused.returncode == 255, refused.stdout + refused.stderr  # DVC's status for a failed stage
    errors = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert errors == [
        f"train@boston_module: error: permission denied by the MLflow tracking server at "
        f"http://localhost:{documented.setup.port} (MLFLOW_TRACKING_URI): HTTP 403 for user 'carol' on "
        "/api/2.0/mlflow/runs/create; its admin can grant it (EDIT or MANAGE on the experiment or registered model)"
    ], refused.stderr
    assert ("ERROR: failed to reproduce 'train@boston_module': failed to run: python stages/train.py boston_module, "
            "exited with 2") in refused.stderr


def test_the_servers_secrets_stay_in_files_only_its_account_reads(documented: Documented) -> None:
    etc = documented.setup.etc
    for name in ("basic_auth.ini", "server.env"):
        assert (etc / name).stat().st_mode & 0o777 == 0o600, name
    password = documented.setup.secrets["DB_PASSWORD"]
    assert password in (etc / "server.env").read_text()
    session = documented.server.process.pid  # the server and its workers: started in a session of their own
    command_lines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in _pids() if _sid(pid) == session]
    assert len(command_lines) >= 2  # `mlflow server` and its uvicorn
    assert not [line for line in command_lines if password.encode() in line]  # what `ps` shows every user


def test_an_address_the_allowed_hosts_leave_out_is_refused_with_a_line_of_its_own(
        documented: Documented, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's --allowed-hosts replaces MLflow's local defaults: 127.0.0.1 is refused, by name,
    at the check before a run and at a refusal after it, as a stage would meet either."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from bplab.errors import TrackingRefused
    from bplab.tracking import store

    port = documented.setup.port
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", documented.setup.secrets["ALICE_PASSWORD"])
    store.check_reachable(f"http://localhost:{port}")  # listed: alice gets in
    expected = (f"the MLflow tracking server at http://127.0.0.1:{port} (MLFLOW_TRACKING_URI) refused the Host header "
                f"'127.0.0.1:{port}' (HTTP 403 \"Invalid Host header\"{{on}}): it is not in the server's "
                f"--allowed-hosts; its admin adds 127.0.0.1:{port} there (names with their ports, comma-separated), "
                "or use an address it lists")
    with pytest.raises(TrackingRefused) as refused:
        store.check_reachable(f"http://127.0.0.1:{port}")
    assert str(refused.value) == expected.format(on="")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(MlflowException) as later:  # MLflow's client meets the same 403
        MlflowClient(f"http://127.0.0.1:{port}").search_experiments(max_results=1)
    assert store.refusal(later.value) == expected.format(on=" on /api/2.0/mlflow/experiments/search")


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:  # gone since the listing
        return None
