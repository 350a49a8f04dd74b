"""Failover drills as pure decisions: who is in the cohort, what their plan becomes, whether
an answer has the primary's shape, and the verdict.

A drill sends `percent` of a route's live requests to a fallback deployment first (role
`drill`). The rest of the route's plan stays behind it, so a drill target that fails costs
the client nothing but latency: the primary answers. With `simulate_outage` the route's
primary is dropped for the cohort instead, so the request walks the whole fallback path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from routing.guard import Check
from routing.model import DeploymentSpec, Plan, PlannedAttempt

DRILL = "drill"

# Error classes that say the fallback is misconfigured rather than unlucky.
AUTH_CLASSES = frozenset({"http_401", "http_403", "auth"})
MISSING_CLASSES = frozenset({"http_404", "model_not_found"})


@dataclass(frozen=True, slots=True)
class DrillSpec:
    id: str
    route: str
    target: str
    percent: float
    # Unix seconds.
    started_at: float
    ends_at: float
    simulate_outage: bool = False
    # Abort when the drill target has failed this many times and at this rate or worse.
    abort_after_errors: int = 10
    abort_error_rate: float = 0.5
    # Guard checks tried on the cohort in flag mode (routing/guard_trial.py); with no
    # `target` ("") the drill only tries them and the cohort keeps the route's plan.
    guard: tuple[Check, ...] = ()


def in_cohort(drill_id: str, request_id: str, percent: float) -> bool:
    """Deterministic per request, uniform over request ids, independent across drills."""
    if percent <= 0:
        return False
    if percent >= 100:
        return True
    digest = hashlib.blake2b(f"{drill_id}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < percent / 100 * 2**64


def drill_plan(plan: Plan, target: DeploymentSpec, simulate_outage: bool) -> Plan:
    """The cohort's plan: the drill target first, then the route's own plan without it.

    With `simulate_outage` the primary (the plan's first deployment) is treated as down: the
    request goes the fallback path, with the drill target's attempt tagged `drill` wherever
    it sits (first, if the route does not list it at all).
    """
    rest = [a for a in plan.attempts if a.deployment.id != target.id]
    if simulate_outage and plan.attempts:
        primary = plan.attempts[0].deployment.id
        path = [a.deployment for a in plan.attempts if a.deployment.id != primary]
        if target.id not in {d.id for d in path}:
            path.insert(0, target)
        attempts = tuple(
            PlannedAttempt(d, DRILL if d.id == target.id else "fallback") for d in path
        )
    else:
        attempts = (PlannedAttempt(target, DRILL), *(_as_fallback(a) for a in rest))
    return replace(plan, attempts=attempts, reason=f"drill to {target.id}")


def _as_fallback(attempt: PlannedAttempt) -> PlannedAttempt:
    return attempt if attempt.role == "fallback" else PlannedAttempt(attempt.deployment, "fallback")


def should_abort(spec: DrillSpec, attempts: int, errors: int) -> bool:
    if errors < spec.abort_after_errors or attempts <= 0:
        return False
    return errors / attempts >= spec.abort_error_rate


# -- answer shapes -----------------------------------------------------------------------


def shape_of(answer: Mapping[str, Any]) -> frozenset[str]:
    """What a client's code depends on in a chat.completion: fields present and their JSON
    types, message and tool-call structure, usage fields, the finish reason's vocabulary.
    Values (text, ids, token counts) are ignored."""
    marks: set[str] = {f"{k}:{_type(v)}" for k, v in answer.items() if k != "choices"}
    for choice in answer.get("choices") or []:
        if not isinstance(choice, Mapping):
            marks.add("choice:not-object")
            continue
        marks.update(f"choice.{k}:{_type(v)}" for k, v in choice.items())
        finish = choice.get("finish_reason")
        marks.add(f"finish:{finish if finish in _FINISH else 'other'}")
        message = choice.get("message")
        if isinstance(message, Mapping):
            # Content is text, or null beside tool calls: both are the same field to a client.
            marks.update(
                "message.content" if k == "content" else f"message.{k}:{_type(v)}"
                for k, v in message.items()
                if v is not None or k == "content"
            )
            for call in message.get("tool_calls") or []:
                if isinstance(call, Mapping):
                    marks.update(f"tool_call.{k}:{_type(v)}" for k, v in call.items())
                    fn = call.get("function")
                    if isinstance(fn, Mapping):
                        marks.update(f"tool_call.function.{k}:{_type(v)}" for k, v in fn.items())
    usage = answer.get("usage")
    if isinstance(usage, Mapping):
        marks.update(f"usage.{k}:{_type(v)}" for k, v in usage.items() if k in _USAGE)
    return frozenset(marks)


_FINISH = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
_USAGE = frozenset({"prompt_tokens", "completion_tokens", "total_tokens"})


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# The fields every OpenAI chat.completion carries; a drill answer missing one breaks
# clients whatever the primary does.
REQUIRED_MARKS = frozenset(
    {"id:string", "object:string", "model:string", "choice.message:object", "usage:object"}
)


def conforms(candidate: frozenset[str], references: set[frozenset[str]]) -> tuple[bool, str]:
    """Whether a drill answer has a shape the primary's answers have; and what differs.

    Without primary answers to compare with, the OpenAI schema's required fields decide.
    Extra fields are fine (clients ignore them); a missing or retyped field is not.
    """
    missing_required = REQUIRED_MARKS - candidate
    if missing_required:
        return False, "missing " + ", ".join(sorted(missing_required))
    if not references:
        return True, ""
    best: frozenset[str] | None = None
    for ref in references:
        core = {m for m in ref if not m.startswith(("finish:", "tool_call", "message.tool"))}
        gap = core - candidate
        if not gap:
            return True, ""
        if best is None or len(gap) < len(best):
            best = frozenset(gap)
    assert best is not None
    return False, "missing " + ", ".join(sorted(best)[:5])


# -- the verdict -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Side:
    """What one side (drill target or primary) did over the drill's window."""

    attempts: int = 0
    successes: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    cost_per_success: float | None = None
    gate_checked: int = 0
    gate_passed: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Thresholds:
    min_requests: int = 20
    min_success_rate: float = 0.95
    min_conformance: float = 0.99
    min_gate_pass_rate: float = 0.9
    max_latency_ratio: float = 3.0


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]
    success_rate: float | None
    conformance: float | None
    gate_pass_rate: float | None
    latency_ratio_p95: float | None
    cost_delta_per_request: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": "PASS" if self.passed else "FAIL",
            "reasons": list(self.reasons),
            "success_rate": self.success_rate,
            "conformance": self.conformance,
            "gate_pass_rate": self.gate_pass_rate,
            "latency_ratio_p95": self.latency_ratio_p95,
            "cost_delta_per_request": self.cost_delta_per_request,
        }


