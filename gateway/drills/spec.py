"""A drill as the board holds it: its spec built from its row (the trial guard checks
compiled), and the counters one replica keeps for it."""

from __future__ import annotations

import logging
from collections import Counter

from gateway.config.guard import GuardCheck
from gateway.ledger.drills_records import DrillRow
from routing.drills import DrillSpec
from routing.guard import Check

log = logging.getLogger("farebox.drills")


def spec_of(row: DrillRow) -> DrillSpec:
    return DrillSpec(
        id=row.id,
        route=row.route,
        target=row.target,
        percent=row.percent,
        started_at=row.started_at.timestamp(),
        ends_at=row.ends_at.timestamp(),
        simulate_outage=row.simulate_outage,
        abort_after_errors=row.abort_after_errors,
        abort_error_rate=row.abort_error_rate,
        guard=_trial_checks(row),
    )


def _trial_checks(row: DrillRow) -> tuple[Check, ...]:
    """The checks a drill tries, compiled from what was stored (validated when the drill
    started; a stored block this version cannot read is left out, and said so)."""
    if not row.guard:
        return ()
    try:
        return tuple(GuardCheck.model_validate(c).check() for c in row.guard)
    except ValueError as exc:
        log.warning("drill %s: its guard checks are not readable (%s)", row.id, exc)
        return ()


class Tally:
    """A drill's counters on this replica (the whole fleet's live in Redis when shared)."""

    __slots__ = ("attempts", "checked", "conforming", "errors", "mismatches", "references", "seen")

    def __init__(self) -> None:
        self.attempts = 0
        self.errors: Counter[str] = Counter()
        self.checked = 0
        self.conforming = 0
        self.mismatches: Counter[str] = Counter()
        self.references: set[frozenset[str]] = set()
        self.seen = 0
