"""The ``prompt_cache`` directive: a provider-like prompt cache per backend.

Real providers discount a prompt prefix only when the same prefix lands on the backend
that processed it recently.  To let prompt-cache-affinity routing be tested end to end,
the simulator keeps one cache per *full* requested model name (``::`` suffix included):
two deployments ``sim-a::prompt_cache`` and ``sim-b::prompt_cache`` behave like two
replicas that do not share a cache.

* Cacheable prefix: the leading run of ``system``/``developer`` messages (OpenAI, Azure),
  the top-level ``system`` (Anthropic, Bedrock Converse) or ``systemInstruction``
  (Gemini, Vertex AI).  Its tokens use the simulator's prompt formula restricted to it:
  ``ceil(C / 4) + 3 * M`` for its ``C`` characters of text in ``M`` messages (a separate
  system prompt is one message), so it is never more than the whole prompt.  Its
  identity is a hash of each message's role and text pieces (so a string system prompt
  and the same text as one block, with or without ``cache_control``, are the same prefix).
* Hit: the prefix is in this model's cache and unexpired → ``cached`` = prefix tokens
  (exactly; no rounding to OpenAI's 128-token steps, so tests can predict it).
* Miss: nothing on wires that do not bill cache writes (OpenAI, Azure, Gemini); the prefix
  tokens as a cache write on those that do (Anthropic ``cache_creation_input_tokens``,
  Bedrock ``cacheWriteInputTokens``).
* Either way the prefix is then stored (or refreshed) with expiry ``now + ttl``: a cache
  use extends its life, as Anthropic's does.  Prefixes under ``prompt_cache_min`` tokens
  are neither reported nor stored.  The decision is taken once the request got past its
  injected faults, so a request failed by ``status=``/``fail_first`` caches nothing.
* Explicit ``cached=N`` / ``cache_write=N`` directives override the simulated value of
  their own field; the cache is still consulted and updated.

OpenAI's ``prompt_cache_key`` request field is ignored: upstream it only steers routing
between OpenAI's machines, and here every request of a model already lands on one cache.

Memory is bounded: :data:`MAX_PREFIXES` per model (least recently used evicted first)
and :data:`MAX_MODELS` models.  Everything runs on the simulator's single event loop, so
there is no locking.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from .behaviour import Behaviour, clamp_prompt_cache
from .content import message_tokens, text_segments

__all__ = [
    "MAX_MODELS",
    "MAX_PREFIXES",
    "Prefix",
    "PromptCaches",
    "anthropic_prefix",
    "chat_prefix",
    "converse_prefix",
    "gemini_prefix",
]

MAX_PREFIXES = 10_000
MAX_MODELS = 1_000
_PREFIX_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Prefix:
    """A cacheable prompt prefix: its token count and a digest of its content."""

    tokens: int
    key: bytes


def _prefix(blocks: list[tuple[str, list[str]]]) -> Prefix:
    chars = sum(len(text) for _, texts in blocks for text in texts)
    digest = hashlib.blake2b(orjson.dumps(blocks), digest_size=16).digest()
    return Prefix(message_tokens(chars, len(blocks)), digest)


def chat_prefix(messages: list[Any]) -> Prefix | None:
    """The leading system/developer messages of an OpenAI chat request."""
    blocks: list[tuple[str, list[str]]] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in _PREFIX_ROLES:
            break
        blocks.append((str(message["role"]), text_segments(message.get("content"))))
    return _prefix(blocks) if blocks else None


def anthropic_prefix(system: Any) -> Prefix | None:
    """Anthropic's top-level ``system`` (a string or text blocks)."""
    return _prefix([("system", text_segments(system))]) if system else None


def gemini_prefix(system_instruction: Any) -> Prefix | None:
    """Gemini's ``systemInstruction`` parts (counted as one message, as the prompt does)."""
    parts = system_instruction.get("parts") if isinstance(system_instruction, dict) else None
    return _prefix([("system", text_segments(parts))]) if parts else None


def converse_prefix(system: Any) -> Prefix | None:
    """Bedrock Converse's ``system`` blocks; text-free ones are not a message (see content)."""
    texts = text_segments(system)
    return _prefix([("system", texts)]) if any(texts) else None


class PromptCaches:
    """Per-model LRU of prefix digests with expiry times (``time.monotonic`` seconds)."""

    def __init__(self, max_prefixes: int = MAX_PREFIXES, max_models: int = MAX_MODELS) -> None:
        self._max_prefixes = max_prefixes
        self._max_models = max_models
        self._models: OrderedDict[str, OrderedDict[bytes, float]] = OrderedDict()

    def clear(self) -> None:
        self._models.clear()

    def use(self, model: str, key: bytes, ttl: float, now: float | None = None) -> bool:
        """Whether ``key`` was cached and unexpired for ``model``; then (re)store it."""
        if now is None:
            now = time.monotonic()
        cache = self._models.get(model)
        if cache is None:
            if len(self._models) >= self._max_models:
                self._models.popitem(last=False)
            cache = self._models[model] = OrderedDict()
        else:
            self._models.move_to_end(model)
        expiry = cache.get(key)
        hit = expiry is not None and expiry > now
        cache[key] = now + ttl
        cache.move_to_end(key)
        if len(cache) > self._max_prefixes:
            cache.popitem(last=False)
        return hit

    def split(
        self,
        model: str,
        behaviour: Behaviour,
        prompt_tokens: int,
        prefix: Prefix | None,
        *,
        bills_writes: bool,
    ) -> tuple[int, int]:
        """``(cached, cache_write)`` for one request that is being answered.

        ``prefix`` is ``None`` when the request has none (or ``prompt_cache`` is off, in
        which case only the ``cached=``/``cache_write=`` directives count).
        """
        read = write = 0
        if (
            behaviour.prompt_cache
            and prefix is not None
            and prefix.tokens >= behaviour.prompt_cache_min
        ):
            if self.use(model, prefix.key, behaviour.prompt_cache_ttl):
                read = prefix.tokens
            elif bills_writes:
                write = prefix.tokens
        if behaviour.cached is not None:
            read = behaviour.cached
        if behaviour.cache_write is not None:
            write = behaviour.cache_write
        return clamp_prompt_cache(read, write, prompt_tokens)
