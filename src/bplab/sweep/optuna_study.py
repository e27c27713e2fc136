"""The Optuna side of ``bplab sweep``: the study's storage, its seeded sampler, and what it found.

``import optuna`` takes a while: :mod:`bplab.sweep.search` imports this module only when a sweep runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.importance import FanovaImportanceEvaluator
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.storages import JournalStorage
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


def storage(url: str | None, repo: Path, study: str) -> tuple[Any, str]:
    """The study's Optuna storage and how to show it: a database URL as given (``sqlite:///...``,
    ``postgresql://...``), else a journal file (``url`` a path, default ``sweeps/<study>.journal``)."""
    if url and "://" in url:
        return url, store.redact(url)
    path = Path(url) if url else repo / SWEEPS_FOLDER / f"{study}.journal"
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = path.relative_to(repo) if path.is_relative_to(repo) else path
    return JournalStorage(JournalFileBackend(str(path))), str(shown)


class StorageUnavailable(BplabError):
    """The study's database storage cannot be opened (unreachable, refused, or a bad URL)."""


def _create_study(name: str, where: Any, shown: str, search: BaseSampler, direction: str) -> Study:
    """``optuna.create_study``, its storage failing as one line naming it (``shown``, redacted)."""
    import sqlalchemy.exc

    try:
        return optuna.create_study(study_name=name, storage=where, sampler=search, direction=direction,
                                   load_if_exists=True)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:  # ImportError: the URL's driver is not installed
        raise StorageUnavailable(f"cannot open the sweep storage {shown}: {store.database_reason(exc)}") from None


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
