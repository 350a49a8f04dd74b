"""One batch line through the service, as a live request would go (retries, failover,
breakers, gates), with its ledger rows kept back for the batch's own transaction.

The line's call runs on a copy of the gateway's Service that shares the adapter and the
breakers but has its own Meter, whose ledger is `HeldRows`: `finish` hands the rows there
instead of to the ledger writer, and `Committer` writes them together with the line's
answer (gateway/ledger/batches_repository.py `finish_lines`), then journals their outcome.
Each upstream call is still journalled before it starts, so a crash mid-call is billed as
`gateway_crashed` at the next start-up, and the line (which has no row) runs again.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from gateway.batch.objects import line_error
from gateway.core.metering import CallContext, Settles
from gateway.core.service import Service
from gateway.errors import GatewayError
from gateway.guard.apply import restore_body
from gateway.guard.run import run_guards, watch_answer
from gateway.ledger.batches_records import FinishedLine
from gateway.ledger.journal import Journal
from gateway.ledger_rows import AttemptRow, RequestRow
from routing.guard import Guards
from routing.model import Plan
from routing.resolve import ModelIndex

if TYPE_CHECKING:  # SQLAlchemy, loaded once a batch runs
    from gateway.ledger.batches_repository import BatchesRepository

log = logging.getLogger("farebox.batch")


class HeldRows:
    """A Meter's ledger that keeps each call's rows for its caller to take."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[RequestRow, list[AttemptRow]]] = {}

    def record(self, request: RequestRow, attempts: list[AttemptRow]) -> None:
        self._rows[request.id] = (request, list(attempts))

    def take(self, request_id: str) -> tuple[RequestRow | None, list[AttemptRow]]:
        found = self._rows.pop(request_id, None)
        return (None, []) if found is None else found


@dataclass(frozen=True, slots=True)
class Line:
    line_no: int
    custom_id: str
    body: dict[str, Any]
    size: int


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def output_line(
    custom_id: str, request_id: str | None, status: int | None, body: Any, error: Any = None
) -> dict[str, Any]:
    """One line of the output or error file, in OpenAI's batch output shape."""
    response = (
        None if status is None else {"status_code": status, "request_id": request_id, "body": body}
    )
    return {
        "id": "batch_req_" + secrets.token_hex(12),
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }


async def call_line(
    service: Service,
    held: HeldRows,
    *,
    batch_id: str,
    key_id: str | None,
    endpoint: str,
    plan: Plan,
    line: Line,
    admission: Settles | None = None,
    guarded: tuple[Guards, ModelIndex] | None = None,
) -> FinishedLine:
    """Run one line; its outcome with its ledger rows (never raises a gateway error).
    `admission`: the line's share of its key's limits, settled by its request row;
    `guarded`: the route's guard checks (and the index their guard models are found in),
    applied as to a live request: a refused line fails with the same 400 and its row."""
    request_id = new_request_id()
    # Masking rewrites the body in place: a guarded line's own copy, all the way down.
    body = dict(line.body) if guarded is None else copy.deepcopy(line.body)
    ctx = CallContext(request_id, key_id, endpoint, str(line.body.get("model")), False, body)
    ctx.batch_id = batch_id
    ctx.route, ctx.workload, ctx.body_bytes = plan.route, plan.workload, line.size
    ctx.admission = admission
    try:
        if guarded is not None:
            guards, index = guarded
            plan, _masked = await run_guards(service, index, guards, plan, ctx, [])
            watch_answer(guards, ctx)
        completion = await service.complete(ctx, plan)
        if ctx.unmask is not None:
            completion.body = restore_body(completion.body, ctx.unmask)
    except GatewayError as exc:
        request, attempts = held.take(request_id)
        return FinishedLine(
            line.line_no,
            line.custom_id,
            "failed",
            request_id,
            exc.status,
            output_line(line.custom_id, request_id, exc.status, orjson.loads(exc.body())),
            request,
            attempts,
        )
    request, attempts = held.take(request_id)
    body = orjson.loads(completion.body)
    return FinishedLine(
        line.line_no,
        line.custom_id,
        "completed",
        request_id,
        200,
        output_line(line.custom_id, request_id, 200, body),
        request,
        attempts,
    )


def refused_line(line: Line, exc: GatewayError) -> FinishedLine:
    """A line its key's limits refused (a spent budget): no upstream call, no ledger rows."""
    return FinishedLine(
        line.line_no,
        line.custom_id,
        "failed",
        None,
        exc.status,
        output_line(line.custom_id, None, exc.status, orjson.loads(exc.body())),
        None,
        [],
    )


def unrun_line(line_no: int, custom_id: str, code: str, message: str) -> FinishedLine:
    """A line the batch ended without running (expired, cancelled): no ledger rows."""
    return FinishedLine(
        line_no,
        custom_id,
        "failed",
        None,
        None,
        output_line(custom_id, None, None, None, line_error(code, message)),
        None,
        [],
    )


@dataclass(slots=True)
class Committer:
    """Writes finished lines in groups: whatever finished while the previous commit ran
    goes in the next one, so a busy batch costs one transaction per group, an idle one a
    transaction per line, and nothing waits on a timer."""

    repository: BatchesRepository
    batch_id: str
    journal: Journal | None
    _pending: list[FinishedLine] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _closing: bool = False
    committed: int = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def add(self, line: FinishedLine) -> None:
        self._pending.append(line)
        self._wake.set()

    async def close(self) -> None:
        """Commit what is pending and stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                group, self._pending = self._pending, []
                await self._commit(group)
            if self._closing:
                return

    async def _commit(self, group: list[FinishedLine]) -> None:
        delay = 0.1
        while True:
            try:
                self.committed += await self.repository.finish_lines(
                    self.batch_id, group, datetime.now(UTC)
                )
                break
            except Exception as exc:  # the database is away: the answers wait in memory
                log.warning(
                    "batch %s: could not save %d finished line(s) (%s); retrying",
                    self.batch_id,
                    len(group),
                    type(exc).__name__,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        journal = self.journal
        if journal is not None:
            # Their rows are in the ledger now: journal the outcomes, which closes the intents
            # of their calls (a replay of them after a crash is a no-op: ids are keys).
            for line in group:
                if line.request is not None:
                    journal.outcome(line.request, list(line.attempts))
