"""Input-token estimates for attempts that failed before the provider reported usage.

Providers bill the prompt of a request that timed out or was cut mid-stream, so the ledger
records an estimate (token_source=estimated) rather than 0.

OpenAI-family models (`gpt-*`, `chatgpt-*`, `o1`/`o3`/`o4*`, `text-embedding-*`, also behind a
host prefix such as `openai/gpt-oss-120b`) are counted with tiktoken: `cl100k_base` for
gpt-3.5, gpt-4 (not 4o/4.1/4.5) and the embedding models, `o200k_base` for the rest. Both
vocabularies are read from the copies bundled with litellm — never downloaded — by pointing
`TIKTOKEN_CACHE_DIR` at litellm's tokenizer directory, as litellm itself does at import.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import threading
from collections.abc import Mapping
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import orjson
import tiktoken

# OpenAI's cookbook: every chat message costs 3 tokens of framing, a `name` 1 more, and the
# reply is primed with 3.
PER_MESSAGE = 3
PER_NAME = 1
REPLY_PRIMING = 3
# What OpenAI charges for a low-detail image; the real count needs the image's size, which
# we do not fetch, so this is a floor.
PER_IMAGE = 85
BYTES_PER_TOKEN = 4

_OPENAI_FAMILY = re.compile(r"(?:gpt-|chatgpt-|text-embedding-|o[134](?:-|$))")
_CL100K_MODELS = re.compile(r"(?:gpt-3\.5|gpt-35|text-embedding-|gpt-4(?![o.]))")
_ENCODING_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
# BPE merging is superlinear in the length of a run without spaces (1M "x" take 0.5 s), so
# long texts are encoded in chunks, and very long ones from an evenly spaced sample.
_CHUNK = 8_192
_EXACT_LIMIT = 65_536
_SAMPLES = 8
_MAX_DEPTH = 8
_IMAGE_TYPES = frozenset({"image_url", "input_image", "image"})
_TEXT_FIELDS = ("text", "thinking", "refusal", "output", "arguments", "transcript")

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding | None] = {}


def estimate_input_tokens(endpoint: str, payload: Mapping[str, Any], upstream_model: str) -> int:
    """Billable input tokens of a request body, estimated; never raises, never below 1.

    Which fields count depends on the endpoint: `embeddings` → `input`; `completions` →
    `prompt` and `suffix`; anything else (chat/completions, responses, messages) → `messages`,
    `system`, `instructions`, `input`, `tools` and `functions`. Token-id arrays count one per
    int and images `PER_IMAGE` each, whatever the model.

    OpenAI family (tiktoken): per message 3 + tokens(role) + tokens(content) + tokens(name) + 1
    if named, tool calls by name and arguments, tool definitions by their compact JSON, +3 reply
    priming for chat — OpenAI's cookbook method, usually within a few tokens.

    Other families: `ceil(B / 4) + 3 × M`, where B is the UTF-8 byte length of all counted text
    (contents, names, tool-call arguments, tool definitions as compact JSON) and M the number
    of chat messages. Four bytes per token is the usual rule of thumb for BPE vocabularies on
    English text; it undercounts scripts a vocabulary covers poorly (fewer bytes per token).
    """
    encoding = None
    try:
        if isinstance(upstream_model, str):
            encoding = _encoding_for_model(upstream_model)
        return _estimate(endpoint, payload, encoding)
    except Exception:  # an estimate must never fail the request it is for
        if encoding is None:
            return 1
    try:  # tiktoken rejected the text (e.g. lone surrogates): fall back to bytes / 4
        return _estimate(endpoint, payload, None)
    except Exception:  # as above: an estimate of 1 beats a 500
        return 1


def load_encoding(name: str) -> None:
    """Load one vocabulary now (≈0.5 s) instead of on the first estimate."""
    _encoding(name)


def preload_encodings() -> None:
    """Load both vocabularies now (≈1 s) so the first estimate on the hot path is cheap."""
    for name in ("cl100k_base", "o200k_base"):
        _encoding(name)


def encoding_name_for(upstream_model: str) -> str | None:
    """The tiktoken encoding used for a model, or None when the byte approximation applies."""
    name = upstream_model.partition("::")[0].rsplit("/", 1)[-1].lower()
    if not _OPENAI_FAMILY.match(name):
        return None
    return "cl100k_base" if _CL100K_MODELS.match(name) else "o200k_base"


@lru_cache(maxsize=1024)
def _encoding_for_model(upstream_model: str) -> tiktoken.Encoding | None:
    name = encoding_name_for(upstream_model)
    return _encoding(name) if name else None


def _encoding(name: str) -> tiktoken.Encoding | None:
    if name in _encodings:
        return _encodings[name]
    with _lock:
        if name not in _encodings:
            _encodings[name] = _load_offline(name)
        return _encodings[name]


def _load_offline(name: str) -> tiktoken.Encoding | None:
    # tiktoken names its cache files by the SHA-1 of the download URL.
    blob = hashlib.sha1(_ENCODING_URL.format(name).encode(), usedforsecurity=False).hexdigest()
    current = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not (current and (Path(current) / blob).is_file()):
        bundled = _bundled_tokenizers()
        if bundled is None or not (bundled / blob).is_file():
            return None  # tiktoken would try to download it; estimate by bytes instead
        os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)
    try:
        return tiktoken.get_encoding(name)
    except (OSError, ValueError):  # unreadable or corrupt vocabulary file: estimate by bytes
        return None


def _bundled_tokenizers() -> Path | None:
    spec = find_spec("litellm")  # locates the package without importing it
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"


class _Tally:
    """Adds up tokens (tiktoken) or bytes (approximation) so each path applies one formula."""

    __slots__ = ("encoding", "messages", "nbytes", "tokens")

    def __init__(self, encoding: tiktoken.Encoding | None) -> None:
        self.encoding = encoding
        self.tokens = 0
        self.nbytes = 0
        self.messages = 0

    def text(self, text: str) -> None:
        if not text:
            return
        if self.encoding is None:
            self.nbytes += len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
        else:
            self.tokens += _bpe_len(self.encoding, text)

    def json(self, value: Any) -> None:
        # Bodies come from JSON, so this only fails on values no client could have sent.
        with contextlib.suppress(TypeError):  # orjson.JSONEncodeError is a TypeError
            self.text(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode())

    def total(self) -> int:
        return self.tokens + math.ceil(self.nbytes / BYTES_PER_TOKEN)


def _bpe_len(encoding: tiktoken.Encoding, text: str) -> int:
    n = len(text)
    if n <= _CHUNK:
        return len(encoding.encode_ordinary(text))
    if n <= _EXACT_LIMIT:
        return sum(len(encoding.encode_ordinary(text[i : i + _CHUNK])) for i in range(0, n, _CHUNK))
    step = n // _SAMPLES
    starts = range(0, step * _SAMPLES, step)
    sampled = sum(len(encoding.encode_ordinary(text[i : i + _CHUNK])) for i in starts)
    return math.ceil(sampled * n / (_CHUNK * _SAMPLES))


def _estimate(endpoint: str, payload: Mapping[str, Any], encoding: tiktoken.Encoding | None) -> int:
    if not isinstance(payload, Mapping):
        return 1
    # Bodies are dicts from orjson; plain-dict isinstance checks are several times cheaper
    # than Mapping ABC checks, and this walk does dozens of them.
    body = payload if isinstance(payload, dict) else dict(payload)
    tally = _Tally(encoding)
    kind = str(endpoint).strip("/").removeprefix("v1/")
    if kind == "embeddings":
        _prompts(tally, body.get("input"))
    elif kind == "completions":
        _prompts(tally, body.get("prompt"))
        _content(tally, body.get("suffix"), 0)
    else:
        messages = body.get("messages")
        if type(messages) is list:
            _messages(tally, messages)
        _content(tally, body.get("system"), 0)
        _content(tally, body.get("instructions"), 0)
        given = body.get("input")
        if type(given) is list and any(type(item) is dict for item in given):
            _messages(tally, given)  # Responses API items are messages in all but name
        else:
            _prompts(tally, given)
        for key in ("tools", "functions"):
            if body.get(key):
                tally.json(body[key])
        if tally.messages and encoding is not None:
            tally.tokens += REPLY_PRIMING
    return max(1, tally.total() + tally.messages * PER_MESSAGE)


def _prompts(tally: _Tally, value: Any) -> None:
    """A prompt or embedding input: string(s) or token-id array(s)."""
    if type(value) is str:
        tally.text(value)
    elif type(value) is list:
        for item in value:
            if type(item) is str:
                tally.text(item)
            elif type(item) is int:
                tally.tokens += 1
            elif type(item) is list:
                tally.tokens += sum(1 for t in item if type(t) is int)


def _messages(tally: _Tally, messages: list[Any]) -> None:
    exact = tally.encoding is not None
    for message in messages:
        if type(message) is not dict:
            _content(tally, message, 0)
            continue
        tally.messages += 1
        role = message.get("role")
        if exact and type(role) is str:
            tally.text(role)  # the approximation folds the role into its per-message 3
        _content(tally, message.get("content"), 0)
        name = message.get("name")
        if type(name) is str:
            tally.text(name)
            tally.tokens += PER_NAME if exact else 0
        if len(message) > 2:  # the common {role, content} message has nothing more to count
            _extras(tally, message)


def _extras(tally: _Tally, message: dict[str, Any]) -> None:
    calls = message.get("tool_calls")
    for call in [*(calls if type(calls) is list else ()), message.get("function_call")]:
        function = call.get("function", call) if type(call) is dict else None
        if type(function) is dict:
            _content(tally, function.get("name"), 0)
            _content(tally, function.get("arguments"), 0)
    for field in ("arguments", "output"):  # Responses function_call(_output) items
        _content(tally, message.get(field), 0)


def _content(tally: _Tally, value: Any, depth: int) -> None:
    """Text of a message content: a string, a list of parts, or nested tool results."""
    kind = type(value)
    if kind is str:
        tally.text(value)
    elif value is None or depth >= _MAX_DEPTH:
        return
    elif kind is list:
        for part in value:
            _content(tally, part, depth + 1)
    elif kind is dict:
        part_type = value.get("type")
        if (type(part_type) is str and part_type in _IMAGE_TYPES) or "image_url" in value:
            tally.tokens += PER_IMAGE
            return
        for field in _TEXT_FIELDS:
            text = value.get(field)
            if type(text) is str:
                tally.text(text)
        if "content" in value:
            _content(tally, value["content"], depth + 1)
        if type(value.get("input")) in (dict, list):
            tally.json(value["input"])  # Anthropic tool_use blocks carry their arguments here
