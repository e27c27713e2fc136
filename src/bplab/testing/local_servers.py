"""Real servers on 127.0.0.1, for the tests and the benchmark: ``mlflow server`` over a sqlite or
PostgreSQL store, a throwaway PostgreSQL cluster to put behind it, and an S3 endpoint (moto's
server) for DVC remotes and MLflow artifacts.

Each lives in a folder of its own (its data and its log) and stops with its child processes
when its ``with`` block ends. PostgreSQL refuses to run as root, so under root the cluster runs
as an unprivileged user (``postgres`` where Debian's package made one, else ``nobody``) and
dies with the process that started it, even on a ``kill -9``.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

# PostgreSQL's server programs; Debian keeps them off PATH, under /usr/lib/postgresql/<major>/bin.
POSTGRES_BIN_ENV = "BPLAB_POSTGRES_BIN"
_UNPRIVILEGED = ("postgres", "nobody")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    """Poll ``url`` until it answers 200; raise with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited {process.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer in {timeout_s} s:\n{log.read_text()}")
        time.sleep(0.2)


def _stop_group(process: subprocess.Popen | None, sig: signal.Signals, timeout_s: float = 30) -> None:
    """Send ``sig`` to ``process``'s session (it and its workers) and wait; SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)
    except ProcessLookupError:
        pass


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over ``backend_uri`` (default: a sqlite file in ``root``),
    proxying artifacts to ``artifacts_destination`` (default: ``root/artifacts``; an ``s3://`` one
    wants the bucket's endpoint and keys in ``env``: :attr:`S3Server.env` and ``MLFLOW_S3_ENDPOINT_URL``).
    It keeps its port, so it can be stopped (or killed, as a crash would) and started again over the
    same store: a restart, as clients see one.
    """

    def __init__(self, root: Path, backend_uri: str | None = None, app_name: str | None = None,
                 env: Mapping[str, str] | None = None, workers: int = 1,
                 command: list[str] | None = None, port: int | None = None,
                 artifacts_destination: str | None = None) -> None:
        """``command``, if given, is the whole server command line (a documented one, say), listening on
        127.0.0.1 at ``port``; it then replaces the one built from the other arguments."""
        self.root = root
        self.backend_uri = backend_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.artifacts_destination = artifacts_destination or str(root / "artifacts")
        self.app_name = app_name
        self.workers = workers
        self.command = command
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = root / "mlflow-server.log"
        # A client's MLflow settings are not the server's; no GenAI job workers (three processes it does not
        # need) and no usage telemetry (nothing here reaches out).
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.env |= {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180) -> Self:
        """Start the server and wait until ``/health`` answers."""
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", str(self.workers), "--backend-store-uri", self.backend_uri,
                   "--artifacts-destination", self.artifacts_destination]
        if self.app_name:
            command += ["--app-name", self.app_name]
        command = self.command or command
        with self.log.open("a") as out:
            self.process = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_for_http(f"{self.uri}/health", self.process, self.log, timeout_s)
        return self

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the server and its workers (``signal.SIGKILL``: as a crash would)."""
        _stop_group(self.process, sig)

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class S3Server:
    """An S3 endpoint on 127.0.0.1 (moto's server, in a process of its own) with one access key,
    which may do anything to S3. Its objects live in its memory and go with it.

    With ``check_keys`` (the default) it refuses, as AWS does, a request not signed with that key in
    its ``Authorization`` header. moto cannot check the signature of a presigned link (it answers
    HTTP 500), and an ``mlflow server`` over an S3 destination hands its clients one for every
    artifact they download: an S3Server behind MLflow runs with ``check_keys=False``.

    ``with S3Server() as s3:`` then :attr:`endpoint_url`, :meth:`create_bucket`, :attr:`env` (the
    key for a child process, as AWS's variables) and :meth:`client` (boto3's, signed with the key).
    A process of its own: its objects are no test process's, each pytest-xdist worker starts its
    own, and a DVC push's parallel uploads do not wait on a test's interpreter.
    """

    region = "us-east-1"

    def __init__(self, check_keys: bool = True) -> None:
        self.check_keys = check_keys
        self.root = Path(tempfile.mkdtemp(prefix="bplab-s3-"))
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.log = self.root / "s3-server.log"
        self.access_key_id = self.secret_access_key = ""
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The access key and region as AWS's environment variables, for a child process (the
        endpoint is not among them: DVC's ``endpointurl``, MLflow's ``MLFLOW_S3_ENDPOINT_URL``)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "AWS_DEFAULT_REGION": self.region}

    def client(self, service: str = "s3") -> Any:
        """A boto3 client of the endpoint, signed with the server's access key."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key_id or "setup",
                            aws_secret_access_key=self.secret_access_key or "setup")

    def create_bucket(self, name: str) -> str:
        """Create the bucket ``name`` (3 to 63 lower-case letters, digits, dots, hyphens); return it."""
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``, listed over S3's API."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def start(self, timeout_s: float = 60) -> Self:
        """Start the server and make its access key (with ``check_keys``, from then on it refuses
        requests not signed with it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_http(f"{self.endpoint_url}/moto-api/", self.process, self.log, timeout_s)
            self._make_access_key()
        except BaseException:
            self.stop()
            raise
        return self

    def _make_access_key(self) -> None:
        """As an account's owner would: a user allowed everything in S3, and an access key of its.
        Then, with ``check_keys``, moto's authentication starts (its count of unchecked requests set to 0)."""
        iam = self.client("iam")
        iam.create_user(UserName="bplab")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="bplab", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="bplab")["AccessKey"]
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        if not self.check_keys:
            return
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        """Stop the server (its objects go with it) and remove its folder."""
        _stop_group(self.process, signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's ``initdb`` and ``postgres``: ``$BPLAB_POSTGRES_BIN``, else the
    newest ``/usr/lib/postgresql/<major>/bin`` (Debian), else where ``initdb`` is on PATH."""
    if value := os.environ.get(POSTGRES_BIN_ENV):
        return Path(value)
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
                    if p.parts[-3].isdigit() else 0)
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


class PostgreSQL:
    """A PostgreSQL cluster of its own in a new temporary folder, listening on 127.0.0.1 only, with one database
    owned by one login role that has a password (scram-sha-256), as a server's operator would set
    it up for MLflow. :attr:`uri` is what ``mlflow server --backend-store-uri`` takes.
    """

    def __init__(self, database: str = "mlflow", role: str = "mlflow") -> None:
        bindir = postgres_bin()
        if bindir is None or not (bindir / "postgres").exists():
            raise FileNotFoundError("PostgreSQL's server programs (initdb, postgres) were not found: install "
                                    f"Debian's `postgresql` (`make postgres` does) or set {POSTGRES_BIN_ENV}")
        self.bin = bindir
        # The owner's numeric ids: Debian's nobody has no group of its name (its group is nogroup).
        self.user = next((_account(name) for name in _UNPRIVILEGED if _account(name)), None) \
            if os.geteuid() == 0 else None
        if os.geteuid() == 0 and self.user is None:
            raise RuntimeError("PostgreSQL refuses to run as root, and neither user 'postgres' nor 'nobody' exists")
        # Not under the caller's temporary folder: pytest's is private to root, and the cluster's
        # user must reach its own folder.
        self.root = Path(tempfile.mkdtemp(prefix="bplab-postgres-"))
        self.data = self.root / "pgdata"
        self.database, self.role = database, role
        self.password = secrets.token_urlsafe(16)
        self.port = free_port()
        self.log = self.root / "postgres.log"
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI of the database, with the role's password in it (never print it)."""
        return f"postgresql+psycopg://{self.role}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _as_owner(self, command: list[str]) -> list[str]:
        if self.user is None:
            return command
        # The server dies with the process that started it: no cluster outlives a killed test run.
        return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups",
                "--pdeathsig=SIGINT", "--", *command]

    def start(self, timeout_s: float = 60) -> Self:
        """initdb (first time), start the server, and create the role and its database; on a
        failure, what was started is stopped and the folder removed."""
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout_s: float) -> None:
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            made = subprocess.run(self._as_owner([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                                                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                                                  "--no-sync"]),
                                  capture_output=True, text=True, cwd=self.root)
            if made.returncode != 0:
                raise RuntimeError(f"initdb exited {made.returncode}:\n{made.stdout}{made.stderr}")
        with self.log.open("a") as out:
            # listen on 127.0.0.1 only; the Unix socket lives in the cluster's folder, not /var/run.
            self.process = subprocess.Popen(
                self._as_owner([str(self.bin / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
                                "-p", str(self.port), "-k", str(self.root)]),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)
        if self.user is not None:
            os.chown(self.log, self.user.pw_uid, self.user.pw_gid)
        self._wait_ready(timeout_s)
        if fresh:
            self._admin(f"CREATE ROLE {self.role} LOGIN PASSWORD '{self.password}'",
                        f"CREATE DATABASE {self.database} OWNER {self.role}")

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                             check=False).returncode != 0:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"postgres exited {self.process.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres did not accept connections in {timeout_s} s:\n{self.log.read_text()}")
            time.sleep(0.1)

    def _admin(self, *statements: str) -> None:
        """Run SQL as the cluster's superuser, over its Unix socket (trusted: only its owner reaches it)."""
        import psycopg

        with psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)

    def stop(self) -> None:
        """Fast shutdown (open sessions end, committed data stays), then its folder is removed."""
        _stop_group(self.process, signal.SIGINT)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _account(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None
