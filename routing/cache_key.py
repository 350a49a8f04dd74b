"""Response-cache keys: which requests may be cached, and the hash that names their answer.

Pure: the gateway (gateway/cache/response.py) reads headers and stores; this module only decides.

A key is the SHA-256 of a canonical form of the request (sorted-key JSON of every field
that can change the answer) under a namespace that names the route's configuration and
the tenant scope. Fields that cannot change the answer (`stream_options`, `user`,
`metadata`, …) are dropped so that, say, two users of one key share entries; anything
unknown is kept, since an unknown field might change the answer and a wrong hit is worse
than a miss.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# Request fields that never change the answer itself. `stream` is not here: a stream entry
# holds SSE chunks and a non-stream one a JSON body, so the two never serve each other.
IGNORED_FIELDS = frozenset(
    {
        "stream_options",  # include_usage only adds the usage chunk: see the gateway
        "user",
        "metadata",
        "store",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",
        "model",  # the route name is in the namespace; aliases of one route share entries
    }
)

# Why a request is not looked up / not stored (x-farebox-cache: BYPASS and the metric).
SAMPLED = "sampled"
MULTIPLE = "n>1"

# The OpenAI API's default temperature: a request that sets none is sampled.
DEFAULT_TEMPERATURE = 1.0


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """What a route allows into its cache (from its `cache:` config)."""

    sampled: bool = False
    multiple_choices: bool = False


def refusal(payload: Mapping[str, Any], policy: KeyPolicy) -> str | None:
    """Why this request must not be cached under `policy`, or None if it may be."""
    if not policy.sampled:
        temperature = payload.get("temperature", DEFAULT_TEMPERATURE)
        if temperature is None:
            temperature = DEFAULT_TEMPERATURE
        if not isinstance(temperature, int | float) or temperature > 0:
            return SAMPLED
    if not policy.multiple_choices:
        n = payload.get("n")
        if n is not None and n != 1:
            return MULTIPLE
    return None


def _text_parts(content: Any) -> Any:
    """`[{"type": "text", "text": "hi"}]` asks exactly what `"hi"` asks: one form for both."""
    if (
        isinstance(content, list)
        and len(content) == 1
        and isinstance(content[0], dict)
        and content[0].get("type") == "text"
        and set(content[0]) == {"type", "text"}
    ):
        return content[0]["text"]
    return content


def canonical(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The request as the cache compares it: ignored fields dropped, text parts folded."""
    out = {k: v for k, v in payload.items() if k not in IGNORED_FIELDS}
    out["stream"] = payload.get("stream") is True
    if out["stream"]:
        # The usage chunk is part of the replayed bytes, so it is part of the entry.
        options = payload.get("stream_options")
        out["include_usage"] = isinstance(options, dict) and options.get("include_usage") is True
    messages = out.get("messages")
    if isinstance(messages, list):
        out["messages"] = [
            {**m, "content": _text_parts(m["content"])}
            if isinstance(m, dict) and "content" in m
            else m
            for m in messages
        ]
    return out


def _digest(value: Any) -> str:
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(data).hexdigest()


def namespace(route: str, config: Mapping[str, Any]) -> str:
    """Names a route's entries by its configuration: any change to the route (or to the
    deployments it uses, passed in `config`) starts a fresh namespace, so answers produced
    under the old configuration are never served again (they expire on their TTL)."""
    return f"{route}:{_digest(config)[:16]}"


def scope_id(scope: str, key: str | None, team: str | None) -> str:
    """Whose entries a request may read and write. `key` and `team` fall back to a shared
    anonymous scope only when auth is off (then there are no tenants to keep apart)."""
    if scope == "route":
        return "*"
    if scope == "team":
        return f"t:{team}" if team is not None else f"k:{key}"
    return f"k:{key}"


def exact_key(ns: str, scope: str, payload: Mapping[str, Any]) -> str:
    return f"{ns}:{scope}:{_digest(canonical(payload))}"


def last_user_text(payload: Mapping[str, Any]) -> str | None:
    """The text of the last user turn (what the semantic cache embeds), or None when the
    request has none as plain text (then it is cached exactly only)."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        prompt = payload.get("prompt")
        return prompt if isinstance(prompt, str) and prompt.strip() else None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    content = _text_parts(last.get("content"))
    return content if isinstance(content, str) and content.strip() else None


def context_key(ns: str, scope: str, payload: Mapping[str, Any]) -> str:
    """Everything but the last user turn: a semantic hit needs this to be identical (same
    system prompt, history, tools and parameters), only the question may be paraphrased."""
    shape = canonical(payload)
    if isinstance(shape.get("messages"), list):
        shape["messages"] = shape["messages"][:-1]
    else:
        shape.pop("prompt", None)
    return f"{ns}:{scope}:ctx:{_digest(shape)}"


# --- semantic mode: what is embedded, and what no embedding similarity may override -------

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def semantic_text(text: str) -> str:
    """The question as the semantic cache embeds it: case, spacing and closing punctuation
    say nothing about what is asked (measured: "How do I…?" and "how do i…" go from 0.93 to
    1.0), while every other character is kept — "2 + 2" and "2 - 2" differ."""
    return " ".join(text.lower().split()).strip(" ?!.")


def may_share_answer(query: str, cached: str) -> bool:
    """Guards on top of the similarity, for what a bag-of-words embedding cannot see.

    Different numbers ask different questions ("is 7 prime" / "is 9 prime": 0.94), and the
    same words in another order usually swap roles ("5 km to miles" / "5 miles to km":
    similarity 1.0). Both texts are `semantic_text` forms.
    """
    if _NUMBER.findall(query) != _NUMBER.findall(cached):
        return False
    words, others = query.split(), cached.split()
    return words == others or sorted(words) != sorted(others)
