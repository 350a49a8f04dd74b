"""Byte-level recognition of chat completion chunks, for the Responses stream translator.

Pure functions over the bytes of one SSE event (`block[at:end]`): whether it is a chunk of
plain text (and where the text is), a run of such chunks, the role chunk, the finish
chunk or the usage chunk, each told by short searches and fixed-place comparisons rather
than by parsing the chunk; and `decoded`, the long way's parse of one event's data.

Substrings are looked for with `find(...) >= 0`, never `in`: CPython's `bytes.__contains__`
first tries its operand as an integer, raising and clearing a TypeError before it searches
(about 1,800 instructions a test, several times what the search costs).
"""

from __future__ import annotations

from itertools import repeat
from operator import is_
from typing import Any

import orjson

_NOT_JSON = object()
SKIP = object()  # half an event at the end of a cut stream: the cut itself, not an event
_CONTENT = b'{"content":"'
_CHOICE = b'"choices":[{"index":0,"delta":'
_TEXT_TAILS = (b'"},"logprobs":null,"finish_reason":null}]', b'"},"finish_reason":null}]')
_BACKSLASH = 92
_USAGE = b'"choices":[],"usage":{'
_ROLE = b'"choices":[{"index":0,"delta":{"role":"assistant","content":""'
_CHOICE_ENDS = (
    b',"logprobs":null,"finish_reason":%s}]',
    b',"finish_reason":%s}]',
    b',"finish_reason":%s,"logprobs":null}]',
)
_CHUNK_ENDS = (b"}", b',"usage":null}')
_ROLE_TAILS = frozenset(
    delta + choice % b"null" + chunk
    for delta in (b"}", b',"refusal":null}')
    for choice in _CHOICE_ENDS
    for chunk in _CHUNK_ENDS
)
_FINISH_TAILS = {
    b"{}" + choice % b'"%s"' % reason.encode() + chunk: reason
    for reason in ("stop", "length", "tool_calls", "content_filter")
    for choice in _CHOICE_ENDS
    for chunk in _CHUNK_ENDS
}


def text_span(block: bytes, at: int, end: int) -> tuple[int, int] | None:
    """Where the escaped text (a JSON string's inside) is in the event `block[at:end]` when
    it is a chunk whose only news is more text — one choice, a delta of non-empty `content`
    alone, no finish reason, no usage — as OpenAI, vLLM and SGLang send most chunks; else
    None.

    Short searches and fixed-place comparisons only: the chunk is not parsed. The text
    ends at the first `"}` after it starts unless that quote is escaped, and a text that
    ends in a backslash takes the long way rather than be told apart from one."""
    if not block.startswith(b"data: {", at):
        return None
    head = block.rfind(_CONTENT, at, end)
    if head < 0 or not block.startswith(_CHOICE, head - len(_CHOICE)):
        return None
    start = head + len(_CONTENT)
    stop = block.find(b'"}', start, end)
    if stop <= start or block[stop - 1] == _BACKSLASH:
        return None
    for tail in _TEXT_TAILS:
        if block.startswith(tail, stop):
            rest = stop + len(tail)
            break
    else:
        return None
    if end - rest > 1 and block.find(b'"usage":{', rest, end) >= 0:
        return None
    return start, stop


def text_run(block: bytes, at: int, prefix: bytes, suffix: bytes, pieces: list[bytes]) -> int:
    """The texts of the plain chunks from `at` on that are the chunk `text_span` just
    read with other text (`prefix` text `suffix`: one stream's chunks differ in their text
    alone), added to `pieces`; where the events after them start, or -1 when the run
    cannot be told apart in one go (the caller reads event by event).

    One split of the bytes at `{"content":"`, which ends the prefix and cannot occur in a
    JSON string (its quotes would be escaped): each piece then ends with the suffix and
    the prefix's start if the next chunk is another plain one. A piece is a whole chunk's
    text if it holds no newline (no event boundary), no quote that ends a string, and no
    backslash at its end (one escaping the suffix's quote). C loops only (`map`): every
    Python operation per chunk would cost about what the whole run does."""
    if not block.startswith(prefix, at):
        return at
    joint = suffix + prefix[: -len(_CONTENT)]
    segments = block[at + len(prefix) :].split(_CONTENT)
    texts = list(map(bytes.removesuffix, segments, repeat(joint)))
    kept = list(map(is_, texts, segments))  # True: not a text followed by another chunk
    if True in kept:
        count = kept.index(True)
        del texts[count:]
        # Its text ends with the suffix too if it is the last plain chunk before others.
        last = segments[count]
        stop = last.find(suffix)
        if stop >= 0 and last.find(b"\n", 0, stop) < 0:
            texts.append(last[:stop])
    if not texts:
        return at
    joined = b"".join(texts)
    if joined.find(b"\n") >= 0 or not _no_end_quote(joined):
        return -1
    if joined.find(b"\\") >= 0 and any(map(bytes.endswith, texts, repeat(b"\\"))):
        return -1
    pieces.append(joined)
    # Each text was one whole event: its prefix, the text, its suffix.
    return at + len(texts) * (len(prefix) + len(suffix)) + len(joined)


