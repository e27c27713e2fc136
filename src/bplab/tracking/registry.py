"""The MLflow model registry: one registered model per dataset, alias ``champion`` on the best version.

Each version carries how it scored: the validation metric that ranks it, the test metrics that
are reported beside it (never used to choose), the digest of the validation and test splits it
was scored on (``split_digest``; ``test_digest`` for the test split alone), and whether that split
is the one the committed pipeline makes (``split_committed``, :mod:`bplab.data.committed`).

The champion is the best version by the validation metric among the versions scored on the
committed split. Only an evaluate on the committed split moves the alias, recomputing it from
all versions (not from the previous champion alone), so an experiment on another split (a
different ``test_size``, ``val_size``, ``test_limit``...) is registered but never takes the alias,
however it scored; after a new split is committed and ``dvc repro`` re-scores the variants, the
alias follows them to it. :func:`promote` moves it on purpose. A version without a readable
metric is never champion, and ties keep the earlier version.

The choice and the move of the alias happen under a lock shared by every process on this machine
that uses the same tracking store, so concurrent evaluate stages (``dvc queue start -j N``) do not
contend; processes on other machines sharing one tracking server are not covered by that lock,
so after moving the alias an evaluate reads the registry again and moves it on if a better version
appeared meanwhile: no evaluate leaves the alias on a worse version.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bplab.errors import BplabError

CHAMPION = "champion"
TEST_DIGEST_TAG, SPLIT_TAG, COMMITTED_TAG = "test_digest", "split_digest", "split_committed"
LOCK_TIMEOUT_S = 300
SETTLE_ROUNDS = 5


class RegistryError(BplabError):
    """The model registry failed or could not be locked, or a version asked for does not exist."""


@dataclass(frozen=True)
class Score:
    """How a model scored: ``metric`` (a validation metric) ranks it, ``reported`` (test metrics)
    are recorded beside it; ``split`` identifies the validation and test splits they were measured
    on, and ``committed`` says whether that is the committed pipeline's split."""

    metric: str
    value: float
    higher_is_better: bool
    split: str
    reported: Mapping[str, float] = field(default_factory=dict)
    test_digest: str = ""
    committed: bool = True

    def tags(self) -> dict[str, str]:
        """The registry version's tags for this score."""
        values = {self.metric: self.value, **self.reported}
        return {**{name: repr(value) for name, value in values.items()}, SPLIT_TAG: self.split,
                TEST_DIGEST_TAG: self.test_digest or self.split, COMMITTED_TAG: str(self.committed).lower()}


@dataclass(frozen=True)
class Registration:
    """What evaluate did in the registry: the version it registered, and the champion after it
    (``None`` when no version holds the alias yet)."""

    name: str
    version: str
    champion_version: str | None
    champion_value: float | None
    promoted: bool


def _metric_value(tags: dict[str, str], metric: str) -> float | None:
    try:
        value = float(tags[metric])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def best_version(versions: list[Any], score: Score) -> tuple[str, float] | None:
    """The version (number, value) with the best ``score.metric`` among ``versions`` scored on
    ``score.split``; the lowest version number among equals. None if no version qualifies."""
    candidates = []
    for version in versions:
        if version.tags.get(SPLIT_TAG) != score.split:
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
                version.tags.get(SPLIT_TAG) == tags[SPLIT_TAG]:
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


def _settle_champion(client: Any, name: str, version: str, score: Score, shown_uri: str) -> tuple[str, float]:
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
            raise RegistryError(f"registered model {name!r} in {shown_uri}: version {version} lost its "
                                f"{score.metric} or {SPLIT_TAG} tag; no champion chosen")
        if _alias(client, name) == best[0]:
            return best
        client.set_registered_model_alias(name, CHAMPION, best[0])
    # Still moving: evaluates elsewhere keep registering better versions; the last of them settles it.
    return best


