"""`bplab gc` on a real sqlite MLflow store: which runs, registry versions and logged models it lists
for removal and which it keeps, that the dry run changes nothing, and that --yes removes exactly
the listed ones (for good: rows and artifacts), never the champion's."""

from __future__ import annotations

import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from bplab.commands import dvc_cache
from bplab.data import catalog
from bplab.paths import processed_dir, raw_dir
from bplab.tracking import retention, store
from bplab.tracking.cleanup import RunFacts, Survey, VersionFacts
from bplab.tracking.registry import CHAMPION
from support.processes import bplab_here

DATASET = "boston"
DAY_MS = retention.DAY_MS


def gc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    done = bplab_here("gc", "--only", "mlflow", *args, capsys=capsys)
    return done.returncode, done.stdout, done.stderr


def rows(out: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(kind, id) -> (action, why), from the table's lines (columns apart by two spaces or more)."""
    found = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 4 and cells[0] in {"remove", "removed", "keep", "kept"}:
            found[(cells[1], cells[2])] = (cells[0], cells[3])
    return found


@dataclass
class Store:
    """The runs and versions of the test store, by role."""

    client: object
    runs: dict[str, str]  # role -> run id
    models: dict[str, str]  # role -> logged model id
    artifacts: dict[str, Path]  # role -> the run's artifact folder


def _run(client, experiment_id: str, name: str, status: str, age_days: float, now_ms: int) -> str:
    run_id = client.create_run(experiment_id, start_time=now_ms - int(age_days * DAY_MS), run_name=name,
                               tags={"variant": name, "dataset": DATASET}).info.run_id
    client.log_text(run_id, f"{name}\n", "notes.txt")
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


@pytest.fixture
def team_store(mlflow_repo: Path) -> Store:
    """A finished run, an old and a recent failed run, an old killed data run, a deleted run, and the
    run of boston v1 @champion that FAILED (its evaluate broke after registering); versions 1 to 5."""
    from mlflow import MlflowClient

    assert DATASET in catalog.known()
    client = MlflowClient(store.tracking_uri())
    now = int(time.time() * 1000)
    training, data = (client.create_experiment(name) for name in (DATASET, store.data_experiment(DATASET)))
    runs = {"finished": _run(client, training, "boston_module", "FINISHED", 30, now),
            "failed_old": _run(client, training, "boston_adam", "FAILED", 30, now),
            "failed_recent": _run(client, training, "boston_adam", "FAILED", 2, now),
            "killed_old": _run(client, data, "preprocess", "KILLED", 10, now),
            "deleted": _run(client, training, "boston_sequential", "FINISHED", 1, now),
            "running": _run(client, training, "boston_module", "RUNNING", 30, now),
            "champion": _run(client, training, "boston_module", "FAILED", 40, now)}
    client.delete_run(runs["deleted"])
    for version in range(2, 6):
        runs[f"v{version}"] = _run(client, training, "boston_module", "FINISHED", 20 - version, now)
    models = {role: client.create_logged_model(training, name="model", source_run_id=runs[role]).model_id
              for role in ("failed_old", "champion", "v2", "v3", "v4", "v5")}
    client.create_registered_model(DATASET)
    for role in ("champion", "v2", "v3", "v4", "v5"):
        client.create_model_version(DATASET, f"models:/{models[role]}", runs[role], model_id=models[role])
    client.set_registered_model_alias(DATASET, CHAMPION, "1")
    artifacts = {role: Path(urllib.request.url2pathname(urllib.parse.urlparse(
        client.get_run(run_id).info.artifact_uri).path)) for role, run_id in runs.items()}
    assert all((folder / "notes.txt").is_file() for folder in artifacts.values())
    return Store(client, runs, models, artifacts)


def expected(team: Store) -> dict[tuple[str, str], str]:
    """(kind, id) -> action, for everything the table must list and nothing else."""
    runs, models = team.runs, team.models
    return {(retention.RUN, runs["failed_old"]): "remove", (retention.RUN, runs["killed_old"]): "remove",
            (retention.RUN, runs["deleted"]): "remove", (retention.LOGGED_MODEL, models["failed_old"]): "remove",
            (retention.VERSION, f"{DATASET} v2"): "remove",
            (retention.RUN, runs["failed_recent"]): "keep", (retention.RUN, runs["champion"]): "keep",
            **{(retention.VERSION, f"{DATASET} v{n}"): "keep" for n in (1, 3, 4, 5)}}


def test_the_dry_run_lists_what_goes_and_what_stays_and_why_and_changes_nothing(
        team_store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = gc(capsys)
    assert (code, err) == (0, "")
    listed = rows(out)
    assert {key: action for key, (action, _) in listed.items()} == expected(team_store)
    runs = team_store.runs
    assert listed[(retention.RUN, runs["champion"])][1] == (
        f"{DATASET}/boston_module: FAILED, started {time.strftime('%Y-%m-%d', time.gmtime(time.time() - 40 * 86400))}, "
        f"40 days ago (over 7 days), but it is the run of {DATASET} v1 @{CHAMPION}")
    assert listed[(retention.RUN, runs["failed_recent"])][1].endswith("2 days ago (within 7 days)")
    assert listed[(retention.RUN, runs["deleted"])][1] == (
        f"{DATASET}/boston_sequential: deleted in the MLflow UI (or by the API)")
    assert listed[(retention.VERSION, f"{DATASET} v1")][1] == f"holds @{CHAMPION}"
    assert listed[(retention.VERSION, f"{DATASET} v2")][1] == (
        f"no alias, older than the last 3 versions of {DATASET} (v5, v4, v3)")
    assert out.splitlines()[-1] == ("would remove: 3 runs, 1 registry version, 1 logged model; kept: 2 runs, "
                                    "4 registry versions, and 6 other runs no rule concerns")
    client = team_store.client
    assert [client.get_run(runs[role]).info.lifecycle_stage for role in ("failed_old", "killed_old", "deleted")] == [
        "active", "active", "deleted"]
    assert len(client.search_model_versions(f"name = '{DATASET}'")) == 5
    assert all((folder / "notes.txt").is_file() for folder in team_store.artifacts.values())


def test_yes_removes_the_listed_runs_versions_and_models_for_good_and_keeps_the_rest(
        team_store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    code, out, err = gc(capsys, "--yes")
    assert (code, err) == (0, "")
    assert {key: {"removed": "remove", "kept": "keep"}[action] for key, (action, _) in rows(out).items()} == \
        expected(team_store)
    assert out.splitlines()[-1].startswith("removed: 3 runs, 1 registry version, 1 logged model; kept:")
    client, runs = team_store.client, team_store.runs
    gone, kept = ("failed_old", "killed_old", "deleted"), set(runs) - {"failed_old", "killed_old", "deleted"}
    for role in gone:
        with pytest.raises(MlflowException, match="not found"):
            client.get_run(runs[role])  # rows removed, not only marked deleted
        assert not team_store.artifacts[role].exists()
    with pytest.raises(MlflowException):
        client.get_logged_model(team_store.models["failed_old"])
    assert {role: client.get_run(runs[role]).info.lifecycle_stage for role in kept} == dict.fromkeys(kept, "active")
    assert all((team_store.artifacts[role] / "notes.txt").is_file() for role in kept)
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{DATASET}'")) == [1, 3, 4, 5]
    assert client.get_model_version_by_alias(DATASET, CHAMPION).run_id == runs["champion"]
    assert client.get_logged_model(team_store.models["champion"]).model_id == team_store.models["champion"]
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert len(client.search_runs(experiments, run_view_type=ViewType.ALL)) == len(kept)
    # Nothing is left to remove; what stays is listed again.
    code, out, _ = gc(capsys)
    assert {action for action, _ in rows(out).values()} == {"keep"}
    assert out.splitlines()[-1].startswith("would remove: nothing; kept: 2 runs, 4 registry versions")


def test_a_negative_number_of_days_or_versions_ends_in_one_line(mlflow_repo: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert gc(capsys, "--older-than-days", "-1") == (
        2, "", "bplab gc: error: --older-than-days -1: not a whole number of 0 or more\n")
    assert gc(capsys, "--keep-versions", "two") == (
        2, "", "bplab gc: error: --keep-versions two: not a whole number of 0 or more\n")
    assert not (mlflow_repo / "mlflow.db").exists()  # refused before the store was opened


def _version(number: int, run_id: str, *aliases: str) -> VersionFacts:
    return VersionFacts(DATASET, number, aliases, run_id, f"m-{number}")


def test_a_champion_and_any_aliased_version_stay_with_their_runs_whatever_the_rules_say() -> None:
    now = 100 * DAY_MS
    runs = (RunFacts("deleted-champion", DATASET, "a", "FINISHED", True, 0, None),
            RunFacts("killed-staging", DATASET, "b", "KILLED", False, 0, None),
            RunFacts("old-failed", DATASET, "c", "FAILED", False, 0, None))
    survey = Survey(runs, (_version(1, "deleted-champion", CHAMPION), _version(2, "killed-staging", "staging"),
                           _version(3, "old-failed")), ())
    verdicts = {(v.kind, v.ident): v.remove for v in retention.decide(survey, now, 7, keep_last=0)}
    assert verdicts == {(retention.VERSION, f"{DATASET} v1"): False, (retention.VERSION, f"{DATASET} v2"): False,
                        (retention.VERSION, f"{DATASET} v3"): True, (retention.RUN, "deleted-champion"): False,
                        (retention.RUN, "killed-staging"): False, (retention.RUN, "old-failed"): True}
    assert retention.aliased_runs(survey) == [(f"{DATASET} v1 @{CHAMPION}", DATASET, "deleted-champion", None),
                                              (f"{DATASET} v2 @staging", DATASET, "killed-staging", None)]


def test_a_champions_data_is_its_datasets_raw_and_processed_data_not_every_output_of_the_lock() -> None:
    # The lock a training run records holds every stage's outputs as they stood, metrics (not in
    # DVC's cache: a cache object of equal content is not theirs) and other variants' models among them.
    lock = """schema: '2.0'
stages:
  download@boston: {outs: [{path: data/raw/boston, md5: aaa.dir}]}
  preprocess@boston: {outs: [{path: data/processed/boston, md5: bbb.dir}]}
  preprocess@mnist: {outs: [{path: data/processed/mnist, md5: ccc.dir}]}
  train@boston_module: {outs: [{path: models/boston_module, md5: ddd.dir}]}
  evaluate@boston_module: {outs: [{path: metrics/boston_module.json, md5: eee}]}
"""
    data = {raw_dir(DATASET).as_posix(), processed_dir(DATASET).as_posix()}
    assert dvc_cache.lock_digests(lock, data) == {"aaa.dir", "bbb.dir"}
    assert dvc_cache.lock_digests(None, data) == dvc_cache.lock_digests("stages: [", data) == frozenset()
