"""SQL for the Batch API's state: tables `batches` and `batch_lines` (ledger/models_batches.py).

gateway/batch/ adds the rules on top. Three things matter here:
- a batch is run by one replica at a time: `claim` takes an unowned or lapsed batch in one
  UPDATE, `renew` keeps it, and a replica that dies simply stops renewing;
- a finished line's answer and its ledger rows commit in one transaction (`finish_lines`),
  so a line is done exactly when its attempts are in the ledger, and a line with a row is
  never run again;
- counters (`completed`, `failed`) move in that same transaction.
Timestamps go in as UTC (SQLite keeps them as offset-less text) and come back aware.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from gateway.ledger.batches_records import ACTIVE, FinishedLine
from gateway.ledger.models_batches import batch_lines_table, batches_table
from gateway.ledger.repository import LedgerRepository

_b = batches_table.c
__all__ = ["ACTIVE", "BatchesRepository", "FinishedLine"]
_l = batch_lines_table.c
# Statuses a runner still has work in.
_TIMES = (
    "created_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "expires_at",
    "cancelling_at",
    "cancelled_at",
    "lease_until",
)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row(found: Any) -> dict[str, Any]:
    out = dict(found)
    for name in _TIMES:
        out[name] = _utc(out.get(name))
    return out


def _values(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for name in _TIMES:
        if name in out:
            out[name] = _utc(out[name])
    return out


class BatchesRepository:
    def __init__(self, ledger: LedgerRepository) -> None:
        # Shares the ledger's engine (disposed by its owner) and its row inserts.
        self.ledger = ledger
        self.engine = ledger.engine
        postgres = self.engine.dialect.name == "postgresql"
        self._insert_ignore = pg_insert if postgres else sqlite_insert

    async def insert(self, row: Mapping[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(batches_table), _values(row))

    async def fetch(
        self, batch_id: str, key_id: str | None = None, *, any_key: bool = False
    ) -> dict[str, Any] | None:
        stmt = select(batches_table).where(_b.id == batch_id)
        if not any_key:
            stmt = stmt.where(_b.key_id.is_not_distinct_from(key_id))
        async with self.engine.connect() as conn:
            found = (await conn.execute(stmt)).mappings().first()
        return None if found is None else _row(found)

    async def page(
        self, key_id: str | None, *, after: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Newest first; `after`: a batch id from the previous page."""
        stmt = select(batches_table).where(_b.key_id.is_not_distinct_from(key_id))
        if after is not None:
            anchor = await self.fetch(after, key_id)
            if anchor is None:
                return []
            stmt = stmt.where(
                or_(
                    _b.created_at < anchor["created_at"],
                    and_(_b.created_at == anchor["created_at"], _b.id < anchor["id"]),
                )
            )
        stmt = stmt.order_by(_b.created_at.desc(), _b.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [_row(r) for r in (await conn.execute(stmt)).mappings().all()]

    async def update(
        self, batch_id: str, changes: Mapping[str, Any], *, only_if: Sequence[str] | None = None
    ) -> bool:
        """Set `changes`; with `only_if`, only while the status is one of those. Whether a
        row changed."""
        stmt = update(batches_table).where(_b.id == batch_id)
        if only_if is not None:
            stmt = stmt.where(_b.status.in_(list(only_if)))
        async with self.engine.begin() as conn:
            result = await conn.execute(stmt.values(**_values(changes)))
        return bool(result.rowcount)

    async def claim(
        self, owner: str, now: datetime, lease_until: datetime
    ) -> dict[str, Any] | None:
        """Take one active batch nobody holds (or whose holder's lease lapsed), oldest first."""
        now = _utc(now) or now
        free = or_(_b.owner.is_(None), _b.lease_until.is_(None), _b.lease_until < now)
        async with self.engine.begin() as conn:
            candidate = (
                await conn.execute(
                    select(_b.id)
                    .where(_b.status.in_(ACTIVE), free)
                    .order_by(_b.created_at)
                    .limit(1)
                )
            ).scalar()
            if candidate is None:
                return None
            taken = await conn.execute(
                update(batches_table)
                .where(_b.id == candidate, _b.status.in_(ACTIVE), free)
                .values(owner=owner, lease_until=_utc(lease_until))
            )
            if not taken.rowcount:  # another replica won it between the two statements
                return None
        return await self.fetch(candidate, any_key=True)

    async def renew(self, batch_id: str, owner: str, lease_until: datetime) -> bool:
        """Extend the claim; False when another replica holds it now (ours lapsed)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(batches_table)
                .where(_b.id == batch_id, _b.owner == owner)
                .values(lease_until=_utc(lease_until))
            )
        return bool(result.rowcount)

    async def release(self, batch_id: str, owner: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(batches_table)
                .where(_b.id == batch_id, _b.owner == owner)
                .values(owner=None, lease_until=None)
            )

    async def active_for_key(self, key_id: str) -> list[dict[str, Any]]:
        """The key's batches still running, with their worst case and progress."""
        stmt = select(_b.id, _b.reserved_usd, _b.total, _b.completed, _b.failed).where(
            _b.key_id == key_id, _b.status.in_(ACTIVE)
        )
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]

    async def done_lines(self, batch_id: str) -> set[int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(_l.line_no).where(_l.batch_id == batch_id))
            return {int(r[0]) for r in rows}

    async def finish_lines(
        self, batch_id: str, lines: Sequence[FinishedLine], now: datetime
    ) -> int:
        """Commit lines' answers, their ledger rows and the batch's counters together.
        A line already finished (a replay) is skipped with its rows; returns how many
        lines were new."""
        if not lines:
            return 0
        stamp = _utc(now)
        async with self.engine.begin() as conn:
            done = {
                int(r[0])
                for r in await conn.execute(
                    select(_l.line_no).where(
                        _l.batch_id == batch_id, _l.line_no.in_([line.line_no for line in lines])
                    )
                )
            }
            fresh = [line for line in lines if line.line_no not in done]
            if not fresh:
                return 0
            await conn.execute(
                self._insert_ignore(batch_lines_table).on_conflict_do_nothing(),
                [
                    {
                        "batch_id": batch_id,
                        "line_no": line.line_no,
                        "custom_id": line.custom_id,
                        "status": line.status,
                        "request_id": line.request_id,
                        "http_status": line.http_status,
                        "body": line.body,
                        "finished_at": stamp,
                    }
                    for line in fresh
                ],
            )
            requests = [line.request for line in fresh if line.request is not None]
            attempts = [a for line in fresh for a in line.attempts]
            await self.ledger.insert_on(conn, requests, attempts)
            completed = sum(1 for line in fresh if line.status == "completed")
            await conn.execute(
                update(batches_table)
                .where(_b.id == batch_id)
                .values(
                    completed=_b.completed + completed,
                    failed=_b.failed + (len(fresh) - completed),
                )
            )
        return len(fresh)

    async def lines(self, batch_id: str, *, after: int, limit: int) -> list[dict[str, Any]]:
        """Finished lines in input order, `limit` at a time after line `after`."""
        stmt = (
            select(batch_lines_table)
            .where(_l.batch_id == batch_id, _l.line_no > after)
            .order_by(_l.line_no)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]

    async def line_count(self, batch_id: str) -> int:
        async with self.engine.connect() as conn:
            found = await conn.scalar(
                select(func.count()).select_from(batch_lines_table).where(_l.batch_id == batch_id)
            )
        return int(found or 0)
