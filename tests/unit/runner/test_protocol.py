"""The runner's wire format, its private directory and which runner serves which client."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from bplab.runner import protocol


def test_messages_arrive_whole_with_their_descriptors_however_the_bytes_are_split(tmp_path: Path) -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender, receiver = protocol.Channel(left), protocol.Channel(right)
    carried = tmp_path / "carried"
    carried.write_text("through the socket")
    with open(carried) as file:
        sender.send({"op": "run", "env": {"BIG": "x" * 100_000}}, [file.fileno()])
        sender.send({"signal": 2})
        message, fds = receiver.receive(max_fds=3)
    assert message["op"] == "run" and len(message["env"]["BIG"]) == 100_000
    assert len(fds) == 1 and os.read(fds[0], 100) == b"through the socket"
    os.close(fds[0])
    assert receiver.receive() == ({"signal": 2}, [])
    sender.close()
    assert receiver.receive() == (None, [])


def test_a_connection_cut_in_the_middle_of_a_message_is_an_error() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left.sendall(b"\0\0\0\x10{\"op\"")
    left.close()
    with pytest.raises(ConnectionError, match="in the middle of a message"):
        protocol.Channel(right).receive()


def test_the_private_directory_is_made_0700_and_refused_when_others_may_enter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    directory = protocol.private_directory()
    assert directory.parent == tmp_path and directory.stat().st_mode & 0o777 == 0o700
    directory.chmod(0o755)
    with pytest.raises(protocol.RunnerUnavailable, match=r"mode 0700 \(it is drwxr-xr-x"):
        protocol.private_directory()


def test_installing_a_package_or_changing_what_imports_read_names_another_runner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol.site, "getsitepackages", lambda: [str(tmp_path)])
    before = protocol.runner_name({"OMP_NUM_THREADS": "2"})
    assert protocol.runner_name({"OMP_NUM_THREADS": "2", "MLFLOW_TRACKING_URI": "x", "PYTHONPATH": "/a"}) == before
    assert protocol.runner_name({"OMP_NUM_THREADS": "1"}).split("-")[:2] == before.split("-")[:2]
    assert protocol.runner_name({"OMP_NUM_THREADS": "1"}) != before
    (tmp_path / "newpackage-1.0.dist-info").mkdir()
    after = protocol.runner_name({"OMP_NUM_THREADS": "2"})
    assert after.split("-")[0] == before.split("-")[0]  # the same environment
    assert after.split("-")[1] != before.split("-")[1]  # a newer installation: it replaces the old runner
