"""Repository copies run their own code: an edit to a copy is what its stages execute."""

from __future__ import annotations

import sys
from pathlib import Path

from bplab.testing.scratch import REPO, copy_repository
from support.processes import run


def test_a_copy_imports_its_own_source(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo", {"train.mnist_mlp.epochs": 3})
    (repo / "src/bplab/marker.py").write_text("WHERE = 'the copy'\n")
    shown = run([sys.executable, "-c", "import bplab, bplab.marker; print(bplab.__file__, bplab.marker.WHERE)"],
                repo).stdout.split()
    assert shown == [str(repo.resolve() / "src/bplab/__init__.py"), "the", "copy"]
    assert not (REPO / "src/bplab/marker.py").exists()
    assert "epochs: 3" in (repo / "params.yaml").read_text()
    assert not (repo / "dvc.lock").exists()
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], repo).stdout == ""
