"""A drill's verdict written out: the sides' numbers as a dict (stored with the drill, served
by the admin API) and as Markdown (printed by `farebox drill report`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from routing import drills
from routing.drills import DrillSpec
from routing.guard_trial import TrialCounts


def side_dict(side: drills.Side) -> dict[str, Any]:
    return {
        "attempts": side.attempts,
        "successes": side.successes,
        "p50_ms": side.p50_ms,
        "p95_ms": side.p95_ms,
        "cost_per_success": side.cost_per_success,
        "gate_checked": side.gate_checked,
        "gate_passed": side.gate_passed,
        "errors": dict(side.errors),
    }


def _fmt(value: Any, pattern: str = "{}") -> str:
    return "—" if value is None else pattern.format(value)


def trial_verdict(
    spec: DrillSpec, trial: TrialCounts, since: datetime, until: datetime, aborted: str | None
) -> dict[str, Any]:
    """The verdict of a drill that only tried guard checks: it passes once the cohort had
    traffic for them to read (what they would have done is the report, not a rule)."""
    reasons = [f"aborted: {aborted}"] if aborted else []
    if not trial.requests:
        reasons.append("no request fell in the drill's cohort: the checks read nothing")
    return {
        "result": "FAIL" if reasons else "PASS",
        "reasons": reasons,
        "drill_id": spec.id,
        "route": spec.route,
        "target": None,
        "percent": spec.percent,
        "window": {"since": since.isoformat(), "until": until.isoformat()},
        "guard_trial": trial.as_dict(),
    }


def render(spec: DrillSpec, result: Mapping[str, Any]) -> str:
    """The verdict as Markdown (stored with the drill, printed by `farebox drill report`)."""
    if not spec.target:
        lines = [
            f"# Drill {spec.id}: {result['result']}",
            "",
            f"Route `{spec.route}`: guard checks tried on {spec.percent:g} % of requests, "
            f"{result['window']['since']} → {result['window']['until']}.",
        ]
        if result["reasons"]:
            lines += ["", "Why it failed:", *(f"- {r}" for r in result["reasons"])]
        return "\n".join(lines + _trial_lines(result["guard_trial"])) + "\n"
    return _render_failover(spec, result) + "\n".join(
        _trial_lines(result["guard_trial"]) if "guard_trial" in result else []
    )


def _trial_lines(trial: Mapping[str, Any]) -> list[str]:
    n = trial["requests"]
    would = trial["would"]
    lines = [
        "",
        "## Guard checks on trial (flag mode: nothing was acted on)",
        "",
        "| the cohort's requests | would have been blocked | rerouted | masked | flagged |",
        "|---|---|---|---|---|",
        f"| {n} | {_share(would['blocked'], n)} | {_share(would['rerouted'], n)} | "
        f"{_share(would['masked'], n)} | {_share(would['flagged'], n)} |",
    ]
    if trial["by_check"]:
        lines += ["", "| check | requests it fired on |", "|---|---|"]
        for name, counts in sorted(trial["by_check"].items()):
            fired = ", ".join(f"{label}: {k}" for label, k in sorted(counts.items()))
            lines.append(f"| `{name}` | {fired} |")
    return [*lines, ""]


def _share(k: int, n: int) -> str:
    return f"{k} ({k / n:.1%})" if n else str(k)


def _render_failover(spec: DrillSpec, result: Mapping[str, Any]) -> str:
    d, p = result["drill_side"], result["primary_side"]
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(d["errors"].items())) or "none"
    lines = [
        f"# Drill {spec.id}: {result['result']}",
        "",
        f"Route `{spec.route}`: {spec.percent:g} % of requests to `{spec.target}`"
        + (" with the primary treated as down" if spec.simulate_outage else "")
        + f", {result['window']['since']} → {result['window']['until']}.",
        "",
        "| | drill target | primary |",
        "|---|---|---|",
        f"| attempts | {d['attempts']} | {p['attempts']} |",
        f"| success rate | {_rate(d)} | {_rate(p)} |",
        f"| latency p50 (ms) | {_fmt(d['p50_ms'], '{:.1f}')} | {_fmt(p['p50_ms'], '{:.1f}')} |",
        f"| latency p95 (ms) | {_fmt(d['p95_ms'], '{:.1f}')} | {_fmt(p['p95_ms'], '{:.1f}')} |",
        f"| cost per success (USD) | {_fmt(d['cost_per_success'], '{:.6f}')} | "
        f"{_fmt(p['cost_per_success'], '{:.6f}')} |",
        f"| gate pass rate | {_gate(d)} | {_gate(p)} |",
        "",
        f"- Schema conformance: {_fmt(result['conformance'], '{:.1%}')} of "
        f"{result['conformance_checked']} answers checked",
        f"- Errors by class: {errors}",
        f"- Cost delta per request: {_fmt(result['cost_delta_per_request'], '{:+.6f}')} USD",
    ]
    if result["reasons"]:
        lines += ["", "Why it failed:", *(f"- {r}" for r in result["reasons"])]
    return "\n".join(lines) + "\n"


def _rate(side: Mapping[str, Any]) -> str:
    return f"{side['successes'] / side['attempts']:.1%}" if side["attempts"] else "—"


def _gate(side: Mapping[str, Any]) -> str:
    checked = side["gate_checked"]
    return f"{side['gate_passed'] / checked:.1%}" if checked else "—"
