"""JSON value helpers for :mod:`routing.json_schema`: type names, JSON equality, formats."""

from __future__ import annotations

import json
import math
import re
from datetime import date
from typing import Any

__all__ = ["format_ok", "freeze", "is_type", "multiple_of", "show", "type_name"]

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def type_name(value: Any) -> str:
    """The JSON type of a parsed value, as error messages name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def is_type(value: Any, kind: str) -> bool:
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "integer":
        if isinstance(value, float):
            return value.is_integer()
        return isinstance(value, int) and not isinstance(value, bool)
    return type_name(value) == kind


def freeze(value: Any) -> Any:
    """A hashable stand-in with JSON equality: ``1 == 1.0`` but ``true != 1``."""
    if value is None:
        return ("z",)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, list | tuple):
        return ("a", tuple(freeze(v) for v in value))
    if isinstance(value, dict):
        return ("o", frozenset((k, freeze(v)) for k, v in value.items()))
    return ("s", value) if isinstance(value, str) else ("?", repr(value))


def show(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def multiple_of(value: int | float, step: int | float) -> bool:
    if isinstance(value, int) and isinstance(step, int):
        return value % step == 0
    try:
        quotient = value / step
    except OverflowError:
        return True  # beyond float range: cannot judge, so do not blame the answer
    if not math.isfinite(quotient):
        return True
    return abs(quotient - round(quotient)) <= 1e-9 * max(1.0, abs(quotient))


def format_ok(value: str, fmt: str) -> bool:
    try:
        if fmt == "date":
            return bool(_DATE.match(value)) and bool(date.fromisoformat(value))
        if fmt == "date-time":
            m = _DATE_TIME.match(value)
            return (
                m is not None
                and bool(date.fromisoformat(m.group(1)))
                and int(m.group(2)) < 24
                and int(m.group(3)) < 60
                and int(m.group(4)) <= 60  # leap second
            )
    except ValueError:
        return False
    if fmt == "email":
        return bool(_EMAIL.match(value))
    return True
