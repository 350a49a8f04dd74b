"""Chat completion chunks → Responses stream events, and replays of whole Response objects.

Every event is checked three ways: against its own schema in the OpenAI spec, against the
`ResponseStreamEvent` union, and by the OpenAI Python SDK (pydantic validation, then its own
stream accumulator, which is what `client.responses.stream()` runs).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.providers.responses_stream import (
    StreamTranslator,
    event_bytes,
    failed_event,
    replay_events,
)
from gateway.providers.responses_translate import response_from_chat
from tests.openapi import RESPONSE_EVENTS, check

REQUEST: dict[str, Any] = {
    "model": "chat",
    "input": "hi",
    "stream": True,
    "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
}
USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 9,
    "total_tokens": 21,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 3},
    "cost_usd": 0.25,
}
SDK_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def events(raw: bytes, first: int = 0, *, spec: bool = True) -> list[dict[str, Any]]:
    """Parse Responses SSE bytes, checking the framing, the spec and the sequence numbers."""
    assert raw.endswith(b"\n\n") or not raw
    assert b"[DONE]" not in raw
    parsed = []
    for block in raw.split(b"\n\n")[:-1]:
        name_line, data_line = block.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        data = orjson.loads(data_line[6:])
        assert data["type"] == name_line[7:].decode()
        if spec:
            check(RESPONSE_EVENTS[data["type"]], data, data["type"])
            check("ResponseStreamEvent", data, data["type"])
            SDK_EVENT.validate_python(data)
        parsed.append(data)
    assert [e["sequence_number"] for e in parsed] == list(range(first, first + len(parsed)))
    return parsed


def types(parsed: list[dict[str, Any]]) -> list[str]:
    return collapsed([e["type"].removeprefix("response.") for e in parsed])


def collapsed(kinds: list[str]) -> list[str]:
    """A run of text deltas counts as one: pieces that arrive in one read may go out as
    one delta, so how many there are depends on the reads."""
    out: list[str] = []
    for kind in kinds:
        if not (kind == "output_text.delta" and out and out[-1] == kind):
            out.append(kind)
    return out


def sdk_texts(parsed: list[dict[str, Any]]) -> tuple[str, str | None]:
    """What the SDK's `responses.stream()` accumulator makes of the events: the text it
    built from the deltas, and `output_text` of the completed response it parsed (None
    when the stream did not end in response.completed)."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for data in parsed:
        state.handle_event(SDK_EVENT.validate_python(data))
    snapshot = state._ResponseStreamState__current_snapshot  # type: ignore[attr-defined]
    built = "".join(
        part.text
        for item in snapshot.output
        if item.type == "message"
        for part in item.content
        if part.type == "output_text"
    )
    completed = state._completed_response
    return built, None if completed is None else completed.output_text


def sse(chunk: dict[str, Any] | str) -> bytes:
    return b"data: " + (chunk.encode() if isinstance(chunk, str) else orjson.dumps(chunk)) + b"\n\n"


def delta(finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": fields, "finish_reason": finish}],
    }


def call(
    index: int, arguments: str, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    piece: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        piece.update(id=call_id, type="function")
        piece["function"]["name"] = name
    return piece


def usage_chunk() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-model",
        "choices": [],
        "usage": USAGE,
    }


