"""The MLflow model registry: one registered model per dataset, alias ``champion`` on the best version."""

from __future__ import annotations

from dataclasses import dataclass

CHAMPION = "champion"


@dataclass(frozen=True)
class Registration:
    """What evaluate did in the registry."""

    name: str
    version: str
    champion_version: str
    promoted: bool


def _better(value: float, than: float | None, higher_is_better: bool) -> bool:
    if than is None:
        return True
    return value > than if higher_is_better else value < than


def register(model_uri: str, dataset: str, variant: str, run_id: str, metric: str, value: float,
             higher_is_better: bool) -> Registration:
    """Register ``model_uri`` as a new version of model ``dataset``; move ``champion`` if it is better.

    The version carries tags ``variant``, ``run_id`` and ``<metric>``, so the comparison needs no
    run lookups. The alias moves only on a strict improvement over the current champion's metric.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    version = mlflow.register_model(model_uri, dataset,
                                    tags={"variant": variant, "run_id": run_id, metric: repr(value)})
    try:
        champion = client.get_model_version_by_alias(dataset, CHAMPION)
        current = float(champion.tags[metric]) if metric in champion.tags else None
    except MlflowException:  # no champion yet
        champion, current = None, None
    new = str(version.version)  # the API returns str or int depending on the call
    if _better(value, current, higher_is_better):
        client.set_registered_model_alias(dataset, CHAMPION, new)
        return Registration(dataset, new, new, True)
    return Registration(dataset, new, str(champion.version), False)
