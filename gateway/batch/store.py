"""Batches as the `/v1/batches` endpoints see them: create (checks the input file, picks the
path, reserves the key's budget), get, list, cancel.

A batch belongs to the key that created it, like its files. The input file is read once
at creation: every line must call the batch's endpoint with the same `model` (one route,
so one path for the whole batch), and a bad line is named in the 400.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from gateway.batch.objects import (
    ENDPOINTS,
    batch_object,
    check_create,
    completion_window,
    output_expiry,
)
from gateway.errors import NotFound, Unavailable, bad_request, clip
from gateway.files.store import FileStore
from gateway.ledger.batches_records import ACTIVE
from gateway.ledger.db_errors import database_errors
from gateway.ledger.pricing import PriceBook
from routing.batch_paths import BatchPath, choose_path
from routing.model import DeploymentSpec, Plan

if TYPE_CHECKING:  # SQLAlchemy; a serving worker on Postgres passes ServingBatches
    from gateway.ledger.batches_repository import BatchesRepository

LIST_LIMIT_MAX = 100
_PER_TOKEN = Decimal(1_000_000)
# Bytes of JSON per prompt token, for a worst-case estimate (over-estimates input: the safe side).
_BYTES_PER_TOKEN = 3


@dataclass(frozen=True, slots=True)
class Planned:
    """What `create` needs from the live configuration and the caller's key: `admit` gets
    the batch's route and worst-case cost, and raises when the key may not use the route or
    cannot hold the cost."""

    plan_for: Callable[[str], Plan | None]
    prices: PriceBook | None
    default_max_tokens: int
    admit: Callable[[str, Decimal | None], Awaitable[None]] | None = None
    # The creating key's limits, kept with the batch (gateway/batch/principal.py).
    principal: dict[str, Any] | None = None


@dataclass(slots=True)
class _Scan:
    model: str | None = None
    lines: int = 0
    input_bytes: int = 0
    max_output: int = 0


async def scan_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """(line number, raw line) of a JSONL stream, blank lines skipped; numbers 1-based by
    physical line, as the upload's checks name them."""
    tail = b""
    number = 0
    async for chunk in chunks:
        data = tail + chunk if tail else chunk
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            number += 1
            raw = data[start:end]
            start = end + 1
            if raw.strip():
                yield number, raw
        tail = data[start:]
    if tail.strip():
        yield number + 1, tail


