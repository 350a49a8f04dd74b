"""Start-up: open this process's ledger journal and take over those of dead processes.

Recovered rows go to the disk spool (fsync'd) before the dead journals are deleted, so a
crash during recovery only means a second, idempotent recovery.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

from gateway.ledger.journal import CRASHED, Journal
from gateway.ledger.pricing import PriceBook
from gateway.ledger.spool import Spool
from gateway.observability import metrics
from routing.cost import Usage, attempt_cost


def open_journal(
    directory: str | Path, spool: Spool, prices: PriceBook, *, fsync_ms: float
) -> Journal:
    journal = Journal(directory, fsync_ms=fsync_ms)

    def price(
        deployment: str, upstream_model: str, provider_kind: str, at: datetime, tokens: int
    ) -> tuple[Decimal | None, str | None]:
        found = prices.price_for(deployment, upstream_model, provider_kind, at)
        cost = attempt_cost(Usage(tokens, 0, 0, 0, 0), found, provider_kind == "dedicated")
        return cost, found.version if found is not None else None

    batches = journal.recover(price)
    for requests, attempts in batches:
        spool.append(requests, attempts)
        crashed = sum(1 for a in attempts if a.error_class == CRASHED)
        metrics.JOURNAL_RECOVERED.labels("requests").inc(len(requests))
        metrics.JOURNAL_RECOVERED.labels("attempts").inc(len(attempts) - crashed)
        metrics.JOURNAL_RECOVERED.labels(CRASHED).inc(crashed)
    spool.seal()
    journal.finish_recovery()
    return journal
