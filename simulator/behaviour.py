"""Directive grammar for the provider simulator (pure: no I/O, no clock).

A directive string is a comma-separated list of ``key=value`` items or bare flags,
e.g. ``"latency=50,jitter=10,status=429,retry_after=2"``.  It may come from two places:

1. the requested model name after ``::`` (``"sim-small::tokens=5"``; the base model
   is the part before ``::``) — for wires that carry the model in the URL (Gemini,
   Vertex AI, Bedrock, Azure deployments) the name in the path, and
2. the ``x-mock-behavior`` request header.

Header items override model-suffix items key by key.  Unknown keys and bad values
raise :class:`DirectiveError`, which the server turns into a 400 naming the key, so a
typo in a test fails loudly instead of silently doing nothing.

Keys (``MS`` = milliseconds, ``N`` = non-negative integer):

* ``latency=MS`` / ``jitter=MS``: sleep ``MS`` (+ uniform ``[0, jitter]``, seeded RNG)
  before any answer, error or stream headers.
* ``tail_rate=P`` / ``tail_ms=MS``: with probability ``P`` add ``MS`` more latency (a slow
  tail, for hedging measurements; seeded RNG).
* ``ttft=MS``: stream: delay after the headers before the first chunk; non-stream: added
  to the wait.  ``tps=N``: stream: one token per chunk, ``N`` per second; non-stream:
  also waits ``completion_tokens / N`` s.
* ``tokens=N``: visible completion tokens (see :func:`plan_tokens`).  ``reasoning=N``
  adds hidden reasoning tokens inside ``completion_tokens``.  ``cached=N`` /
  ``cache_write=N``: prompt tokens read from / written to the cache (clamped, see
  :func:`split_prompt_cache`); each overrides what ``prompt_cache`` would report.
* ``prompt_cache``: a provider-like prompt cache, one per *full* model name (suffix
  included, so ``sim-a::prompt_cache`` and ``sim-b::prompt_cache`` are separate
  backends).  The cacheable prefix is the leading system/developer messages (OpenAI,
  Azure), ``system`` (Anthropic, Bedrock) or ``systemInstruction`` (Gemini, Vertex); a
  prefix seen before on that model within ``prompt_cache_ttl=S`` seconds (default 300,
  refreshed on every use) is reported as cached, a new one as a cache write on the wires
  that bill writes (Anthropic, Bedrock).  Prefixes shorter than ``prompt_cache_min=N``
  tokens (default 1024) are never cached.  Details in :mod:`.prompt_cache`.
* ``rpm=N`` / ``tpm=N``: requests / prompt tokens per sliding 60 s window per full model
  name; over the limit → 429 with ``retry-after``; successes carry rate-limit headers
  (OpenAI/Azure ``x-ratelimit-*``, Anthropic ``anthropic-ratelimit-*``).  Details in
  :mod:`.ratelimit`.
* ``slots=N``: the model runs on a dedicated GPU with ``N`` slots, one per *base* model.
  A request holds a slot for its service time (``latency`` + ``jitter`` + ``ttft`` +
  output tokens at ``tps``, until the answer is out); beyond ``N`` requests wait FIFO, so
  an over-filled GPU raises latency.  ``/_stats`` reports each GPU under ``gpus``
  (utilization, peak in use, queue wait).  Details in :mod:`.gpu`.
* ``status=CODE``: answer with that status and a wire-format error body (``200`` means
  succeed).  ``retry_after=S``: ``retry-after`` and ``retry-after-ms`` on any answer.
* ``fail_first=N``: the first ``N`` requests with this base model and directive text fail
  with ``status`` (default 500), later ones succeed.  ``fail_rate=P``: fail with
  probability ``P``.
* ``hang``: accept, then never answer (until the client goes away).
* ``cut_after=N``: stream: ``N`` content chunks then an aborted connection; non-stream:
  half the body then an abort.  ``cut_before_done``: stream: the whole answer and its
  usage chunk, then an aborted connection where ``[DONE]`` would be (OpenAI wires).
  ``midstream_error=N``: stream only: an error event
  after ``N`` content chunks.  ``malformed``: 200 with truncated JSON / an invalid SSE
  data line.
* ``echo_key``: error answers (``status``/``fail_*`` and ``midstream_error`` events) quote
  the credential the request carried (``Authorization``, ``x-api-key``, ``api-key``,
  ``x-goog-api-key`` or ``?key=``), as some providers do; for testing that a gateway never
  relays its upstream keys.
* ``context_length``: 400 context-length error.  ``context_window=N``: that error only
  when the prompt exceeds ``N`` tokens.
* ``content_filter``: a 200 whose answer the provider's safety filter stopped: no visible
  output, finish ``content_filter`` (OpenAI/Azure), stop_reason ``refusal`` (Anthropic),
  finishReason ``SAFETY`` (Gemini), stopReason ``content_filtered`` (Bedrock).
* ``invalid_json_rate=P``: OpenAI/Azure chat and Responses only (other wires ignore it).
  When the answer is structured (``response_format`` / Responses ``text.format``
  ``json_object``/``json_schema``, or a tool call), with
  probability ``P`` (seeded RNG) its content / tool arguments are wrong while the answer is
  otherwise a normal 200 with finish ``stop`` / ``tool_calls``.  Spoiled answers alternate,
  counting from the last ``/_reset``: the 1st, 3rd, … are truncated JSON text; the 2nd,
  4th, … are valid JSON that breaks the schema (the first required property dropped, or,
  without one, the object wrapped in an array).  Each counts once (per request, whatever
  ``n``) as fault ``invalid_json``.  Details in :mod:`.spoil`.
* ``echo``: OpenAI/Azure chat only.  The answer is the request's messages' text, joined
  by newlines: what the provider was sent, for tests of what a gateway changed on the way.
* ``classifier`` / ``classifier=MARKER``: OpenAI/Azure chat only.  A guard model (Llama
  Guard's label format): the answer is ``unsafe\nS1`` when the request's messages hold
  ``MARKER`` (percent-decoded, any case; default ``forbidden-topic``), else ``safe``.
  With ``latency=`` or ``hang`` it is a slow classifier, with ``status=`` an erroring one.
* ``empty_when=MARKER`` (``empty_rate=P``): OpenAI/Azure chat only.  A model that fails
  on a kind of prompt: the answer is empty (a 200, finish ``stop``, no content) when the
  request's messages hold ``MARKER`` (percent-decoded, any case) — for ``P`` of those
  prompts when given, chosen by a hash of the prompt, so the same prompt always gets the
  same answer.  A ``non_empty`` gate fails them: the hidden rule a learned router has to
  find (issue 28).
* ``reply=TEXT``: OpenAI/Azure chat and Responses only.  The answer is exactly ``TEXT``
  (percent-decoded, so ``%2C`` is a comma and ``%25`` a percent sign): the message
  content, the JSON document of a ``response_format`` answer, or the arguments of a tool
  call; one token per 4 characters.  ``tool=NAME``: a tool call picks the request's
  function ``NAME`` rather than the first one (unless ``tool_choice`` names another).
  Different deployments of one route can so give different answers (consensus tests).
* ``tool_calls=N``: a tool-calling answer makes ``N`` calls in one message (parallel tool
  calls), cycling through the offered functions (only the named one when ``tool_choice`` or
  ``tool=`` names it); string arguments differ per call (``tok``, ``tok1``, …).  Every wire
  that has parallel calls: OpenAI/Azure ``tool_calls`` (streamed with ``index``),
  Anthropic ``tool_use`` blocks, Gemini ``functionCall`` parts, Bedrock ``toolUse`` blocks.
  A request that turns parallel calls off (OpenAI ``parallel_tool_calls: false``,
  Anthropic ``tool_choice.disable_parallel_tool_use``) gets one call.
* ``builtin=web_search``: OpenAI Responses only.  Enables the built-in ``web_search`` /
  ``web_search_preview`` tool; without it a request offering a built-in tool gets a 400
  naming the tool.  See :mod:`.responses_wire`.

A flag also accepts ``=1/true/yes/on`` or ``=0/false/no/off``.  ``prompt_cache_ttl`` and
``prompt_cache_min`` without ``prompt_cache`` (on or off) are an error, not a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

__all__ = [
    "DEFAULT_CLASSIFIER_MARKER",
    "DEFAULT_COMPLETION_TOKENS",
    "DEFAULT_PROMPT_CACHE_MIN",
    "DEFAULT_PROMPT_CACHE_TTL_S",
    "MAX_GENERATED_TOKENS",
    "Behaviour",
    "DirectiveError",
    "TokenPlan",
    "clamp_prompt_cache",
    "plan_tokens",
    "resolve",
    "split_model",
    "split_prompt_cache",
]

#: What a ``classifier`` finds unsafe when the directive names no marker of its own.
DEFAULT_CLASSIFIER_MARKER = "forbidden-topic"
#: Completion tokens produced when neither ``tokens=`` nor a request limit says otherwise.
DEFAULT_COMPLETION_TOKENS = 16
#: Upper bound on generated tokens, so a client asking for ``max_tokens=100000`` cannot
#: make the simulator build megabytes of filler.
MAX_GENERATED_TOKENS = 4096
#: Defaults of ``prompt_cache_ttl`` (Anthropic's and OpenAI's 5 minutes) and
#: ``prompt_cache_min`` (both providers' 1024-token minimum).
DEFAULT_PROMPT_CACHE_TTL_S = 300.0
DEFAULT_PROMPT_CACHE_MIN = 1024

_TRUE = frozenset({"", "1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class DirectiveError(ValueError):
    """A directive key is unknown or its value is invalid."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What the simulator should do with one request."""

    latency: float = 0.0
    jitter: float = 0.0
    tail_rate: float | None = None
    tail_ms: float = 0.0
    ttft: float = 0.0
    tps: float | None = None
    tokens: int | None = None
    #: ``None`` = not given, so ``prompt_cache`` decides; a number overrides it.
    cached: int | None = None
    cache_write: int | None = None
    reasoning: int = 0
    prompt_cache: bool = False
    prompt_cache_ttl: float = DEFAULT_PROMPT_CACHE_TTL_S
    prompt_cache_min: int = DEFAULT_PROMPT_CACHE_MIN
    rpm: int | None = None
    tpm: int | None = None
    slots: int | None = None
    status: int | None = None
    retry_after: float | None = None
    fail_first: int | None = None
    fail_rate: float | None = None
    hang: bool = False
    cut_after: int | None = None
    cut_before_done: bool = False
    midstream_error: int | None = None
    malformed: bool = False
    context_length: bool = False
    context_window: int | None = None
    content_filter: bool = False
    echo_key: bool = False
    echo: bool = False
    #: ``classifier``: the marker whose presence makes the answer ``unsafe``.
    classifier: str | None = None
    #: ``empty_when``: the marker whose presence (in ``empty_rate`` of such prompts) makes
    #: the answer empty; ``empty_rate``: that share (all of them when unset).
    empty_when: str | None = None
    empty_rate: float | None = None
    invalid_json_rate: float | None = None
    reply: str | None = None
    tool: str | None = None
    tool_calls: int = 1
    builtin: str | None = None
    #: Normalised (sorted) directive text; ``fail_first`` counters are keyed on it.
    canonical: str = ""

    @property
    def failure_status(self) -> int:
        """Status used by ``fail_first``/``fail_rate`` (500 unless ``status`` says otherwise)."""
        return self.status if self.status is not None else 500


