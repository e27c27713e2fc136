"""The champion alias moves to a new version only when its test metric strictly improves."""

from __future__ import annotations

from pathlib import Path

import pytest

from bplab import registry
from conftest import mlflow_client


@pytest.fixture
def model_uri(mlflow_repo: Path) -> str:
    """One small logged model (pickle format: fast, and only ever loaded by this test's own store)."""
    import mlflow
    import torch

    from bplab import track

    mlflow.set_tracking_uri(track.tracking_uri())
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(torch.nn.Linear(2, 1), name="model", serialization_format="pickle",
                                        pip_requirements=["torch"])
    return info.model_uri


@pytest.mark.parametrize(("higher_is_better", "values", "promoted"), [
    (True, [0.80, 0.70, 0.80, 0.90], [True, False, False, True]),   # accuracy: a tie does not move it
    (False, [5.0, 6.0, 4.0, 4.5], [True, False, True, False]),      # rmse: lower is better
])
def test_champion_moves_only_on_strict_improvement(model_uri: str, higher_is_better: bool,
                                                    values: list[float], promoted: list[bool]) -> None:
    champions = []
    for i, value in enumerate(values):
        result = registry.register(model_uri, "toy", f"variant_{i}", "run", "metric", value, higher_is_better)
        assert result.version == str(i + 1)
        assert result.promoted is promoted[i]
        champions.append(result.champion_version)
    expected, current = [], None
    for i, moved in enumerate(promoted):
        current = str(i + 1) if moved else current
        expected.append(current)
    assert champions == expected
    alias = mlflow_client().get_model_version_by_alias("toy", registry.CHAMPION)
    assert str(alias.version) == expected[-1]
    assert alias.tags["variant"] == f"variant_{int(expected[-1]) - 1}"
