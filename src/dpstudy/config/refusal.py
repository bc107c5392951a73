"""A pydantic ValidationError of params.yaml as one line: the dotted key and what is allowed there.

pydantic reports every error at once, located by a path of field names, list indices and union
tags. A person fixes one at a time, so the line names the first in file order (within a block,
an unknown key before the fields, then the fields as declared), and says what the key may hold
in params.yaml's own words (true or false, an integer, one of ...), not Python's.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import Tag, ValidationError

from ..errors import UserError
from .models import as_float

_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}  # in the order a range is written
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dataclass_type": "a mapping",
}


class Spot(NamedTuple):
    """Where an error is: its dotted key, its place in file order, the type expected there (with
    its constraints) and the model whose field (or unknown key) it is."""

    key: str
    order: tuple
    hint: Any
    model: type | None


def refusal(exc: ValidationError, model: type, where: str) -> UserError:
    """The first error of ``exc`` (validating ``model`` from the block at ``where``) as one line."""
    spots = [(_locate(model, error["loc"]), error) for error in exc.errors(include_url=False)]
    spot, error = min(spots, key=lambda pair: pair[0].order)  # min keeps the first of equals
    return UserError(f"{where}{spot.key}: {_message(error, spot)}")


def _message(error: dict, spot: Spot) -> str:
    kind, value = error["type"], error["input"]
    base, meta = _strip(spot.hint)
    if kind in ("unexpected_keyword_argument", "invalid_key"):  # invalid_key: not a string
        return f"unknown key (allowed: {', '.join(f.name for f in dataclasses.fields(spot.model))})"
    if kind == "missing":
        return "missing (every key is required; see the repository's params.yaml)"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_describe(value)}"
    if kind == "list_type":
        return f"expected a list of {_type_name(typing.get_args(base)[0])}, got {_describe(value)}"
    if kind == "literal_error":
        return f"must be one of {', '.join(map(str, typing.get_args(base)))}, got {value!r}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "union_tag_not_found":
        options = [_type_name(option) for option in typing.get_args(base)]
        return f"expected {' or '.join(options)}, got {_describe(value)}"
    value = as_float(value) if base is float else value
    if kind == "finite_number":
        return f"must be a finite number, got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bounds = {op: getattr(m, op) for m in _constraints(meta) for op in _BOUNDS if hasattr(m, op)}
        allowed = " and ".join(f"{_BOUNDS[op]} {bounds[op]}" for op in _BOUNDS if op in bounds)
        return f"must be {allowed}, got {value!r}"
    return error["msg"]  # our own checks (a per-preset value, a repeated value) speak params.yaml already


def _locate(model: type, loc: tuple) -> Spot:
    """Follow ``loc`` from ``model``: field names (a dot each), list indices ([i]) and the tags of
    an ``_or_name`` union (no text: the key is the field's)."""
    hint, key, order, owner = model, "", [], None
    for part in loc:
        base, _ = _strip(hint)
        if dataclasses.is_dataclass(base):  # a key (any YAML scalar) of a block
            names = [f.name for f in dataclasses.fields(base)]
            key, owner = f"{key}.{part}", base
            order.append(names.index(part) if part in names else -1)  # an unknown key comes first
            hint = _hints(base).get(part)
        elif isinstance(part, int):
            key, hint = f"{key}[{part}]", typing.get_args(base)[0]
            order.append(part)
        else:
            hint = next(o for o in typing.get_args(base) if Tag(part) in _strip(o)[1])
    return Spot(key, tuple(order), hint, owner)


@functools.cache
def _hints(model: type) -> dict[str, Any]:
    return typing.get_type_hints(model, include_extras=True)


def _strip(hint: Any) -> tuple[Any, tuple]:
    """(type, its Annotated metadata)."""
    if typing.get_origin(hint) is Annotated:
        return hint.__origin__, hint.__metadata__
    return hint, ()


def _constraints(meta: tuple) -> list:
    """The annotated_types constraints (Gt, Ge, ...) among ``meta``, inside Field(...) too."""
    return [c for m in meta for c in getattr(m, "metadata", [m])]


def _type_name(hint: Any) -> str:
    base, _ = _strip(hint)
    if typing.get_origin(base) is list:
        return f"a list of {_type_name(typing.get_args(base)[0])}"
    if typing.get_origin(base) is Literal:
        return " | ".join(map(str, typing.get_args(base)))
    return getattr(base, "__name__", str(base))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {repr(value)[:60]}"
