"""The simulator's OpenAI Responses API (`POST /v1/responses`) over real HTTP: every body and
every stream event against OpenAI's published spec, the directives, the 400s a gateway's
mistakes must hit, and the counts in `/_stats` and `/_invoice`."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.openapi import RESPONSE_EVENTS, check
from tests.simulator import start_simulator

USER_TOKENS = 6  # "Say hello": ceil(9 / 4) + 3, as chat counts one user message
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    url, stop = start_simulator()
    yield url
    stop()


@pytest.fixture(autouse=True)
def _reset(base_url: str) -> None:
    assert httpx.post(f"{base_url}/_reset").status_code == 200


def post(base_url: str, body: dict[str, Any], path: str = "/v1/responses") -> httpx.Response:
    return httpx.post(base_url + path, json=body, timeout=10)


def ok(base_url: str, body: dict[str, Any]) -> dict[str, Any]:
    """A 200 JSON Response, checked against the spec."""
    resp = post(base_url, body)
    assert resp.status_code == 200, resp.text
    payload: dict[str, Any] = resp.json()
    check("Response", payload, body["model"])
    return payload


def events(raw: str) -> list[dict[str, Any]]:
    """Parse an SSE body; check the framing, each event's schema and the numbering."""
    out = []
    for block in raw.split("\n\n"):
        if not block:
            continue
        head, data = block.split("\n", 1)
        assert head.startswith("event: ") and data.startswith("data: "), block
        event = json.loads(data[len("data: ") :])
        assert event["type"] == head[len("event: ") :]
        check("ResponseStreamEvent", event, event["type"])
        check(RESPONSE_EVENTS[event["type"]], event, event["type"])
        out.append(event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def streamed(base_url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    resp = post(base_url, {**body, "stream": True})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in resp.text
    return events(resp.text)


def stats(base_url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{base_url}/_stats").json()
    return result


def error(resp: httpx.Response, status: int, param: str | None) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    check("ErrorResponse", body)
    assert body["error"]["param"] == param
    message: str = body["error"]["message"]
    return message


# --- JSON ----------------------------------------------------------------------------


def test_text_answer_usage_and_stats(base_url: str) -> None:
    body = {"model": "sim-r::tokens=5", "input": "Say hello", "instructions": "Be terse"}
    payload = ok(base_url, body)
    assert payload["id"].startswith("resp_") and payload["status"] == "completed"
    assert payload["instructions"] == "Be terse" and payload["tools"] == []
    [message] = payload["output"]
    assert message["id"].startswith("msg_") and message["role"] == "assistant"
    assert message["content"][0]["text"] == "tok0 tok1 tok2 tok3 tok4"
    prompt = math.ceil((9 + 8) / 4) + 3 * 2  # instructions count as one more message
    assert payload["usage"] == {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + 5,
    }
    served = stats(base_url)
    assert {k: v for k, v in served["endpoints"].items() if v} == {"responses": 1}
    assert served["requests"]["sim-r"] == {"total": 1, "by_status": {"200": 1}, "stream": 0}
    assert served["tokens"]["sim-r"] == {
        "prompt": prompt,
        "cached": 0,
        "cache_write": 0,
        "completion": 5,
        "reasoning": 0,
    }


def test_items_count_like_chat_messages(base_url: str) -> None:
    items = [
        {"role": "developer", "content": "Rules"},  # 5 chars
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "abcd"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},  # adds nothing
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},  # 5 chars
    ]
    payload = ok(base_url, {"model": "m", "input": items})
    assert payload["usage"]["input_tokens"] == math.ceil(16 / 4) + 3 * 5


def test_reasoning_effort_and_directive(base_url: str) -> None:
    body = {"model": "m::tokens=2", "input": "Say hello", "reasoning": {"effort": "low"}}
    payload = ok(base_url, {**body, "include": ["reasoning.encrypted_content"]})
    reasoning, message = payload["output"]
    assert message["type"] == "message"
    assert reasoning["type"] == "reasoning" and reasoning["summary"][0]["text"]
    assert reasoning["encrypted_content"]
    assert payload["usage"]["output_tokens_details"] == {"reasoning_tokens": 16}
    assert payload["usage"]["output_tokens"] == 18
    assert payload["reasoning"] == {"effort": "low", "summary": None}
    directed = ok(base_url, {**body, "model": "m::tokens=2,reasoning=5"})
    assert directed["usage"]["output_tokens_details"] == {"reasoning_tokens": 5}
    assert stats(base_url)["tokens"]["m"]["reasoning"] == 21


def test_max_output_tokens_and_content_filter(base_url: str) -> None:
    capped = ok(base_url, {"model": "m::tokens=40", "input": "x", "max_output_tokens": 20})
    assert capped["status"] == "incomplete"
    assert capped["incomplete_details"] == {"reason": "max_output_tokens"}
    assert capped["output"][0]["status"] == "incomplete"
    assert capped["usage"]["output_tokens"] == 20
    short = ok(base_url, {"model": "m::tokens=3", "input": "x", "max_output_tokens": 20})
    assert short["status"] == "completed"  # a cap, not a length to fill
    filtered = ok(base_url, {"model": "m::content_filter", "input": "x"})
    assert filtered["incomplete_details"] == {"reason": "content_filter"}
    assert filtered["output"] == []
    message = error(
        post(base_url, {"model": "m", "input": "x", "max_output_tokens": 5}),
        400,
        "max_output_tokens",
    )
    assert ">= 16" in message


def test_function_calls_then_text(base_url: str) -> None:
    body = {"model": "m::tool_calls=2", "input": "Weather?", "tools": [WEATHER]}
    payload = ok(base_url, body)
    calls = payload["output"]
    assert [c["type"] for c in calls] == ["function_call", "function_call"]
    assert all(c["id"].startswith("fc_") and c["call_id"].startswith("call_") for c in calls)
    assert [json.loads(c["arguments"]) for c in calls] == [
        {"city": "tok", "days": 1},
        {"city": "tok1", "days": 1},
    ]
    assert payload["tools"][0]["name"] == "get_weather"
    single = ok(base_url, {**body, "parallel_tool_calls": False})
    assert len(single["output"]) == 1
    history = [
        {"role": "user", "content": "Weather?"},
        *calls,
        *(
            {"type": "function_call_output", "call_id": c["call_id"], "output": "sun"}
            for c in calls
        ),
    ]
    answer = ok(base_url, {**body, "input": history})
    assert [item["type"] for item in answer["output"]] == ["message"]
    forced = ok(base_url, {**body, "input": history, "tool_choice": "required"})
    assert forced["output"][0]["type"] == "function_call"
    none = ok(base_url, {**body, "tool_choice": "none"})
    assert none["output"][0]["type"] == "message"


def test_structured_output_logprobs_and_web_search(base_url: str) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}
    structured = ok(base_url, {"model": "m", "input": "x", "text": {"format": fmt}})
    assert json.loads(structured["output"][0]["content"][0]["text"]) == {"a": 0}
    spoiled = ok(
        base_url, {"model": "m::invalid_json_rate=1", "input": "x", "text": {"format": fmt}}
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(spoiled["output"][0]["content"][0]["text"])
    include = ["message.output_text.logprobs"]
    scored = ok(
        base_url, {"model": "m::tokens=2", "input": "x", "include": include, "top_logprobs": 2}
    )
    logprobs = scored["output"][0]["content"][0]["logprobs"]
    assert [(p["token"], len(p["top_logprobs"])) for p in logprobs] == [("tok0", 2), (" tok1", 2)]
    tools = [{"type": "web_search_preview"}]
    searched = ok(
        base_url, {"model": "m::builtin=web_search", "input": "Rain in Oslo?", "tools": tools}
    )
    search, message = searched["output"]
    assert search["type"] == "web_search_call" and search["status"] == "completed"
    assert search["action"] == {"type": "search", "query": "Rain in Oslo?"}
    assert message["type"] == "message"
    replied = ok(base_url, {"model": "m::reply=hi%2C there", "input": "x"})["output"][0]
    assert replied["content"][0]["text"] == "hi, there"
    choice = {"type": "web_search_preview"}  # forced: no function call though one is offered
    forced = {"model": "m::builtin=web_search", "input": "x", "tools": [WEATHER, *tools]}
    output = ok(base_url, {**forced, "tool_choice": choice})["output"]
    assert [item["type"] for item in output] == ["web_search_call", "message"]


def test_directive_faults(base_url: str) -> None:
    limited = post(base_url, {"model": "m::status=429,retry_after=2", "input": "x"})
    error(limited, 429, None)
    assert limited.headers["retry-after"] == "2"
    admitted = post(base_url, {"model": "rl::rpm=1", "input": "x"})
    assert admitted.headers["x-ratelimit-limit-requests"] == "1"
    over = error(post(base_url, {"model": "rl::rpm=1", "input": "x"}), 429, None)
    assert "requests per min (RPM)" in over
    long = post(base_url, {"model": "m::context_window=3", "input": "Say hello"})
    assert "context window" in error(long, 400, "input")
    assert long.json()["error"]["code"] == "context_length_exceeded"
    with pytest.raises(httpx.TransportError):
        post(base_url, {"model": "m::cut_after=1", "input": "x"})
    malformed = post(base_url, {"model": "m::malformed", "input": "x"})
    assert malformed.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        malformed.json()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/v1/responses", json={"model": "m::hang", "input": "x"}, timeout=0.3)
    served = stats(base_url)
    assert served["faults"]["cut"] == 1 and served["faults"]["malformed"] == 1
    assert "m" not in served["tokens"]  # no usage reached a client


def test_stateless_and_wrong_shapes_are_400(base_url: str) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools[0].name"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"role": "tool", "content": "x", "tool_call_id": "c"}]}, "input[0].role"),
        ({"input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}]}, "input"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": ""}]},
            "input",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"input": None}, "input"),
    ]
    for extra, param in cases:
        message = error(post(base_url, {"model": "m", "input": "x", **extra}), 400, param)
        if param == "previous_response_id":
            assert "not supported" in message
        if "file_search" in json.dumps(extra) or "web_search" in json.dumps(extra):
            assert extra["tools"][0]["type"] in message


