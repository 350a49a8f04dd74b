"""Static checks of a JSON Schema document, so :mod:`routing.json_schema` can trust it.

Every keyword the validator reads is checked here once per schema (not once per instance
node), which is what lets validation stay a tight walk.  Keywords the validator ignores
are not checked: an unknown or unsupported keyword never makes a schema unusable.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

__all__ = ["SchemaError", "check_schema", "resolve_pointer"]

_TYPES = frozenset({"null", "boolean", "integer", "number", "string", "array", "object"})
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_ONE = ("additionalProperties", "additionalItems", "contains", "not", "if", "then")
_SCHEMA_ONE_MORE = ("else", "propertyNames")
_SCHEMA_LISTS = ("prefixItems", "allOf", "anyOf", "oneOf")
_COUNTS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
#: Past this many sub-schemas a document is not an LLM output schema; stop looking.
_MAX_NODES = 20_000


class SchemaError(ValueError):
    """The schema cannot be used; ``problems`` says why (JSON-pointer located)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer() and value >= 0
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def resolve_pointer(root: Any, pointer: str) -> Any:
    """Follow a JSON pointer (``""`` or ``"/a/b"``, already percent-decoded) into ``root``.

    Raises ``LookupError`` when it leads nowhere.
    """
    node = root
    if not pointer:
        return node
    if not pointer.startswith("/"):
        raise LookupError(pointer)
    for raw in pointer[1:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise LookupError(pointer)
    return node


def _children(node: dict[str, Any], where: str) -> Iterator[tuple[Any, str]]:
    for key in _SCHEMA_MAPS:
        value = node.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                yield sub, f"{where}/{key}/{_escape(str(name))}"
    for key in (*_SCHEMA_ONE, *_SCHEMA_ONE_MORE):
        if key in node:
            yield node[key], f"{where}/{key}"
    for key in _SCHEMA_LISTS:
        value = node.get(key)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                yield sub, f"{where}/{key}/{i}"
    items = node.get("items")
    if isinstance(items, list):
        for i, sub in enumerate(items):
            yield sub, f"{where}/items/{i}"
    elif "items" in node:
        yield items, f"{where}/items"


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _pattern_problem(pattern: Any) -> str | None:
    if not isinstance(pattern, str):
        return "must be a string"
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        return f"is not a valid regular expression ({exc})"
    return None


def _node_problems(node: dict[str, Any], root: Any) -> Iterator[str]:
    """``"keyword …"`` problems of one schema object (not its sub-schemas)."""
    if "type" in node:
        kind = node["type"]
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds or not all(isinstance(k, str) and k in _TYPES for k in kinds):
            yield f"'type' must be one of {sorted(_TYPES)} or a list of them, got {kind!r}"
    for key in _SCHEMA_MAPS:
        if key in node and not isinstance(node[key], dict):
            yield f"'{key}' must be an object"
    for key in _SCHEMA_LISTS:
        if key in node and not (isinstance(node[key], list) and node[key]):
            yield f"'{key}' must be a non-empty array"
    required = node.get("required")
    if "required" in node and not (
        isinstance(required, list) and all(isinstance(n, str) for n in required)
    ):
        yield "'required' must be an array of strings"
    dependent = node.get("dependentRequired")
    if "dependentRequired" in node and not (
        isinstance(dependent, dict)
        and all(
            isinstance(v, list) and all(isinstance(n, str) for n in v) for v in dependent.values()
        )
    ):
        yield "'dependentRequired' must map names to arrays of strings"
    for key in _COUNTS:
        if key in node and not _is_count(node[key]):
            yield f"'{key}' must be a non-negative integer, got {node[key]!r}"
    for key in ("minimum", "maximum"):
        if key in node and not _is_number(node[key]):
            yield f"'{key}' must be a number, got {node[key]!r}"
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in node and not (_is_number(node[key]) or isinstance(node[key], bool)):
            yield f"'{key}' must be a number, got {node[key]!r}"
    step: Any = node.get("multipleOf")
    if "multipleOf" in node and not (_is_number(step) and step > 0):
        yield f"'multipleOf' must be a number > 0, got {step!r}"
    for key in ("uniqueItems", "nullable"):
        if key in node and not isinstance(node[key], bool):
            yield f"'{key}' must be a boolean"
    if "enum" in node and not isinstance(node["enum"], list):
        yield "'enum' must be an array"
    if "format" in node and not isinstance(node["format"], str):
        yield "'format' must be a string"
    if "pattern" in node:
        problem = _pattern_problem(node["pattern"])
        if problem:
            yield f"'pattern' {problem}"
    for name in (
        node.get("patternProperties", {}) if isinstance(node.get("patternProperties"), dict) else ()
    ):
        problem = _pattern_problem(name)
        if problem:
            yield f"'patternProperties' key {name!r} {problem}"
    if "$ref" in node:
        yield from _ref_problems(node["$ref"], root)


def _ref_problems(ref: Any, root: Any) -> Iterator[str]:
    if not isinstance(ref, str):
        yield "'$ref' must be a string"
    elif not ref.startswith("#"):
        yield f"'$ref' {ref!r} is not local (only '#…' references are supported)"
    else:
        try:
            target = resolve_pointer(root, unquote(ref[1:]))
        except LookupError:
            yield f"'$ref' {ref!r} does not resolve"
            return
        if not isinstance(target, dict | bool):
            yield f"'$ref' {ref!r} does not point at a schema"


def check_schema(schema: Any) -> list[str]:
    """Problems that make ``schema`` unusable (``[]`` when it is fine), pointer-located."""
    problems: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(schema, "#")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, bool):
            continue
        if not isinstance(node, dict):
            problems.append(f"{where}: a schema must be an object or a boolean")
            continue
        if id(node) in seen:
            continue  # shared (YAML anchors) or cyclic structures are walked once
        seen.add(id(node))
        if len(seen) > _MAX_NODES:
            problems.append(f"{where}: schema has more than {_MAX_NODES} sub-schemas")
            break
        problems.extend(f"{where}: {p}" for p in _node_problems(node, schema))
        stack.extend(reversed(list(_children(node, where))))
    return problems
