"""Strict validation of user-written YAML against pydantic models, with positions.

Every model used for user input forbids unknown keys. Errors are translated into
:class:`Problem` objects that point at the offending key or value and, for a
misspelled key, suggest the closest allowed one.
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar

from fedmsg_notify.config.redact import is_secret_key, redact
from fedmsg_notify.config.yaml_positions import LocatedDocument, PathKey, Problem
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every model a user writes: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


def did_you_mean(word: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk ``loc`` through nested models to list the keys allowed where an extra key sits."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = _unwrap(field.annotation)
        elif isinstance(part, (int, str)):
            current = _unwrap_item(current)
            if current is None:
                return []
        # Sequence / mapping indexes keep the element type.
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", None)
    if args:
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
        for arg in args:
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def _unwrap_item(annotation: Any) -> Any:
    return _unwrap(annotation) if getattr(annotation, "__args__", None) else None


def _describe(error: Any) -> str:
    return redact(_describe_raw(error))


def _describe_raw(error: Any) -> str:
    kind = error["type"]
    msg = str(error["msg"])
    if kind == "missing":
        return f"missing required key '{error['loc'][-1]}'"
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    if msg.startswith("Assertion failed, "):
        return msg[len("Assertion failed, ") :]
    if msg.startswith("Input should be "):
        msg = msg[len("Input should be ") :]
    got = error.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if any(is_secret_key(part) for part in error.get("loc", ())):
        # A mistyped password must not end up on the terminal or in a CI log.
        shown = "a value that is not shown (secret)"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"expected {msg[0].lower() + msg[1:]}, got {shown}"


def problems_from_validation(
    exc: ValidationError,
    doc: LocatedDocument,
    base: PathKey = (),
    model: type[BaseModel] | None = None,
) -> list[Problem]:
    problems: list[Problem] = []
    for error in exc.errors():
        loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and "[" in part))
        path = (*base, *loc)
        where = ".".join(str(p) for p in path) or "top level"
        if error["type"] == "extra_forbidden":
            key = str(loc[-1])
            allowed = _allowed_keys(model, loc) if model is not None else []
            hint = did_you_mean(key, allowed)
            expected = f" (expected one of: {', '.join(sorted(allowed))})" if allowed and not hint else ""
            parent = ".".join(str(p) for p in path[:-1]) or "top level"
            problems.append(Problem(doc.where(path, key=True), f"unknown key '{key}' in {parent}{hint}{expected}"))
        elif error["type"] == "missing":
            problems.append(
                Problem(
                    doc.where(path[:-1]), f"{_describe(error)} in {'.'.join(str(p) for p in path[:-1]) or 'top level'}"
                )
            )
        else:
            problems.append(Problem(doc.where(path), f"{where}: {_describe(error)}"))
    return problems


def validate(model: type[M], data: Any, doc: LocatedDocument, base: PathKey = ()) -> tuple[M | None, list[Problem]]:
    """Validate ``data`` (found at ``base`` in ``doc``) against ``model``."""
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, problems_from_validation(exc, doc, base, model)
