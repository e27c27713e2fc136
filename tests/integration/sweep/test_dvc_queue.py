"""Queueing a trial with real ``dvc exp run --queue`` while git's index is locked."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bplab.sweep import dvc_queue
from support.processes import run


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """A git + DVC repository with one stage that reads one param."""
    run(["git", "init", "-q"], tmp_path)
    dvc_queue.dvc(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text("x: 1\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: python -c 'print(1)' > out.txt\n"
                                       "    params: [x]\n    outs: [out.txt]\n")
    run(["git", "add", "-A"], tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], tmp_path)
    return tmp_path


def test_a_trial_queued_while_another_process_holds_the_git_index_waits_for_it(dvc_repo: Path) -> None:
    # What a second sweep (or a queue worker collecting a result) does for a moment: hold index.lock.
    lock = dvc_repo / ".git" / "index.lock"
    lock.touch()
    released = threading.Timer(2.5, lock.unlink)
    released.start()
    try:
        dvc_queue.enqueue(dvc_repo, "e1", ["x=2"], ["s"])
    finally:
        released.join()
    assert dvc_queue.statuses(dvc_repo) == {"e1": "Queued"}  # queued once: the refused tries queued nothing


def test_an_index_lock_that_stays_is_reported_after_the_wait(dvc_repo: Path) -> None:
    (dvc_repo / ".git" / "index.lock").touch()  # left behind by a crashed git
    with pytest.raises(dvc_queue.DvcFailed) as refused:
        dvc_queue.dvc(dvc_repo, "exp", "run", "--queue", "-n", "e1", "-S", "x=2", "s", index_lock_wait=1)
    assert str(refused.value) == ("dvc exp run --queue ... exited 255: ERROR: unexpected error - "
                                  "the index is locked; this might be due to a concurrent or crashed process "
                                  "(still locked after 1 s)")
