"""The champion alias moves once when a better version arrives, and not at all otherwise.

MLflow's sqlite store answers an alias's version as an ``int`` (``get_registered_model(name).aliases``
gives ``{'champion': 2}``) while versions are compared as strings elsewhere: compared as they come,
the alias never looks settled, and every evaluate set it again :data:`bplab.tracking.registry.SETTLE_ROUNDS` times.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bplab.tracking import registry, store
from bplab.tracking.registry import Score


@pytest.fixture
def model_source(mlflow_repo: Path) -> Path:
    """The repository's own sqlite store, and a model "source" to register (a registry version
    only records where its files are: no model needs logging for the alias to move)."""
    import mlflow

    mlflow.set_tracking_uri(store.tracking_uri())
    source = mlflow_repo / "model"
    source.mkdir()
    return source


def test_the_sqlite_store_answers_an_alias_version_as_an_int(model_source: Path) -> None:
    from mlflow import MlflowClient

    registry.register(model_source.as_uri(), "toy", "v", "run", Score("test_acc", 0.8, True, "split"))
    held = MlflowClient().get_registered_model("toy").aliases[registry.CHAMPION]
    assert isinstance(held, int) and str(held) == "1"  # what registry must compare as a version string


def test_an_evaluate_moves_the_alias_only_when_the_champion_changes(
        model_source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    moves: list[str] = []
    real = MlflowClient.set_registered_model_alias

    def counted(self: MlflowClient, name: str, alias: str, version: str) -> None:
        moves.append(str(version))  # counted, then done for real in the sqlite store
        real(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", counted)
    # the first version, a better one, a worse one, a tie: (value, alias moves, champion after)
    for value, expected, champion in ((0.8, ["1"], "1"), (0.9, ["2"], "2"), (0.7, [], "2"), (0.9, [], "2")):
        moves.clear()
        result = registry.register(model_source.as_uri(), "toy", "v", "run", Score("test_acc", value, True, "split"))
        assert moves == expected, f"registering {value} moved the alias {len(moves)} times"
        assert result.champion_version == champion
    assert str(MlflowClient().get_model_version_by_alias("toy", registry.CHAMPION).version) == "2"


def test_a_card_that_cannot_be_written_fails_loudly_and_leaves_the_version_registered(model_source: Path) -> None:
    from mlflow import MlflowClient

    registry.register(model_source.as_uri(), "toy", "v", "run", Score("test_acc", 0.8, True, "split"))
    registry.describe("toy", "1", "# toy version 1")
    assert MlflowClient().get_model_version("toy", "1").description == "# toy version 1"
    with pytest.raises(registry.RegistryError, match=r"^registered model 'toy' version 2: its model card was not "
                                                     r"written \(in sqlite:///.*\); the version stays registered"):
        registry.describe("toy", "2", "# toy version 2")  # no version 2: the store refuses the write
    assert [v.version for v in MlflowClient().search_model_versions("name = 'toy'")] == [1]
