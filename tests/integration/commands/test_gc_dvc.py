"""`bplab gc` on a real git + DVC repository: the outputs of commits no branch tip uses leave the
cache (listed by the dry run, removed by --yes), the tip's stay; so does a champion's data, kept by
its commit, or the cache is left alone when one commit cannot keep every champion's data."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bplab.commands import dvc_cache
from bplab.paths import processed_dir
from bplab.sweep import dvc_queue
from bplab.tracking import store
from bplab.tracking.registry import CHAMPION
from support.processes import bplab_here, run

CONTENTS = ("one", "two", "three")  # one commit each; the last is the branch tip
DATASETS = ("boston", "mnist")
# Each dataset's processed data (a folder: a .dir object and a file), from src.txt.
COMMAND = " && ".join(f"mkdir -p {processed_dir(d).as_posix()} && sed 's/^/{d} /' src.txt > "
                      f"{processed_dir(d).as_posix()}/x.txt" for d in DATASETS)


def _git(repo: Path, *args: str) -> str:
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], repo).stdout.strip()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A git + DVC repository whose one stage writes each dataset's processed data from src.txt, at
    three commits; its commits, oldest first. Every commit's outputs are in the cache."""
    repo = tmp_path_factory.mktemp("gc") / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    dvc_queue.dvc(repo, "init", "-q")
    outs = ", ".join(processed_dir(d).as_posix() for d in DATASETS)
    (repo / "dvc.yaml").write_text(f"stages:\n  preprocess:\n    cmd: {COMMAND}\n    deps: [src.txt]\n"
                                   f"    outs: [{outs}]\n")
    commits = []
    for text in CONTENTS:
        (repo / "src.txt").write_text(f"{text}\n")
        dvc_queue.dvc(repo, "repro", "-q")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", text)
        commits.append(_git(repo, "rev-parse", "HEAD"))
    return repo, commits


@pytest.fixture
def repo(built: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's copy of :func:`built`, as the working directory, with an MLflow store and no champion."""
    from mlflow import MlflowClient

    copy = tmp_path / "repo"
    shutil.copytree(built[0], copy, symlinks=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv(store.TRACKING_ENV, raising=False)
    MlflowClient(store.tracking_uri()).search_experiments()  # an empty store: no champion yet
    return copy


def _objects(repo: Path, commit: str) -> set[str]:
    """The cache paths (relative) of commit's outputs: each dataset's folder's .dir object and its file."""
    lock = _git(repo, "show", f"{commit}:dvc.lock")
    found = set()
    for folder in dvc_cache.lock_digests(lock, {processed_dir(d).as_posix() for d in DATASETS}):
        listing = (repo / ".dvc/cache/files/md5" / folder[:2] / folder[2:]).read_text()
        found |= {folder, *re.findall(r'"md5": "([0-9a-f]{32})"', listing)}
    assert len(found) == 2 * len(DATASETS)
    return {f".dvc/cache/files/md5/{digest[:2]}/{digest[2:]}" for digest in found}


def gc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    done = bplab_here("gc", "--only", "dvc", *args, capsys=capsys)
    assert done.stderr == "", done
    return done.returncode, done.stdout


def listed(out: str) -> set[str]:
    return {cells[2] for cells in (re.split(r"\s{2,}", line) for line in out.splitlines())
            if len(cells) == 4 and cells[1] == dvc_cache.CACHE_OBJECT}


def _champion(repo: Path, dataset: str, commit: str) -> None:
    """Make a run trained at ``commit`` (its dvc.lock recorded, as the train stage records it) the
    champion of ``dataset``."""
    from mlflow import MlflowClient

    client = MlflowClient(store.tracking_uri())
    experiment = client.get_experiment_by_name(dataset)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(dataset)
    run_id = client.create_run(experiment_id, tags={"git_commit": commit, "stage": "train"}).info.run_id
    client.log_text(run_id, _git(repo, "show", f"{commit}:dvc.lock") + "\n", "reproduce/dvc.lock")
    client.set_terminated(run_id)
    model = client.create_logged_model(experiment_id, source_run_id=run_id)
    client.create_registered_model(dataset)
    client.create_model_version(dataset, f"models:/{model.model_id}", run_id, model_id=model.model_id)
    client.set_registered_model_alias(dataset, CHAMPION, "1")


def _cached(repo: Path, paths: set[str]) -> dict[str, bool]:
    return {path: (repo / path).is_file() for path in paths}


def test_the_outputs_no_branch_tip_uses_are_listed_then_removed_and_the_tips_kept(
        repo: Path, built: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    old = _objects(repo, built[1][0]) | _objects(repo, built[1][1])
    tip = _objects(repo, built[1][2])
    code, out = gc(capsys)
    assert code == 0 and listed(out) == old
    size = sum((repo / path).stat().st_size for path in old)
    assert out.splitlines()[-1] == f"would remove: 8 DVC cache objects ({size} B of DVC cache); kept: nothing"
    assert _cached(repo, old | tip) == dict.fromkeys(old | tip, True)  # the dry run removed nothing
    code, out = gc(capsys, "--yes")
    assert code == 0 and listed(out) == old
    assert _cached(repo, old | tip) == {**dict.fromkeys(old, False), **dict.fromkeys(tip, True)}
    assert (repo / processed_dir("boston") / "x.txt").read_text() == "boston three\n"
    assert gc(capsys)[1].splitlines()[-1] == "would remove: nothing; kept: nothing"


def test_a_champions_data_stays_by_its_commit_though_no_branch_tip_uses_it(
        repo: Path, built: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    first, second, _ = built[1]
    champions, unused = _objects(repo, first), _objects(repo, second)
    _champion(repo, "boston", first)
    code, out = gc(capsys, "--yes")
    assert code == 0 and listed(out) == unused
    assert f"note: the DVC cache also keeps commit {first[:10]}, where a champion's data is" in out
    assert _cached(repo, champions | unused) == {**dict.fromkeys(champions, True), **dict.fromkeys(unused, False)}


def test_the_cache_is_left_alone_when_one_commit_cannot_keep_every_champions_data(
        repo: Path, built: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    first, second, _ = built[1]
    _champion(repo, "boston", first)
    _champion(repo, "mnist", second)
    code, out = gc(capsys, "--yes")
    assert code == 0 and listed(out) == set()
    assert (f"note: dvc gc would remove the data of boston v1 @{CHAMPION} (commit {first[:10]}), mnist v1 "
            f"@{CHAMPION} (commit {second[:10]}), which no branch tip") in out
    everything = _objects(repo, first) | _objects(repo, second)
    assert _cached(repo, everything) == dict.fromkeys(everything, True)
