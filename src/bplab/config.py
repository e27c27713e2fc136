"""Typed, validated view of params.yaml.

Every stage loads params.yaml once through :func:`load_params` and passes the resulting objects
on; nothing downstream reads the raw dict. Unknown keys, wrong types and impossible values are
rejected here, before any work is done or any MLflow run is opened, with messages that name the
full dotted key (``train.mnist_mlp.lrr``) and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bplab.errors import ParamsError

DATASETS = ("mnist", "boston", "flower")
Dataset = Literal["mnist", "boston", "flower"]
OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop"]
InitName = Literal["default", "normal", "uniform", "constant", "xavier", "kaiming"]
ArchName = Literal[
    "logreg", "twolayer", "seq_net", "module_net", "mnist_net", "batch_net",
    "mlp_model", "mlp_model2", "test_net",
]

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class _Strict(BaseModel):
    """Base for every params section: unknown keys are errors, no silent type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- data -----------------------------------------------------------------------------------

class FetchPolicy(_Strict):
    """How hard a download tries each source before moving to the next."""

    retries: PositiveInt = 3
    backoff_s: NonNegativeFloat = 1.0
    timeout_s: PositiveFloat = 30.0


class MnistDownload(FetchPolicy):
    mirrors: list[AnyUrl] = Field(min_length=1)

    @field_validator("mirrors", mode="before")
    @classmethod
    def _urls_from_strings(cls, value: Any) -> Any:
        # strict mode would refuse plain YAML strings for AnyUrl; parse them explicitly.
        if isinstance(value, list):
            return [AnyUrl(v) if isinstance(v, str) else v for v in value]
        return value


class MnistPreprocess(_Strict):
    mean: float = 0.5
    std: PositiveFloat = 0.5
    train_limit: PositiveInt | None = None
    test_limit: PositiveInt | None = None


class MnistData(_Strict):
    download: MnistDownload
    preprocess: MnistPreprocess = MnistPreprocess()


class BostonSource(_Strict):
    """One place to get the Boston table, and the layout its bytes come in."""

    url: str = Field(min_length=1)
    format: Literal["statlib", "csv"]


BOSTON_FEATURES = (
    "CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX", "PTRATIO", "B", "LSTAT",
)
BOSTON_TARGET = "MEDV"


class BostonDownload(FetchPolicy):
    sources: list[BostonSource] = Field(min_length=1)


class BostonPreprocess(_Strict):
    test_size: Fraction = 0.2
    split_seed: int = 42
    drop_features: list[Literal[BOSTON_FEATURES]] = []  # type: ignore[valid-type]

    @field_validator("drop_features")
    @classmethod
    def _keep_at_least_one(cls, value: list[str]) -> list[str]:
        if len(set(value)) >= len(BOSTON_FEATURES):
            raise ValueError("cannot drop every feature")
        return value


class BostonData(_Strict):
    download: BostonDownload
    preprocess: BostonPreprocess = BostonPreprocess()


class FlowerDownload(_Strict):
    """Parameters of the tutorial's two-class flower generator."""

    n_points: PositiveInt = 400
    petals: PositiveInt = 4
    noise: NonNegativeFloat = 0.2
    seed: int = 1
    test_points: PositiveInt = 400
    test_seed: int = 2

    @model_validator(mode="after")
    def _distinct_seeds(self) -> FlowerDownload:
        if self.seed == self.test_seed:
            raise ValueError("test_seed must differ from seed, or the test points repeat the training points")
        return self

    @field_validator("n_points", "test_points")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even: the flower has two classes of equal size")
        return value


class FlowerPreprocess(_Strict):
    standardize: bool = False


class FlowerData(_Strict):
    download: FlowerDownload = FlowerDownload()
    preprocess: FlowerPreprocess = FlowerPreprocess()


class DataParams(_Strict):
    mnist: MnistData
    boston: BostonData
    flower: FlowerData = FlowerData()


# --- training --------------------------------------------------------------------------------

