"""`explain` for a route: what the planner would do with one request, and why.

Shared by `farebox route explain` (an idle snapshot built from the config) and
`POST /admin/routes/{route}/explain` (the running gateway's live state), so both say the
same thing in the same shape: `explain_route` builds a JSON-ready dict, `print_explanation`
renders that dict as text. The CLI's `--json` and the API answer are the dict itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Collection, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.api.validate import check_chat, parse_object
from routing.model import DYNAMIC_STRATEGIES, RouteSpec
from routing.planner import Candidate
from routing.resolve import plan_for_route

if TYPE_CHECKING:
    from gateway.core.live_routing import LiveRouting

HeaderLookup = Callable[[str], str | None]

# Fixed plans are not ordered by cost, but what each target would cost is still worth
# seeing; the cost strategy's estimate is the one the balancing routes use, so it is the one
# shown (computed by running the planner as if the route were `strategy: cost`).
FIXED_REASON = "fixed plan: targets in configured order, then fallbacks (not cost-planned)"
FIXED_COST_NOTE = (
    "expected costs are the cost strategy's estimates for each deployment; "
    "this route's order does not depend on them"
)
BREAKER_OPEN = "circuit breaker open"


def parse_chat_request(body: bytes, route: str) -> dict[str, Any]:
    """The chat request to explain, checked as the hot path checks it (GatewayError 400).

    The route comes from the caller, not the body, so `model` may be missing or name
    something else.
    """
    payload = parse_object(body)
    check_chat({**payload, "model": route})
    return payload


def unknown_route_message(name: str, routes: Collection[str], deployments: Collection[str]) -> str:
    if name in deployments:
        return (
            f"{name!r} is a deployment id, not a route: requests for it go straight to it. "
            f"Routes: {_listing(routes)}"
        )
    match = difflib.get_close_matches(name, list(routes), n=1, cutoff=0.6)
    hint = f" (did you mean {match[0]!r}?)" if match else ""
    return f"Unknown route {name!r}{hint}. Routes: {_listing(routes)}"


def _listing(names: Collection[str]) -> str:
    shown = sorted(names)
    return ", ".join(shown[:50]) + (" …" if len(shown) > 50 else "") if shown else "(none)"


def explain_route(
    live: LiveRouting,
    route: RouteSpec,
    payload: Mapping[str, Any],
    request_id: str,
    header: HeaderLookup,
    *,
    snapshot: str,
) -> dict[str, Any]:
    """Plan `payload` on `route` from `live` without sending anything or touching its state.

    `snapshot` says where the state came from: "idle" (config only) or "live".
    """
    notes: list[str] = []
    model = payload.get("model")
    if isinstance(model, str) and model and model != route.name:
        notes.append(f"the body's model {model!r} is ignored: this explains route {route.name!r}")
    if route.strategy in DYNAMIC_STRATEGIES:
        decision, _ = live.decide(route, payload, request_id, header)
        attempts = decision.plan.attempts
        chosen = decision.candidates[: len(attempts)]
        plan = [
            _planned(i, a.role, c) for i, (a, c) in enumerate(zip(attempts, chosen, strict=True), 1)
        ]
        left_out = [_entry(c) | {"reason": c.skipped} for c in decision.candidates[len(attempts) :]]
        soft = [
            {"position": e["position"], "deployment": e["deployment"], "reason": e["skipped"]}
            for e in plan
            if e["skipped"] is not None
        ]
        reason = decision.reason
        cost_planned = route.strategy == "cost"
        if not cost_planned:
            notes.append(
                f"strategy {route.strategy} orders by "
                + ("weight" if route.strategy == "weighted" else "time to first token")
                + "; expected costs are shown for comparison"
            )
    else:
        plan, soft = _fixed(live, route, payload, request_id, header)
        left_out, reason, cost_planned = [], FIXED_REASON, False
        notes.append(FIXED_COST_NOTE)
    return {
        "route": route.name,
        "strategy": route.strategy,
        "cost_planned": cost_planned,
        "fixed_plan": route.strategy not in DYNAMIC_STRATEGIES,
        "reason": reason,
        "snapshot": snapshot,
        "request_id": request_id,
        "plan": plan,
        "left_out": left_out,
        "soft_skipped": soft,
        "notes": notes,
    }


def _fixed(
    live: LiveRouting,
    route: RouteSpec,
    payload: Mapping[str, Any],
    request_id: str,
    header: HeaderLookup,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Direct and failover plans: the configured order, with the cost planner's estimates.

    Of the planner's skip reasons only an open breaker applies to a fixed plan (the
    service drops those targets unless every one is open); requirements, capabilities and
    limits are the balancing strategies' business, so they are not reported here.
    """
    as_cost = dataclasses.replace(route, strategy="cost")
    decision, _ = live.decide(as_cost, payload, request_id, header)
    by_id = {c.deployment.id: c for c in decision.candidates}
    fixed = plan_for_route(route, {dep_id: c.deployment for dep_id, c in by_id.items()})
    breaker_open = live.view(route.name).breaker_open
    plan, soft = [], []
    for i, attempt in enumerate(fixed.attempts, 1):
        dep_id = attempt.deployment.id
        skipped = BREAKER_OPEN if breaker_open.get(dep_id, False) else None
        candidate = by_id[dep_id]._replace(skipped=skipped, hard=False)
        plan.append(_planned(i, attempt.role, candidate))
        if skipped is not None:
            reason = f"{BREAKER_OPEN} (not tried unless every target's breaker is open)"
            soft.append({"position": i, "deployment": dep_id, "reason": reason})
    return plan, soft


