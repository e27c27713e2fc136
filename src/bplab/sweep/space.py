"""What ``bplab sweep`` searches: ``--param KEY=KIND:ARGS`` specs, checked against params.yaml.

A spec names a key under ``train.<variant>.`` (``lr``, ``param_groups.hidden``), or a full dotted
params key whose first part is a top-level key of params.yaml (``seed``,
``data.boston.preprocess.test_size``), and a distribution:

- ``log:LO:HI``     a float drawn on a log scale (0 < LO < HI)
- ``float:LO:HI``   a float drawn uniformly
- ``int:LO:HI``     an integer from LO to HI, both included
- ``choice:A,B,C``  one of the values, each read as a YAML scalar (``32``, ``1e-3``, ``sgd``, ``null``)

Each spec is checked before anything runs: the ends of its range (or each of its choices) are set
in a copy of params.yaml, which must then validate, so an unknown key or an impossible value is
refused with the key named, as the stages would refuse it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bplab.errors import BplabError, ParamsError
from bplab.params.load import parse_params
from bplab.params.schema import Params
from bplab.params.yaml12 import read_yaml
from bplab.sweep.dvc_queue import hydra_value

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

KINDS = ("log", "float", "int", "choice")
FORMAT = "expected KEY=KIND:ARGS with KIND log:LO:HI, float:LO:HI, int:LO:HI or choice:A,B,...; e.g. lr=log:1e-4:0.1"
TOP_LEVEL = frozenset(Params.model_fields)  # seed, device, tracking, datasets, data, train
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_WORD = re.compile(r"[A-Za-z0-9_.+-]+")  # a string choice DVC's -S takes unquoted


class SearchSpaceError(BplabError):
    """A ``--param`` spec that cannot be parsed, or whose values params.yaml would refuse."""


@dataclass(frozen=True)
class Dimension:
    """One ``--param``: the name Optuna knows it by, the params key it sets, and its distribution."""

    spec: str  # as typed, for messages
    name: str  # as typed before "=": Optuna's parameter name (lr, batch_size)
    key: str  # the full dotted params key (train.boston_module.lr)
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution of this dimension."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high))
        return FloatDistribution(float(self.low), float(self.high), log=self.kind == "log")

    def extremes(self) -> tuple[Any, ...]:
        """The values that stand for the whole range when checking it: both ends, or every choice."""
        return self.choices if self.kind == "choice" else (self.low, self.high)


def _fail(spec: str, why: str) -> SearchSpaceError:
    return SearchSpaceError(f"--param {spec!r}: {why}")


def scalar(text: str) -> Any:
    """``text`` read as a YAML 1.2 scalar, as DVC's ``-S`` reads it: ``1e-3`` is a float, ``sgd`` a string."""
    try:
        value = read_yaml(text)
    except yaml.YAMLError:
        value = text
    return text if isinstance(value, (list, dict)) else value


def _number(spec: str, text: str, kind: str) -> float | int:
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        raise _fail(spec, f"{text!r} is not {'an integer' if kind == 'int' else 'a number'}") from None


def _range(spec: str, kind: str, args: str) -> tuple[float | int, float | int]:
    parts = args.split(":")
    if len(parts) != 2:
        raise _fail(spec, f"{kind} takes two bounds, {kind}:LO:HI")
    low, high = (_number(spec, part, kind) for part in parts)
    if not low < high:
        raise _fail(spec, f"the low bound {low} must be below the high bound {high}")
    if kind == "log" and low <= 0:
        raise _fail(spec, f"a log range needs a positive low bound, not {low}")
    return low, high


def _choices(spec: str, args: str) -> tuple[Any, ...]:
    texts = args.split(",")
    if not args or not all(texts):
        raise _fail(spec, "choice takes one or more values separated by commas, choice:A,B,C")
    values = tuple(scalar(text) for text in texts)
    for text, value in zip(texts, values):
        if isinstance(value, str) and not _WORD.fullmatch(value):
            raise _fail(spec, f"the choice {text!r} is not a plain word (letters, digits, _ . + -)")
    if len(set(map(repr, values))) != len(values):
        raise _fail(spec, "a choice is listed twice")
    return values


