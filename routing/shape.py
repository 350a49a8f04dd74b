"""What a request needs from a deployment, read from its body in one cheap pass.

No tokenizer here: the planner only needs estimates good enough to compare deployments,
so text is measured in UTF-8 bytes (calibrated to tokens per deployment in routing.live)
and the cacheable prefix — the leading system/developer messages, which providers cache —
is identified by a CRC of its text.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Per-message framing tokens (role, separators), as in the ledger's estimate.
PER_MESSAGE = 3
PER_IMAGE = 765


@dataclass(frozen=True, slots=True)
class RequestShape:
    request_id: str
    text_bytes: int  # message text, tool definitions included
    messages: int
    images: int
    max_output_tokens: int | None
    needs: frozenset[str]
    prefix_key: str | None  # what prompt-cache affinity keys on
    prefix_bytes: int
    sticky_key: str | None  # weighted routing: what keeps a client on one target


def _text_bytes(content: Any) -> tuple[int, int, set[str]]:
    """(bytes of text, images, capabilities) of one message content."""
    if isinstance(content, str):
        return len(content.encode()), 0, set()
    size, images, needs = 0, 0, set()
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                size += len(part["text"].encode())
            elif kind in ("image_url", "image"):
                images += 1
                needs.add("vision")
            elif kind in ("input_audio", "audio"):
                needs.add("audio")
    return size, images, needs


def request_shape(
    payload: Mapping[str, Any],
    request_id: str,
    sticky: str | None = None,
    header: str | None = None,
) -> RequestShape:
    """Measure a chat request. `sticky` is the route's sticky setting and `header` the
    value of the header it names, if any."""
    messages = payload.get("messages")
    total = images = count = prefix = 0
    needs: set[str] = set()
    prefix_parts: list[str] = []
    in_prefix = True
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            count += 1
            size, pictures, wanted = _text_bytes(message.get("content"))
            total += size
            images += pictures
            needs |= wanted
            if in_prefix and message.get("role") in ("system", "developer"):
                prefix += size
                content = message.get("content")
                prefix_parts.append(content if isinstance(content, str) else repr(content))
            else:
                in_prefix = False
    tools = payload.get("tools")
    if isinstance(tools, list) and tools:
        needs.add("tools")
        total += sum(len(repr(t)) for t in tools)  # repr ≈ compact JSON length, cheaper
    fmt = payload.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        needs.add("json_schema")
    cache_key = payload.get("prompt_cache_key")
    if isinstance(cache_key, str) and cache_key:
        prefix_key: str | None = "k:" + cache_key
    elif prefix_parts:
        joined = "\x1e".join(prefix_parts).encode()
        prefix_key = f"p:{zlib.crc32(joined):08x}:{len(joined)}"
    else:
        prefix_key = None
    return RequestShape(
        request_id=request_id,
        text_bytes=total,
        messages=count,
        images=images,
        max_output_tokens=_max_output(payload),
        needs=frozenset(needs),
        prefix_key=prefix_key,
        prefix_bytes=prefix,
        sticky_key=_sticky(payload, sticky, header),
    )


def _max_output(payload: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = payload.get(name)
        if type(value) is int and value > 0:
            return value
    return None


def _sticky(payload: Mapping[str, Any], sticky: str | None, header: str | None) -> str | None:
    if sticky is None:
        return None
    if sticky.startswith("header:"):
        return header or None
    value = payload.get(sticky)
    return value if isinstance(value, str) and value else None