def chat(
    message: dict[str, Any], finish: str, usage: dict[str, Any] | None = USAGE
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def without_ids(response: dict[str, Any]) -> dict[str, Any]:
    return {**response, "output": [{**item, "id": "-"} for item in response["output"]]}


def run(
    blocks: list[bytes], *, finish: bool = True, spec: bool = True
) -> tuple[StreamTranslator, list[dict[str, Any]]]:
    translator = StreamTranslator(REQUEST, response_id="resp_1", created_at=100)
    raw = b"".join(translator.feed(block) for block in blocks)
    if finish:
        raw += translator.finish()
    return translator, events(raw, spec=spec)


# Scenarios: the chunks of a chat stream, the same answer unstreamed, the expected events.
REASONING_THEN_TEXT = (
    [
        sse(delta(role="assistant", content="")),
        sse(delta(reasoning_content="The user ")) + sse(delta(reasoning_content="says hi.")),
        sse(delta(content="Hel")),
        sse(delta(content="lo")) + sse(delta(content=" there")),
        sse(delta("stop")),
        sse(usage_chunk()),
        sse("[DONE]"),
    ],
    chat({"content": "Hello there", "reasoning_content": "The user says hi."}, "stop"),
    [
        "created",
        "in_progress",
        "output_item.added",
        "reasoning_summary_part.added",
        "reasoning_summary_text.delta",
        "reasoning_summary_text.delta",
        "reasoning_summary_text.done",
        "reasoning_summary_part.done",
        "output_item.done",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.delta",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "completed",
    ],
)
ONE_CALL_IN_THREE_PIECES = (
    [
        sse(delta(role="assistant", content=None, tool_calls=[call(0, "", "call_1", "weather")]))
        + sse(delta(tool_calls=[call(0, '{"ci')])),
        sse(delta(tool_calls=[call(0, 'ty":"Os')])) + sse(delta(tool_calls=[call(0, 'lo"}')])),
        # finish, usage and [DONE] in one read
        sse(delta("tool_calls")) + sse(usage_chunk()) + sse("[DONE]"),
    ],
    chat(
        {
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        "tool_calls",
    ),
    [
        "created",
        "in_progress",
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.delta",
        "function_call_arguments.delta",
        "function_call_arguments.done",
        "output_item.done",
        "completed",
    ],
)
TEXT_THEN_TWO_PARALLEL_CALLS = (
    [
        sse(delta(role="assistant", content="Checking both.")),
        sse(delta(tool_calls=[call(0, '{"city":', "call_a", "weather")])),
        sse(delta(tool_calls=[call(0, '"Paris"}')])),
        sse(delta(tool_calls=[call(1, '{"city":', "call_b", "weather")])),
        sse(delta(tool_calls=[call(1, '"Lyon"}')])),
        sse(delta("tool_calls")),
        sse("[DONE]"),  # no usage chunk at all
    ],
    chat(
        {
            "content": "Checking both.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Lyon"}'},
                },
            ],
        },
        "tool_calls",
        usage=None,
    ),
    [
        "created",
        "in_progress",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.delta",
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.delta",
        "function_call_arguments.done",
        "output_item.done",
        "function_call_arguments.done",
        "output_item.done",
        "completed",
    ],
)
CUT_BY_LENGTH = (
    [sse(delta(content="Once upon")), sse(delta("length")), sse(usage_chunk()), sse("[DONE]")],
    chat({"content": "Once upon"}, "length"),
    [
        "created",
        "in_progress",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "incomplete",
    ],
)
REFUSAL = (
    [
        sse(delta(refusal="I can't")),
        sse(delta(refusal=" help.")),
        sse(delta("stop")),
        sse(usage_chunk()),
    ],
    chat({"content": None, "refusal": "I can't help."}, "stop"),
    [
        "created",
        "in_progress",
        "output_item.added",
        "content_part.added",
        "refusal.delta",
        "refusal.delta",
        "refusal.done",
        "content_part.done",
        "output_item.done",
        "completed",
    ],
)
EMPTY = (
    [
        sse(delta(role="assistant", content="")),
        sse(delta("stop")),
        sse(usage_chunk()),
        sse("[DONE]"),
    ],
    chat({"content": ""}, "stop"),
    [
        "created",
        "in_progress",
        "output_item.added",
        "content_part.added",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "completed",
    ],
)
SCENARIOS = {
    "reasoning then text": REASONING_THEN_TEXT,
    "one call in three pieces": ONE_CALL_IN_THREE_PIECES,
    "text then two parallel calls": TEXT_THEN_TWO_PARALLEL_CALLS,
    "cut by length": CUT_BY_LENGTH,
    "refusal": REFUSAL,
    "empty": EMPTY,
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_streams_end_in_the_response_the_unstreamed_answer_gets(name: str) -> None:
    blocks, body, expected = SCENARIOS[name]
    translator, parsed = run(blocks)
    assert types(parsed) == collapsed(expected)
    assert translator.done
    assert translator.sequence_number == len(parsed)
    final = parsed[-1]["response"]
    assert final == translator.response
    unstreamed = response_from_chat(body, REQUEST, response_id="resp_1", created_at=100)
    assert without_ids(final) == without_ids(unstreamed)
    # Items keep one id from added to done, and the SDK rebuilds the same output.
    added = {e["output_index"]: e["item"]["id"] for e in parsed if e["type"].endswith("item.added")}
    done = {e["output_index"]: e["item"]["id"] for e in parsed if e["type"].endswith("item.done")}
    assert added == done == {i: item["id"] for i, item in enumerate(final["output"])}
    text = "".join(
        p["text"]
        for i in final["output"]
        if i["type"] == "message"
        for p in i["content"]
        if p["type"] == "output_text"
    )
    completed = text if final["status"] == "completed" else None
    assert sdk_texts(parsed) == (text, completed)
    assert translator.feed(sse(delta(content="late"))) == b""
    assert translator.finish() == b""


def test_the_created_events_and_the_usage_of_the_completed_one() -> None:
    _, parsed = run(REASONING_THEN_TEXT[0])
    created = parsed[0]["response"]
    assert created["status"] == "in_progress"
    assert created["output"] == []
    assert created["model"] == "upstream-model"  # from the first chunk in the same read
    assert "usage" not in created
    assert parsed[-1]["response"]["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 21,
        "cost_usd": 0.25,
    }
    incomplete = run(CUT_BY_LENGTH[0])[1][-1]["response"]
    assert incomplete["status"] == "incomplete"
    assert incomplete["incomplete_details"] == {"reason": "max_output_tokens"}
    assert incomplete["output"][-1]["status"] == "incomplete"


def test_the_completed_event_waits_for_the_usage_that_follows_the_finish_reason() -> None:
    translator = StreamTranslator(REQUEST, response_id="resp_1", created_at=100)
    raw = translator.feed(sse(delta(content="Hi")) + sse(delta("stop")))
    parsed = events(raw)
    assert types(parsed)[-1] == "output_item.done"  # items closed at once, the response not yet
    assert not translator.done
    assert translator.feed(sse(delta(content="late"))) == b""  # nothing after the finish
    tail = events(translator.feed(sse(usage_chunk())), first=len(parsed))
    assert types(tail) == ["completed"]
    assert tail[0]["response"]["usage"]["total_tokens"] == 21


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_any_split_of_the_bytes_gives_the_same_events(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(SCENARIOS)))
    blocks, _, expected = SCENARIOS[name]
    whole = b"".join(blocks)
    if data.draw(st.booleans()):
        whole = whole.replace(b"\n", b"\r\n")
    cuts = sorted(data.draw(st.sets(st.integers(1, len(whole) - 1), max_size=12)))
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    # Framing and sequence numbers are checked here; the spec, event by event, elsewhere.
    _, parsed = run(pieces, spec=False)
    assert types(parsed) == collapsed(expected)
    reference = run(blocks, spec=False)[1][-1]["response"]
    assert without_ids(parsed[-1]["response"]) == without_ids(reference)


