"""The Optuna side of ``bplab sweep``: the study's storage, its seeded sampler, and what it found.

``import optuna`` takes a while: :mod:`bplab.sweep.search` imports this module only when a sweep runs.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.importance import FanovaImportanceEvaluator
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from bplab.errors import BplabError
from bplab.tracking import store

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from optuna.distributions import BaseDistribution
    from optuna.study import Study

SWEEPS_FOLDER = "sweeps"  # the default journal files, sweeps/<study>.journal (git-ignored)


class StudyMismatch(BplabError):
    """An existing study was started for another variant, metric or direction."""


class TrialSeeded(BaseSampler):
    """A sampler made afresh for each trial, seeded with ``seed + trial number``.

    A trial's draw then depends on its number and on the trials told before it, never on which
    process asked for it: a sweep re-run from the same storage draws the same values, and two
    workers on one study do not draw the same random starting points.
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self._make = make
        self._seed = seed
        self._inner = make(seed)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._inner = self._make(self._seed + trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)


def sampler(name: str, seed: int) -> BaseSampler:
    """``tpe`` (Optuna's TPE; it lies about running trials, ``constant_liar``, so parallel trials
    spread out; its first 10 trials are random) or ``random``, seeded per trial."""
    if name == "random":
        return TrialSeeded(lambda s: RandomSampler(seed=s), seed)
    return TrialSeeded(lambda s: TPESampler(seed=s, constant_liar=True), seed)


HEARTBEAT_GRACE = 4  # heartbeats a worker may miss before its trials are taken for lost
MAX_RETRIES = 3  # times one trial's params are run again after their worker was lost
SCHEMA_ATTEMPTS = 4  # tries to open a database storage whose tables another worker creates meanwhile


@contextmanager
def _experimental_accepted() -> Iterator[None]:
    """Optuna's heartbeat API is marked experimental; bplab pins Optuna and tests what it uses,
    so users need not see the warning on every sweep."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


class StorageUnavailable(BplabError):
    """The study's database storage cannot be opened (unreachable, refused, or a bad URL)."""


def _unavailable(shown: str, exc: Exception) -> StorageUnavailable:
    """The one line for a database storage that cannot be opened (``shown``: its URL, redacted)."""
    return StorageUnavailable(f"cannot open the sweep storage {shown}: {store.database_reason(exc)}")


class Takeovers:
    """What a database storage does with a trial whose worker stopped beating: Optuna's
    :class:`RetryHeartbeatStaleTrialCallback` puts its params back as a new waiting trial, which
    the next ``ask`` of any worker takes; and the sweep is told, to say so."""

    def __init__(self) -> None:
        with _experimental_accepted():
            self._retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
        self._lost: list[FrozenTrial] = []
        self._lock = threading.Lock()  # the heartbeat thread adds, the sweep's main thread takes

    def __call__(self, study: Study, trial: FrozenTrial) -> None:
        self._retry(study, trial)
        with self._lock:
            self._lost.append(trial)

    def take(self) -> list[FrozenTrial]:
        """The lost trials found since the last call."""
        with self._lock:
            lost, self._lost = self._lost, []
        return lost


def storage(url: str | None, repo: Path, study: str, heartbeat_s: int, takeovers: Takeovers) -> tuple[Any, str]:
    """The study's Optuna storage and how to show it: a database URL (``sqlite:///...``,
    ``postgresql+psycopg://...``) as Optuna's RDB storage with heartbeats every ``heartbeat_s``
    seconds (a trial silent for :data:`HEARTBEAT_GRACE` of them is failed and handed to
    ``takeovers``), else a journal file (``url`` a path, default ``sweeps/<study>.journal``)."""
    if url and "://" in url:
        import sqlalchemy.exc

        shown = store.redact(url)
        for attempt in range(1, SCHEMA_ATTEMPTS + 1):
            try:
                with _experimental_accepted():
                    return RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=HEARTBEAT_GRACE * heartbeat_s,
                                      heartbeat_stale_trial_callback=takeovers), shown
            except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:  # ImportError: the URL's driver is missing
                # Workers started together on an empty database all create Optuna's tables and types;
                # on PostgreSQL all but one are refused (a duplicate key in pg_type, or `type
                # "studydirection" already exists`). They exist then: the next try finds them.
                created_meanwhile = isinstance(exc, sqlalchemy.exc.IntegrityError) or (
                    isinstance(exc, sqlalchemy.exc.ProgrammingError) and "already exists" in str(exc))
                if not created_meanwhile or attempt == SCHEMA_ATTEMPTS:
                    raise _unavailable(shown, exc) from None
                time.sleep(0.5 * attempt)
    path = Path(url) if url else repo / SWEEPS_FOLDER / f"{study}.journal"
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = path.relative_to(repo) if path.is_relative_to(repo) else path
    return JournalStorage(JournalFileBackend(str(path))), str(shown)


