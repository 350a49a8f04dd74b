"""A compact JSON Schema validator: the draft 2020-12 subset LLM structured outputs use.

``jsonschema`` is not a dependency, and quality gates only need what OpenAI strict mode
and tool ``parameters`` schemas contain, so this is a small interpreter over the schema
dict.  A schema is checked once (:func:`check_schema`, or building a :class:`Schema`), so
validation itself can trust keyword shapes and stay a straight walk: linear in the
instance, with resolved ``$ref``s and frozen ``enum`` sets cached on the :class:`Schema`.

Supported keywords: ``type`` (a name or a list; ``integer`` accepts ``1.0``; booleans are
never numbers), ``enum``, ``const``, ``nullable`` (OpenAPI 3.0: ``null`` is accepted),
``properties``, ``required``, ``additionalProperties`` (bool or schema),
``patternProperties``, ``propertyNames``, ``minProperties``/``maxProperties``,
``dependentRequired``, ``items`` (schema, or a draft-7 list with ``additionalItems``),
``prefixItems``, ``contains``, ``minItems``/``maxItems``, ``uniqueItems``,
``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum`` (numbers, or draft-4
booleans), ``multipleOf``, ``minLength``/``maxLength`` (code points), ``pattern``
(Python ``re.search``), ``format`` (``date``, ``date-time`` and ``email`` checked loosely,
others ignored), ``allOf``/``anyOf``/``oneOf``/``not``, ``if``/``then``/``else`` and local
``$ref`` (``#``, ``#/$defs/…``, ``#/definitions/…``, any JSON pointer into the document).
Unknown keywords are ignored.  Boolean schemas (``true``/``false``) work anywhere.

Errors read ``$.items[2].name: expected string, got number``; a schema this module cannot
use becomes the single error ``schema error: …`` instead of an exception.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, Final
from urllib.parse import unquote

from routing.json_schema_check import SchemaError, check_schema, resolve_pointer
from routing.json_values import format_ok, freeze, is_type, multiple_of, show, type_name

__all__ = ["MAX_ERRORS", "Schema", "SchemaError", "check_schema", "type_name", "validate"]

MAX_ERRORS: Final = 10
#: Deeper than this (instance nesting plus ``$ref`` hops) is reported, not recursed into,
#: so a hostile document cannot hit Python's recursion limit.
_MAX_DEPTH: Final = 150
#: Longest summary of one failed anyOf/oneOf branch inside a message.
_BRANCH_TEXT: Final = 160
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


class _Path:
    """A linked path from the root, rendered only when an error needs it."""

    __slots__ = ("key", "parent")

    def __init__(self, parent: _Path | None, key: str | int) -> None:
        self.parent = parent
        self.key = key


def render_path(path: _Path | None) -> str:
    keys: list[str | int] = []
    while path is not None:
        keys.append(path.key)
        path = path.parent
    out = ["$"]
    for key in reversed(keys):
        if isinstance(key, int):
            out.append(f"[{key}]")
        elif _IDENT.match(key):
            out.append(f".{key}")
        else:
            out.append(f"[{json.dumps(key, ensure_ascii=False)}]")
    return "".join(out)


class _Full(Exception):
    """The error cap was reached: unwind without walking the rest of the instance."""


class _Errors:
    __slots__ = ("items", "limit")

    def __init__(self, limit: int) -> None:
        self.items: list[str] = []
        self.limit = limit

    def add(self, path: _Path | None, message: str) -> None:
        self.items.append(f"{render_path(path)}: {message}")
        if len(self.items) >= self.limit:
            raise _Full


def _type_text(kind: Any) -> str:
    return " or ".join(kind) if isinstance(kind, list) else str(kind)


class Schema:
    """A checked schema, reusable across validations (caches refs and enum sets).

    Raises :class:`SchemaError` (a ``ValueError``) when the schema is unusable.
    """

    __slots__ = ("_active", "_branches", "_enums", "_refs", "root")

    def __init__(self, schema: Any) -> None:
        problems = check_schema(schema)
        if problems:
            raise SchemaError(problems)
        self.root = schema
        self._refs: dict[str, Any] = {}
        self._enums: dict[int, frozenset[Any]] = {}
        # (id(schema), id(instance)) pairs being evaluated: a $ref loop that does not
        # descend into the instance would otherwise recurse forever.
        self._active: set[tuple[int, int]] = set()
        # First error of (id(sub-schema), id(container)) branch evaluations: without it,
        # nested anyOf/oneOf/not over recursive refs re-walk subtrees exponentially often.
        self._branches: dict[tuple[int, int], list[str]] = {}

    def validate(self, instance: Any, *, max_errors: int = MAX_ERRORS) -> list[str]:
        """Error messages (at most ``max_errors``); ``[]`` when ``instance`` is valid."""
        out = _Errors(max(1, max_errors))
        # A per-call view sharing the caches: the loop guard must not leak between
        # validations (a Schema on a route is shared by concurrent requests and threads).
        run = Schema.__new__(Schema)
        run.root, run._refs, run._enums = self.root, self._refs, self._enums
        run._active, run._branches = set(), {}
        try:
            run._node(instance, self.root, None, out, 0)
        except _Full:
            pass
        except RecursionError:
            out.items.append("$: nested too deeply to validate")
        except Exception as exc:  # a gate must never crash the request it is judging
            out.items.append(f"schema error: could not apply the schema ({exc!r})")
        return out.items

    def _is_valid(self, instance: Any, schema: Any, path: _Path | None, depth: int) -> bool:
        return not self._branch(instance, schema, path, depth)

    def _branch(self, instance: Any, schema: Any, path: _Path | None, depth: int) -> list[str]:
        """The first error of ``instance`` against a sub-schema, in its own collector."""
        # Only containers are memoised: a scalar is cheap to judge, and equal scalars may
        # share one object at different paths (the cached message would name the wrong one).
        key = (id(schema), id(instance)) if isinstance(instance, list | dict) else None
        if key is not None and key in self._branches:
            return self._branches[key]
        sub = _Errors(1)
        with contextlib.suppress(_Full):
            self._node(instance, schema, path, sub, depth)
        if key is not None:
            self._branches[key] = sub.items
        return sub.items

    def _node(self, value: Any, schema: Any, path: _Path | None, out: _Errors, depth: int) -> None:
        if schema is True:
            return
        if schema is False:
            out.add(path, "no value is allowed here")
            return
        if depth > _MAX_DEPTH:
            out.add(path, "nested too deeply to validate")
            return
        if value is None and schema.get("nullable") is True:
            return
        ref = schema.get("$ref")
        if ref is not None:
            self._ref(value, ref, path, out, depth)
        kind = schema.get("type")
        if kind is not None:
            kinds = kind if isinstance(kind, list) else [kind]
            if not any(is_type(value, k) for k in kinds):
                out.add(path, f"expected {_type_text(kind)}, got {type_name(value)}")
                return  # the other keywords would only repeat the mismatch
        if "enum" in schema and freeze(value) not in self._enum(schema):
            options = ", ".join(show(v, 30) for v in schema["enum"][:12])
            out.add(path, f"{show(value)} is not one of [{options}]")
        if "const" in schema and freeze(value) != freeze(schema["const"]):
            out.add(path, f"must be {show(schema['const'])}")
        if isinstance(value, str):
            self._string(value, schema, path, out)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self._number(value, schema, path, out)
        elif isinstance(value, list):
            self._array(value, schema, path, out, depth)
        elif isinstance(value, dict):
            self._object(value, schema, path, out, depth)
        self._combinators(value, schema, path, out, depth)

    def _enum(self, schema: dict[str, Any]) -> frozenset[Any]:
        found = self._enums.get(id(schema))
        if found is None:
            found = self._enums[id(schema)] = frozenset(freeze(v) for v in schema["enum"])
        return found

    def _ref(self, value: Any, ref: str, path: _Path | None, out: _Errors, depth: int) -> None:
        target = self._refs.get(ref)
        if target is None:
            target = self._refs[ref] = resolve_pointer(self.root, unquote(ref[1:]))
        key = (id(target), id(value))
        if key in self._active:
            return  # a loop that never descends: already being judged further up
        self._active.add(key)
        try:
            self._node(value, target, path, out, depth + 1)
        finally:
            self._active.discard(key)

    def _string(self, value: str, schema: dict[str, Any], path: _Path | None, out: _Errors) -> None:
        low, high = schema.get("minLength"), schema.get("maxLength")
        if low is not None and len(value) < low:
            out.add(path, f"expected at least {low:g} characters, got {len(value)}")
        if high is not None and len(value) > high:
            out.add(path, f"expected at most {high:g} characters, got {len(value)}")
        pattern = schema.get("pattern")
        if pattern is not None and not _regex(pattern).search(value):
            out.add(path, f"{show(value)} does not match pattern {show(pattern)}")
        fmt = schema.get("format")
        if isinstance(fmt, str) and not format_ok(value, fmt):
            out.add(path, f"{show(value)} is not a valid {fmt}")

    def _number(
        self, value: int | float, schema: dict[str, Any], path: _Path | None, out: _Errors
    ) -> None:
        low, high = schema.get("minimum"), schema.get("maximum")
        xlow, xhigh = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if xlow is True:  # draft 4: a flag on "minimum"
            xlow, low = low, None
        if xhigh is True:
            xhigh, high = high, None
        if low is not None and value < low:
            out.add(path, f"must be >= {low}, got {value}")
        if xlow is not None and xlow is not False and value <= xlow:
            out.add(path, f"must be > {xlow}, got {value}")
        if high is not None and value > high:
            out.add(path, f"must be <= {high}, got {value}")
        if xhigh is not None and xhigh is not False and value >= xhigh:
            out.add(path, f"must be < {xhigh}, got {value}")
        step = schema.get("multipleOf")
        if step is not None and not multiple_of(value, step):
            out.add(path, f"must be a multiple of {step}, got {value}")

    def _array(
        self, value: list[Any], schema: dict[str, Any], path: _Path | None, out: _Errors, depth: int
    ) -> None:
        low, high = schema.get("minItems"), schema.get("maxItems")
        if low is not None and len(value) < low:
            out.add(path, f"expected at least {low:g} items, got {len(value)}")
        if high is not None and len(value) > high:
            out.add(path, f"expected at most {high:g} items, got {len(value)}")
        items, rest = schema.get("items"), None
        prefix = schema.get("prefixItems")
        if isinstance(items, list):  # draft 7 tuple form
            prefix, rest = items, schema.get("additionalItems")
        else:
            rest = items
        done = 0
        if prefix is not None:
            done = min(len(prefix), len(value))
            for i in range(done):
                self._node(value[i], prefix[i], _Path(path, i), out, depth + 1)
        if rest is not None:
            for i in range(done, len(value)):
                self._node(value[i], rest, _Path(path, i), out, depth + 1)
        if schema.get("uniqueItems") is True:
            seen: dict[Any, int] = {}
            for i, item in enumerate(value):
                first = seen.setdefault(freeze(item), i)
                if first != i:
                    out.add(path, f"items must be unique (items {first} and {i} are equal)")
                    break
        contains = schema.get("contains")
        if contains is not None:
            hits = sum(1 for i, v in enumerate(value) if self._is_valid(v, contains, path, depth))
            least, most = schema.get("minContains", 1), schema.get("maxContains")
            if hits < least:
                out.add(path, f"expected at least {least:g} items matching 'contains', got {hits}")
            if most is not None and hits > most:
                out.add(path, f"expected at most {most:g} items matching 'contains', got {hits}")

    def _object(
        self,
        value: dict[str, Any],
        schema: dict[str, Any],
        path: _Path | None,
        out: _Errors,
        depth: int,
    ) -> None:
        for name in schema.get("required", ()):
            if name not in value:
                out.add(path, f"missing required property {show(name)}")
        low, high = schema.get("minProperties"), schema.get("maxProperties")
        if low is not None and len(value) < low:
            out.add(path, f"expected at least {low:g} properties, got {len(value)}")
        if high is not None and len(value) > high:
            out.add(path, f"expected at most {high:g} properties, got {len(value)}")
        for name, needed in schema.get("dependentRequired", {}).items():
            if name in value:
                for other in needed:
                    if other not in value:
                        out.add(path, f"property {show(name)} requires {show(other)}")
        props = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        extra = schema.get("additionalProperties")
        names = schema.get("propertyNames")
        for key, item in value.items():
            where = _Path(path, key)
            matched = key in props
            if matched:
                self._node(item, props[key], where, out, depth + 1)
            for pattern, sub in patterns.items():
                if _regex(pattern).search(key):
                    matched = True
                    self._node(item, sub, where, out, depth + 1)
            if not matched and extra is not None:
                if extra is False:
                    out.add(path, f"unexpected property {show(key)}")
                else:
                    self._node(item, extra, where, out, depth + 1)
            if names is not None:
                for problem in self._branch(key, names, None, depth + 1):
                    out.add(path, f"property name {show(key)} is invalid ({problem[3:]})")

    def _combinators(
        self, value: Any, schema: dict[str, Any], path: _Path | None, out: _Errors, depth: int
    ) -> None:
        for sub in schema.get("allOf", ()):
            self._node(value, sub, path, out, depth + 1)
        any_of = schema.get("anyOf")
        if any_of is not None:
            firsts = []
            for sub in any_of:
                errors = self._branch(value, sub, path, depth + 1)
                if not errors:
                    break
                firsts.append(errors[0])
            else:
                out.add(path, _no_match("anyOf", firsts, render_path(path), value))
        one_of = schema.get("oneOf")
        if one_of is not None:
            firsts, hits = [], 0
            for sub in one_of:
                errors = self._branch(value, sub, path, depth + 1)
                if errors:
                    firsts.append(errors[0])
                else:
                    hits += 1
                    if hits > 1:
                        out.add(path, "matches more than one oneOf alternative")
                        break
            if hits == 0:
                out.add(path, _no_match("oneOf", firsts, render_path(path), value))
        if "not" in schema and self._is_valid(value, schema["not"], path, depth + 1):
            out.add(path, "must not match the 'not' schema")
        if "if" in schema:
            then = "then" if self._is_valid(value, schema["if"], path, depth + 1) else "else"
            if then in schema:
                self._node(value, schema[then], path, out, depth + 1)


def _no_match(keyword: str, firsts: list[str], here: str, value: Any) -> str:
    """Summarise why no alternative matched: the first error of each branch."""
    local = [e[len(here) + 2 :] if e.startswith(here + ": ") else e for e in firsts]
    got = f", got {type_name(value)}"
    if local and all(e.startswith("expected ") and e.endswith(got) for e in local):
        # Typical nullable unions: say "expected string or null, got integer".
        return "expected " + " or ".join(e[9 : -len(got)] for e in local) + got
    return f"matches no {keyword} alternative: " + "; ".join(_limited(local, 3))


def _limited(items: list[str], keep: int) -> Iterator[str]:
    # Clipped: nested unions would otherwise nest their summaries, growing geometrically.
    for item in items[:keep]:
        yield item if len(item) <= _BRANCH_TEXT else item[: _BRANCH_TEXT - 1] + "…"
    if len(items) > keep:
        yield f"… {len(items) - keep} more"


def validate(instance: Any, schema: Any, *, max_errors: int = MAX_ERRORS) -> list[str]:
    """Validate a parsed JSON value; never raises.

    Returns at most ``max_errors`` messages, ``[]`` when valid.  An unusable schema gives
    the single message ``"schema error: <first problem>"``.
    """
    try:
        checked = Schema(schema)
    except SchemaError as exc:
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        return [f"schema error: {exc.problems[0]}{more}"]
    return checked.validate(instance, max_errors=max_errors)
