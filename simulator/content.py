"""Deterministic content for the simulator: token counts, filler text, schema instances.

Prompt-token formula (the same everywhere, so tests can predict usage exactly):

* chat / Anthropic messages / Gemini contents / Bedrock Converse messages:
  ``ceil(C / 4) + 3 * M``, at least 1, where ``C`` is the total number of characters of all
  text content (string contents, ``text`` parts/blocks, Anthropic ``tool_result`` and
  Bedrock ``toolResult`` text, and the top-level ``system`` / ``systemInstruction``) and
  ``M`` the number of messages (a separate system prompt counts as one message);
* legacy completions: per prompt, ``ceil(chars / 4)`` for a string or ``len(tokens)`` for
  a token array; summed over prompts, at least 1;
* embeddings: the same per input item, summed, at least 1.
"""

from __future__ import annotations

import base64
import struct
import zlib
from functools import lru_cache
from typing import Any

__all__ = [
    "anthropic_prompt_tokens",
    "chat_prompt_tokens",
    "completion_prompts",
    "converse_prompt_tokens",
    "embedding_inputs",
    "embedding_vector",
    "encode_base64_floats",
    "fragments",
    "gemini_prompt_tokens",
    "message_tokens",
    "resolve_ref",
    "schema_instance",
    "text_segments",
    "word",
    "words",
]

_PER_MESSAGE = 3
_FRAGMENT = 4


def _text_chars(content: Any) -> int:
    """Characters of text in an OpenAI/Anthropic ``content`` value (string or parts)."""
    if isinstance(content, str):
        return len(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
                elif part.get("type") == "tool_result":
                    total += _text_chars(part.get("content"))
                elif isinstance(part.get("toolResult"), dict):
                    total += _text_chars(part["toolResult"].get("content"))
            elif isinstance(part, str):
                total += len(part)
    return total


def text_segments(content: Any) -> list[str]:
    """The text pieces :func:`_text_chars` counts, in order (to hash a cacheable prefix).

    A separate walk rather than the basis of ``_text_chars``: building lists on every
    request would cost the hot path, and only ``prompt_cache`` requests need the text.
    """
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)
                elif part.get("type") == "tool_result":
                    out += text_segments(part.get("content"))
                elif isinstance(part.get("toolResult"), dict):
                    out += text_segments(part["toolResult"].get("content"))
            elif isinstance(part, str):
                out.append(part)
    return out


def _ceil4(chars: int) -> int:
    return -(-chars // 4)


def message_tokens(chars: int, messages: int) -> int:
    """``ceil(chars / 4) + 3 * messages``: the prompt formula without its floor of 1."""
    return _ceil4(chars) + _PER_MESSAGE * messages


def chat_prompt_tokens(messages: list[Any]) -> int:
    """Prompt tokens of an OpenAI chat request (formula in the module docstring)."""
    chars = 0
    for message in messages:
        if isinstance(message, dict):
            chars += _text_chars(message.get("content"))
    return max(1, _ceil4(chars) + _PER_MESSAGE * len(messages))


def anthropic_prompt_tokens(system: Any, messages: list[Any]) -> int:
    """Prompt tokens of an Anthropic request, cache included (formula in the docstring)."""
    chars = _text_chars(system) if system else 0
    count = len(messages) + (1 if system else 0)
    for message in messages:
        if isinstance(message, dict):
            chars += _text_chars(message.get("content"))
    return max(1, _ceil4(chars) + _PER_MESSAGE * count)


def gemini_prompt_tokens(system_instruction: Any, contents: list[Any]) -> int:
    """Prompt tokens of a Gemini ``generateContent`` request (formula in the docstring)."""
    system_parts = system_instruction.get("parts") if isinstance(system_instruction, dict) else None
    chars = _text_chars(system_parts)
    count = len(contents) + (1 if system_parts else 0)
    for content in contents:
        if isinstance(content, dict):
            chars += _text_chars(content.get("parts"))
    return max(1, _ceil4(chars) + _PER_MESSAGE * count)


def converse_prompt_tokens(system: Any, messages: list[Any]) -> int:
    """Prompt tokens of a Bedrock Converse request (formula in the docstring)."""
    chars = _text_chars(system)
    count = len(messages) + (1 if chars else 0)
    for message in messages:
        if isinstance(message, dict):
            chars += _text_chars(message.get("content"))
    return max(1, _ceil4(chars) + _PER_MESSAGE * count)


def _is_token_array(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) for t in value)


def completion_prompts(prompt: Any) -> tuple[int, int] | None:
    """``(prompt_tokens, number_of_prompts)`` for a legacy completions ``prompt``.

    ``None`` when the value has none of the accepted shapes (string, list of strings,
    token array, list of token arrays).
    """
    if isinstance(prompt, str):
        return max(1, _ceil4(len(prompt))), 1
    if not isinstance(prompt, list) or not prompt:
        return None
    if _is_token_array(prompt):
        return max(1, len(prompt)), 1
    total = 0
    for item in prompt:
        if isinstance(item, str):
            total += _ceil4(len(item))
        elif _is_token_array(item):
            total += len(item)
        else:
            return None
    return max(1, total), len(prompt)


