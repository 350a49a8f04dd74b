"""Path `provider_batch`: the lines go to the deployment's provider through its own Batch API,
at its batch price, and each result comes back as one `batch` attempt in the ledger.

Submitted once: the upstream batch's id is saved as soon as the provider answers, and a
gateway killed between the two finds the upstream batch by its `farebox_batch_id` metadata
instead of submitting the lines again. Results are read when the provider is done; a line
the provider failed runs again on the route's other targets (per-line failover), and lines
the provider never ran (its own expiry or a cancel) are reported as such.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import orjson

from gateway.batch.guard import Guard, Stop
from gateway.batch.lines import Committer, HeldRows, Line, call_line, output_line, unrun_line
from gateway.batch.objects import ENDPOINTS
from gateway.batch.ports import BatchState
from gateway.batch.store import scan_lines
from gateway.batch.upstream import UpstreamLine, UpstreamResult, provider_batches
from gateway.core.metering import CallContext, Meter
from gateway.guard.run import watch_answer
from gateway.ledger.batches_records import FinishedLine
from gateway.providers.answer_checks import check_answer
from gateway.providers.openai_compat import ProviderEndpoint
from routing.batch_paths import BATCH_ROLE
from routing.cost import Usage, attempt_cost
from routing.guard import Guards, inspect
from routing.guard_texts import texts
from routing.model import Plan, PlannedAttempt
from routing.resolve import ModelIndex

log = logging.getLogger("farebox.batch")


async def run_provider_batch(
    state: BatchState,
    row: dict[str, Any],
    plan: Plan,
    committer: Committer,
    guard: Guard,
) -> str | None:
    assert state.batches is not None and state.files is not None
    repository = state.batches.repository
    dep = plan.attempts[0].deployment
    endpoints = {
        name: ProviderEndpoint(name, p.api_base, p.api_key, p.headers)
        for name, p in state.config.providers.items()
        if p.api_base is not None and not p.via_litellm
    }
    done = await repository.done_lines(row["id"])
    lines = await _pending(state, row, done)
    guards = state.guards.get(plan.route)
    guarded = None if guards is None else (guards, state.index)
    if guarded is not None:
        # Lines a request check fires on never reach the provider's batch: they run live,
        # refused, rerouted or masked as a live request would be. The split is the same
        # on every run, so a resumed batch expects only the others upstream.
        lines, live = _split(guarded[0], ENDPOINTS[row["endpoint"]], lines)
        if live:
            await _live(state, row, plan, committer, live, guarded)
    if not lines:
        return None
    held = HeldRows()
    meter = _BatchRateMeter(state.service.meter.prices, held)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        client = provider_batches(dep, session, endpoints)
        if client is None:
            log.warning(
                "batch %s: %s has no batch API now; running its lines live", row["id"], dep.id
            )
            await _live(state, row, plan, committer, lines)
            return None
        upstream_id = row.get("upstream_batch_id") or await client.find(
            row["id"], not_before=int(row["created_at"].timestamp()) - 60
        )
        if upstream_id is None:
            upstream_id = await client.submit(
                row["id"],
                row["endpoint"],
                [
                    UpstreamLine(str(line.line_no), {**line.body, "model": dep.upstream_model})
                    for line in lines
                ],
                # The provider's window (OpenAI takes only 24h); Farebox keeps the batch's own
                # window by cancelling the upstream batch when it ends.
                "24h",
                _client_metadata(row.get("metadata")),
            )
            await repository.update(row["id"], {"upstream_batch_id": upstream_id})
        submitted = time.time()
        stopped: str | None = None
        interval = state.config.batch.provider_poll_interval_s
        while True:
            upstream = await client.state(upstream_id)
            if upstream.done:
                break
            try:
                guard.check()
            except Stop as stop:
                if stop.reason in ("shutdown", "lost"):
                    return stop.reason  # resumed later: the upstream batch keeps running
                stopped = stop.reason
                await client.cancel(upstream_id)
            await asyncio.sleep(min(interval, 1.0) if stopped else interval)
        by_id = {str(line.line_no): line for line in lines}
        retry: list[Line] = []
        async for result in client.results(upstream_id):
            line = by_id.pop(result.custom_id, None)
            if line is None:
                continue
            if result.ok:
                committer.add(_answered(meter, held, row, plan, line, result, submitted, guards))
            elif result.http_status is None:
                code = result.error or "batch_expired"
                committer.add(
                    unrun_line(line.line_no, line.custom_id, code, "Not run by the provider.")
                )
            else:
                retry.append(line)  # the provider ran it and failed: fail over per line
        for line in by_id.values():  # in neither file: the provider never ran it
            code = f"batch_{stopped}" if stopped else "batch_expired"
            committer.add(
                unrun_line(line.line_no, line.custom_id, code, "Not run by the provider.")
            )
    if retry:
        fallback = plan if len(plan.attempts) == 1 else _without_first(plan)
        await _live(state, row, fallback, committer, retry, guarded)
    return stopped


def _split(guards: Guards, endpoint: str, lines: list[Line]) -> tuple[list[Line], list[Line]]:
    """(lines for the provider's batch, lines to run live): with a guard model every line
    is asked about, live; otherwise the lines a request check finds something in."""
    if not guards.request:
        return lines, []
    if guards.models:
        return [], lines
    batch: list[Line] = []
    live: list[Line] = []
    for line in lines:
        fired = inspect(guards.request, texts(endpoint, line.body)).outcome is not None
        (live if fired else batch).append(line)
    return batch, live


async def _pending(state: BatchState, row: dict[str, Any], done: set[int]) -> list[Line]:
    assert state.files is not None
    source = await state.files.get(row["input_file_id"], row["key_id"])
    lines: list[Line] = []
    line_no = 0
    async for _number, raw in scan_lines(state.files.content(source)):
        line_no += 1
        if line_no in done:
            continue
        parsed = orjson.loads(raw)
        lines.append(Line(line_no, str(parsed["custom_id"]), parsed["body"], len(raw)))
    return lines


async def _live(
    state: BatchState,
    row: dict[str, Any],
    plan: Plan,
    committer: Committer,
    lines: list[Line],
    guarded: tuple[Guards, ModelIndex] | None = None,
) -> None:
    """Lines run one by one on `plan` (a few at a time): those the provider's batch failed,
    and those the route's guard checks keep from it."""
    held = HeldRows()
    service = state.service.with_meter(Meter(state.service.meter.prices, held, committer.journal))
    endpoint = ENDPOINTS[row["endpoint"]]
    gate = asyncio.Semaphore(state.config.batch.serverless_concurrency)

    async def one(line: Line) -> None:
        async with gate:
            committer.add(
                await call_line(
                    service,
                    held,
                    batch_id=row["id"],
                    key_id=row["key_id"],
                    endpoint=endpoint,
                    plan=plan,
                    line=line,
                    guarded=guarded,
                )
            )

    await asyncio.gather(*(one(line) for line in lines))


# OpenAI takes at most 16 metadata pairs; Farebox adds its batch id.
_UPSTREAM_METADATA_MAX = 15


def _client_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """The client's batch metadata, without Farebox's own keys, for the upstream batch."""
    own = {k: v for k, v in (metadata or {}).items() if not k.startswith("farebox_")}
    return dict(list(own.items())[:_UPSTREAM_METADATA_MAX])


def _without_first(plan: Plan) -> Plan:
    from dataclasses import replace

    return replace(plan, attempts=plan.attempts[1:])


class _BatchRateMeter(Meter):
    """A meter that prices at the provider's batch rate (its live price when no batch rate
    is known): what a line answered through the provider's Batch API was charged."""

    def _price(
        self, attempt: PlannedAttempt, at: datetime, usage: Usage
    ) -> tuple[Decimal | None, str | None]:
        dep = attempt.deployment
        price = self.prices.batch_price_for(dep.id, dep.upstream_model, dep.provider_kind, at)
        if price is None:
            return super()._price(attempt, at, usage)
        return attempt_cost(usage, price, False), price.version


def _answered(
    meter: _BatchRateMeter,
    held: HeldRows,
    row: dict[str, Any],
    plan: Plan,
    line: Line,
    result: UpstreamResult,
    submitted: float,
    guards: Guards | None = None,
) -> FinishedLine:
    """A line the provider answered: one `batch` attempt, metered like any other, at the
    provider's batch price, started when the batch was submitted; the route's answer checks
    read the answer as they read a live one."""
    request_id = f"req_{row['id'][6:]}_{line.line_no}"
    endpoint = ENDPOINTS[row["endpoint"]]
    ctx = CallContext(request_id, row["key_id"], endpoint, row["model"] or "", False, line.body)
    ctx.batch_id, ctx.route, ctx.workload = row["id"], plan.route, plan.workload
    ctx.received_at = datetime.fromtimestamp(submitted, UTC)
    ctx.t0 = time.perf_counter() - (time.time() - submitted)
    attempt = PlannedAttempt(plan.attempts[0].deployment, BATCH_ROLE)
    if guards is not None and guards.answer and result.body is not None:
        watch_answer(guards, ctx)
        assert ctx.answer_guard is not None
        check_answer(ctx.answer_guard, endpoint, result.body)
        ctx.note_answer_guard()
    meter.succeeded(ctx, attempt, result.usage, result.provider_request_id, ctx.t0, http_status=200)
    meter.finish(ctx, plan, 200, None, attempt.deployment.id)
    request, attempts = held.take(request_id)
    return FinishedLine(
        line.line_no,
        line.custom_id,
        "completed",
        request_id,
        200,
        output_line(line.custom_id, request_id, 200, result.body),
        request,
        attempts,
    )
