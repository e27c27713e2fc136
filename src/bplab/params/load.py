"""Typed, validated view of params.yaml.

Every stage loads params.yaml once through :func:`load_params` and passes the resulting objects
on; nothing downstream reads the raw dict. Unknown keys, wrong types and impossible values are
rejected here, before any work is done or any MLflow run is opened, with messages that name the
full dotted key (``train.mnist_mlp.lrr``) and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from bplab.errors import ParamsError
from bplab.params.schema import SCHEDULE_NAMES, DatasetList, Params, params_model
from bplab.params.yaml12 import read_yaml


def _union_member(annotation: Any, tag: Any) -> type[BaseModel] | None:
    """The member of a tagged union (``scheduler``) whose ``name`` is ``tag``, if ``annotation`` is one."""
    for member in getattr(annotation, "__args__", ()):
        if isinstance(member, type) and issubclass(member, BaseModel):
            field = member.model_fields.get("name")
            if field is not None and tag in getattr(field.annotation, "__args__", ()):
                return member
    return None


def _unwrap(annotation: Any, discriminator: Any) -> Any:
    """What a field's values are validated as, for :func:`_walk`: ``X | None`` as ``X``, and a
    tagged union (``scheduler``) as ``("union", members)``."""
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    if type(None) in getattr(annotation, "__args__", ()) and len(args) == 1:
        annotation = args[0]
    metadata = getattr(annotation, "__metadata__", ())
    if discriminator or any(getattr(m, "discriminator", None) for m in metadata):
        return ("union", getattr(annotation, "__origin__", annotation))
    return annotation


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
    """``loc`` less the tags of tagged unions (pydantic puts ``step`` in ``scheduler.step.gamma``),
    and the type found at its end, walking the model tree."""
    current: Any = model
    kept: list[Any] = []
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            current = None if field is None else _unwrap(field.annotation, field.discriminator)
        elif isinstance(current, tuple):  # the tag: a params user never writes it as a key
            current = _union_member(current[1], part)
            continue
        else:  # dict[str, Model]: the key is a user's name, the value type continues the walk
            args = getattr(current, "__args__", ())
            current = args[-1] if args else None
        kept.append(part)
    return tuple(kept), current


def _describe(error: dict[str, Any], root: type[BaseModel]) -> str:
    raw_loc = tuple(part for part in error["loc"] if not str(part).startswith(("function-", "lax-", "strict-")))
    loc, _ = _walk(root, raw_loc)
    key = ".".join(str(part) for part in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        _, parent = _walk(root, raw_loc[:-1])
        allowed = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else None
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{key}: unknown key{hint}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    if error["type"] == "union_tag_invalid":
        return f"{key}.name: {error['ctx']['tag']!r} is not one of {', '.join(SCHEDULE_NAMES)}"
    if error["type"] == "union_tag_not_found":
        return f"{key}.name: required key is missing (one of {', '.join(SCHEDULE_NAMES)})"
    got = error.get("input")
    shown = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
    return f"{key}: {error['msg']}{shown}"


def _validated(model: type[BaseModel], raw: dict[str, Any], source: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = sorted({_describe(err, model) for err in exc.errors()})
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(f"  {line}" for line in lines)) from None


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping; raise :class:`ParamsError` naming each bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    names = tuple(_validated(DatasetList, raw, source).datasets)
    try:
        model = params_model(names)
    except ParamsError as exc:
        raise ParamsError(f"{source} is invalid:\n  {exc}") from None
    return _validated(model, raw, source)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; the single entry point every stage uses."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ParamsError(f"cannot read {path}: {exc.strerror}") from None
    try:
        raw = read_yaml(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, str(path))