def test_a_stream_without_index_on_its_tool_calls() -> None:
    blocks = [
        sse(delta(tool_calls=[{"id": "c1", "function": {"name": "f", "arguments": "{"}}])),
        sse(delta(tool_calls=[{"function": {"arguments": "}"}}])),
        sse(delta(tool_calls=[{"id": "c2", "function": {"name": "g", "arguments": "{}"}}])),
        sse(delta("tool_calls")),
        sse("[DONE]"),
    ]
    final = run(blocks)[1][-1]["response"]
    assert [(i["call_id"], i["name"], i["arguments"]) for i in final["output"]] == [
        ("c1", "f", "{}"),
        ("c2", "g", "{}"),
    ]


def test_interleaved_argument_pieces_stay_with_their_call() -> None:
    blocks = [
        sse(delta(tool_calls=[call(0, '{"a":', "c1", "f"), call(1, '{"b":', "c2", "g")])),
        sse(delta(tool_calls=[call(1, "2}")])),
        sse(delta(tool_calls=[call(0, "1}")])),
        sse(delta("tool_calls")) + sse(usage_chunk()),
    ]
    final = run(blocks)[1][-1]["response"]
    assert [i["arguments"] for i in final["output"]] == ['{"a":1}', '{"b":2}']


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (
            {"message": "Overloaded", "type": "server_error", "code": "rate_limit_exceeded"},
            "rate_limit_exceeded",
            "Overloaded",
        ),
        ({"message": "boom", "code": "upstream_error"}, "server_error", "boom"),
        ({"code": 500}, "server_error", "The upstream failed."),
        ("bad", "server_error", "bad"),
    ],
)
def test_an_upstream_error_event_ends_in_response_failed(
    error: Any, code: str, message: str
) -> None:
    translator = StreamTranslator(REQUEST, response_id="resp_1", created_at=100)
    raw = translator.feed(
        sse(delta(content="Half an ans")) + sse({"error": error}) + sse(delta(content="wer"))
    )
    parsed = events(raw)
    assert types(parsed)[-1] == "failed"
    assert types(parsed).count("output_text.delta") == 1
    failed = parsed[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": code, "message": message}
    assert failed["output"][0]["content"][0]["text"] == "Half an ans"  # what was sent is kept
    assert translator.done
    assert translator.response["status"] == "failed"
    assert translator.feed(sse("[DONE]")) == b"" and translator.finish() == b""


def test_a_chunk_that_is_not_json_fails_the_response() -> None:
    translator = StreamTranslator(REQUEST, response_id="resp_1", created_at=100)
    parsed = events(translator.feed(b"data: {not json\n\n"))
    assert types(parsed) == ["created", "in_progress", "failed"]
    assert translator.done


def test_a_stream_cut_early_is_left_to_the_caller() -> None:
    translator = StreamTranslator(REQUEST, response_id="resp_1", created_at=100)
    parsed = events(
        translator.feed(sse(delta(reasoning_content="Hmm")) + sse(delta(content="Part")))
    )
    assert translator.finish() == b""
    assert not translator.done
    so_far = translator.response
    check("Response", so_far)
    assert so_far["status"] == "in_progress"
    assert [i["type"] for i in so_far["output"]] == ["reasoning", "message"]
    assert so_far["output"][1]["content"][0]["text"] == "Part"
    assert so_far["output"][1]["status"] == "in_progress"
    # The relay ends it: a gateway code outside the spec's enum goes out as server_error.
    raw = failed_event(
        so_far,
        message="The upstream stream was cut.",
        code="upstream_error",
        sequence_number=translator.sequence_number,
    )
    [failed] = events(raw, first=len(parsed))
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {
        "code": "server_error",
        "message": "The upstream stream was cut.",
    }


def test_a_finish_reason_then_the_end_without_done_or_usage_closes_normally() -> None:
    translator = StreamTranslator(REQUEST, response_id="resp_1", created_at=100)
    raw = translator.feed(sse(delta(content="Hi")) + sse(delta("stop")))
    # The last event has no blank line after it: finish() still reads it.
    raw += translator.feed(
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}'
    )
    raw += translator.finish()
    parsed = events(raw)
    assert types(parsed)[-1] == "completed"
    assert parsed[-1]["response"]["usage"]["total_tokens"] == 2


