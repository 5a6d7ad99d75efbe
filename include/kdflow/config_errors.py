"""Validation messages that name the field and what it accepts, derived from the field's own type
and constraints (so a new field gets a good message without writing one)."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

_CONFLICT = "field_conflict"


def field_conflict(field: str, message: str, got: Any) -> PydanticCustomError:
    """An error a model validator finds in one of its fields (``field``: dotted, relative to that
    model), so the message names the field like any other, e.g. ``pipeline.cycles``."""
    return PydanticCustomError(_CONFLICT, "{message}", {"field": field, "message": message, "got": got})


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """Strip ``Optional`` and ``Annotated``: the bare type and the constraints met on the way."""
    metadata: list[Any] = []
    while True:
        args = get_args(annotation)
        if get_origin(annotation) is Annotated:
            annotation = args[0]
            for extra in args[1:]:
                metadata.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
        elif get_origin(annotation) in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
            annotation = next(a for a in args if a is not type(None))
        else:
            return annotation, metadata


def _field_type(field: FieldInfo) -> tuple[Any, list[Any]]:
    annotation, metadata = _unwrap(field.annotation)
    return annotation, [*field.metadata, *metadata]


def _field_spec(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, list[Any]] | None:
    """Type and constraints of the config field at an error's location (a list index or a dict key
    steps into the item type); None when the location is not a declared field."""
    model: Any = root
    annotation, metadata = None, []
    for part in loc:
        if model is not None:
            field = model.model_fields.get(str(part))
            if field is None:
                return None
            annotation, metadata = _field_type(field)
        elif get_origin(annotation) in (list, dict):
            annotation, metadata = _unwrap(get_args(annotation)[-1])
        else:
            return None
        plain = get_origin(annotation) is None and isinstance(annotation, type)
        model = annotation if plain and issubclass(annotation, BaseModel) else None
    return annotation, metadata


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_KINDS = {int: "an integer", float: "a number", str: "text", list: "a list", dict: "a mapping"}
_BOUNDS = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}


def allowed_values(annotation: Any, metadata: list[Any]) -> str | None:
    """What a field accepts, from its own type and constraints: ``must be an integer between 1
    and 20``, ``must be one of 'a', 'b'``, ``must be true or false``; None when there is nothing to say."""
    if get_origin(annotation) is Literal:
        return "must be one of " + ", ".join(repr(choice) for choice in get_args(annotation))
    if annotation is bool:
        return "must be true or false"
    kind = _KINDS.get(get_origin(annotation) or annotation)
    keys = (*_BOUNDS, "min_length", "max_length", "pattern")
    limits = {k: getattr(m, k) for m in metadata for k in keys if getattr(m, k, None) is not None}
    if "ge" in limits and "le" in limits:
        rules = [f"between {_num(limits['ge'])} and {_num(limits['le'])}"]
    else:
        rules = [f"{words} {_num(limits[k])}" for k, words in _BOUNDS.items() if k in limits]
    item = "character" if kind == "text" else "item"
    for key, words in (("min_length", "at least"), ("max_length", "at most")):
        if key in limits:
            rules.append(f"with {words} {limits[key]} {item}{'' if limits[key] == 1 else 's'}")
    if "pattern" in limits:
        rules.append(f"matching {limits['pattern']}")
    if kind is None:
        return None
    if not rules:
        return f"must be {kind}"
    joiner = " " if rules[0].startswith(("between", "with", "matching")) else ", "
    return f"must be {kind}{joiner}{' and '.join(rules)}"


def describe_field(field: FieldInfo) -> str | None:
    """:func:`allowed_values` of a declared field."""
    return allowed_values(*_field_type(field))


_OWN_MESSAGE = {"value_error", "assertion_error", "missing", "extra_forbidden", _CONFLICT}


def format_validation_error(exc: ValidationError, root: type[BaseModel]) -> str:
    """One line per bad field: its dotted name, what it accepts (derived from the field's own
    constraints) and the value it got."""
    lines = []
    for err in exc.errors():
        loc, kind, shown = tuple(err["loc"]), err["type"], f" (got {err.get('input')!r})"
        msg = err["msg"].removeprefix("Value error, ")
        if kind == _CONFLICT:
            loc += tuple(err["ctx"]["field"].split("."))
            shown = "" if err["ctx"]["got"] is None else f" (got {err['ctx']['got']!r})"
        elif kind == "extra_forbidden":
            msg, shown = "unknown key (check the spelling; see kdflow/defaults.yaml for the known keys)", ""
        elif kind == "missing":
            msg, shown = "is required", ""
        elif kind not in _OWN_MESSAGE and (spec := _field_spec(root, loc)) is not None:
            msg = allowed_values(*spec) or msg
        field = ".".join(str(p) for p in loc) or "config"
        lines.append(f"  - {field}: {msg}{shown}")
    return "invalid kdflow configuration:\n" + "\n".join(lines)
