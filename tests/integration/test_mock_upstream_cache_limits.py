"""The simulator's ``prompt_cache`` and ``rpm``/``tpm`` directives, over real HTTP.

Prompt arithmetic (see ``simulator/content.py``): ``ceil(chars / 4) + 3`` per
message; the cacheable prefix (leading system/developer messages, or the separate system
prompt) is counted the same way on its own.
"""

from __future__ import annotations

import calendar
import json
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from simulator.behaviour import resolve
from simulator.content import _text_chars, text_segments
from simulator.prompt_cache import PromptCaches, anthropic_prefix, chat_prefix
from simulator.ratelimit import RateLimits, openai_duration, rfc3339
from tests.simulator import reset_simulator, simulator_stats, start_simulator

# ceil(9 / 4) + 3 = 6 tokens
USER: list[dict[str, Any]] = [{"role": "user", "content": "Say hello"}]
USER_TOKENS = 6
LONG = "x" * 4400  # ceil(4400 / 4) + 3 = 1103 tokens as one message: over the 1024 minimum
LONG_TOKENS = 1103
OTHER = "y" * 4400
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant"}
OPENAI_RESET = re.compile(r"^(\d+ms|\d+(\.\d{1,3})?s|\d+m\d+(\.\d{1,3})?s)$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    url, stop = start_simulator()
    yield url
    stop()


@pytest.fixture(autouse=True)
def _reset(base_url: str) -> None:
    reset_simulator(base_url)


def post(
    url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """POST JSON; ``(status, lower-cased headers, parsed JSON or raw text)`` even on 4xx."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            status, raw_headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, raw_headers, raw = err.code, err.headers, err.read()
    found = {k.lower(): v for k, v in raw_headers.items()}
    text = raw.decode()
    try:
        return status, found, json.loads(text)
    except json.JSONDecodeError:
        return status, found, text


def chat(base_url: str, model: str, messages: list[dict[str, Any]], **extra: Any) -> Any:
    status, _, body = post(
        f"{base_url}/v1/chat/completions", {"model": model, "messages": messages, **extra}
    )
    assert status == 200, body
    return body


def cached_tokens(answer: Any) -> int:
    return int(answer["usage"]["prompt_tokens_details"]["cached_tokens"])


def system(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": text}, *USER]


# --- prompt_cache on the OpenAI wire --------------------------------------------------


def test_openai_hit_after_miss_and_distinct_prefixes(base_url: str) -> None:
    model = "sim-a::prompt_cache"
    first = chat(base_url, model, system(LONG))
    prompt = math.ceil((4400 + 9) / 4) + 3 * 2
    assert first["usage"]["prompt_tokens"] == prompt
    assert cached_tokens(first) == 0
    # OpenAI does not bill cache writes: a miss reports nothing extra.
    assert "cache_write_tokens" not in first["usage"]["prompt_tokens_details"]
    second = chat(base_url, model, system(LONG))
    assert cached_tokens(second) == LONG_TOKENS
    assert second["usage"]["prompt_tokens"] == prompt  # cached tokens stay inside prompt
    assert cached_tokens(chat(base_url, model, system(OTHER))) == 0
    # The first prefix is still cached; the user turn after it does not matter.
    later = [{"role": "system", "content": LONG}, {"role": "user", "content": "Other question"}]
    assert cached_tokens(chat(base_url, model, later)) == LONG_TOKENS
    tokens = simulator_stats(base_url)["tokens"]["sim-a"]
    assert tokens["cached"] == 2 * LONG_TOKENS
    assert tokens["cache_write"] == 0
    assert tokens["prompt"] == 3 * prompt + math.ceil((4400 + 14) / 4) + 6


def test_openai_caches_are_per_full_model_name(base_url: str) -> None:
    chat(base_url, "sim-a::prompt_cache", system(LONG))
    # A different suffix is a different deployment: its own, cold cache.
    assert cached_tokens(chat(base_url, "sim-b::prompt_cache", system(LONG))) == 0
    assert cached_tokens(chat(base_url, "sim-a::prompt_cache,tokens=2", system(LONG))) == 0
    assert cached_tokens(chat(base_url, "sim-a::prompt_cache", system(LONG))) == LONG_TOKENS
    assert cached_tokens(chat(base_url, "sim-b::prompt_cache", system(LONG))) == LONG_TOKENS
    # Without the directive nothing is cached (and the model's cache is not consulted).
    assert cached_tokens(chat(base_url, "sim-a", system(LONG))) == 0
    # Through the header the cache belongs to the bare model name.
    status, _, body = post(
        f"{base_url}/v1/chat/completions",
        {"model": "sim-h", "messages": system(LONG)},
        {"x-mock-behavior": "prompt_cache"},
    )
    assert status == 200 and cached_tokens(body) == 0
    status, _, body = post(
        f"{base_url}/v1/chat/completions",
        {"model": "sim-h", "messages": system(LONG)},
        {"x-mock-behavior": "prompt_cache"},
    )
    assert status == 200 and cached_tokens(body) == LONG_TOKENS


def test_openai_prefix_is_the_leading_system_and_developer_run(base_url: str) -> None:
    model = "sim-p::prompt_cache"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": LONG},
        {"role": "developer", "content": [{"type": "text", "text": "abcdefgh"}]},
        *USER,
    ]
    prefix = math.ceil((4400 + 8) / 4) + 3 * 2
    chat(base_url, model, messages)
    assert cached_tokens(chat(base_url, model, messages)) == prefix
    # Changing the developer message changes the prefix.
    changed: list[dict[str, Any]] = [
        messages[0],
        {"role": "developer", "content": "abcdefgX"},
        *USER,
    ]
    assert cached_tokens(chat(base_url, model, changed)) == 0
    # A system message after the first user turn is not part of the prefix.
    late = [*USER, {"role": "system", "content": LONG}]
    chat(base_url, model, late)
    assert cached_tokens(chat(base_url, model, late)) == 0


def test_openai_stream_usage_reports_the_hit(base_url: str) -> None:
    model = "sim-s::prompt_cache"
    chat(base_url, model, system(LONG))
    status, _, raw = post(
        f"{base_url}/v1/chat/completions",
        {
            "model": model,
            "messages": system(LONG),
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert status == 200
    chunks = [
        json.loads(line[6:])
        for line in raw.split("\n")
        if line.startswith("data: {") and '"usage":{' in line
    ]
    assert cached_tokens(chunks[-1]) == LONG_TOKENS
    assert simulator_stats(base_url)["tokens"]["sim-s"]["cached"] == LONG_TOKENS


def test_ttl_expiry_and_refresh_on_use(base_url: str) -> None:
    model = "sim-t::prompt_cache,prompt_cache_ttl=1"
    assert cached_tokens(chat(base_url, model, system(LONG))) == 0
    time.sleep(0.6)  # real time towards the 1 s cache TTL
    assert cached_tokens(chat(base_url, model, system(LONG))) == LONG_TOKENS
    time.sleep(0.6)  # past the first expiry, but the hit refreshed it
    assert cached_tokens(chat(base_url, model, system(LONG))) == LONG_TOKENS
    time.sleep(1.2)  # real time past the TTL since the last hit
    assert cached_tokens(chat(base_url, model, system(LONG))) == 0
    assert cached_tokens(chat(base_url, model, system(LONG))) == LONG_TOKENS


def test_min_prefix_tokens(base_url: str) -> None:
    short = "x" * 400  # 103 tokens
    for _ in range(2):  # under the default 1024 minimum: never cached
        assert cached_tokens(chat(base_url, "sim-m::prompt_cache", system(short))) == 0
    for _ in range(2):
        answer = chat(base_url, "sim-m::prompt_cache,prompt_cache_min=104", system(short))
        assert cached_tokens(answer) == 0
    chat(base_url, "sim-m::prompt_cache,prompt_cache_min=103", system(short))
    answer = chat(base_url, "sim-m::prompt_cache,prompt_cache_min=103", system(short))
    assert cached_tokens(answer) == 103


def test_explicit_directives_override_the_cache(base_url: str) -> None:
    model = "sim-o::prompt_cache,cached=5"
    assert cached_tokens(chat(base_url, model, system(LONG))) == 5
    assert cached_tokens(chat(base_url, model, system(LONG))) == 5
    # cached=0 is an explicit override too, not "unset".
    status, _, body = post(
        f"{base_url}/v1/chat/completions",
        {"model": "sim-o::prompt_cache", "messages": system(LONG)},
        {"x-mock-behavior": "cached=0"},
    )
    assert status == 200 and cached_tokens(body) == 0


def test_directive_validation(base_url: str) -> None:
    for model, key in (
        ("sim-v::prompt_cache_ttl=5", "prompt_cache_ttl"),
        ("sim-v::prompt_cache_min=5", "prompt_cache_min"),
        ("sim-v::prompt_cache,prompt_cache_ttl=0", "prompt_cache_ttl"),
        ("sim-v::rpm=0", "rpm"),
        ("sim-v::tpm=x", "tpm"),
    ):
        status, _, body = post(
            f"{base_url}/v1/chat/completions", {"model": model, "messages": USER}
        )
        assert status == 400, model
        assert body["error"]["code"] == "invalid_mock_directive"
        assert key in body["error"]["message"]
    # Turned off explicitly, the tuning keys are accepted.
    answer = chat(base_url, "sim-v::prompt_cache=0,prompt_cache_ttl=5", system(LONG))
    assert cached_tokens(answer) == 0


# --- prompt_cache on the Anthropic, Bedrock and Gemini wires --------------------------


def anthropic(base_url: str, model: str, system_prompt: Any, stream: bool = False) -> Any:
    body = {"model": model, "max_tokens": 50, "system": system_prompt, "messages": USER}
    if stream:
        body["stream"] = True
    status, _, answer = post(f"{base_url}/v1/messages", body, ANTHROPIC_HEADERS)
    assert status == 200, answer
    return answer


def test_anthropic_miss_writes_hit_reads(base_url: str) -> None:
    model = "claude-c::prompt_cache,tokens=2"
    prompt = math.ceil((4400 + 9) / 4) + 3 * 2
    miss = anthropic(base_url, model, LONG)["usage"]
    assert miss == {
        "input_tokens": prompt - LONG_TOKENS,
        "cache_creation_input_tokens": LONG_TOKENS,
        "cache_read_input_tokens": 0,
        "output_tokens": 2,
    }
    # The same text as a block with a cache_control marker is the same prefix.
    blocks = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]
    hit = anthropic(base_url, model, blocks)["usage"]
    assert hit["cache_read_input_tokens"] == LONG_TOKENS
    assert hit["cache_creation_input_tokens"] == 0
    assert hit["input_tokens"] == prompt - LONG_TOKENS
    # Streamed: message_start carries the cache usage.
    raw = anthropic(base_url, model, LONG, stream=True)
    start = json.loads(raw.split("\n")[1][len("data: ") :])
    assert start["message"]["usage"]["cache_read_input_tokens"] == LONG_TOKENS
    assert simulator_stats(base_url)["tokens"]["claude-c"] == {
        "prompt": 3 * prompt,
        "cached": 2 * LONG_TOKENS,
        "cache_write": LONG_TOKENS,
        "completion": 6,
        "reasoning": 0,
    }


def test_bedrock_and_gemini_prompt_cache(base_url: str) -> None:
    body = {
        "system": [{"text": LONG}],
        "messages": [{"role": "user", "content": [{"text": "Say hello"}]}],
    }
    url = f"{base_url}/model/nova%3A%3Aprompt_cache/converse"
    status, _, miss = post(url, body)
    assert status == 200, miss
    assert miss["usage"]["cacheWriteInputTokens"] == LONG_TOKENS
    assert miss["usage"]["cacheReadInputTokens"] == 0
    _, _, hit = post(url, body)
    assert hit["usage"]["cacheReadInputTokens"] == LONG_TOKENS
    assert hit["usage"]["cacheWriteInputTokens"] == 0
    assert hit["usage"]["inputTokens"] == USER_TOKENS

    url = f"{base_url}/v1beta/models/gem::prompt_cache:generateContent"
    body = {
        "systemInstruction": {"parts": [{"text": LONG}]},
        "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
    }
    status, _, miss = post(url, body)
    assert status == 200, miss
    assert "cachedContentTokenCount" not in miss["usageMetadata"]
    _, _, hit = post(url, body)
    assert hit["usageMetadata"]["cachedContentTokenCount"] == LONG_TOKENS
    tokens = simulator_stats(base_url)["tokens"]
    assert (tokens["nova"]["cached"], tokens["nova"]["cache_write"]) == (LONG_TOKENS, LONG_TOKENS)
    assert (tokens["gem"]["cached"], tokens["gem"]["cache_write"]) == (LONG_TOKENS, 0)


def test_failed_requests_cache_nothing(base_url: str) -> None:
    status, _, _ = post(
        f"{base_url}/v1/chat/completions",
        {"model": "sim-f::prompt_cache", "messages": system(LONG)},
        {"x-mock-behavior": "status=500"},
    )
    assert status == 500
    assert cached_tokens(chat(base_url, "sim-f::prompt_cache", system(LONG))) == 0


# --- rate limits ----------------------------------------------------------------------


def test_rpm_remaining_then_429(base_url: str) -> None:
    url = f"{base_url}/v1/chat/completions"
    body = {"model": "sim-r::rpm=3", "messages": USER}
    for remaining in (2, 1, 0):
        status, headers, _ = post(url, body)
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == str(remaining)
        assert OPENAI_RESET.match(headers["x-ratelimit-reset-requests"])
        assert "x-ratelimit-limit-tokens" not in headers
    status, headers, error = post(url, body)
    assert status == 429
    assert error["error"]["code"] == "rate_limit_exceeded"
    assert "Limit 3, Used 3" in error["error"]["message"]
    assert headers["x-ratelimit-remaining-requests"] == "0"
    retry = int(headers["retry-after"])
    retry_ms = int(headers["retry-after-ms"])
    assert 59 <= retry <= 60 and 58_000 < retry_ms <= 60_000
    assert retry == math.ceil(retry_ms / 1000)
    # Another deployment (different suffix) has its own window.
    status, headers, _ = post(url, {"model": "sim-r::rpm=3,tokens=1", "messages": USER})
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "2"
    # A stream carries the headers too; and a reset empties every window.
    reset_simulator(base_url)
    status, headers, _ = post(url, {**body, "stream": True})
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "2"
    requests = simulator_stats(base_url)["requests"]["sim-r"]
    assert requests["by_status"] == {"200": 1}


def test_429s_are_counted_and_consume_no_quota(base_url: str) -> None:
    url = f"{base_url}/v1/chat/completions"
    body = {"model": "sim-q::rpm=1", "messages": USER}
    statuses = [post(url, body)[0] for _ in range(4)]
    assert statuses == [200, 429, 429, 429]
    assert simulator_stats(base_url)["requests"]["sim-q"]["by_status"] == {"200": 1, "429": 3}


def test_tpm(base_url: str) -> None:
    url = f"{base_url}/v1/chat/completions"
    body = {"model": "sim-k::tpm=20", "messages": USER}  # 6 prompt tokens each
    for remaining in (14, 8, 2):
        status, headers, _ = post(url, body)
        assert status == 200
        assert headers["x-ratelimit-limit-tokens"] == "20"
        assert headers["x-ratelimit-remaining-tokens"] == str(remaining)
        assert OPENAI_RESET.match(headers["x-ratelimit-reset-tokens"])
        assert "x-ratelimit-limit-requests" not in headers
    status, headers, error = post(url, body)
    assert status == 429 and "TPM" in error["error"]["message"]
    assert int(headers["retry-after"]) >= 1


def test_anthropic_rate_limit_headers(base_url: str) -> None:
    url = f"{base_url}/v1/messages"
    body = {"model": "claude-r::rpm=2,tpm=1000", "max_tokens": 5, "messages": USER}
    before = time.time()
    for remaining in (1, 0):
        status, headers, _ = post(url, body, ANTHROPIC_HEADERS)
        assert status == 200
        assert headers["anthropic-ratelimit-requests-limit"] == "2"
        assert headers["anthropic-ratelimit-requests-remaining"] == str(remaining)
        reset = headers["anthropic-ratelimit-requests-reset"]
        assert RFC3339.match(reset)
        at = calendar.timegm(time.strptime(reset, "%Y-%m-%dT%H:%M:%SZ"))
        assert before + 59 <= at <= time.time() + 61
        assert headers["anthropic-ratelimit-input-tokens-limit"] == "1000"
        assert headers["anthropic-ratelimit-tokens-remaining"] == str(1000 - 6 * (2 - remaining))
        assert not any(k.startswith("x-ratelimit-") for k in headers)
    status, headers, error = post(url, body, ANTHROPIC_HEADERS)
    assert status == 429
    assert error == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": error["error"]["message"]},
    }
    assert int(headers["retry-after"]) >= 59
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_429_in_each_wire_format(base_url: str) -> None:
    converse = f"{base_url}/model/nova%3A%3Arpm%3D1/converse"
    body = {"messages": [{"role": "user", "content": [{"text": "Say hello"}]}]}
    assert post(converse, body)[0] == 200
    status, headers, error = post(converse, body)
    assert status == 429 and headers["x-amzn-errortype"].startswith("ThrottlingException")
    assert "message" in error and "retry-after" in headers

    gemini = f"{base_url}/v1beta/models/gem::rpm=1:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}
    status, headers, _ = post(gemini, body)
    assert status == 200 and not any("ratelimit" in k for k in headers)
    status, headers, error = post(gemini, body)
    assert status == 429 and error["error"]["status"] == "RESOURCE_EXHAUSTED"

    azure = f"{base_url}/openai/deployments/dep::rpm=1/chat/completions?api-version=2024-10-21"
    status, headers, _ = post(azure, {"messages": USER})
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "0"
    status, _, error = post(azure, {"messages": USER})
    assert status == 429 and error["error"]["code"] == "rate_limit_exceeded"


# --- the pieces, with an injected clock -----------------------------------------------


def test_sliding_window_with_injected_clock() -> None:
    limits = RateLimits()
    ok = limits.admit("m", "openai", 2, None, 5, now=0.0, wall=0.0)
    assert ok.admitted and ok.headers["x-ratelimit-remaining-requests"] == "1"
    assert ok.headers["x-ratelimit-reset-requests"] == "1m0s"
    ok = limits.admit("m", "openai", 2, None, 5, now=10.0, wall=10.0)
    assert ok.headers["x-ratelimit-reset-requests"] == "50s"
    refused = limits.admit("m", "openai", 2, None, 5, now=20.0, wall=20.0)
    assert refused.exceeded == "requests" and refused.wait == 40.0
    assert refused.headers["x-ratelimit-reset-requests"] == "40s"
    assert limits.admit("m", "openai", 2, None, 5, now=59.9).exceeded == "requests"
    assert limits.admit("m", "openai", 2, None, 5, now=60.0).admitted  # t=0 aged out
    # Tokens: waiting frees the oldest entries until the request fits.
    limits.clear()
    for t in (0.0, 1.0, 2.0):
        assert limits.admit("m", "anthropic", None, 30, 10, now=t, wall=1e9 + t).admitted
    refused = limits.admit("m", "anthropic", None, 30, 15, now=3.0, wall=1e9 + 3)
    assert refused.exceeded == "tokens" and refused.wait == 58.0  # two entries must go
    assert refused.headers["anthropic-ratelimit-tokens-reset"] == rfc3339(1e9 + 61)
    too_big = limits.admit("m", "anthropic", None, 30, 31, now=3.0)
    assert too_big.exceeded == "tokens" and too_big.wait == 60.0
    assert limits.admit("other", "gemini", 1, None, 1).headers == {}


def test_openai_duration_format() -> None:
    assert [openai_duration(s) for s in (0.0, 0.0004, 0.85, 1.2, 7.66, 60.0, 88.26, 360)] == [
        "0ms",
        "1ms",
        "850ms",
        "1.2s",
        "7.66s",
        "1m0s",
        "1m28.26s",
        "6m0s",
    ]


def test_prompt_cache_bounds_and_expiry() -> None:
    caches = PromptCaches(max_prefixes=2, max_models=2)
    assert not caches.use("m", b"a", ttl=10, now=0)
    assert caches.use("m", b"a", ttl=10, now=5)
    assert not caches.use("m", b"a", ttl=10, now=15.1)  # expired (refreshed at 5)
    caches.use("m", b"b", ttl=10, now=16)
    caches.use("m", b"c", ttl=10, now=16)  # evicts the least recently used, "a"
    assert not caches.use("m", b"a", ttl=10, now=17)
    caches.use("n", b"a", ttl=10, now=17)
    caches.use("o", b"a", ttl=10, now=17)  # a third model evicts "m"
    assert not caches.use("m", b"c", ttl=10, now=18)


def test_prefix_arithmetic_matches_prompt_arithmetic() -> None:
    content = [{"type": "text", "text": "ab"}, "cd", {"type": "tool_result", "content": "efg"}]
    assert sum(map(len, text_segments(content))) == _text_chars(content) == 7
    prefix = chat_prefix([{"role": "system", "content": "abcde"}, *USER])
    assert prefix is not None and prefix.tokens == 2 + 3
    assert chat_prefix(USER) is None and anthropic_prefix("") is None
    same = anthropic_prefix([{"type": "text", "text": "abcde"}])
    assert same == anthropic_prefix("abcde")
    assert resolve("prompt_cache", "").prompt_cache_min == 1024
    assert resolve("prompt_cache", "").prompt_cache_ttl == 300.0
