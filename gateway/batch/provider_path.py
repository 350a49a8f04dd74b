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
from gateway.core.metering import Meter, new_attempt_id
from gateway.ledger.batches_repository import FinishedLine
from gateway.ledger_rows import ESTIMATED, PROVIDER, AttemptRow, RequestRow
from gateway.providers.openai_compat import ProviderEndpoint
from routing.batch_paths import BATCH_ROLE
from routing.cost import Usage, attempt_cost, usage_from_openai
from routing.model import DeploymentSpec, Plan

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
    if not lines:
        return None
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
                committer.add(_answered(state, row, dep, line, result, submitted))
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
        await _live(state, row, fallback, committer, retry)
    return stopped


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
) -> None:
    """Lines the provider's batch failed, run one by one on `plan` (a few at a time)."""
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


def _answered(
    state: BatchState,
    row: dict[str, Any],
    dep: DeploymentSpec,
    line: Line,
    result: UpstreamResult,
    submitted: float,
) -> FinishedLine:
    """A line the provider answered: one `batch` attempt at the provider's batch price."""
    request_id = f"req_{row['id'][6:]}_{line.line_no}"
    started = datetime.fromtimestamp(submitted, UTC)
    usage = usage_from_openai(result.usage) if result.usage else Usage(0, 0, 0, 0, 0)
    prices = state.service.meter.prices
    price = prices.batch_price_for(dep.id, dep.upstream_model, dep.provider_kind, started)
    if price is None:
        price = prices.price_for(dep.id, dep.upstream_model, dep.provider_kind, started)
    cost: Decimal | None = None if price is None else attempt_cost(usage, price, False)
    attempt = AttemptRow(
        id=new_attempt_id(),
        request_id=request_id,
        attempt_no=1,
        role=BATCH_ROLE,
        deployment=dep.id,
        provider=dep.provider,
        provider_kind=dep.provider_kind,
        upstream_model=dep.upstream_model,
        provider_request_id=result.provider_request_id,
        started_at=started,
        ttft_ms=None,
        latency_ms=(time.time() - submitted) * 1000,
        http_status=result.http_status,
        error_class=None,
        input_uncached_tokens=usage.input_uncached,
        cached_read_tokens=usage.cached_read,
        cache_write_tokens=usage.cache_write,
        output_tokens=usage.output,
        reasoning_tokens=usage.reasoning,
        token_source=PROVIDER if result.usage else ESTIMATED,
        cost_usd=cost,
        price_version=None if price is None else price.version,
    )
    request = RequestRow(
        id=request_id,
        received_at=started,
        key_id=row["key_id"],
        route=row["route"] or "",
        requested_model=row["model"] or "",
        endpoint=ENDPOINTS[row["endpoint"]],
        workload=None,
        stream=False,
        final_status=200,
        error_class=None,
        final_deployment=dep.id,
        attempts=1,
        input_uncached_tokens=usage.input_uncached,
        cached_read_tokens=usage.cached_read,
        cache_write_tokens=usage.cache_write,
        output_tokens=usage.output,
        reasoning_tokens=usage.reasoning,
        cost_usd=cost,
        latency_ms=attempt.latency_ms,
        ttft_ms=None,
        batch_id=row["id"],
    )
    return FinishedLine(
        line.line_no,
        line.custom_id,
        "completed",
        request_id,
        200,
        output_line(line.custom_id, request_id, 200, result.body),
        request,
        [attempt],
    )
