"""One batch line answered by the live endpoint's own handler, in process.

A line's body goes through the same handler (:func:`.openai_wire.chat_completions`,
:func:`.responses_wire.responses`, :func:`.openai_extra.embeddings`) as a live request, so
its answer, its faults (``::status=500`` in the line's model…) and its token counts are
exactly the live endpoint's.  The handler sees a minimal stand-in request and a view of the
app state whose :class:`BatchStats` counts the line under ``batch_<endpoint>`` and its
usage as batch usage (:meth:`.stats.Stats.batch_daily`), billed apart on invoices.

Also the file formats around the lines: the input file's checks (:func:`read_lines`, each
problem naming its line) and the output and error files' records.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, cast

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy
from yarl import URL

from .errors import openai_error_body
from .openai_extra import embeddings
from .openai_wire import chat_completions
from .responses_wire import responses
from .runtime import STATE, SimState, new_id
from .stats import Stats

__all__ = [
    "ENDPOINT_HANDLERS",
    "BatchStats",
    "LineResult",
    "output_record",
    "read_lines",
    "run_line",
    "unrun_record",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The batch ``endpoint`` values served, and the live handler each line goes through.
ENDPOINT_HANDLERS: dict[str, Handler] = {
    "/v1/chat/completions": chat_completions,
    "/v1/responses": responses,
    "/v1/embeddings": embeddings,
}


class BatchStats:
    """The app's :class:`.stats.Stats` as a batch line records into it."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def endpoint(self, name: str, client_id: str | None = None) -> None:
        self._stats.endpoint(f"batch_{name}", client_id)

    def served(self, model: str, status: int | str, stream: bool) -> None:
        self._stats.served(model, status, stream, batch=True)

    def usage(self, model: str, **tokens: int) -> None:
        self._stats.usage(model, batch=True, **tokens)

    def today(self) -> date:
        return self._stats.today()

    def fault(self, kind: str) -> None:
        self._stats.fault(kind)

    def fault_count(self, kind: str) -> int:
        return self._stats.fault_count(kind)


class _LineState:
    """The app's :class:`.runtime.SimState` with :class:`BatchStats` in place of its stats
    (fail-first counters, RNG, prompt caches and rate limits are shared with live traffic,
    as they are upstream)."""

    def __init__(self, state: SimState) -> None:
        self._state = state
        self.stats = BatchStats(state.stats)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


class _LineRequest:
    """What the live handlers read from a request: app state, headers, body, no socket
    (a ``hang`` line therefore ends at once with a 504 instead of hanging the batch)."""

    def __init__(self, state: SimState, path: str, headers: Mapping[str, str], body: bytes):
        self.app = {STATE: _LineState(state)}
        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        self.query: MultiDictProxy[str] = MultiDictProxy(MultiDict())
        self.match_info: dict[str, str] = {}
        self.url = URL(path)
        self.transport = None
        self._body = body

    async def read(self) -> bytes:
        return self._body


@dataclass(slots=True)
class LineResult:
    status: int
    request_id: str
    body: Any

    @property
    def ok(self) -> bool:
        return self.status == 200


async def run_line(
    state: SimState, endpoint: str, body: dict[str, Any], headers: Mapping[str, str]
) -> LineResult:
    """Answer one line's ``body`` as ``endpoint`` would live; never raises."""
    if body.get("stream") is True:
        # OpenAI's batch API answers whole responses only; counted nowhere, as upstream
        # rejects such a line before it reaches a model.
        message = "Streaming is not supported in batch requests."
        error = openai_error_body(400, message, param="stream")
        return LineResult(400, new_id("req_"), error)
    request = _LineRequest(state, endpoint, headers, orjson.dumps(body))
    handler = ENDPOINT_HANDLERS[endpoint]
    try:
        response = await handler(cast(web.Request, request))
    except Exception:  # a stream-only fault (cut_after) needs a socket the line lacks
        return LineResult(500, new_id("req_"), openai_error_body(500))
    rid = response.headers.get("x-request-id") or new_id("req_")
    raw = response.body if isinstance(response, web.Response) else None
    try:
        parsed = orjson.loads(raw) if isinstance(raw, bytes) else None
    except orjson.JSONDecodeError:
        parsed = None
    if parsed is None:  # malformed answers: what a batch would report as a server error
        return LineResult(500, rid, openai_error_body(500))
    return LineResult(response.status, rid, parsed)


# -- the input and output files' lines ---------------------------------------------


def read_lines(raw: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(lines, validation errors), each error naming its 1-based line."""
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, text in enumerate(raw.splitlines(), start=1):
        if not text.strip():
            continue

        def bad(code: str, message: str, param: str | None = None, n: int = number) -> None:
            errors.append({"code": code, "message": message, "param": param, "line": n})

        try:
            line = orjson.loads(text)
        except orjson.JSONDecodeError:
            bad("invalid_json_line", f"Line {number} is not valid JSON.")
            continue
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            bad("missing_required_parameter", "Missing 'custom_id'.", "custom_id")
        elif line["custom_id"] in seen:
            bad("duplicate_custom_id", f"Duplicate custom_id {line['custom_id']!r}.", "custom_id")
        elif line.get("method") != "POST":
            bad("invalid_method", "Only POST is supported.", "method")
        elif line.get("url") != endpoint:
            bad("mismatched_endpoint", f"The url must be the batch's endpoint {endpoint}.", "url")
        elif not isinstance(line.get("body"), dict):
            bad("missing_required_parameter", "Missing 'body'.", "body")
        else:
            seen.add(line["custom_id"])
            lines.append(line)
    if not lines and not errors:
        errors.append({"code": "empty_file", "message": "The input file has no lines."})
    return lines, errors


def output_record(line: dict[str, Any], result: LineResult) -> bytes:
    return (
        orjson.dumps(
            {
                "id": new_id("batch_req_"),
                "custom_id": line["custom_id"],
                "response": {
                    "status_code": result.status,
                    "request_id": result.request_id,
                    "body": result.body,
                },
                "error": None,
            }
        )
        + b"\n"
    )


def unrun_record(line: dict[str, Any], code: str) -> bytes:
    why = "expired" if code == "batch_expired" else "was cancelled"
    message = f"This line was not executed because the batch {why}."
    entry = {
        "id": new_id("batch_req_"),
        "custom_id": line["custom_id"],
        "response": None,
        "error": {"code": code, "message": message},
    }
    return orjson.dumps(entry) + b"\n"