def read_params(path: Path) -> tuple[dict[str, Any], Params]:
    """params.yaml as read (the mapping) and validated."""
    try:
        raw = read_yaml(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"cannot read {path}: {exc}") from None
    return raw, parse_params(raw, str(path.name))


def full_key(name: str, variant: str) -> str:
    """``name``'s full params key: as given when it starts with a top-level key, else under ``train.<variant>``."""
    return name if name.split(".")[0] in TOP_LEVEL else f"train.{variant}.{name}"


def parse(spec: str, variant: str) -> Dimension:
    """One ``--param`` spec, parsed (not yet checked against params.yaml: see :func:`check`)."""
    name, sep, distribution = spec.partition("=")
    name = name.strip()
    kind, _, args = distribution.partition(":")
    if not sep or not _KEY.fullmatch(name):
        raise _fail(spec, FORMAT)
    if kind not in KINDS:
        raise _fail(spec, f"unknown distribution {kind!r}; {FORMAT}")
    key = full_key(name, variant)
    if kind == "choice":
        return Dimension(spec, name, key, kind, choices=_choices(spec, args))
    low, high = _range(spec, kind, args)
    return Dimension(spec, name, key, kind, low, high)


def _set(tree: dict[str, Any], dim: Dimension, value: Any) -> None:
    """Set ``dim.key`` in ``tree``, making missing mappings on the way (``param_groups.hidden``)."""
    *parents, leaf = dim.key.split(".")
    for depth, part in enumerate(parents):
        child = tree.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parents[: depth + 1])
            raise _fail(dim.spec, f"{where} is {child!r} in params.yaml, not a mapping: set it there first")
        tree = child
    tree[leaf] = value


def present(raw: dict[str, Any], key: str) -> bool:
    """Whether params.yaml (``raw``) holds ``key`` already (DVC's ``-S`` then overrides it, else adds it)."""
    tree: Any = raw
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _reaches(key: str, variant: str, dataset: str) -> bool:
    """Whether a change of ``key`` can change what ``train@variant`` and ``evaluate@variant`` produce."""
    return key in {"seed", "device"} or key.startswith((f"train.{variant}.", f"data.{dataset}."))


def check(dimensions: list[Dimension], raw: dict[str, Any], variant: str) -> None:
    """Refuse a spec whose key the variant's stages do not read, a key given twice, or a value
    that params.yaml would refuse (an unknown key, a wrong type, an impossible value)."""
    seen: dict[str, str] = {}
    dataset = raw["train"][variant]["dataset"]
    for dim in dimensions:
        if dim.key in seen:
            raise _fail(dim.spec, f"{dim.key} is already swept by --param {seen[dim.key]!r}")
        seen[dim.key] = dim.spec
        if not _reaches(dim.key, variant, dataset):
            raise _fail(dim.spec, f"{dim.key} does not reach train@{variant} or evaluate@{variant}; "
                                  f"sweep keys under train.{variant}, data.{dataset}, or seed")
        for value in dim.extremes():
            trial = copy.deepcopy(raw)
            _set(trial, dim, value)
            try:
                parse_params(trial)
            except ParamsError as exc:
                lines = [line.strip() for line in str(exc).splitlines()[1:]]  # "train.boston_module.lrr: unknown key"
                detail = next((line for line in lines if line.startswith(dim.key)), lines[-1] if lines else str(exc))
                raise _fail(dim.spec, f"with {value!r}: {detail}") from None


def override(key: str, value: Any, exists: bool) -> str:
    """``key=value`` for ``dvc exp run -S`` (``++key=value`` adds a key params.yaml lacks)."""
    return f"{'' if exists else '++'}{key}={hydra_value(value, key)}"