def beats(where: Any) -> bool:
    """Whether ``where`` records heartbeats (a database storage), so lost workers are noticed."""
    return isinstance(where, RDBStorage) and where.get_heartbeat_interval() is not None


def fail_lost_trials(study: Study) -> None:
    """Optuna's ``fail_stale_trials``: running trials whose worker stopped beating are told FAIL
    (by one worker only: the storage refuses a second) and their params queued again."""
    with _experimental_accepted():
        fail_stale_trials(study)


def retried_from(trial: FrozenTrial) -> int | None:
    """The number of the lost trial whose params ``trial`` runs again, if it does."""
    return trial.system_attrs.get("failed_trial")


def retried_away(trials: Sequence[FrozenTrial]) -> set[int]:
    """The numbers of lost trials whose params another trial runs again: they do not count
    towards the study's size."""
    return {number for trial in trials for number in trial.system_attrs.get("retry_history", [])}


def _create_study(name: str, where: Any, shown: str, search: BaseSampler, direction: str) -> Study:
    """``optuna.create_study``, its storage failing as one line naming it (``shown``, redacted)."""
    import sqlalchemy.exc

    try:
        return optuna.create_study(study_name=name, storage=where, sampler=search, direction=direction,
                                   load_if_exists=True)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:  # ImportError: the URL's driver is not installed
        raise _unavailable(shown, exc) from None


def open_study(name: str, where: Any, shown: str, maximize: bool, search: BaseSampler,
               identity: dict[str, str]) -> tuple[Study, bool]:
    """Create study ``name`` in ``where``, or load it; and whether it existed. A loaded study must
    optimize the same way and carry the same ``identity`` (variant, metric) in its user attrs."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # bplab prints its own line per trial
    direction = "maximize" if maximize else "minimize"
    study = _create_study(name, where, shown, search, direction)
    existed = bool(study.get_trials(deepcopy=False)) or bool(study.user_attrs)
    if study.direction.name.lower() != direction:
        raise StudyMismatch(f"study {name} in {shown} is set to {study.direction.name.lower()}, "
                            f"not {direction}: give it another --study name")
    for key, value in identity.items():
        found = study.user_attrs.get(key)
        if found is None:
            study.set_user_attr(key, value)
        elif found != value:
            raise StudyMismatch(f"study {name} in {shown} was started with {key} {found}, not {value}: "
                                "give this sweep another --study name")
    return study, existed


def importances(study: Study) -> tuple[dict[str, float] | None, str]:
    """Each parameter's importance (fANOVA, seeded) and a line saying it, or ``None`` and why not."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, (f"parameter importance needs at least 2 complete trials; the study has {len(complete)}")
    try:
        found = optuna.importance.get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as exc:
        return None, f"parameter importance could not be computed: {exc}"
    found = {name: float(value) for name, value in found.items()}
    return found, "parameter importance (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in found.items())


def importance_figure(study: Study, metric: str) -> Figure:
    """Optuna's bar chart of the parameter importances for ``metric`` (needs :func:`importances`
    to succeed)."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization.matplotlib import plot_param_importances

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), target_name=metric)
    axes.set_title(f"{study.study_name}: importance for {metric} (fANOVA)", loc="left")
    figure = axes.figure
    figure.set_size_inches(7, 1.5 + 0.5 * len(study.best_trial.params))
    figure.tight_layout()
    return figure