class BatchStore:
    def __init__(self, repository: BatchesRepository, files: FileStore) -> None:
        self.repository = repository
        self.files = files

    async def create(
        self, key_id: str | None, body: Any, planned: Planned, now: datetime | None = None
    ) -> dict[str, Any]:
        file_id, endpoint, window, metadata = check_create(body)
        output_expires_after_s = output_expiry(body)
        now = now or datetime.now(UTC)
        source = await self.files.get(file_id, key_id)
        if source["purpose"] != "batch":
            raise bad_request(
                f"File {clip(file_id, 64)} has purpose {source['purpose']!r}; a batch needs "
                "a file uploaded with purpose 'batch'.",
                param="input_file_id",
                code="invalid_file",
            )
        scan = await self._scan(source, endpoint, planned)
        assert scan.model is not None
        plan = planned.plan_for(scan.model)
        if plan is None:
            raise bad_request(
                f"The model {clip(scan.model, 64)!r} of the batch's lines is not routed by this "
                "gateway.",
                param="input_file_id",
                code="model_not_found",
            )
        chosen = _path(plan, planned.prices, metadata.get("farebox_path"), now)
        worst = _worst_case(scan, chosen.deployment, planned.prices, now)
        if planned.admit is not None:
            await planned.admit(plan.route, worst)
        batch_id = "batch_" + secrets.token_hex(12)
        metadata.update(
            {
                "farebox_path": chosen.path,
                "farebox_route": plan.route,
                "farebox_deployment": chosen.deployment.id,
            }
        )
        row = {
            "id": batch_id,
            "key_id": key_id,
            "endpoint": endpoint,
            "input_file_id": file_id,
            "completion_window": window,
            "status": "validating",
            "path": chosen.path,
            "route": plan.route,
            "model": scan.model,
            "deployment": chosen.deployment.id,
            "metadata": metadata,
            "created_at": now,
            "expires_at": now + completion_window(window),
            "total": scan.lines,
            "completed": 0,
            "failed": 0,
            "reserved_usd": worst,
            "principal": planned.principal,
            "output_expires_after_s": output_expires_after_s,
        }
        try:
            await self.repository.insert(row)
        except database_errors() as exc:
            raise _unavailable() from exc
        return batch_object(row)

    async def _scan(self, source: dict[str, Any], endpoint: str, planned: Planned) -> _Scan:
        scan = _Scan()
        async for number, raw in scan_lines(self.files.content(source)):
            line = orjson.loads(raw)  # checked as JSON at upload (purpose batch)
            if line.get("url") != endpoint:
                raise _bad_line(
                    number,
                    f"'url' is {clip(repr(line.get('url')), 60)}, not the batch's {endpoint}",
                )
            model = line["body"].get("model")
            if not isinstance(model, str) or not model:
                raise _bad_line(number, "the body has no 'model'")
            if scan.model is None:
                scan.model = model
            elif model != scan.model:
                raise _bad_line(
                    number,
                    f"'model' is {clip(model, 64)!r} but earlier lines use "
                    f"{clip(scan.model, 64)!r}; one batch runs one model",
                )
            scan.lines += 1
            scan.input_bytes += len(raw)
            scan.max_output += _max_output(line["body"], planned.default_max_tokens)
        if scan.model is None:
            raise bad_request("The batch file has no requests.", param="input_file_id")
        return scan

    async def get(self, batch_id: str, key_id: str | None) -> dict[str, Any]:
        try:
            row = await self.repository.fetch(batch_id, key_id)
        except database_errors() as exc:
            raise _unavailable() from exc
        if row is None:
            raise NotFound(f"No such Batch object: {clip(batch_id, 128)}", param="batch_id")
        return row

    async def list(self, key_id: str | None, *, after: str | None, limit: int) -> dict[str, Any]:
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise bad_request(
                f"limit must be between 1 and {LIST_LIMIT_MAX}.",
                param="limit",
                code="invalid_value",
            )
        try:
            rows = await self.repository.page(key_id, after=after, limit=limit + 1)
        except database_errors() as exc:
            raise _unavailable() from exc
        page = [batch_object(r) for r in rows[:limit]]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(rows) > limit,
        }

    async def cancel(self, batch_id: str, key_id: str | None) -> dict[str, Any]:
        """An active batch goes `cancelling`; its runner stops starting lines and ends it
        `cancelled` with the answers it has. A finished batch cannot be cancelled."""
        row = await self.get(batch_id, key_id)
        now = datetime.now(UTC)
        try:
            changed = await self.repository.update(
                batch_id,
                {"status": "cancelling", "cancelling_at": now},
                only_if=[s for s in ACTIVE if s != "cancelling"],
            )
        except database_errors() as exc:
            raise _unavailable() from exc
        if not changed and row["status"] != "cancelling":
            raise bad_request(
                f"Batch {batch_id} is {row['status']} and cannot be cancelled.",
                param="batch_id",
                code="invalid_state",
            )
        return batch_object(await self.get(batch_id, key_id))


def _path(plan: Plan, prices: PriceBook | None, forced: str | None, now: datetime) -> BatchPath:
    def unit_cost(dep: DeploymentSpec) -> Decimal | None:
        price = (
            None
            if prices is None
            else prices.price_for(dep.id, dep.upstream_model, dep.provider_kind, now)
        )
        return None if price is None else price.input + price.output

    return choose_path(
        plan, has_batch_api=lambda d: d.batch_api, unit_cost=unit_cost, forced=forced
    )


def _max_output(body: dict[str, Any], default: int) -> int:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return default


def _worst_case(
    scan: _Scan, dep: DeploymentSpec, prices: PriceBook | None, now: datetime
) -> Decimal | None:
    """The most the batch can cost on its first deployment (None: no price known)."""
    if dep.provider_kind == "dedicated":
        return Decimal(0)
    price = (
        None
        if prices is None
        else prices.price_for(dep.id, dep.upstream_model, dep.provider_kind, now)
    )
    if price is None:
        return None
    input_tokens = Decimal(scan.input_bytes // _BYTES_PER_TOKEN + 1)
    return (input_tokens * price.input + Decimal(scan.max_output) * price.output) / _PER_TOKEN


def _bad_line(number: int, problem: str) -> Exception:
    return bad_request(
        f"Line {number} of the batch file: {problem}.", param="input_file_id", code="invalid_file"
    )


def _unavailable() -> Unavailable:
    return Unavailable("The batch store's database is unavailable.", code="batches_unavailable")


__all__ = ["ENDPOINTS", "BatchStore", "Planned", "scan_lines"]
