"""What a start does with the checkpoint it finds: the fingerprint (with the code) decides before "finished"."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from bplab.testing.scratch import REPO
from bplab.train.checkpoint import Checkpoint, code_digests, decide
from bplab.train.loop import EpochRecord

TODAY = {"params": "p1", "data": "d1", "model": "m1", "code": "c1"}


def saved(tmp_path: Path, epoch: int, epochs: int, **fingerprint: str) -> tuple[bytes, Path]:
    """A real checkpoint file of a tiny model after ``epoch`` of ``epochs`` epochs; its bytes and path."""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = [EpochRecord(e, {"train_loss": 1.0 / e}, [], 0.01) for e in range(1, epoch + 1)]
    path = tmp_path / "checkpoints/v.pt"
    Checkpoint(TODAY | fingerprint, "run-1", epoch, model.state_dict(), optimizer.state_dict(),
               torch.Generator().get_state(), {}, history, {}, epochs).save(path)
    return path.read_bytes(), path


def test_an_unfinished_checkpoint_past_todays_epochs_is_set_aside_not_overwritten(tmp_path: Path) -> None:
    raw, path = saved(tmp_path, 60, 100, params="p0")  # 60 of 100 epochs, and today's params say 50

    decision = decide(raw, path, TODAY, 50)

    assert decision.set_aside and decision.checkpoint is None  # was "a finished training": overwritten
    assert decision.why == f"checkpoint {path} (epoch 60 of 100) was trained with other params"


def test_a_finished_checkpoint_is_replaced_whatever_changed(tmp_path: Path) -> None:
    raw, path = saved(tmp_path, 10, 10, params="p0", code="c0")

    decision = decide(raw, path, TODAY, 50)

    assert not decision.set_aside and decision.checkpoint is None  # its results are published: nothing to keep
    assert decision.why == f"checkpoint {path} is of a finished training; starting afresh"


def test_other_code_sets_an_unfinished_checkpoint_aside_and_the_same_resumes(tmp_path: Path) -> None:
    raw, path = saved(tmp_path, 3, 10, code="c0")
    assert decide(raw, path, TODAY, 10).why == f"checkpoint {path} (epoch 3 of 10) was trained with other code"
    raw, path = saved(tmp_path, 3, 10)
    resumed = decide(raw, path, TODAY, 10)
    assert resumed.checkpoint is not None and resumed.checkpoint.epoch == 3 and not resumed.set_aside


def test_the_code_is_the_train_stages_code_deps_in_dvc_yaml(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    assert code_digests(root, "mnist_mlp", "mnist") == {}  # no dvc.yaml: no DVC stage to take deps from
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "stages", root / "stages")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")

    before = code_digests(root, "mnist_mlp", "mnist")

    assert {"stages/train.py", "src/bplab/train/loop.py", "src/bplab/models/architectures.py",
            "src/bplab/data/mnist.py"} <= {*before}
    assert "src/bplab/data/flower.py" not in before  # another dataset's module
    assert "src/bplab/tracking/recorder.py" not in before  # MLflow logging: not a dep, cannot change the outputs
    with (root / "src/bplab/tracking/recorder.py").open("a") as file:
        file.write("# not a dep\n")
    assert code_digests(root, "mnist_mlp", "mnist") == before
    with (root / "src/bplab/train/loop.py").open("a") as file:
        file.write("# a change to the training code\n")
    after = code_digests(root, "mnist_mlp", "mnist")
    assert [name for name in before if after[name] != before[name]] == ["src/bplab/train/loop.py"]

