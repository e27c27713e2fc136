"""The datasets the pipeline knows: each is one module ``bplab/data/<name>.py`` defining ``DATASET``.

params.yaml's ``datasets:`` list names them; the data stages iterate over it (DVC ``foreach``),
config validation reads each one's params model, training reads its task, evaluate its pictures
and champion metric, and ``compare`` its columns. Adding a dataset is adding a module here and its
entries in params.yaml.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bplab.errors import ParamsError
from bplab.params.metrics import SCORES, higher_is_better
from bplab.paths import NAME_LIMIT, name_too_long

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure
    from pydantic import BaseModel

    from bplab.data.fetch import FetchedFile
    from bplab.data.processed import Prepared

TaskKind = Literal["multiclass", "binary", "regression"]  # the keys of bplab.params.metrics.SCORES
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Champion:
    """The score that picks the registry's ``champion``: read on the validation split
    (:attr:`selection`), reported on the test split (:attr:`reported`)."""

    score: str  # one of the task's bplab.params.metrics.SCORES: acc, rmse, ...

    @property
    def selection(self) -> str:
        """The metric versions are ranked by: the score on the validation split."""
        return f"val_{self.score}"

    @property
    def reported(self) -> str:
        """The same score on the test split: shown beside the selection, never used to choose."""
        return f"test_{self.score}"

    @property
    def higher_is_better(self) -> bool:
        """Which way the score improves."""
        return higher_is_better(self.score)


@dataclass(frozen=True)
class Evaluation:
    """A trained model's outputs on the test split, as NumPy arrays, for a dataset's pictures."""

    variant: str
    x: np.ndarray
    y: np.ndarray
    outputs: np.ndarray
    predict: Callable[[np.ndarray], np.ndarray]  # the model on any rows (float32), for decision maps


@dataclass(frozen=True)
class Dataset:
    """What the pipeline needs to know about one dataset.

    ``params`` validates ``data.<name>`` of params.yaml and has two sections, ``download`` and
    ``preprocess``, passed to the functions of the same names. ``preview`` draws the picture
    logged by the preprocess stage; ``evaluation_pictures`` those evaluate writes to ``plots/<variant>``.
    """

    task: TaskKind
    params: type[BaseModel]
    download: Callable[[Path, Any], list[FetchedFile]]
    preprocess: Callable[[Path, Any], Prepared]
    preview: Callable[[Prepared, Path], Figure]
    evaluation_pictures: Callable[[Evaluation], Mapping[str, Figure]]
    champion: Champion  # the score of the best model: chosen on the validation split, reported on the test split
    compare_columns: tuple[str, ...]  # what `bplab.commands.compare` shows of each run, besides params

    def __post_init__(self) -> None:
        if self.champion.score not in SCORES[self.task]:
            raise ValueError(f"champion score {self.champion.score!r} is not one of {SCORES[self.task]}")

    @property
    def test_metrics(self) -> tuple[str, ...]:
        """The final metrics evaluate reports on the test split for this dataset's kind of task."""
        return tuple(f"test_{score}" for score in SCORES[self.task])

    @property
    def val_metrics(self) -> tuple[str, ...]:
        """The same scores on the validation split: what the champion and sweeps choose by."""
        return tuple(f"val_{score}" for score in SCORES[self.task])


def known() -> list[str]:
    """The datasets this checkout defines: the modules of :mod:`bplab.data` that define ``DATASET``."""
    import pkgutil

    import bplab.data

    found = []
    for module in pkgutil.iter_modules(bplab.data.__path__):
        try:
            dataset(module.name)
        except ParamsError:
            continue
        found.append(module.name)
    return found


@cache
def dataset(name: str) -> Dataset:
    """The :class:`Dataset` that module ``bplab.data.<name>`` defines, or a :class:`ParamsError`."""
    where = f"src/bplab/data/{name}.py"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ParamsError(f"datasets: {name!r} is not a dataset name (lower-case letters, digits and _)")
    if len(name) > NAME_LIMIT:
        raise ParamsError(f"datasets: {name_too_long(name)}")
    try:
        module = importlib.import_module(f"bplab.data.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"bplab.data.{name}":
            raise
        raise ParamsError(f"datasets: no dataset {name!r}: {where} does not exist "
                          "(a dataset is one module there that defines DATASET)") from None
    found = getattr(module, "DATASET", None)
    if not isinstance(found, Dataset):
        raise ParamsError(f"datasets: {where} is not a dataset module: it defines no DATASET")
    return found