def _alias(client: Any, name: str, alias: str = CHAMPION) -> str | None:
    """The version number holding ``alias``, as a string (the sqlite store answers an int)."""
    version = client.get_registered_model(name).aliases.get(alias)
    return None if version is None else str(version)


def _champion(client: Any, name: str, metric: str) -> tuple[str | None, float | None]:
    """The version holding the alias now, and its ``metric`` (None where it has none)."""
    version = _alias(client, name)
    if version is None:
        return None, None
    return version, _metric_value(client.get_model_version(name, version).tags, metric)


@contextmanager
def _locked(name: str) -> Iterator[Any]:
    """A client of the tracking store, holding this machine's lock on registered model ``name``;
    MLflow's errors and a lock that cannot be had become a :class:`RegistryError`."""
    import mlflow
    from filelock import FileLock, Timeout
    from mlflow.exceptions import MlflowException

    from bplab.tracking.store import client, redact, refusal

    shown_uri = redact(mlflow.get_tracking_uri())
    lock = FileLock(str(_lock_file(mlflow.get_tracking_uri(), name)), timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            yield client()
    except MlflowException as exc:
        refused = refusal(exc)  # a server's 401 or 403: who was refused, and what to do
        why = f": {refused}" if refused else f" in {shown_uri}: {exc.message}"
        raise RegistryError(f"registered model {name!r}{why}; the alias {CHAMPION!r} was not moved") from None
    except Timeout:
        raise RegistryError(f"registered model {name!r}: another process held {lock.lock_file} "
                            f"for over {LOCK_TIMEOUT_S} s; the alias {CHAMPION!r} was not moved") from None


def register(model_uri: str, name: str, variant: str, run_id: str, score: Score) -> Registration:
    """Register ``model_uri`` as a new version of model ``name``; on the committed split, put
    ``champion`` on the best version scored there.

    The version is tagged ``variant``, ``run_id`` and the :meth:`Score.tags`. A version scored on
    another split leaves the alias where it is. Raises :class:`RegistryError` if the registry
    fails at any point, so the stage fails rather than leave a wrong champion behind.
    """
    with _locked(name) as client:
        version = _version_of(client, name, run_id, model_uri, {"variant": variant, "run_id": run_id,
                                                               **score.tags()})
        if score.committed:
            champion, value = _settle_champion(client, name, version, score, _store())
        else:
            champion, value = _champion(client, name, score.metric)
    return Registration(name, version, champion, value, promoted=champion == version)


def describe(name: str, version: str, description: str) -> None:
    """Set the description of version ``version`` of registered model ``name`` (its model card,
    which MLflow's model version page shows). A :class:`RegistryError` says the version stays
    registered without it."""
    from mlflow.exceptions import MlflowException

    from bplab.tracking.store import client, refusal

    try:
        client().update_model_version(name, version, description=description)
    except MlflowException as exc:
        why = refusal(exc) or f"in {_store()}: {exc.message}"
        raise RegistryError(f"registered model {name!r} version {version}: its model card was not written ({why}); "
                            "the version stays registered, and the stage's next run writes the card") from None


def promote(name: str, version: str, tracking_uri: str) -> tuple[str | None, Any]:
    """Move ``champion`` of registered model ``name`` in the store ``tracking_uri`` to ``version`` on
    purpose; the version that held it before (None if none), and the promoted version (with its tags)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)

    with _locked(name) as client:
        try:
            chosen = client.get_model_version(name, version)
        except MlflowException:
            known = sorted(int(v.version) for v in _all_versions(client, name))
            raise RegistryError(f"registered model {name!r} has no version {version!r}; its versions are "
                                f"{', '.join(map(str, known)) or 'none'}") from None
        before = _alias(client, name)
        client.set_registered_model_alias(name, CHAMPION, str(chosen.version))
    return before, chosen


def _store() -> str:
    import mlflow

    from bplab.tracking.store import redact

    return redact(mlflow.get_tracking_uri())