def _planned(position: int, role: str, c: Candidate) -> dict[str, Any]:
    return {"position": position, "role": role} | _entry(c)


def _entry(c: Candidate) -> dict[str, Any]:
    dep = c.deployment
    return {
        "deployment": dep.id,
        "provider": dep.provider,
        "kind": dep.provider_kind,
        "expected_cost_usd": usd(c.expected_cost_usd),
        "cost_without_cache_usd": usd(c.cost_without_cache_usd),
        "input_tokens": c.input_tokens,
        "cached_tokens": c.cached_tokens,
        "output_tokens": c.output_tokens,
        "note": c.note,
        "skipped": c.skipped,
    }


def usd(value: float) -> float | None:
    """8 significant digits; None (JSON null) for an unknown price (math.inf)."""
    return None if math.isinf(value) else float(f"{value:.8g}")


def usd_text(value: float | None) -> str:
    # Positional notation: 0.0002015 reads better than 2.015e-04 in a cost column.
    return "unknown" if value is None else format(Decimal(repr(value)).normalize(), "f")


def print_explanation(data: Mapping[str, Any], width: int = 160) -> None:
    """Render `explain_route`'s dict as text on stdout."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=width, highlight=False, markup=False)
    state = (
        "idle snapshot: no live traffic, all breakers closed"
        if data["snapshot"] == "idle"
        else "live state of the running gateway"
    )
    if data["cost_planned"]:
        planned = "cost-planned"
    elif data["fixed_plan"]:
        planned = "fixed plan, not cost-planned"
    else:
        planned = "planned per request, not by cost"
    console.print(f"route {data['route']}: strategy {data['strategy']} ({planned}; {state})")
    console.print(f"reason: {data['reason'] or '-'}")
    console.print(f"request id: {data['request_id']}")
    table = Table(title="plan")
    columns = ("#", "deployment", "role", "kind", "expected USD", "input", "cached", "output")
    for column in (*columns, "note"):
        right = column in ("#", "expected USD", "input", "cached", "output")
        table.add_column(column, justify="right" if right else "left")
    for e in data["plan"]:
        note = e["note"]
        if e["skipped"]:
            note = f"{note}; skipped: {e['skipped']}" if note else f"skipped: {e['skipped']}"
        cells = (
            str(e["position"]),
            e["deployment"],
            e["role"],
            e["kind"],
            usd_text(e["expected_cost_usd"]),
            f"{e['input_tokens']:,}",
            f"{e['cached_tokens']:,}",
            f"{e['output_tokens']:,}",
            note,
        )
        # Text, not str: deployment ids and reasons may contain [brackets].
        table.add_row(*(Text(cell) for cell in cells))
    console.print(table)
    if not data["plan"]:
        console.print("no deployment can serve this request")
    if data["left_out"]:
        console.print("left out (hard skips: never tried for this request):")
        for e in data["left_out"]:
            console.print(f"  {e['deployment']}: {e['reason']}")
    if data["soft_skipped"]:
        console.print("soft-skipped (kept in the plan, tried only after the eligible ones):")
        for e in data["soft_skipped"]:
            console.print(f"  {e['position']}. {e['deployment']}: {e['reason']}")
    for note in data["notes"]:
        console.print(f"note: {note}")
