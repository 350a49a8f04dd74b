"""Value normalization for structured answers: map spelling variants to canonical values.

Models spell the same fact many ways (``"México"``, ``"United Mexican States"``,
``"mexico "``); downstream systems want one.  A *value map* sends variants to a canonical
value, compared after :func:`fold` (case, accents and whitespace ignored), and applies at
a *field path* inside the parsed JSON answer:

* ``governing_law`` — the ``governing_law`` key of the top-level object;
* ``parties[].country`` — ``country`` in every element of the ``parties`` array;
* ``tags[]`` — every string element of ``tags``; ``[].name`` — ``name`` in every element
  of a top-level array.

Only string values exactly at the path are mapped; missing keys, other types and values
not in the map are left alone (a schema ``enum`` is what rejects unknown values).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "EACH",
    "FieldMap",
    "apply_field_maps",
    "compile_field_maps",
    "fold",
    "load_value_map",
    "load_value_maps",
    "parse_field_path",
]

#: The path step meaning "every element of this array" (keys cannot contain brackets).
EACH: Final = "[]"
_PART = re.compile(r"^([^.\[\]]*)((?:\[\])*)$")


def fold(text: str) -> str:
    """The comparison key: casefolded, accents dropped (NFKD), whitespace collapsed."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.split())


def parse_field_path(path: str) -> tuple[str, ...]:
    """``"parties[].country"`` → ``("parties", EACH, "country")``; ``ValueError`` if bad."""
    steps: list[str] = []
    for i, part in enumerate(path.split(".")):
        m = _PART.match(part.strip())
        if m is None or (not m.group(1) and not (i == 0 and m.group(2))):
            raise ValueError(f"bad field path {path!r}: use keys, '.' and '[]' (a.b[].c)")
        if m.group(1):
            steps.append(m.group(1))
        steps.extend([EACH] * (len(m.group(2)) // 2))
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class FieldMap:
    """One field path and its ``{folded variant: canonical}`` table."""

    path: str
    steps: tuple[str, ...]
    table: Mapping[str, str]


def compile_field_maps(maps: Mapping[str, Mapping[str, str]]) -> tuple[FieldMap, ...]:
    """Check paths and fold variant keys; ``ValueError`` on a bad path or a conflict
    (two variants that fold alike but name different canonical values)."""
    out: list[FieldMap] = []
    for path, mapping in maps.items():
        if not isinstance(path, str) or not isinstance(mapping, Mapping):
            raise ValueError(f"normalize: {path!r} must map a field path to {{variant: value}}")
        table: dict[str, str] = {}
        for variant, canonical in mapping.items():
            if not isinstance(variant, str) or not isinstance(canonical, str):
                raise ValueError(f"normalize {path}: variants and values must be strings")
            key = fold(variant)
            if table.get(key, canonical) != canonical:
                raise ValueError(
                    f"normalize {path}: {variant!r} maps to both {table[key]!r} and {canonical!r}"
                )
            table[key] = canonical
        out.append(FieldMap(path, parse_field_path(path), table))
    return tuple(out)


def _apply(node: Any, steps: tuple[str, ...], i: int, table: Mapping[str, str]) -> int:
    """Map strings at ``steps[i:]`` below ``node`` in place; returns how many changed."""
    step = steps[i]
    keys: range | list[str]
    if step == EACH:
        if not isinstance(node, list):
            return 0
        keys = range(len(node))
    else:
        if not isinstance(node, dict) or step not in node:
            return 0
        keys = [step]
    changed = 0
    last = i == len(steps) - 1
    for key in keys:
        value = node[key]
        if not last:
            changed += _apply(value, steps, i + 1, table)
        elif isinstance(value, str):
            canonical = table.get(fold(value))
            if canonical is not None and canonical != value:
                node[key] = canonical
                changed += 1
    return changed


def apply_field_maps(document: Any, maps: tuple[FieldMap, ...]) -> int:
    """Normalize a parsed JSON document in place; returns the number of values changed."""
    return sum(_apply(document, m.steps, 0, m.table) for m in maps if m.steps)


def load_value_map(data: Any, where: str = "") -> tuple[dict[str, str], list[str]]:
    """``{canonical: [variants…]}`` (parsed YAML) → ``({folded variant: canonical}, problems)``.

    The canonical value is its own variant.  A variant may be a single string; ``null``
    means no variants beyond the canonical value.  Problems (bad shapes, a variant claimed
    by two canonical values) are reported, not raised, so a config loader can list them all.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(data, Mapping):
        return {}, [f"{prefix}expected a mapping of canonical value to a list of variants"]
    table: dict[str, str] = {}
    problems: list[str] = []
    for canonical, variants in data.items():
        if not isinstance(canonical, str) or not canonical.strip():
            problems.append(f"{prefix}canonical value {canonical!r} must be a non-empty string")
            continue
        if variants is None:
            variants = []
        elif isinstance(variants, str):
            variants = [variants]
        if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
            problems.append(f"{prefix}variants of {canonical!r} must be a list of strings")
            continue
        for variant in [canonical, *variants]:
            key = fold(variant)
            if not key:
                problems.append(f"{prefix}variant {variant!r} of {canonical!r} is blank")
            elif table.setdefault(key, canonical) != canonical:
                problems.append(
                    f"{prefix}{variant!r} is a variant of both {table[key]!r} and {canonical!r}"
                )
    return table, problems


def load_value_maps(data: Any) -> tuple[dict[str, dict[str, str]], list[str]]:
    """``{field_path: {canonical: [variants…]}}`` → ``({field_path: table}, problems)``."""
    if not isinstance(data, Mapping):
        return {}, ["normalize: expected a mapping of field path to value map"]
    maps: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for path, spec in data.items():
        if not isinstance(path, str):
            problems.append(f"normalize: field path {path!r} must be a string")
            continue
        try:
            parse_field_path(path)
        except ValueError as exc:
            problems.append(f"normalize: {exc}")
            continue
        table, found = load_value_map(spec, f"normalize {path}")
        maps[path] = table
        problems.extend(found)
    return maps, problems