def _no_end_quote(text: bytes) -> bool:
    """Whether every quote in escaped text is escaped (the pairs `\\\\` escape nothing)."""
    if text.find(b'"') < 0:
        return True
    bare = text.replace(b"\\\\", b"")
    return bare.count(b'"') == bare.count(b'\\"')


def role_model(block: bytes, at: int, end: int) -> str | None:
    """The model of the event `block[at:end]` when it is a chunk that only gives the
    assistant role with empty content (the usual first chunk); else None."""
    if not block.startswith(b"data: {", at):
        return None
    choice = block.find(_ROLE, at, end)
    if choice < 0 or block[choice + len(_ROLE) : end] not in _ROLE_TAILS:
        return None
    name = block.find(b'"model":"', at, choice)
    if (
        name < 0
        or block.find(b'"usage":{', at, choice) >= 0
        or block.find(b'"error"', at, choice) >= 0
    ):
        return None
    name += 9
    close = block.find(b'"', name, choice)
    model = block[name:close]
    if close < 0 or model.find(b"\\") >= 0:
        return None
    try:
        return model.decode()
    except UnicodeDecodeError:
        return None


def finish_reason(block: bytes, at: int, end: int) -> str | None:
    """The finish reason of the event `block[at:end]` when it is a chunk with an empty
    delta and a finish reason only; else None."""
    if not block.startswith(b"data: {", at):
        return None
    choice = block.rfind(_CHOICE, at, end)
    if choice < 0:
        return None
    reason = _FINISH_TAILS.get(block[choice + len(_CHOICE) : end])
    if (
        reason is None
        or block.find(b'"usage":{', at, choice) >= 0
        or block.find(b'"error"', at, choice) >= 0
    ):
        return None
    return reason


# `chunk_heads` of a stream whose text chunks' heads are not known (or hold usage or an
# error): matches no event (every event starts `data:`).
NO_HEADS = (b"", b"-", b"-")


def chunk_heads(prefix: bytes) -> tuple[bytes, bytes, bytes]:
    """From a plain text chunk's bytes up to its text (`text_span`'s `data: {…"delta":
    {"content":"`): (`prefix`, the bytes its stream's finish chunk starts with — up to
    `"delta":` —, the bytes its usage chunk starts with — up to `"usage":{`). One stream's
    chunks share their members before `choices` (id, object, created, model…), so those
    chunks are then told by one comparison each (`finish_reason_after`, `usage_after`)."""
    head = prefix[: -len(_CONTENT)]
    base = head[: -len(_CHOICE)]
    if (
        not prefix.endswith(_CHOICE + _CONTENT)
        or base.find(b'"usage":{') >= 0
        or base.find(b'"error"') >= 0
    ):
        return (prefix, NO_HEADS[1], NO_HEADS[2])
    return (prefix, head, base + _USAGE)


def finish_reason_after(block: bytes, at: int, end: int, head: bytes) -> str | None:
    """`finish_reason(block, at, end)`, first by comparing the event with `head` (a finish
    chunk's start, `chunk_heads`): then only its tail is looked up. The same answer: the
    head holds no usage or error, and the tail no other `"choices":[{"index":0,"delta":`."""
    if block.startswith(head, at):
        reason = _FINISH_TAILS.get(block[at + len(head) : end])
        if reason is not None:
            return reason
    return finish_reason(block, at, end)


def usage_after(block: bytes, at: int, end: int, head: bytes) -> dict[str, Any] | None:
    """`usage_of(block, at, end)`, first by comparing the event with `head` (a usage chunk's
    start up to its usage object, `chunk_heads`). The same answer: the head holds no error
    and no other `"choices":[],"usage":{`, so the object parsed is the one `usage_of` parses."""
    if not block.startswith(head, at):
        return usage_of(block, at, end)
    try:
        usage: dict[str, Any] = orjson.loads(block[at + len(head) - 1 : end - 1])
    except orjson.JSONDecodeError:
        return None
    return usage


def usage_of(block: bytes, at: int, end: int) -> dict[str, Any] | None:
    """The usage of the event `block[at:end]` when it is a chunk with no choices and
    usage as its last member (the usual last chunk); else None."""
    start = block.find(_USAGE, at, end)
    if start < 0 or not block.startswith(b"data: {", at) or block.find(b'"error"', at, start) >= 0:
        return None
    try:
        # The object, then the chunk's closing brace: a JSON object or no parse at all.
        usage: dict[str, Any] = orjson.loads(block[start + len(_USAGE) - 1 : end - 1])
    except orjson.JSONDecodeError:
        return None
    return usage


def decoded(payload: bytes, cut: bool) -> Any:
    """A payload as a chunk: None for `[DONE]`, `_NOT_JSON` for garbage, `SKIP` for the
    unfinished last event of a cut stream."""
    if payload.strip() == b"[DONE]":
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return SKIP if cut else _NOT_JSON
