"""Normalized litellm answers match OpenAI's OpenAPI spec even where litellm's own objects
leave out what the spec requires (tests/openapi.py reads the shared spec)."""

from __future__ import annotations

from typing import Any

from gateway.providers import normalize
from tests.openapi import CHAT, CHUNK, check

# What litellm's Gemini / Vertex AI transformation builds from `logprobsResult`: no
# `refusal`, `bytes: None` (model_dump of its ChoiceLogprobs).
GEMINI_LOGPROBS = {
    "content": [
        {
            "token": "Hi",
            "bytes": None,
            "logprob": -0.1,
            "top_logprobs": [{"token": "Hi", "bytes": None, "logprob": -0.1}],
        }
    ]
}
HEAD: dict[str, Any] = {"id": "c1", "created": 1, "model": "gemini-x", "system_fingerprint": None}


def test_answer_logprobs_get_their_refusal_key() -> None:
    raw = {
        **HEAD,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi"},
                "logprobs": GEMINI_LOGPROBS,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    body = normalize.response(raw)
    check(CHAT, body)
    assert body["choices"][0]["logprobs"]["refusal"] is None
    assert body["choices"][0]["logprobs"]["content"] == GEMINI_LOGPROBS["content"]


def test_chunk_logprobs_get_their_refusal_key() -> None:
    raw = {
        **HEAD,
        "choices": [
            {
                "index": 0,
                "delta": {"content": "Hi"},
                "logprobs": GEMINI_LOGPROBS,
                "finish_reason": None,
            }
        ],
    }
    [chunk] = normalize.chunks(raw)
    check(CHUNK, chunk)
    assert chunk["choices"][0]["logprobs"]["refusal"] is None
