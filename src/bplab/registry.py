"""The MLflow model registry: one registered model per dataset, alias ``champion`` on the best version.

Each version carries what it was scored with: the test metric's value and the digest of the test
split. The champion is recomputed from all versions, not compared with the previous champion
alone, so it is always the best version among those scored on the same test split as the version
just registered; a version without a readable metric is never champion, and ties keep the earlier
version. The choice and the move of the alias happen under a lock shared by every process on
this machine that uses the same tracking store, so concurrent evaluate stages (``dvc queue start
-j N``) do not contend; processes on other machines sharing one tracking server are not covered
by that lock, so after moving the alias an evaluate reads the registry again and moves it on if a
better version appeared meanwhile: no evaluate leaves the alias on a worse version.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bplab.errors import BplabError

CHAMPION = "champion"
TEST_DIGEST_TAG = "test_digest"
LOCK_TIMEOUT_S = 300
SETTLE_ROUNDS = 5


class RegistryError(BplabError):
    """The model registry failed or could not be locked; no alias was moved."""


@dataclass(frozen=True)
class Score:
    """A test metric of a model, and the test split it was measured on."""

    metric: str
    value: float
    higher_is_better: bool
    test_digest: str


@dataclass(frozen=True)
class Registration:
    """What evaluate did in the registry."""

    name: str
    version: str
    champion_version: str
    champion_value: float
    promoted: bool


def _metric_value(tags: dict[str, str], metric: str) -> float | None:
    try:
        value = float(tags[metric])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def best_version(versions: list[Any], score: Score) -> tuple[str, float] | None:
    """The version (number, value) with the best ``score.metric`` among ``versions`` scored on
    ``score.test_digest``; the lowest version number among equals. None if no version qualifies."""
    candidates = []
    for version in versions:
        if version.tags.get(TEST_DIGEST_TAG) != score.test_digest:
            continue
        value = _metric_value(version.tags, score.metric)
        if value is not None:
            candidates.append((value if score.higher_is_better else -value, -int(version.version), value))
    if not candidates:
        return None
    _, negative_version, value = max(candidates)
    return str(-negative_version), value


def _all_versions(client: Any, name: str) -> list[Any]:
    versions, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        versions += list(page)
        token = page.token
        if not token:
            return versions


def _version_of(client: Any, name: str, run_id: str, model_uri: str, tags: dict[str, str]) -> str:
    """The version of ``model_uri`` from run ``run_id``: the one registered before (an evaluate
    re-run after a kill registers nothing twice; its tags are brought up to date), or a new one."""
    import mlflow

    for version in _all_versions(client, name):
        if version.run_id == run_id and version.tags.get("variant") == tags["variant"] and \
                version.tags.get(TEST_DIGEST_TAG) == tags[TEST_DIGEST_TAG]:
            for key, value in tags.items():
                if version.tags.get(key) != value:
                    client.set_model_version_tag(name, version.version, key, value)
            return str(version.version)
    return str(mlflow.register_model(model_uri, name, tags=tags).version)


def _lock_file(tracking_uri: str, name: str) -> Path:
    """One lock per (tracking store, registered model), in the machine's temporary directory: the
    same for every process here, queued DVC experiments in their own copies included."""
    key = hashlib.sha256(f"{tracking_uri}\n{name}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"bplab-registry-{key}.lock"


def _settle_champion(client: Any, name: str, version: str, score: Score, store: str) -> tuple[str, float]:
    """Put the alias on the best version, reading the registry again after each move until the
    alias and the best version agree (at most :data:`SETTLE_ROUNDS` moves); the champion.

    The lock covers this machine only. An evaluate on another machine may register a better
    version after our read, or move the alias from a read older than ours: whoever moves the
    alias reads again afterwards, so the last move is always checked against every version
    registered before it, and a stale one corrected.
    """
    for _ in range(SETTLE_ROUNDS):
        best = best_version(_all_versions(client, name), score)
        if best is None:  # the version just registered has its tags: only a broken store gets here
            raise RegistryError(f"registered model {name!r} in {store}: version {version} lost its "
                                f"{score.metric} or {TEST_DIGEST_TAG} tag; no champion chosen")
        if client.get_registered_model(name).aliases.get(CHAMPION) == best[0]:
            return best
        client.set_registered_model_alias(name, CHAMPION, best[0])
    # Still moving: evaluates on other test splits disagree on what is best. The last to register wins.
    return best


def register(model_uri: str, name: str, variant: str, run_id: str, score: Score) -> Registration:
    """Register ``model_uri`` as a new version of model ``name``, then put ``champion`` on the best version.

    The version is tagged ``variant``, ``run_id``, ``<metric>`` and ``test_digest``. Raises
    :class:`RegistryError` if the registry fails at any point, so the stage fails rather than
    leave a wrong champion behind.
    """
    import mlflow
    from filelock import FileLock, Timeout
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from bplab.track import redact, refusal

    client = MlflowClient()
    store = redact(mlflow.get_tracking_uri())
    lock = FileLock(str(_lock_file(mlflow.get_tracking_uri(), name)), timeout=LOCK_TIMEOUT_S)
    tags = {"variant": variant, "run_id": run_id, score.metric: repr(score.value), TEST_DIGEST_TAG: score.test_digest}
    try:
        with lock:
            version = _version_of(client, name, run_id, model_uri, tags)
            champion, value = _settle_champion(client, name, version, score, store)
    except MlflowException as exc:
        refused = refusal(exc)  # a server's 401 or 403: who was refused, and what to do
        why = f": {refused}" if refused else f" in {store}: {exc.message}"
        raise RegistryError(f"registered model {name!r}{why}; the alias {CHAMPION!r} was not moved") from None
    except Timeout:
        raise RegistryError(f"registered model {name!r}: another process held {lock.lock_file} "
                            f"for over {LOCK_TIMEOUT_S} s; the alias {CHAMPION!r} was not moved") from None
    return Registration(name, version, champion, value, promoted=champion == version)
