"""The throwaway servers of the tests and the benchmark: the PostgreSQL they put behind `mlflow
server` (a real cluster, run by an unprivileged user, reached only with its role's password, gone
with its starter) and the S3 endpoint of DVC remotes and MLflow artifacts (signed requests only)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bplab.testing.local_servers import PostgreSQL, S3Server, postgres_bin
from bplab.testing.scratch import REPO, stage_env
from support.processes import unavailable


@pytest.fixture
def postgres_available() -> None:
    if postgres_bin() is None:
        unavailable("PostgreSQL is not installed: `make postgres` installs Debian's package")


def _owner_uid(pid: int) -> int:
    return Path(f"/proc/{pid}").stat().st_uid


def test_a_cluster_serves_its_database_to_its_role_and_password_only(postgres_available: None) -> None:
    import psycopg

    with PostgreSQL(database="tracking", role="team") as cluster:
        if os.geteuid() == 0:
            assert _owner_uid(cluster.process.pid) != 0  # initdb and postgres refuse root
        uri = cluster.uri
        assert uri.startswith(f"postgresql+psycopg://team:{cluster.password}@127.0.0.1:{cluster.port}/tracking")
        with psycopg.connect(host="127.0.0.1", port=cluster.port, user="team", password=cluster.password,
                             dbname="tracking") as connection:
            connection.execute("CREATE TABLE t (x int)")
            connection.execute("INSERT INTO t VALUES (1), (2)")
            assert connection.execute("SELECT sum(x) FROM t").fetchone() == (3,)
            owner = connection.execute("SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database "
                                       "WHERE datname = 'tracking'").fetchone()
            assert owner == ("team",)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(host="127.0.0.1", port=cluster.port, user="team", password="wrong", dbname="tracking")
        root = cluster.root
    assert not root.exists()  # the data folder goes with it
    assert cluster.process.poll() is not None


def test_a_cluster_dies_with_the_process_that_started_it(postgres_available: None, tmp_path: Path) -> None:
    script = ("import sys, time\nfrom bplab.testing.local_servers import PostgreSQL\n"
              "cluster = PostgreSQL().start()\nprint(cluster.process.pid, cluster.root, flush=True)\ntime.sleep(600)\n")
    starter = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=stage_env(), text=True,
                               stdout=subprocess.PIPE)
    pid, root = starter.stdout.readline().split()
    assert Path(f"/proc/{pid}").exists()
    starter.send_signal(signal.SIGKILL)  # no finaliser runs
    starter.wait(timeout=30)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, f"postgres {pid} outlived the process that started it"
        time.sleep(0.1)
    subprocess.run(["rm", "-rf", root], check=True)


def test_a_cluster_that_cannot_start_says_why_and_leaves_nothing(postgres_available: None) -> None:
    cluster = PostgreSQL()
    cluster.data.write_text("not a folder")  # where initdb must make the cluster's folder
    with pytest.raises(RuntimeError, match=r"initdb exited 1:\n(.|\n)*pgdata"):
        cluster.start()
    assert not cluster.root.exists()


def test_an_s3_server_keeps_objects_for_its_key_only_and_frees_its_port() -> None:
    import boto3
    from botocore.exceptions import ClientError

    with S3Server() as s3:
        assert s3.create_bucket("bplab-store") == "bplab-store"
        s3.client().put_object(Bucket="bplab-store", Key="dvc/files/md5/ab/cdef", Body=b"weights")
        assert s3.keys("bplab-store") == ["dvc/files/md5/ab/cdef"]
        assert s3.keys("bplab-store", "mlflow/") == []
        # A child process finds the key in AWS's variables, as boto3 reads them; the endpoint it is given.
        env = s3.env
        assert env["AWS_ACCESS_KEY_ID"].startswith("AKIA") and len(env["AWS_SECRET_ACCESS_KEY"]) >= 40
        session = boto3.session.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                                        region_name=env["AWS_DEFAULT_REGION"])
        body = session.client("s3", endpoint_url=s3.endpoint_url).get_object(
            Bucket="bplab-store", Key="dvc/files/md5/ab/cdef")["Body"].read()
        assert body == b"weights"
        for key_id, secret, refusal in ((s3.access_key_id, "not-the-secret", "SignatureDoesNotMatch"),
                                        ("AKIAUNKNOWN0000000", s3.secret_access_key, "InvalidAccessKeyId")):
            stranger = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region,
                                    aws_access_key_id=key_id, aws_secret_access_key=secret)
            with pytest.raises(ClientError, match=refusal):
                stranger.list_objects_v2(Bucket="bplab-store")
        root, port = s3.root, s3.port
    assert s3.process.poll() is not None and not root.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)  # nothing listens there any more
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the connections closing in TIME_WAIT
        probe.bind(("127.0.0.1", port))  # the port is free for the next server


def test_an_s3_server_that_checks_no_keys_serves_presigned_links() -> None:
    """What `mlflow server` over an S3 destination hands its clients to download an artifact from."""
    with S3Server(check_keys=False) as s3:
        s3.create_bucket("bplab-artifacts")
        s3.client().put_object(Bucket="bplab-artifacts", Key="mlflow/1/model.pth", Body=b"weights")
        link = s3.client().generate_presigned_url(
            "get_object", Params={"Bucket": "bplab-artifacts", "Key": "mlflow/1/model.pth"}, ExpiresIn=60)
        assert "Signature=" in link and s3.secret_access_key not in link
        with urllib.request.urlopen(urllib.request.Request(link, headers={"Range": "bytes=0-3"}), timeout=10) as got:
            assert (got.status, got.read()) == (206, b"weig")  # MLflow downloads in ranges
