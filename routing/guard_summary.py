"""Reading `requests.guard` back: the summaries the guard checks leave on a request (its
`x-farebox-guard` header, gateway/guard/apply.py) parsed and tallied per route for the
reports' "guardrail hits" section.

A summary is the strongest outcome, then one `label=check,check` part per action taken,
joined by "; ": "reroute; rerouted=pii-local; masked=mask-rest", "block; blocked=no-keys",
"flag; flagged=injection". Check names never hold ";", "," or "=" (gateway/config/guard.py
validates them), so splitting on those is exact. The reports GROUP BY the summary in SQL
(distinct summaries are few: one per combination of checks that fired) and split here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from routing.guard import GUARDRAIL_BLOCKED, LABELS

# The error class of a request the guard refused, or whose answer it withheld.
BLOCKED_ERROR = GUARDRAIL_BLOCKED
# The outcomes, strongest first, as the reports name them (the summary's first field is
# the verb: block, reroute, mask, flag). A request a guard model gave no verdict on and
# that was let by says "pass" ("pass; model-timeout=classifier"): `passed`, reported only
# where it occurs, like any verb a later version adds.
OUTCOMES = tuple(LABELS.values())
_NAMED = {**LABELS, "pass": "passed"}
# requests.guard's width (gateway.ledger.base.NAME).
STORED_CHARS = 255


@dataclass(frozen=True, slots=True)
class GuardSummary:
    outcome: str  # blocked | rerouted | masked | flagged (an unknown verb is kept as it is)
    checks: tuple[tuple[str, str], ...]  # (label, check name), in the summary's order


def parse(summary: str) -> GuardSummary | None:
    """The summary's outcome and the checks it names; None for an empty one."""
    first, *parts = (p.strip() for p in summary.split(";"))
    if not first:
        return None
    checks: list[tuple[str, str]] = []
    for part in parts:
        label, sep, names = part.partition("=")
        if sep:
            checks += [(label, name) for name in names.split(",") if name]
    return GuardSummary(_NAMED.get(first, first), tuple(checks))


def fit(summary: str, limit: int = STORED_CHARS) -> str:
    """`summary` cut to `limit` characters at a whole check name, so what is stored still
    parses (only a route with many long-named checks that all fire ever needs it)."""
    if len(summary) <= limit:
        return summary
    cut = summary[: limit + 1]
    end = max(cut.rfind(","), cut.rfind(";"))
    return summary[:end] if end > 0 else summary[:limit]


@dataclass(slots=True)
class GuardHits:
    """One route's requests a guard check fired on: how many, by outcome, and per check
    (label, check name) how many requests it fired on."""

    route: str
    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    checks: dict[tuple[str, str], int] = field(default_factory=dict)

    def ranked_checks(self) -> list[tuple[str, str, int]]:
        """(check, label, requests), most requests first, then by name."""
        ranked = sorted(self.checks.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0]))
        return [(name, label, n) for (label, name), n in ranked]


def outcomes_of(lines: Iterable[GuardHits]) -> tuple[str, ...]:
    """The outcome columns of a report: the four, then any other seen (sorted)."""
    extra = {o for line in lines for o, n in line.outcomes.items() if n and o not in OUTCOMES}
    return OUTCOMES + tuple(sorted(extra))


def tally(rows: Iterable[tuple[str, str, str | None, int]]) -> list[GuardHits]:
    """Per route, from (route, summary, error class, requests) groups, sorted by route.

    A request with the error class `guardrail_blocked` counts as blocked whatever its
    summary's first field: a reroute that left the route no allowed deployment is refused
    too, and its summary still says "reroute" (the check that fired was a reroute check)."""
    by_route: dict[str, GuardHits] = {}
    for route, summary, error_class, count in rows:
        parsed = parse(summary)
        if parsed is None or count <= 0:
            continue
        hits = by_route.setdefault(route, GuardHits(route))
        hits.requests += count
        outcome = "blocked" if error_class == BLOCKED_ERROR else parsed.outcome
        hits.outcomes[outcome] = hits.outcomes.get(outcome, 0) + count
        for key in dict.fromkeys(parsed.checks):  # a check counts once per request
            hits.checks[key] = hits.checks.get(key, 0) + count
    return [by_route[route] for route in sorted(by_route)]