def test_done_without_a_finish_reason_is_a_normal_stop_and_nothing_is_an_empty_message() -> None:
    _, parsed = run([sse("[DONE]")])
    assert types(parsed) == EMPTY[2]
    assert "usage" not in parsed[-1]["response"]


def test_the_first_feed_starts_the_response_even_before_a_whole_chunk() -> None:
    translator = StreamTranslator(REQUEST, response_id="resp_1", created_at=100)
    parsed = events(translator.feed(b'data: {"choices":[{"ind'))
    assert types(parsed) == ["created", "in_progress"]
    assert parsed[0]["response"]["model"] == "chat"  # no chunk read yet: the requested name
    assert translator.feed(b"") == b""
    assert translator.finish() == b""  # cut before any answer: the caller reports it
    assert not translator.done


def test_event_bytes_framing() -> None:
    assert event_bytes("response.in_progress", {"type": "response.in_progress", "x": 1}) == (
        b'event: response.in_progress\ndata: {"type":"response.in_progress","x":1}\n\n'
    )


# -- replays ----------------------------------------------------------------------------


def collapse(names: list[str]) -> list[str]:
    """Consecutive deltas of one kind as one (a replay sends each text whole)."""
    out: list[str] = []
    for name in names:
        if not (name.endswith(".delta") and out and out[-1] == name):
            out.append(name)
    return out


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n != "text then two parallel calls"])
def test_a_replayed_response_is_the_live_sequence(name: str) -> None:
    blocks, body, _ = SCENARIOS[name]
    response = response_from_chat(body, REQUEST, response_id="resp_1", created_at=100)
    parsed = events(replay_events(response))
    assert collapse(types(parsed)) == collapse(types(run(blocks)[1]))
    assert parsed[-1]["response"] == response
    assert parsed[0]["response"]["status"] == "in_progress"
    assert parsed[0]["response"]["output"] == [] and "usage" not in parsed[0]["response"]
    built, completed = sdk_texts(parsed)
    assert completed == (built if response["status"] == "completed" else None)