def embedding_inputs(value: Any) -> list[tuple[bytes, int]] | None:
    """``[(identity bytes, tokens)]`` per embedding input item, or ``None`` if malformed."""
    if isinstance(value, str):
        return [(value.encode(), max(1, _ceil4(len(value))))]
    if not isinstance(value, list) or not value:
        return None
    if _is_token_array(value):
        return [(repr(value).encode(), len(value))]
    out: list[tuple[bytes, int]] = []
    for item in value:
        if isinstance(item, str):
            out.append((item.encode(), _ceil4(len(item))))
        elif _is_token_array(item):
            out.append((repr(item).encode(), len(item)))
        else:
            return None
    return out


def embedding_vector(identity: bytes, dimensions: int) -> list[float]:
    """A unit-length vector derived only from the input, so equal inputs embed equally."""
    seed = zlib.crc32(identity)
    raw: list[float] = []
    state = seed or 1
    for _ in range(dimensions):
        # xorshift32: cheap, deterministic and spread enough for cosine-similarity tests.
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        raw.append(state / 2147483648.0 - 1.0)
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    # Round-trip through float32 so the float and base64 encodings carry equal values.
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))


def encode_base64_floats(vector: list[float]) -> str:
    """Little-endian float32 array, base64 — what the SDKs decode for ``encoding_format=base64``."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


@lru_cache(maxsize=8192)
def word(index: int) -> str:
    """The ``index``-th generated token as streamed (leading space after the first)."""
    return f"tok{index}" if index == 0 else f" tok{index}"


@lru_cache(maxsize=512)
def words(count: int) -> str:
    """``count`` deterministic tokens: ``"tok0 tok1 … tok{count-1}"``."""
    return "".join(word(i) for i in range(count))


def fragments(text: str) -> list[str]:
    """Split structured output into 4-character pieces; each piece is one token."""
    return [text[i : i + _FRAGMENT] for i in range(0, len(text), _FRAGMENT)] or [""]


_FORMATS: dict[str, str] = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "sim@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "hostname": "example.com",
}


def resolve_ref(ref: str, root: dict[str, Any]) -> Any:
    """A local ``#/…`` reference inside ``root`` (``{}`` when it leads nowhere).

    ``/…`` is read the same way: litellm rewrites pydantic's ``#/$defs/X`` so in the tool
    it sends Anthropic for ``response_format``, and a model still follows it."""
    if ref.startswith("#/"):
        path = ref[2:]
    elif ref.startswith("/"):
        path = ref[1:]
    else:
        return {}
    node: Any = root
    for part in path.split("/"):
        if not isinstance(node, dict):
            return {}
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {})
    return node


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    low = schema.get("minimum")
    exclusive = schema.get("exclusiveMinimum")
    value: float = 0
    if isinstance(low, int | float) and not isinstance(low, bool):
        value = low
    if isinstance(exclusive, int | float) and not isinstance(exclusive, bool):
        value = max(value, exclusive + (1 if integer else 0.5))
    high = schema.get("maximum")
    if isinstance(high, int | float) and not isinstance(high, bool) and value > high:
        value = high
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
        value = -(-value // step) * step
    if integer:
        return int(-(-value // 1))
    return float(value)


def _string(schema: dict[str, Any], variant: int) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS:
        return _FORMATS[fmt]
    min_len = schema.get("minLength")
    text = f"tok{variant}" if variant else "tok"
    if isinstance(min_len, int) and min_len > len(text):
        text = (text * (min_len // 3 + 1))[:min_len]
    max_len = schema.get("maxLength")
    if isinstance(max_len, int) and max_len < len(text):
        text = text[:max_len]
    return text


def _instance(schema: Any, root: dict[str, Any], depth: int, variant: int) -> Any:
    if not isinstance(schema, dict) or depth > 32:
        return None
    if "$ref" in schema:
        return _instance(resolve_ref(str(schema["$ref"]), root), root, depth + 1, variant)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return _instance((non_null or options)[0], root, depth + 1, variant)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in all_of:
            if isinstance(part, dict):
                merged.update(part)
        return _instance(merged, root, depth + 1, variant)
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if kinds else "null"
    if kind is None:
        if "properties" in schema or "required" in schema:
            kind = "object"
        elif "items" in schema:
            kind = "array"
        else:
            return "tok"
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = schema.get("required")
        names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
        return {name: _instance(props.get(name, {}), root, depth + 1, variant) for name in names}
    if kind == "array":
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:
            return [_instance(item, root, depth + 1, variant) for item in prefix]
        min_items = schema.get("minItems")
        max_items = schema.get("maxItems")
        count = min_items if isinstance(min_items, int) and min_items > 1 else 1
        if isinstance(max_items, int) and max_items < count:
            count = max_items
        return [_instance(schema.get("items", {}), root, depth + 1, variant) for _ in range(count)]
    if kind == "string":
        return _string(schema, variant)
    if kind == "integer":
        return _number(schema, integer=True)
    if kind == "number":
        return _number(schema, integer=False)
    if kind == "boolean":
        return True
    return None


def schema_instance(schema: Any, variant: int = 0) -> Any:
    """A small JSON value satisfying ``schema`` (required properties only, first enum
    value, lower numeric bounds, first ``anyOf`` branch, local ``$ref``s).  A non-zero
    ``variant`` makes free strings ``tok<variant>``, so parallel tool calls differ."""
    if not isinstance(schema, dict):
        return {}
    return _instance(schema, schema, 0, variant)
