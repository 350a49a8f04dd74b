"""The translated stream's shortcuts give exactly what the general ways give.

A stream's finish and usage chunks told by the head its text chunks share
(`responses_chunks.chunk_heads`, `finish_reason_after`, `usage_after`) against
`finish_reason` / `usage_of`, event by event and as whole translated streams (the same
bytes out, read in one piece or chunk by chunk); `TranslatedStream.blocks`' iterator object
against the async generator it replaced (same reads, same end, same cut); and the plain
Response skeleton's copies share no container.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Mapping
from itertools import product
from typing import Any

import orjson
import pytest

from gateway.api.responses_input import as_items
from gateway.errors import InvalidRequest
from gateway.providers import responses_items, responses_stream
from gateway.providers.base import CUT, UpstreamError
from gateway.providers.responses_bridge import (
    TranslatedStream,
    translatable,
    translated_request,
)
from gateway.providers.responses_chunks import (
    NO_HEADS,
    chunk_heads,
    finish_reason,
    finish_reason_after,
    text_span,
    usage_after,
    usage_of,
)
from gateway.providers.responses_opening import plain_echo, plain_opening
from gateway.providers.responses_output import response_skeleton
from gateway.providers.responses_stream import StreamTranslator
from gateway.providers.responses_translate import chat_request

REQUEST = {"model": "m", "input": "hi", "stream": True, "store": False, "max_output_tokens": 9}

# Members before `choices`, as different servers write them (and two that must not be read
# as a head: an error, usage).
HEADS: list[dict[str, Any]] = [
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"},
    {
        "id": "c2",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "sim::tokens=16",
        "service_tier": "default",
        "system_fingerprint": "fp_1",
    },
    {"id": "c3", "object": "chat.completion.chunk", "model": 'q"uoted\\'},
    {"id": "c4", "object": "chat.completion.chunk", "model": "m", "error": None},
    {"id": "c5", "object": "chat.completion.chunk", "model": "m", "usage": {"x": 1}},
]
FINISHES = ["stop", "length", "tool_calls", "content_filter"]


def _event(head: dict[str, Any], rest: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps({**head, **rest}) + b"\n\n"


def _choice(delta: dict[str, Any], finish: str | None, logprobs: bool = True) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta}
    if logprobs:
        choice["logprobs"] = None
    choice["finish_reason"] = finish
    return {"choices": [choice]}


def _text(head: dict[str, Any], text: str) -> bytes:
    rest = _choice({"content": text}, None)
    if "usage" not in head:  # (a head with usage keeps it)
        rest["usage"] = None
    return _event(head, rest)


def _events(head: dict[str, Any]) -> list[bytes]:
    """Every kind of event one stream's head can start: text, role, finish chunks of every
    reason and shape, usage chunks (usual, with more after the usage, not an object), an
    error, [DONE]."""
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    out = [
        _text(head, "hel"),
        _event(head, _choice({"role": "assistant", "content": ""}, None)),
        _event(head, {"choices": [], "usage": usage}),
        _event(head, {"choices": [], "usage": usage, "obfuscation": "x"}),
        _event(head, {"choices": [], "usage": None}),
        _event(head, {"error": {"message": "boom"}}),
        b"data: [DONE]\n\n",
        b'data: {"choices":[],"usage":{"prompt_tokens":1}\n\n',  # cut JSON
    ]
    for finish, logprobs, usage_null in product(FINISHES, (True, False), (True, False)):
        rest = _choice({}, finish, logprobs)
        if usage_null:
            rest["usage"] = None
        out.append(_event(head, rest))
    out.append(_event(head, _choice({"content": "x"}, "stop")))
    return out


def _heads_of(head: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    event = _text(head, "hel")
    span = text_span(event, 0, len(event) - 2)
    assert span is not None
    return chunk_heads(event[: span[0]])


@pytest.mark.parametrize("stream_head", HEADS)
@pytest.mark.parametrize("event_head", HEADS)
def test_finish_and_usage_by_head_are_the_general_answers(
    stream_head: dict[str, Any], event_head: dict[str, Any]
) -> None:
    _, finish_head, usage_head = _heads_of(stream_head)
    for event in _events(event_head):
        end = len(event) - 2
        assert finish_reason_after(event, 0, end, finish_head) == finish_reason(event, 0, end)
        assert usage_after(event, 0, end, usage_head) == usage_of(event, 0, end)


def test_heads_holding_an_error_or_usage_are_not_used() -> None:
    for head in HEADS[3:]:
        assert _heads_of(head)[1:] == NO_HEADS[1:]
    assert _heads_of(HEADS[0])[1:] != NO_HEADS[1:]


def _stream(head: dict[str, Any], finish: str, usage_first: bool = False) -> list[bytes]:
    usage = {
        "prompt_tokens": 4,
        "completion_tokens": 3,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 1},
    }
    events = [_event(head, {**_choice({"role": "assistant", "content": ""}, None)})]
    events += [_text(head, t) for t in ("Hel", 'lo "x"', " \\ there", "\n!")]
    usage_event = _event(head, {"choices": [], "usage": usage})
    finish_event = _event(head, {**_choice({}, finish), "usage": None})
    events += [usage_event, finish_event] if usage_first else [finish_event, usage_event]
    return [*events, b"data: [DONE]\n\n"]


def _translated(blocks: list[bytes]) -> tuple[bytes, dict[str, Any] | None, dict[str, Any]]:
    translator = StreamTranslator(REQUEST, response_id="resp_1", created_at=7)
    out = b"".join(translator.feed(block) for block in blocks) + translator.finish()
    return out, translator.final_usage(), translator.response


@pytest.mark.parametrize("usage_first", [False, True])
@pytest.mark.parametrize("finish", ["stop", "length"])
@pytest.mark.parametrize("head", HEADS)
def test_streams_end_the_same_with_or_without_the_heads(
    head: dict[str, Any], finish: str, usage_first: bool
) -> None:
    events = _stream(head, finish, usage_first)
    splits = {
        "one read": [b"".join(events)],
        "chunk per read": events,
        "pairs": [b"".join(events[i : i + 2]) for i in range(0, len(events), 2)],
    }
    for blocks in splits.values():
        with pytest.MonkeyPatch.context() as patch:
            for module in (responses_stream, responses_items):
                patch.setattr(module, "new_id", lambda prefix: prefix + "1")
            fast = _translated(blocks)
            patch.setattr(responses_stream, "chunk_heads", lambda prefix: (prefix, *NO_HEADS[1:]))
            general = _translated(blocks)
        assert fast == general
        assert b"response.output_text.done" in fast[0]


@pytest.mark.parametrize("finish", ["stop", "length"])
@pytest.mark.parametrize("head", HEADS[:3])
def test_an_end_read_at_once_is_the_end_read_event_by_event(
    head: dict[str, Any], finish: str
) -> None:
    """The finish and usage chunks in one read close the message and the response in one
    join (`_end_at_once`): the bytes, usage and Response of the general way, which the
    same events read one per read take."""
    events = _stream(head, finish)
    taken: list[bool] = []
    end_at_once = StreamTranslator._end_at_once

    def spy(self: StreamTranslator, *args: Any) -> bool:
        taken.append(end_at_once(self, *args))
        return taken[-1]

    with pytest.MonkeyPatch.context() as patch:
        for module in (responses_stream, responses_items):
            patch.setattr(module, "new_id", lambda prefix: prefix + "1")
        patch.setattr(StreamTranslator, "_end_at_once", spy)
        at_once = _translated([*events[:-3], b"".join(events[-3:])])
        assert taken == [True]
        taken.clear()
        general = _translated(events)
        assert taken == [False]  # the usage chunk was not in the finish chunk's read
    assert at_once == general
    assert at_once[0].count(b"event: response.output_item.done\n") == 1


def test_delta_events_count_what_was_written() -> None:
    events = _stream(HEADS[1], "stop")
    for blocks in ([b"".join(events)], events):
        translator = StreamTranslator(REQUEST, response_id="resp_1", created_at=7)
        out = b"".join(translator.feed(block) for block in blocks)
        assert translator.delta_events == out.count(b"event: response.output_text.delta\n")
        assert translator.delta_events >= 1


# -- TranslatedStream.blocks ------------------------------------------------------------


class _Upstream:
    def __init__(self, blocks: list[bytes], error: UpstreamError | None = None) -> None:
        self._blocks, self._error = blocks, error
        self.request_id: str | None = "req-up"
        self.limits: Mapping[str, str] | None = None

    async def blocks(self) -> AsyncIterator[bytes]:
        for block in self._blocks:
            yield block
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        return None


async def _generator_reads(
    upstream: _Upstream, translator: StreamTranslator
) -> AsyncIterator[bytes]:
    """The async generator `TranslatedStream.blocks` was, kept here as the reference."""
    async for block in upstream.blocks():
        out = translator.feed(block)
        if out:
            yield out
        if translator.done:
            return
    tail = translator.finish()
    if tail:
        yield tail
    if not translator.done:
        raise UpstreamError(CUT, "dep ended the stream before its end")


async def _collect(reads: AsyncIterator[bytes]) -> tuple[list[bytes], str | None]:
    out: list[bytes] = []
    try:
        async for block in reads:
            out.append(block)
    except UpstreamError as exc:
        return out, f"{exc.kind}: {exc.message}"
    return out, None


def _cases() -> list[tuple[list[bytes], UpstreamError | None]]:
    events = _stream(HEADS[1], "stop")
    broken = UpstreamError(CUT, "dep stream broke")
    return [
        (events, None),  # a whole stream, chunk per read
        ([b"".join(events)], None),  # one read
        (events[:-2], None),  # no usage, no [DONE]: closed by finish()
        (events[:3], None),  # cut before the finish reason
        ([*events[:3], events[3][:20]], None),  # cut mid-event
        ([], None),  # nothing at all
        (events[:3], broken),  # the upstream failed
        (events, broken),  # failed after its end: never read
    ]


@pytest.mark.parametrize("case", range(len(_cases())))
def test_translated_reads_are_the_generator_reads(case: int) -> None:
    blocks, error = _cases()[case]

    async def both() -> tuple[Any, Any]:
        with pytest.MonkeyPatch.context() as patch:
            for module in (responses_stream, responses_items):
                patch.setattr(module, "new_id", lambda prefix: prefix + "1")
            reference = StreamTranslator(REQUEST, response_id="resp_1", created_at=7)
            expected = await _collect(_generator_reads(_Upstream(blocks, error), reference))
            translator = StreamTranslator(REQUEST, response_id="resp_1", created_at=7)
            stream = TranslatedStream("dep", _Upstream(blocks, error), translator)
            reads = stream.blocks()
            got = await _collect(reads)
            with pytest.raises((StopAsyncIteration, UpstreamError)):
                await anext(reads)  # and nothing after the end
        return expected, got

    expected, got = asyncio.run(both())
    assert got == expected


def test_plain_skeletons_share_no_container() -> None:
    one = response_skeleton(REQUEST, response_id="resp_1", created_at=7, model="m")
    two = response_skeleton(REQUEST, response_id="resp_2", created_at=7, model="m")
    for key in ("output", "text", "tools", "metadata"):
        assert one[key] == two[key]
        assert one[key] is not two[key]
    assert one["text"]["format"] is not two["text"]["format"]


_OPENING_REQUESTS: list[dict[str, Any]] = [
    REQUEST,
    {"model": "m", "input": "hi"},
    {"model": "m", "input": "hi", "store": True, "max_output_tokens": True},
    {"model": "m", "input": "hi", "store": None, "max_output_tokens": False},
    {"model": "", "input": "hi", "max_output_tokens": None},
    {"model": 'caf\u00e9 "x" \\ \n \u2028', "input": [], "stream": True},
]


@pytest.mark.parametrize("request_body", _OPENING_REQUESTS)
@pytest.mark.parametrize("model", [None, "served", 'q"\\\u00e9\x01', 7])
def test_plain_opening_is_the_dumped_skeleton(request_body: dict[str, Any], model: Any) -> None:
    assert plain_echo(request_body)
    created: list[Any] = [7, 0, 1.5]  # (a float only as the general way's check)
    for response_id, created_at in zip(("resp_1", 'r"\u00e9', "resp_2"), created, strict=True):
        dumped = orjson.dumps(
            response_skeleton(
                request_body, response_id=response_id, created_at=created_at, model=model
            )
        )
        assert plain_opening(request_body, response_id, created_at, model) == dumped


@pytest.mark.parametrize("request_body", _OPENING_REQUESTS)
def test_a_plain_stream_is_the_stream_of_an_eager_skeleton(request_body: dict[str, Any]) -> None:
    """The usual request's translator makes its skeleton dict only when asked: the same
    events and Response as one that made it at the start (the general way)."""
    blocks = _stream(HEADS[1], "length")
    failing = [*blocks[:3], b"data: not json\n\n"]
    whole = b"".join(blocks)
    for reads in ([whole], blocks, failing, [whole[:40], whole[40:]]):
        with pytest.MonkeyPatch.context() as patch:
            for module in (responses_stream, responses_items):
                patch.setattr(module, "new_id", lambda prefix: prefix + "1")
            lazy = StreamTranslator(request_body, response_id="resp_1", created_at=7)
            patch.setattr(responses_items, "plain_echo", lambda request: False)
            eager = StreamTranslator(request_body, response_id="resp_1", created_at=7)
            outs = [b"".join(t.feed(block) for block in reads) + t.finish() for t in (lazy, eager)]
        assert outs[0] == outs[1]
        assert lazy.response == eager.response
        assert lazy.final_usage() == eager.final_usage()


_BUILT_IN_CALL = {"type": "web_search_call", "id": "ws_1", "status": "completed"}
_USER_A = {"type": "message", "role": "user", "content": "a"}
_PARTS = {"role": "user", "content": [{"type": "input_text", "text": "a"}]}


def _translation(translate: Any, request_body: dict[str, Any]) -> bytes | str:
    try:
        return orjson.dumps(translate(copy.deepcopy(request_body)))
    except InvalidRequest as exc:
        return f"refused: {exc}"


@pytest.mark.parametrize(
    "request_body",
    [
        *_OPENING_REQUESTS,
        {"model": "m", "input": [{"role": "user", "content": "hi"}, _BUILT_IN_CALL]},
        {"model": "m", "input": [_BUILT_IN_CALL, _USER_A]},
        {"model": "m", "input": [_PARTS]},
        {"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}]},
        {"model": "m", "input": "hi", "instructions": "Be brief.", "temperature": 0.5},
    ],
)
def test_translated_request_is_the_general_translation(request_body: dict[str, Any]) -> None:
    general = _translation(lambda body: chat_request(translatable(body)), request_body)
    assert _translation(translated_request, request_body) == general


@pytest.mark.parametrize("text", ["hi", "", 'caf\u00e9 "q" \\ \n'])
@pytest.mark.parametrize(
    "fields",
    [{}, {"max_output_tokens": 9, "stream": True}, {"instructions": "Be brief.", "top_p": 1}],
)
def test_a_string_input_translates_as_its_one_message(text: str, fields: dict[str, Any]) -> None:
    """POST /v1/responses leaves a string input as sent (gateway/api/responses.py): it must
    translate exactly as the one user message it stands for."""
    as_string = {"model": "m", "input": text, **fields}
    as_item = {**as_string, "input": as_items(text)}
    assert _translation(translated_request, as_string) == _translation(translated_request, as_item)