def test_azure_route_and_prompt_cache(base_url: str) -> None:
    body = {
        "model": "dep::prompt_cache,prompt_cache_min=1",
        "instructions": "You are a careful assistant.",
        "input": "Say hello",
    }
    first = post(base_url, body, "/openai/v1/responses")
    assert first.status_code == 200 and first.headers["apim-request-id"]
    second = post(base_url, body, "/openai/responses?api-version=2025-04-01-preview").json()
    check("Response", second)
    assert first.json()["usage"]["input_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["input_tokens_details"]["cached_tokens"] == math.ceil(28 / 4) + 3
    assert stats(base_url)["endpoints"]["azure_responses"] == 2


def test_invoice_prices_responses_like_chat(base_url: str) -> None:
    ok(base_url, {"model": "sim-resp::tokens=7", "input": "Say hello"})
    chat = {"model": "sim-chat::tokens=7", "messages": [{"role": "user", "content": "Say hello"}]}
    assert post(base_url, chat, "/v1/chat/completions").status_code == 200
    prices = "price=sim-resp:2/8&price=sim-chat:2/8"
    raw = httpx.get(f"{base_url}/_invoice?format=generic&{prices}").text
    rows = [r for r in csv.DictReader(io.StringIO(raw))]
    by_model: dict[str, list[tuple[str, str, str]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append((r["token_type"], r["tokens"], r["amount_usd"]))
    assert by_model["sim-resp"] == by_model["sim-chat"]
    assert ("input_uncached", str(USER_TOKENS), "0.0000120000") in by_model["sim-resp"]


# --- SSE -----------------------------------------------------------------------------


def test_text_stream_events(base_url: str) -> None:
    body = {
        "model": "m::tokens=3",
        "input": "Say hello",
        "include": ["message.output_text.logprobs"],
    }
    stream = streamed(base_url, {**body, "reasoning": {"effort": "minimal"}})
    kinds = [e["type"] for e in stream]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.reasoning_summary_text.delta" in kinds
    deltas = [e for e in stream if e["type"] == "response.output_text.delta"]
    assert "".join(e["delta"] for e in deltas) == "tok0 tok1 tok2"
    assert [e["logprobs"][0]["token"] for e in deltas] == ["tok0", " tok1", " tok2"]
    final = stream[-1]["response"]
    check("Response", final)
    assert final["output"][1]["content"][0]["text"] == "tok0 tok1 tok2"
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 8}
    assert stats(base_url)["tokens"]["m"]["completion"] == 11


def test_call_search_and_incomplete_streams(base_url: str) -> None:
    calls = streamed(base_url, {"model": "m::tool_calls=2", "input": "x", "tools": [WEATHER]})
    done = [e for e in calls if e["type"] == "response.function_call_arguments.done"]
    assert [e["output_index"] for e in done] == [0, 1]
    for event in done:
        pieces = [
            e["delta"]
            for e in calls
            if e["type"] == "response.function_call_arguments.delta"
            and e["output_index"] == event["output_index"]
        ]
        assert "".join(pieces) == event["arguments"]
    searched = streamed(
        base_url,
        {"model": "m::builtin=web_search", "input": "x", "tools": [{"type": "web_search"}]},
    )
    kinds = [e["type"] for e in searched]
    assert kinds.index("response.web_search_call.completed") < kinds.index(
        "response.output_text.delta"
    )
    capped = streamed(base_url, {"model": "m::tokens=30", "input": "x", "max_output_tokens": 16})
    assert capped[-1]["type"] == "response.incomplete"
    assert capped[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    filtered = streamed(base_url, {"model": "m::content_filter", "input": "x"})
    assert [e["type"] for e in filtered][-1] == "response.incomplete"


def test_stream_faults(base_url: str) -> None:
    failing = streamed(base_url, {"model": "m::midstream_error=2,tokens=5", "input": "x"})
    assert [e["type"] for e in failing][-3:] == [
        "response.output_text.delta",
        "response.output_text.delta",
        "error",
    ]
    assert failing[-1]["code"] == "server_error"
    with httpx.stream(
        "POST",
        f"{base_url}/v1/responses",
        json={"model": "m::cut_after=2", "input": "x", "stream": True},
    ) as resp:
        received = b""
        with pytest.raises(httpx.TransportError):
            for piece in resp.iter_bytes():
                received += piece
    kinds = [e["type"] for e in events(received.decode())]
    assert kinds.count("response.output_text.delta") == 2 and "response.completed" not in kinds
    broken = post(base_url, {"model": "m::malformed", "input": "x", "stream": True})
    assert broken.status_code == 200 and "response.completed" not in broken.text
    served = stats(base_url)
    assert served["faults"]["midstream_error"] == 1 and served["faults"]["cut"] == 1
    assert "m" not in served["tokens"]
