"""OpenAI Batch API: ``POST /v1/batches``, ``GET /v1/batches[/{id}]``,
``POST /v1/batches/{id}/cancel``, run in memory against the live handlers.

A batch reads its JSONL input file from :mod:`.files_wire` (purpose ``batch``), checks every
line (``custom_id``, ``method`` POST, ``url`` equal to the batch's ``endpoint``; otherwise
the batch is ``failed`` with an error naming the line), then answers the lines in order
through :func:`.batch_lines.run_line`:
``validating → in_progress → finalizing → completed``.  Each 200 goes to the output file,
anything else to the error file, both one JSONL line per input line in OpenAI's shape.

Timing: the whole batch takes ``x-mock-batch-delay: SECONDS`` (a header on the create
request) or metadata ``sim_delay`` seconds, spread evenly before its lines (default 0: as
fast as the lines' own directives allow).  ``POST /_clock?advance=SECONDS`` moves the
simulator clock forward; a batch still running when the clock passes its ``expires_at``
(``completion_window`` 24h) ends ``expired``; a cancelled one goes ``cancelling`` then
``cancelled``.  Both keep the lines already answered, and write the rest to the error file
with error code ``batch_expired`` / ``batch_cancelled``.

Billing: metadata ``sim_bill_live: "true"`` makes the invoices bill the batch's lines at the
live price, still as batch line items (:mod:`.batch_billing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from aiohttp import web

from .batch_billing import LIVE_BILLED, BillLiveState, LiveBilled, wants_live_billing
from .batch_lines import (
    ENDPOINT_HANDLERS,
    output_record,
    read_lines,
    run_line,
    unrun_record,
)
from .errors import openai_error_body
from .files_wire import FILES
from .invoices import clock as billing_clock
from .runtime import STATE, SimState, new_id

__all__ = ["BATCHES", "BatchStore", "batch_routes"]

_WINDOW_S = {"24h": 86_400}
_TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})


@dataclass(slots=True)
class _Batch:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    expires_at: int
    delay: float
    headers: dict[str, str]
    status: str = "validating"
    model: str | None = None
    stamps: dict[str, int | None] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: {"total": 0, "completed": 0, "failed": 0}
    )
    usage: dict[str, int] = field(
        default_factory=lambda: {"input": 0, "cached": 0, "output": 0, "reasoning": 0}
    )
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    #: Set when the batch must stop early; the value is the status it ends in.
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stop_as: str = ""

    def public(self) -> dict[str, Any]:
        u = self.usage
        s = self.stamps
        # Fields not reached yet are left out: the spec has them non-nullable.
        whole = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": s.get("in_progress"),
            "expires_at": self.expires_at,
            "finalizing_at": s.get("finalizing"),
            "completed_at": s.get("completed"),
            "failed_at": s.get("failed"),
            "expired_at": s.get("expired"),
            "cancelling_at": s.get("cancelling"),
            "cancelled_at": s.get("cancelled"),
            "request_counts": dict(self.counts),
            "usage": {
                "input_tokens": u["input"],
                "input_tokens_details": {"cached_tokens": u["cached"]},
                "output_tokens": u["output"],
                "output_tokens_details": {"reasoning_tokens": u["reasoning"]},
                "total_tokens": u["input"] + u["output"],
            },
            "metadata": self.metadata,
        }
        return {key: value for key, value in whole.items() if value is not None}


class BatchStore:
    """Batches by id, their runner tasks, and the simulator clock's offset."""

    def __init__(self) -> None:
        self.batches: dict[str, _Batch] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.offset = 0.0
        self.live_billed = LiveBilled()

    def now(self) -> int:
        return int(time.time() + self.offset)

    def check_expiry(self) -> None:
        now = self.now()
        for batch in self.batches.values():
            if batch.status not in _TERMINAL and not batch.stop_as and now >= batch.expires_at:
                batch.stop_as = "expired"
                batch.stop.set()

    def clear(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()
        self.batches.clear()
        self.offset = 0.0
        self.live_billed.clear()


BATCHES: web.AppKey[BatchStore] = web.AppKey("sim_batches", BatchStore)


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    code = "not_found" if status == 404 else None
    body = openai_error_body(status, message, code=code, param=param)
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _json(payload: Any) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


def _denied(request: web.Request) -> web.Response | None:
    bearer = request.app[STATE].bearer
    if bearer is None or request.headers.get("Authorization") == bearer:
        return None
    return _error(401, "Incorrect API key provided.")


def _add_usage(batch: _Batch, body: Any) -> None:
    found = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(found, dict):
        return
    usage: dict[str, Any] = found
    u = batch.usage
    u["input"] += usage.get("prompt_tokens", usage.get("input_tokens", 0))
    u["output"] += usage.get("completion_tokens", usage.get("output_tokens", 0))
    details: dict[str, int] = (
        usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    )
    u["cached"] += details.get("cached_tokens", 0)
    out: dict[str, int] = (
        usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    )
    u["reasoning"] += out.get("reasoning_tokens", 0)


async def _run(app: web.Application, batch: _Batch) -> None:
    store, files = app[BATCHES], app[FILES]
    await asyncio.sleep(0)  # the create call answers `validating` first
    source = files.files.get(batch.input_file_id)
    lines, errors = read_lines(source.data if source else b"", batch.endpoint)
    if errors:
        batch.errors = errors
        batch.status = "failed"
        batch.stamps["failed"] = store.now()
        return
    model = lines[0]["body"].get("model")
    batch.model = model if isinstance(model, str) else None
    batch.counts["total"] = len(lines)
    batch.status = "in_progress"
    batch.stamps["in_progress"] = store.now()
    out: list[bytes] = []
    err: list[bytes] = []
    state = app[STATE]
    if wants_live_billing(batch.metadata):
        state = cast(SimState, BillLiveState(state, store.live_billed))
    pause = batch.delay / len(lines)
    for i, line in enumerate(lines):
        if pause > 0 and not batch.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.stop.wait(), pause)
        store.check_expiry()
        if batch.stop.is_set():
            for rest in lines[i:]:
                err.append(unrun_record(rest, f"batch_{batch.stop_as}"))
            batch.counts["failed"] += len(lines) - i
            break
        result = await run_line(state, batch.endpoint, line["body"], batch.headers)
        record = output_record(line, result)
        if result.ok:
            out.append(record)
            batch.counts["completed"] += 1
            _add_usage(batch, result.body)
        else:
            err.append(record)
            batch.counts["failed"] += 1
    final = batch.stop_as or "completed"
    if final == "completed":
        batch.status = "finalizing"
        batch.stamps["finalizing"] = store.now()
        await asyncio.sleep(0)
    name = batch.id
    if out:
        batch.output_file_id = files.add(f"{name}_output.jsonl", "batch_output", b"".join(out)).id
    if err:
        batch.error_file_id = files.add(f"{name}_error.jsonl", "batch_output", b"".join(err)).id
    batch.status = final
    batch.stamps[final] = store.now()