# How many hidden widths each architecture takes: (at least, at most); None = no upper bound.
HIDDEN_LAYERS: dict[str, tuple[int, int | None]] = {
    "logreg": (0, 0), "twolayer": (1, 1), "seq_net": (1, None), "module_net": (1, 1),
    "mnist_net": (1, None), "batch_net": (2, 2), "mlp_model": (2, 2), "mlp_model2": (1, None),
    "test_net": (1, 1),
}


class ModelSpec(_Strict):
    """Which tutorial network to build and its sizes; input/output widths come from the data."""

    arch: ArchName
    hidden: list[PositiveInt] = []
    init_scale: PositiveFloat = 0.01  # only twolayer: the tutorial's randn(...) * 0.01

    @model_validator(mode="after")
    def _hidden_fits_arch(self) -> ModelSpec:
        least, most = HIDDEN_LAYERS[self.arch]
        if len(self.hidden) < least or (most is not None and len(self.hidden) > most):
            wanted = f"exactly {least}" if least == most else f"at least {least}"
            raise ValueError(f"hidden: {self.arch} takes {wanted} hidden width(s), got {self.hidden}")
        return self


class VariantParams(_Strict):
    """One model variant of the tutorials: model, loss (from the dataset), optimizer, schedule."""

    dataset: Dataset
    model: ModelSpec
    epochs: PositiveInt
    batch_size: PositiveInt | None = None
    eval_batch_size: PositiveInt | None = None
    shuffle: bool = True
    lr: PositiveFloat
    optimizer: OptimizerName = "sgd"
    momentum: NonNegativeFloat = 0.0
    weight_decay: NonNegativeFloat = 0.0
    init: InitName = "default"
    param_groups: dict[str, PositiveFloat] = {}


class TrackingParams(_Strict):
    """How much of a training run MLflow records (``history/<variant>.csv`` keeps every epoch)."""

    # Longer runs log every k-th epoch (plus the first and last) so that at most this many points
    # per metric go to the store: 10000 epochs x 5 metrics cost MLflow's sqlite store ~4 s of CPU,
    # and its UI draws a few hundred points per curve anyway. None logs every epoch.
    max_epoch_points: PositiveInt | None = 1000


class Params(_Strict):
    """The whole of params.yaml."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tracking: TrackingParams = TrackingParams()
    data: DataParams
    train: dict[str, VariantParams] = {}

    @field_validator("train")
    @classmethod
    def _variant_names(cls, value: dict[str, VariantParams]) -> dict[str, VariantParams]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"variant name {name!r} must be letters, digits and _ (it names stages and runs)")
        return value

    def variant(self, name: str) -> VariantParams:
        """``train.<name>``, or a :class:`ParamsError` listing the variants there are."""
        try:
            return self.train[name]
        except KeyError:
            raise ParamsError(f"train.{name}: no such variant in params.yaml; known: {', '.join(self.train)}") from None


# --- loading ---------------------------------------------------------------------------------

class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float, as YAML 1.2 and DVC's ``-S`` do."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Field names valid at ``loc`` (the parent of an unknown key), walking the model tree."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        else:  # dict[str, Model]: the key is a user's name, the value type continues the walk
            args = getattr(current, "__args__", ())
            current = args[-1] if args else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _describe(error: dict[str, Any], root: type[BaseModel]) -> str:
    loc = tuple(part for part in error["loc"] if not str(part).startswith(("function-", "lax-", "strict-")))
    key = ".".join(str(part) for part in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(root, loc[:-1])
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{key}: unknown key{hint}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    got = error.get("input")
    shown = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
    return f"{key}: {error['msg']}{shown}"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping; raise :class:`ParamsError` naming each bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = sorted({_describe(err, Params) for err in exc.errors()})
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(f"  {line}" for line in lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; the single entry point every stage uses."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ParamsError(f"cannot read {path}: {exc.strerror}") from None
    try:
        raw = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, str(path))