def test_a_replay_closes_each_call_before_the_next() -> None:
    _, body, _ = TEXT_THEN_TWO_PARALLEL_CALLS
    response = response_from_chat(body, REQUEST, response_id="resp_1", created_at=100)
    assert collapse(types(events(replay_events(response))))[8:] == [
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.done",
        "output_item.done",
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.done",
        "output_item.done",
        "completed",
    ]


def test_a_native_response_with_reasoning_text_and_other_items_replays() -> None:
    response = response_from_chat(
        chat({"content": "Done."}, "stop"), REQUEST, response_id="resp_1", created_at=100
    )
    response["output"][:0] = [
        {
            "id": "rs_1",
            "type": "reasoning",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "Think."}],
        },
        {
            "id": "ws_1",
            "type": "web_search_call",
            "status": "completed",
            "action": {"type": "search", "query": "q"},
        },
    ]
    parsed = events(replay_events(response))
    assert types(parsed)[2:12] == [
        "output_item.added",
        "content_part.added",
        "reasoning_text.delta",
        "reasoning_text.done",
        "content_part.done",
        "output_item.done",
        "output_item.added",
        "output_item.done",
        "output_item.added",
        "content_part.added",
    ]
    assert parsed[-1]["response"] == response


def test_a_failed_response_replays_as_failed() -> None:
    response = response_from_chat(
        chat({"content": "x"}, "stop"), REQUEST, response_id="resp_1", created_at=100
    )
    response.update(status="failed", error={"code": "server_error", "message": "m"}, output=[])
    assert types(events(replay_events(response))) == ["created", "in_progress", "failed"]