def _ms(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise DirectiveError(key, f"{key} must be a number of milliseconds, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise DirectiveError(key, f"{key} must be a finite number >= 0, got {raw!r}")
    return value


def _count(key: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise DirectiveError(key, f"{key} must be an integer, got {raw!r}") from None
    if value < 0:
        raise DirectiveError(key, f"{key} must be >= 0, got {raw!r}")
    return value


def _positive(key: str, raw: str) -> float:
    value = _ms(key, raw)
    if value <= 0:
        raise DirectiveError(key, f"{key} must be > 0, got {raw!r}")
    return value


def _seconds(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise DirectiveError(key, f"{key} must be a number of seconds, got {raw!r}") from None
    if not 0 < value < float("inf"):
        raise DirectiveError(key, f"{key} must be a finite number > 0, got {raw!r}")
    return value


def _limit(key: str, raw: str) -> int:
    value = _count(key, raw)
    if value < 1:
        raise DirectiveError(key, f"{key} must be >= 1, got {raw!r}")
    return value


def _probability(key: str, raw: str) -> float:
    value = _ms(key, raw)
    if value > 1:
        raise DirectiveError(key, f"{key} must be a probability in [0, 1], got {raw!r}")
    return value


def _status(key: str, raw: str) -> int:
    value = _count(key, raw)
    if value != 200 and not 400 <= value <= 599:
        raise DirectiveError(key, f"{key} must be 200 or 400-599, got {raw!r}")
    return value


def _text(key: str, raw: str) -> str:
    value = unquote(raw)
    if key == "tool" and not value:
        raise DirectiveError(key, "tool needs a function name (tool=NAME)")
    return value


def _marker(key: str, raw: str) -> str:
    """``classifier`` alone takes the default marker; a marker is matched in any case."""
    return (unquote(raw) or DEFAULT_CLASSIFIER_MARKER).lower()


def _text_marker(key: str, raw: str) -> str:
    """A marker matched in any case (percent-decoded); it must not be empty."""
    marker = unquote(raw).lower()
    if not marker:
        raise DirectiveError(key, f"{key} needs a marker, e.g. {key}=integral")
    return marker


def _builtin(key: str, raw: str) -> str:
    if raw != "web_search":  # the only built-in tool the simulator plays
        raise DirectiveError(key, f"{key} supports only 'web_search', got {raw!r}")
    return raw


def _flag(key: str, raw: str) -> bool:
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise DirectiveError(key, f"{key} is a flag; use '{key}' or '{key}=0', got {raw!r}")


_PARSERS: dict[str, Any] = {
    "latency": _ms,
    "jitter": _ms,
    "tail_rate": _probability,
    "tail_ms": _ms,
    "ttft": _ms,
    "tps": _positive,
    "tokens": _count,
    "cached": _count,
    "cache_write": _count,
    "reasoning": _count,
    "prompt_cache": _flag,
    "prompt_cache_ttl": _seconds,
    "prompt_cache_min": _count,
    "rpm": _limit,
    "tpm": _limit,
    "slots": _limit,
    "status": _status,
    "retry_after": _ms,
    "fail_first": _count,
    "fail_rate": _probability,
    "hang": _flag,
    "cut_after": _count,
    "cut_before_done": _flag,
    "midstream_error": _count,
    "malformed": _flag,
    "context_length": _flag,
    "context_window": _count,
    "content_filter": _flag,
    "echo_key": _flag,
    "echo": _flag,
    "classifier": _marker,
    "empty_when": _text_marker,
    "empty_rate": _probability,
    "invalid_json_rate": _probability,
    "reply": _text,
    "tool": _text,
    "tool_calls": _limit,
    "builtin": _builtin,
}
_FLAGS = frozenset(
    {
        "hang",
        "malformed",
        "context_length",
        "content_filter",
        "prompt_cache",
        "echo_key",
        "echo",
        "cut_before_done",
        "classifier",  # a bare key, or with the marker as its value
    }
)
#: Tuning keys that mean nothing without their switch; alone they are probably a typo.
_NEEDS = {
    "prompt_cache_ttl": "prompt_cache",
    "prompt_cache_min": "prompt_cache",
    "empty_rate": "empty_when",
}
assert set(_PARSERS) == {f.name for f in fields(Behaviour)} - {"canonical"}


@lru_cache(maxsize=2048)
def _items(text: str) -> tuple[tuple[str, str], ...]:
    """Split one directive string into ``(key, raw value)`` pairs, validating keys."""
    out: dict[str, str] = {}
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key = key.strip().lower()
        raw = raw.strip()
        if key not in _PARSERS:
            known = ", ".join(sorted(_PARSERS))
            raise DirectiveError(
                key, f"unknown mock directive {key!r} in {text!r}; known directives: {known}"
            )
        if not sep and key not in _FLAGS:
            raise DirectiveError(key, f"mock directive {key!r} needs a value ({key}=...)")
        out[key] = raw
    return tuple(out.items())


def split_model(model: str) -> tuple[str, str]:
    """``"sim-small::latency=5"`` → ``("sim-small", "latency=5")``."""
    base, _, suffix = model.partition("::")
    return base, suffix


@lru_cache(maxsize=4096)
def resolve(model_suffix: str, header: str) -> Behaviour:
    """Merge the model-suffix and header directives (header wins) into a :class:`Behaviour`.

    Cached: a load test repeats the same few directive strings millions of times.
    """
    merged = dict(_items(model_suffix)) if model_suffix else {}
    if header:
        merged.update(_items(header))
    if not merged:
        return _DEFAULT
    for key, switch in _NEEDS.items():
        if key in merged and switch not in merged:
            raise DirectiveError(key, f"{key} only applies with {switch} (add '{switch}')")
    values = {key: _PARSERS[key](key, raw) for key, raw in merged.items()}
    canonical = ",".join(f"{k}={merged[k]}" if merged[k] else k for k in sorted(merged))
    return Behaviour(**values, canonical=canonical)


_DEFAULT = Behaviour()


@dataclass(frozen=True, slots=True)
class TokenPlan:
    """Completion tokens to generate: ``visible`` content plus hidden ``reasoning``."""

    visible: int
    reasoning: int
    #: True when the request's own max-tokens limit cut the answer (finish "length").
    truncated: bool

    @property
    def completion(self) -> int:
        return self.visible + self.reasoning


def plan_tokens(
    behaviour: Behaviour, request_max: int | None, *, limit_is_cap: bool = False
) -> TokenPlan:
    """Decide how many tokens to produce.

    Wanted visible tokens are ``tokens=N`` if given, else the request's max-tokens limit
    (capped at :data:`MAX_GENERATED_TOKENS`), else :data:`DEFAULT_COMPLETION_TOKENS`.
    With ``limit_is_cap`` the request's limit only caps the answer, as on wires where it is
    mandatory (Anthropic: clients such as litellm send 4096 when their caller set nothing,
    and a real model still answers briefly).
    Reasoning tokens come on top (they are *inside* ``completion_tokens``).  As with real
    providers the request limit bounds visible + reasoning together; reaching it marks the
    answer truncated (finish_reason ``length`` / stop_reason ``max_tokens``).
    """
    if behaviour.tokens is not None:
        wanted = min(behaviour.tokens, MAX_GENERATED_TOKENS)
    elif request_max is not None and not limit_is_cap:
        wanted = min(request_max, MAX_GENERATED_TOKENS)
    else:
        wanted = DEFAULT_COMPLETION_TOKENS
    reasoning = behaviour.reasoning
    if request_max is not None and wanted + reasoning >= request_max:
        reasoning = min(reasoning, request_max)
        return TokenPlan(visible=request_max - reasoning, reasoning=reasoning, truncated=True)
    return TokenPlan(visible=wanted, reasoning=reasoning, truncated=False)


def split_prompt_cache(behaviour: Behaviour, prompt_tokens: int) -> tuple[int, int]:
    """``(cached, cache_write)`` clamped so that neither exceeds the prompt.

    Only the ``cached=``/``cache_write=`` directives; :mod:`.prompt_cache` adds the
    ``prompt_cache`` simulation on top.  Cache writes are clamped to what is left after
    cache reads, so Anthropic's uncached ``input_tokens`` never goes negative.
    """
    return clamp_prompt_cache(behaviour.cached or 0, behaviour.cache_write or 0, prompt_tokens)


def clamp_prompt_cache(cached: int, cache_write: int, prompt_tokens: int) -> tuple[int, int]:
    """Clamp cache reads to the prompt and writes to what the reads leave over."""
    cached = min(cached, prompt_tokens)
    return cached, min(cache_write, prompt_tokens - cached)
