"""Drill parameters shared by the YAML schedules, the admin API and `farebox drill start`:
one set of bounds and one duration syntax, so the three front doors accept exactly the same.

Only pydantic here: gateway.config.schema imports this module, and the admin API uses the
request model without touching the database.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.config.guard import GuardCheck, unique_names

# Bounded so a drill's end time always fits a timestamp (a huge `minutes` would overflow
# datetime and turn bad input into a 500), and because a drill longer than a week is a
# migration, not a drill.
MAX_MINUTES = 7 * 24 * 60
DEFAULT_PERCENT = 5.0
DEFAULT_MINUTES = 15.0

Percent = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]
Minutes = Annotated[float, Field(gt=0, le=MAX_MINUTES, allow_inf_nan=False)]
AbortAfter = Annotated[int, Field(ge=1, le=1_000_000)]
AbortRate = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_every(value: str) -> float:
    """`30d`, `12h`, `90m`, `1w`, `45s`, or a sum like `1d12h`: seconds. ValueError otherwise."""
    text = value.strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if not text or pos != len(text) or total <= 0:
        raise ValueError(f"{value!r} is not a duration: use e.g. 30d, 12h, 90m or 1d12h")
    return total


class DrillSchedule(BaseModel):
    """One `drills:` entry: run a drill on `route` to `to` every `every`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Identifies the schedule across restarts (its last drill is found by this name):
    # renaming a schedule restarts its clock.
    name: str | None = Field(default=None, min_length=1, max_length=255)
    route: str = Field(min_length=1)
    to: str = Field(min_length=1)
    percent: Percent = DEFAULT_PERCENT
    minutes: Minutes = DEFAULT_MINUTES
    every: str
    simulate_outage: bool = False
    abort_after_errors: AbortAfter = 10
    abort_error_rate: AbortRate = 0.5

    @field_validator("every")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_every(value)
        return value

    @model_validator(mode="after")
    def _longer_than_the_drill(self) -> DrillSchedule:
        # A drill still running when the next is due would just be skipped: say so now.
        if self.every_s <= self.minutes * 60:
            raise ValueError(
                f"every ({self.every}) must be longer than the drill itself ({self.minutes:g} min)"
            )
        return self

    @property
    def every_s(self) -> float:
        return parse_every(self.every)

    @property
    def schedule_name(self) -> str:
        return self.name or f"{self.route}->{self.to}"


class DrillStart(BaseModel):
    """`POST /admin/drills` (and what `farebox drill start` validates its options with)."""

    model_config = ConfigDict(extra="forbid")

    route: str = Field(min_length=1, max_length=255)
    # None: no failover part, the drill only tries its `guard` checks on the cohort.
    to: str | None = Field(default=None, min_length=1, max_length=255)
    percent: Percent = DEFAULT_PERCENT
    minutes: Minutes = DEFAULT_MINUTES
    simulate_outage: bool = False
    abort_after_errors: AbortAfter = 10
    abort_error_rate: AbortRate = 0.5
    # Guard checks tried on the cohort's requests in flag mode: what each would have done
    # is recorded (`requests.guard`, `trial-…=check`) and the verdict counts it.
    guard: Annotated[list[GuardCheck] | None, Field(max_length=20)] = None

    def stored_guard(self) -> list[dict[str, Any]] | None:
        """The trial checks as the drills table keeps them (what was given, as JSON)."""
        if not self.guard:
            return None
        return [c.model_dump(mode="json", exclude_defaults=True) for c in self.guard]

    @model_validator(mode="after")
    def _something_to_drill(self) -> DrillStart:
        if self.to is None and not self.guard:
            raise ValueError("give `to` (a deployment to drill) or `guard` (checks to try)")
        if self.simulate_outage and self.to is None:
            raise ValueError("simulate_outage needs `to`: the deployment the cohort fails over to")
        unique_names(self.guard)
        if any(check.model is not None for check in self.guard or ()):
            raise ValueError("a drill tries checks that read the request, not guard models")
        return self


def target_problems(
    route: str, to: str | None, routes: Collection[str], deployments: Collection[str]
) -> list[tuple[str, str]]:
    """(field, message) for a route or drill target the config does not have."""
    problems = []
    if route not in routes:
        problems.append(("route", f"unknown route {route!r}{_suggest(route, routes)}"))
    if to is not None and to not in deployments:
        problems.append(("to", f"unknown deployment {to!r}{_suggest(to, deployments)}"))
    return problems


def _suggest(name: str, candidates: Collection[str]) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if match:
        return f" (did you mean {match[0]!r}?)"
    shown = sorted(candidates)[:20]
    return f"; configured: {', '.join(shown)}" if shown else ""