def _chunk(delta: dict[str, Any]) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
    body = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def test_text_pieces_of_one_read_go_out_as_one_delta_escapes_intact() -> None:
    head = _chunk({"role": "assistant", "content": ""}) + _chunk({"content": "Say "})
    one_read = _chunk({"content": "caf\u00e9"}) + _chunk({"content": "\n\\ ok"})
    quoted = _chunk({"content": ' "hi"'}) + _chunk({"content": "!"})
    # A text ending in a backslash, then one that looks like the chunk's end.
    slash = _chunk({"content": " a\\"}) + _chunk({"content": '"}'})
    _, parsed = run([head, one_read, quoted, slash, b"data: [DONE]\n\n"])
    deltas = [e["delta"] for e in parsed if e["type"] == "response.output_text.delta"]
    assert deltas[:3] == ["Say ", "caf\u00e9\n\\ ok", ' "hi"!']
    assert "".join(deltas[3:]) == ' a\\"}'
    final = parsed[-1]["response"]["output"][0]["content"][0]["text"]
    assert final == 'Say caf\u00e9\n\\ ok "hi"! a\\"}'
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet='ab "\\}{\n\u00e9\u2028/', min_size=1, max_size=8), max_size=8))
def test_any_text_comes_out_whole_fast_path_or_not(texts: list[str]) -> None:
    """Quotes, backslashes, braces: whatever the text, the fast path (bytes cut out of
    the chunk) and the long way together give back exactly what was streamed."""
    head = _chunk({"role": "assistant", "content": ""})
    blocks = [head, *(_chunk({"content": t}) for t in texts), b"data: [DONE]\n\n"]
    for grouped in (blocks, [b"".join(blocks)]):
        _, parsed = run(grouped)
        deltas = "".join(e["delta"] for e in parsed if e["type"] == "response.output_text.delta")
        assert deltas == "".join(texts)
        output = parsed[-1]["response"]["output"][0]["content"][0]["text"]
        assert output == "".join(texts)


def _openai(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    """A chunk as OpenAI sends it, member for member (the shape the fast paths read)."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    body = {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "gpt-x",
        "service_tier": "default",
        "system_fingerprint": "fp_1",
        "choices": [choice],
        "usage": None,
        **extra,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


OPENAI_STREAM = [
    _openai({"role": "assistant", "content": "", "refusal": None}),
    *(_openai({"content": t}) for t in ["Hi", " the", 're "', "\\", "re\n", "!"]),
    _openai({"content": "", "refusal": None, "tool_calls": None}),  # not plain: the long way
    _openai({"content": " end"}),
    _openai({}, "length"),
    b'data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":7,"model":"gpt-x",'
    b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":8,"total_tokens":11}}\n\n',
    b"data: [DONE]\n\n",
]


@pytest.mark.parametrize("reads", ["one read", "chunk per read", "pairs", "crlf"])
def test_the_fast_paths_give_what_the_long_way_gives(reads: str) -> None:
    """Role, text runs, finish and usage chunks read without parsing end in the events
    and the Response that parsing every chunk (CRLF: the long way) gives."""
    whole = b"".join(OPENAI_STREAM)
    blocks = {
        "one read": [whole],
        "chunk per read": OPENAI_STREAM,
        "pairs": [b"".join(OPENAI_STREAM[i : i + 2]) for i in range(0, len(OPENAI_STREAM), 2)],
        "crlf": [whole.replace(b"\n", b"\r\n")],
    }[reads]
    translator, parsed = run(blocks)
    assert types(parsed) == [
        "created",
        "in_progress",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "incomplete",
    ]
    assert parsed[0]["response"]["model"] == "gpt-x"
    final = parsed[-1]["response"]
    assert final == translator.response
    text = 'Hi there "\\re\n! end'
    assert final["output"][0]["content"][0]["text"] == text
    assert final["output"][0]["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["usage"]["total_tokens"] == 11
    deltas = "".join(e["delta"] for e in parsed if e["type"] == "response.output_text.delta")
    assert deltas == text
    done = [e for e in parsed if e["type"] == "response.output_text.done"]
    assert done[0]["text"] == text
    assert sdk_texts(parsed) == (text, None)
