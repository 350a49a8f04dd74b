"""A batch line's share of its key's limits, taken before the line runs and settled by its
ledger row, exactly as a live request's (gateway/limits/): RPM and TPM pace the batch (a
line refused for rate waits the limit's retry-after and asks again, so a batch never fails
for going fast), the monthly budget refuses it (the line fails `insufficient_quota`, and so
do the lines after it). Keys without limits skip all of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gateway.errors import RateLimited, Unavailable
from gateway.keys.auth import Principal
from gateway.ledger.pricing import PriceBook
from gateway.limits.answers import ask_for
from gateway.limits.limiter import Admission, Limiter
from routing.model import Plan

# The longest a line waits between two asks (a limit's retry-after can be a minute).
_MAX_WAIT_S = 5.0


async def admit_line(
    limiter: Limiter | None,
    principal: Principal | None,
    plan: Plan,
    body: dict[str, Any],
    size: int,
    prices: PriceBook | None,
    reserve_output_tokens: int,
    stop_check: Callable[[], None],
) -> Admission | None:
    """The line's admission (None: nothing to take). Raises the budget's QuotaExceeded, or
    the runner's Stop through `stop_check` while it waits."""
    if limiter is None or principal is None or not principal.limited:
        return None
    ask = ask_for(plan, body, size, prices, reserve_output_tokens, datetime.now(UTC))
    while True:
        try:
            return await limiter.admit(principal, ask)
        except (RateLimited, Unavailable) as exc:
            stop_check()
            await asyncio.sleep(min(_retry_after_s(exc.extra_headers), _MAX_WAIT_S))


def _retry_after_s(headers: list[tuple[bytes, bytes]]) -> float:
    found = dict(headers)
    if b"retry-after-ms" in found:
        return max(int(found[b"retry-after-ms"]), 1) / 1000
    if b"retry-after" in found:
        return float(found[b"retry-after"])
    return 1.0