def verdict(
    drill: Side,
    primary: Side,
    conforming: int,
    checked: int,
    *,
    aborted: str | None = None,
    thresholds: Thresholds | None = None,
) -> Verdict:
    """PASS only when the fallback carried enough traffic, answered it, in the primary's
    shape, passed the gates, and was not absurdly slower; every failing rule is a reason."""
    t = thresholds or Thresholds()
    reasons: list[str] = []
    if aborted:
        reasons.append(f"aborted: the drill target {aborted}")
    success_rate = drill.successes / drill.attempts if drill.attempts else None
    if drill.attempts < t.min_requests:
        reasons.append(f"only {drill.attempts} drill attempts (need {t.min_requests})")
    if success_rate is not None and success_rate < t.min_success_rate:
        reasons.append(f"success rate {success_rate:.1%} < {t.min_success_rate:.0%}")
    auth = sum(n for c, n in drill.errors.items() if c in AUTH_CLASSES)
    if auth:
        reasons.append(f"auth errors: {auth} (the fallback's key or permissions are wrong)")
    missing = sum(n for c, n in drill.errors.items() if c in MISSING_CLASSES)
    if missing:
        reasons.append(f"model not found: {missing} (deprecated or misnamed upstream model)")
    for cls, n in sorted(drill.errors.items()):
        if cls.startswith("http_429") or cls == "rate_limited":
            reasons.append(f"rate limited: {n}")
        elif cls == "timeout":
            reasons.append(f"timeouts: {n}")
    conformance = conforming / checked if checked else None
    if conformance is not None and conformance < t.min_conformance:
        reasons.append(f"schema conformance {conformance:.1%} < {t.min_conformance:.0%}")
    gate_rate = drill.gate_passed / drill.gate_checked if drill.gate_checked else None
    if gate_rate is not None and gate_rate < t.min_gate_pass_rate:
        reasons.append(f"gate pass rate {gate_rate:.1%} < {t.min_gate_pass_rate:.0%}")
    ratio = None
    # Latency is compared only against enough primary traffic: a 100 % drill leaves none,
    # and one stray primary answer is no baseline.
    if drill.p95_ms is not None and primary.p95_ms and primary.successes >= t.min_requests:
        ratio = drill.p95_ms / primary.p95_ms
        if ratio > t.max_latency_ratio:
            reasons.append(f"p95 latency {ratio:.1f}× the primary's (max {t.max_latency_ratio}×)")
    delta = None
    if drill.cost_per_success is not None and primary.cost_per_success is not None:
        delta = drill.cost_per_success - primary.cost_per_success
    return Verdict(
        passed=not reasons,
        reasons=tuple(reasons),
        success_rate=success_rate,
        conformance=conformance,
        gate_pass_rate=gate_rate,
        latency_ratio_p95=ratio,
        cost_delta_per_request=delta,
    )
