"""Structured answers that are wrong on purpose, for the ``invalid_json_rate`` directive.

Quality gates must tell two failures apart, so spoiled answers alternate between them:

* even serials (0, 2, …): *truncated JSON* — the first half of the serialized document
  (never valid: an object or array missing its closing bracket), as a model that ran out
  of tokens but still reported ``stop`` would send;
* odd serials (1, 3, …): *valid JSON that breaks the schema* — the document without its
  first required property, or, when the schema requires none, the document wrapped in an
  array (structured outputs and tool arguments must be objects).

The serial is the number of answers spoiled since the last ``/_reset``, so a test knows
exactly which kind the n-th spoiled answer is.
"""

from __future__ import annotations

from typing import Any

import orjson

from .content import resolve_ref

__all__ = ["spoil"]


def _required(schema: Any) -> list[str]:
    """Required property names of the top-level schema (through one local ``$ref``)."""
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        schema = resolve_ref(schema["$ref"], schema)
    required = schema.get("required") if isinstance(schema, dict) else None
    return [n for n in required if isinstance(n, str)] if isinstance(required, list) else []


def spoil(document: Any, schema: Any, serial: int) -> str:
    """The spoiled text standing in for ``document`` (which satisfies ``schema``)."""
    text = orjson.dumps(document).decode()
    if serial % 2 == 0:
        if text[:1] in ("{", "["):
            return text[: max(1, len(text) // 2)]
        return "[" + text  # a scalar's prefix may still parse ("12" → "1"): leave it open
    if isinstance(document, dict):
        for name in _required(schema):
            if name in document:
                broken = {k: v for k, v in document.items() if k != name}
                return orjson.dumps(broken).decode()
    return orjson.dumps([document]).decode()
