"""A drill's verdict written out: the sides' numbers as a dict (stored with the drill, served
by the admin API) and as Markdown (printed by `farebox drill report`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from routing import drills
from routing.drills import DrillSpec


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


def render(spec: DrillSpec, result: Mapping[str, Any]) -> str:
    """The verdict as Markdown (stored with the drill, printed by `farebox drill report`)."""
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
