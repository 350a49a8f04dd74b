"""When a running batch must stop starting lines: cancelled (its row, re-read every second
so a cancel sent to another replica is seen), expired (its completion window ended),
shutdown, or its claim lost to another replica (this one stopped renewing in time)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

# How often a running batch re-reads its row and renews its claim.

if TYPE_CHECKING:  # SQLAlchemy, loaded once a batch runs
    from gateway.ledger.batches_repository import BatchesRepository

CHECK_S = 1.0


class Stop(Exception):
    """`reason`: cancelled, expired, shutdown or lost."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Guard:
    def __init__(
        self,
        repository: BatchesRepository,
        row: dict[str, Any],
        *,
        owner: str,
        closing: Callable[[], bool],
        lease_s: float,
    ) -> None:
        self._repository = repository
        self.row = row
        self._owner = owner
        self._closing = closing
        self._lease_s = lease_s
        self._next = 0.0
        self._refresh: asyncio.Task[None] | None = None

    def check(self) -> None:
        """Raise Stop when the batch must stop; otherwise re-read and renew now and then."""
        if self._closing():
            raise Stop("shutdown")
        status = self.row["status"]
        if status == "lost":
            raise Stop("lost")
        if status == "cancelling":
            raise Stop("cancelled")
        expires = self.row.get("expires_at")
        if expires is not None and datetime.now(UTC) >= expires:
            raise Stop("expired")
        loop = asyncio.get_running_loop()
        if loop.time() >= self._next and (self._refresh is None or self._refresh.done()):
            self._next = loop.time() + CHECK_S
            self._refresh = loop.create_task(self._reread())

    async def _reread(self) -> None:
        with contextlib.suppress(Exception):  # database trouble: try again next second
            fresh = await self._repository.fetch(self.row["id"], any_key=True)
            if fresh is not None:
                self.row["status"] = fresh["status"]
            lease = datetime.now(UTC) + timedelta(seconds=self._lease_s)
            if not await self._repository.renew(self.row["id"], self._owner, lease):
                self.row["status"] = "lost"
