"""Batches the simulated provider bills at its LIVE price: a provider that forgot its batch
discount, for reconciliation's `batch_price_not_applied`.

A batch created with metadata ``sim_bill_live: "true"`` runs like any other (its lines count
as batch lines in ``/_stats``), but its lines' tokens are also recorded here, per model and
billing day, and :mod:`.invoices` bills that part of the day's batch usage as batch line
items at the full live rate instead of :data:`.invoices.BATCH_DISCOUNT`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from aiohttp import web

from .runtime import SimState
from .stats import Stats

__all__ = ["LIVE_BILLED", "BillLiveState", "LiveBilled", "wants_live_billing"]

_KINDS = ("prompt", "cached", "cache_write", "completion", "reasoning")
Daily = list[tuple[str, date, int, dict[str, int]]]


def wants_live_billing(metadata: dict[str, Any] | None) -> bool:
    return str((metadata or {}).get("sim_bill_live", "")).lower() == "true"


@dataclass(slots=True)
class LiveBilled:
    """Batch-line tokens and 200s to bill at the live price, per (model, billing day)."""

    tokens: dict[tuple[str, date], dict[str, int]] = field(default_factory=dict)
    requests: dict[tuple[str, date], int] = field(default_factory=dict)

    def clear(self) -> None:
        self.tokens.clear()
        self.requests.clear()

    def split(self, batch: Daily) -> tuple[Daily, Daily]:
        """(the batch days less what is billed live, the live-billed days), in the shape of
        :meth:`.stats.Stats.batch_daily`."""
        rest: Daily = []
        live: Daily = []
        for model, day, requests, counts in batch:
            billed = self.tokens.get((model, day))
            if billed is None:
                rest.append((model, day, requests, counts))
                continue
            n = min(self.requests.get((model, day), 0), requests)
            left = {k: max(counts.get(k, 0) - billed.get(k, 0), 0) for k in _KINDS}
            if any(left.values()) or requests - n:
                rest.append((model, day, requests - n, left))
            live.append(
                (model, day, n, {k: min(billed.get(k, 0), counts.get(k, 0)) for k in _KINDS})
            )
        return rest, live


LIVE_BILLED: web.AppKey[LiveBilled] = web.AppKey("sim_live_billed", LiveBilled)


class _TeeStats:
    """The app's stats as a live-billed batch line records into them: everything goes to
    the real :class:`.stats.Stats`, batch usage and 200s also to :class:`LiveBilled`."""

    def __init__(self, stats: Stats, billed: LiveBilled) -> None:
        self._stats = stats
        self._billed = billed

    def served(self, model: str, status: int | str, stream: bool, batch: bool = False) -> None:
        self._stats.served(model, status, stream, batch=batch)
        if batch and status == 200:
            slot = (model, self._stats.today())
            self._billed.requests[slot] = self._billed.requests.get(slot, 0) + 1

    def usage(self, model: str, *, batch: bool = False, **tokens: int) -> None:
        self._stats.usage(model, batch=batch, **tokens)
        if batch:
            slot = self._billed.tokens.setdefault((model, self._stats.today()), {})
            for kind, n in tokens.items():
                slot[kind] = slot.get(kind, 0) + n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stats, name)


class BillLiveState:
    """A :class:`.runtime.SimState` whose stats are :class:`_TeeStats` (for
    :func:`.batch_lines.run_line`); everything else is the app's state."""

    def __init__(self, state: SimState, billed: LiveBilled) -> None:
        self._state = state
        self.stats = _TeeStats(state.stats, billed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)
