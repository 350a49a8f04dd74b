"""Guard checks tried in a drill (pure: no I/O): run on the cohort's requests in flag mode,
they change nothing, and what each would have done is written into the request's guard
summary (`trial-blocked=new-check`), so the ledger holds it and the drill's verdict counts
it: how many of the cohort's requests the new checks would have blocked, rerouted, masked
or flagged, and which check did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from routing.guard import FLAG, LABELS, Check, inspect

TRIAL = "trial-"
WOULD = tuple(LABELS.values())


def trial(checks: Iterable[Check], texts: list[str]) -> dict[str, str]:
    """The checks that would have fired on `texts`: name → the action each would have
    taken. Each check is run alone (a block stops the others in a real verdict, but a
    trial wants to know about every check)."""
    fired: dict[str, str] = {}
    for check in checks:
        if inspect((check,), texts).hits:
            fired[check.name] = check.action
    return fired


def with_trial(summary: str | None, fired: Mapping[str, str]) -> str | None:
    """`summary` (what the route's own checks did, or None) with the trial's parts added;
    a request only the trial fired on reads as flagged (the trial acted on nothing)."""
    if not fired:
        return summary
    parts = [summary or FLAG]
    for action, label in LABELS.items():
        names = [name for name, did in fired.items() if did == action]
        if names:
            parts.append(f"{TRIAL}{label}={','.join(names)}")
    return "; ".join(parts)


@dataclass(slots=True)
class TrialCounts:
    """A drill cohort's requests and what the trial checks would have done to them."""

    requests: int = 0
    would: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WOULD, 0))
    by_check: dict[str, dict[str, int]] = field(default_factory=dict)  # name → label → n

    def add(self, summary: str | None, requests: int) -> None:
        """One group of the cohort's requests that share a guard summary."""
        self.requests += requests
        seen: set[str] = set()
        for part in (summary or "").split(";"):
            label, sep, names = part.strip().partition("=")
            if not sep or not label.startswith(TRIAL):
                continue
            would = label[len(TRIAL) :]
            if would in self.would and would not in seen:
                seen.add(would)
                self.would[would] += requests
            for name in filter(None, names.split(",")):
                counts = self.by_check.setdefault(name, {})
                counts[would] = counts.get(would, 0) + requests

    def as_dict(self) -> dict[str, object]:
        return {"requests": self.requests, "would": dict(self.would), "by_check": self.by_check}
