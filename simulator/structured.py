"""Structured-output helpers shared by the wires: log probabilities and the JSON schema a
JSON-mode prompt describes.

Log probabilities are deterministic: the ``i``-th generated token has
``logprob(i) = -(1 + i % 7) / 100`` and its alternatives ``alt1``, ``alt2``, … follow one
natural-log unit apart, below it.  ``bytes`` are the token's UTF-8 bytes.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "MAX_COMPLETION_LOGPROBS",
    "MAX_TOP_LOGPROBS",
    "alternatives",
    "chat_logprobs",
    "completion_logprobs",
    "logprob",
    "prompt_schema",
    "token_logprob",
]

#: OpenAI's bounds: chat ``top_logprobs`` 0-20, legacy completions ``logprobs`` 0-5.
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
_JSON = json.JSONDecoder()
#: Keys that make a JSON object in a prompt look like a JSON schema rather than an example.
_SCHEMA_KEYS = ("properties", "$defs", "definitions", "items", "anyOf", "oneOf", "allOf")


def logprob(index: int) -> float:
    return -(1 + index % 7) / 100


def alternatives(token: str, index: int, top: int) -> list[tuple[str, float]]:
    """``top`` most likely tokens at one position, the generated one first (none for 0)."""
    chosen = logprob(index)
    return [(token, chosen) if k == 0 else (f"alt{k}", chosen - k) for k in range(top)]


def token_logprob(token: str, index: int, top: int) -> dict[str, Any]:
    """One entry of chat ``logprobs.content``."""
    return {
        "token": token,
        "logprob": logprob(index),
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": t, "logprob": p, "bytes": list(t.encode())}
            for t, p in alternatives(token, index, top)
        ],
    }


def chat_logprobs(pieces: list[str], top: int, start: int = 0) -> dict[str, Any]:
    """Chat ``choices[].logprobs`` for generated ``pieces`` (tokens ``start``, ``start+1``…)."""
    return {
        "content": [token_logprob(p, start + i, top) for i, p in enumerate(pieces)],
        "refusal": None,
    }


def completion_logprobs(pieces: list[str], top: int, start: int, offset: int) -> dict[str, Any]:
    """Legacy completions ``choices[].logprobs``: parallel arrays, ``top_logprobs`` as
    ``{token: logprob}`` maps, ``text_offset`` counted from ``offset`` characters."""
    offsets = []
    for piece in pieces:
        offsets.append(offset)
        offset += len(piece)
    return {
        "tokens": list(pieces),
        "token_logprobs": [logprob(start + i) for i in range(len(pieces))],
        "top_logprobs": [dict(alternatives(p, start + i, top)) for i, p in enumerate(pieces)],
        "text_offset": offsets,
    }


def _looks_like_schema(value: Any) -> bool:
    return isinstance(value, dict) and (
        value.get("type") == "object" or any(k in value for k in _SCHEMA_KEYS)
    )


def prompt_schema(texts: list[str]) -> dict[str, Any] | None:
    """The JSON schema a JSON-mode prompt spells out (instructor-style JSON mode puts
    ``json.dumps(Model.model_json_schema())`` in the system prompt), or None.

    The last schema-looking JSON object wins, so a later turn can ask for another shape.
    Only text that contains ``{`` is scanned, once, left to right.
    """
    found: dict[str, Any] | None = None
    for text in texts:
        position = text.find("{")
        while position >= 0:
            try:
                value, end = _JSON.raw_decode(text, position)
            except ValueError:
                position = text.find("{", position + 1)
                continue
            if _looks_like_schema(value):
                found = value
            position = text.find("{", end)
    return found
