"""Which split is the committed one: the data params and code of HEAD, asked of git in the stage's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from bplab.data.committed import code_dependencies, origin
from bplab.params.load import load_params
from bplab.testing.scratch import commit, copy_repository, set_params


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_repository(tmp_path_factory.mktemp("committed") / "repo")


def boston(repo: Path):
    return origin("boston", load_params(repo / "params.yaml").data.boston, repo)


def test_a_clean_checkout_is_the_committed_split(repo: Path) -> None:
    assert boston(repo).committed
    assert "src/bplab/data/boston.py" in code_dependencies("boston", repo)
    assert "src/bplab/data/mnist.py" not in code_dependencies("boston", repo)


@pytest.mark.parametrize(("edit", "committed"), [
    ({"data.boston.preprocess.val_seed": 1}, False),
    ({"data.boston.download.retries": 5}, False),  # what made the raw data is part of the split's making
    ({"data.mnist.preprocess.val_seed": 1}, True),  # another dataset's split
    ({"train.boston_module.lr": 0.5}, True),  # a model, not the data
])
def test_an_uncommitted_params_edit_makes_another_split(repo: Path, edit: dict, committed: bool) -> None:
    text = (repo / "params.yaml").read_text()
    try:
        set_params(repo, edit)
        found = boston(repo)
        assert found.committed is committed
        if not committed:
            assert found.why == "data.boston in params.yaml differs from HEAD's"
    finally:
        (repo / "params.yaml").write_text(text)
    assert boston(repo).committed


def test_an_uncommitted_change_to_the_data_code_makes_another_split(repo: Path) -> None:
    module = repo / "src/bplab/data/boston.py"
    text = module.read_text()
    try:
        (repo / "src/bplab/data/mnist.py").touch()  # same bytes: git sees no change
        module.write_text(text + "\n# an edit\n")
        found = boston(repo)
        assert not found.committed and found.why == "uncommitted changes in its code: src/bplab/data/boston.py"
        commit(repo, "an edit of the boston module")
        assert boston(repo).committed  # committed, it makes the committed split
    finally:
        module.write_text(text)
        commit(repo, "back")


def test_outside_git_every_split_counts_as_committed(tmp_path: Path) -> None:
    found = origin("boston", load_params(copy_repository(tmp_path / "repo").joinpath("params.yaml")).data.boston,
                   tmp_path)
    assert found.committed and found.why == "no git commit to compare with"