def _delay(request: web.Request, metadata: dict[str, str] | None) -> float | None:
    raw = request.headers.get("x-mock-batch-delay") or (metadata or {}).get("sim_delay") or "0"
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


async def create_batch(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return _error(400, "We could not parse the JSON body of your request.")
    endpoint = body.get("endpoint")
    if endpoint not in ENDPOINT_HANDLERS:
        allowed = ", ".join(ENDPOINT_HANDLERS)
        return _error(400, f"Invalid 'endpoint': one of {allowed}.", param="endpoint")
    window = body.get("completion_window")
    if window not in _WINDOW_S:
        return _error(400, "Invalid 'completion_window': only '24h'.", "completion_window")
    source = request.app[FILES].files.get(str(body.get("input_file_id")))
    if source is None:
        return _error(404, f"No such File object: {body.get('input_file_id')}", "input_file_id")
    if source.purpose != "batch":
        return _error(400, "The input file's purpose must be 'batch'.", "input_file_id")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return _error(400, "Invalid 'metadata': expected an object.", param="metadata")
    delay = _delay(request, metadata)
    if delay is None:
        return _error(400, "The batch delay must be a non-negative number of seconds.")
    store = request.app[BATCHES]
    created = store.now()
    auth = request.headers.get("Authorization")
    batch = _Batch(
        id=new_id("batch_"),
        endpoint=endpoint,
        input_file_id=source.id,
        completion_window=window,
        metadata=metadata,
        created_at=created,
        expires_at=created + _WINDOW_S[window],
        delay=delay,
        headers={"Authorization": auth} if auth else {},
    )
    store.batches[batch.id] = batch
    task = asyncio.get_running_loop().create_task(_run(request.app, batch))
    store.tasks.add(task)
    task.add_done_callback(store.tasks.discard)
    return _json(batch.public())


def _find(request: web.Request) -> _Batch | web.Response:
    batch_id = request.match_info["batch_id"]
    store = request.app[BATCHES]
    store.check_expiry()
    found = store.batches.get(batch_id)
    if found is None:
        return _error(404, f"No such Batch object: {batch_id}", param="id")
    return found


async def retrieve_batch(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    found = _find(request)
    return found if isinstance(found, web.Response) else _json(found.public())


async def cancel_batch(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    found = _find(request)
    if isinstance(found, web.Response):
        return found
    if found.status in _TERMINAL:
        return _error(409, f"Cannot cancel a batch with status '{found.status}'.")
    if not found.stop_as:
        found.stop_as = "cancelled"
        found.status = "cancelling"
        found.stamps["cancelling"] = request.app[BATCHES].now()
        found.stop.set()
    return _json(found.public())


async def list_batches(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    store = request.app[BATCHES]
    store.check_expiry()
    newest = list(reversed(store.batches.values()))
    after = request.query.get("after")
    if after is not None:
        ids = [b.id for b in newest]
        newest = newest[ids.index(after) + 1 :] if after in ids else []
    try:
        limit = max(1, min(100, int(request.query.get("limit", "20"))))
    except ValueError:
        return _error(400, "Invalid 'limit'.", param="limit")
    page = [b.public() for b in newest[:limit]]
    return _json(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(newest) > limit,
        }
    )


async def clock(request: web.Request) -> web.Response:
    """``POST /_clock``: ``advance=SECONDS`` moves the batch clock, ``day=`` pins the
    billing day (:func:`.invoices.clock`)."""
    store = request.app[BATCHES]
    raw = request.query.get("advance")
    if raw is not None:
        try:
            store.offset += float(raw)
        except ValueError:
            return web.json_response({"error": {"message": f"bad advance {raw!r}"}}, status=400)
        store.check_expiry()
    if "day" in request.query or raw is None:
        return await billing_clock(request)
    return web.json_response({"offset": store.offset, "now": store.now()})


def batch_routes(app: web.Application) -> None:
    """Register the Batch routes, the app's :class:`BatchStore` and ``POST /_clock``."""
    app[BATCHES] = BatchStore()
    app[LIVE_BILLED] = app[BATCHES].live_billed
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", retrieve_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
    app.router.add_post("/_clock", clock)
