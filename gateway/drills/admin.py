"""What `/admin/drills` and `farebox drill` share: validating a drill against the config,
the JSON view of a drill with its live progress, the last verdict per route, and the audit
row each start and stop writes.

Live progress is read from the ledger (the drill's own attempts so far), so it is the whole
fleet's and needs no Redis; it lags the traffic by the ledger's batching delay (~0.2 s).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.config.drills import DrillStart, target_problems
from gateway.ledger.db_errors import database_errors
from gateway.ledger.drills_records import FINAL, RUNNING, DrillRow
from routing.drills import DRILL

if TYPE_CHECKING:
    from gateway.config.schema import GatewayConfig
    from gateway.ledger.keys_repository import KeysRepository


if TYPE_CHECKING:  # SQLAlchemy; a serving worker on Postgres passes ServingDrills
    from gateway.ledger.drills_repository import DrillsRepository

log = logging.getLogger("farebox.drills")

# Drill statuses before a verdict is stored (stopping and finishing included).
UNFINISHED = ("running", "stopping", "finishing")


def problems(config: GatewayConfig, start: DrillStart) -> list[tuple[str, str]]:
    """(field, message) for every reason the config cannot run this drill."""
    if start.to is None:  # a guard trial only
        return target_problems(start.route, None, config.routes, config.deployments)
    found = target_problems(start.route, start.to, config.routes, config.deployments)
    route = config.routes.get(start.route)
    if not found and route is not None and route.targets[0] == start.to:
        # The verdict compares the drill target with the route's primary (its first
        # target): drilling the primary itself would test nothing and compare it with itself.
        found.append(
            (
                "to",
                f"{start.to!r} is route {start.route!r}'s primary (its first target): "
                "drill a fallback or another deployment",
            )
        )
    return found


async def progress(repository: DrillsRepository, row: DrillRow) -> dict[str, Any]:
    """The drill target's attempts so far, from the ledger."""
    side = await repository.side(
        drill_id=row.id,
        deployment=row.target,
        role=DRILL,
        since=row.started_at,
        until=max(row.started_at, min(datetime.now(UTC), row.ends_at)),
    )
    return {
        "attempts": side.attempts,
        "successes": side.successes,
        "success_rate": side.successes / side.attempts if side.attempts else None,
        "p95_ms": side.p95_ms,
        "errors": dict(side.errors),
    }


def view(row: DrillRow, *, report: bool = True) -> dict[str, Any]:
    data = {"object": "drill", **row.as_dict()}
    if not report:
        data.pop("report", None)
    return data


async def view_with_progress(
    repository: DrillsRepository, row: DrillRow, *, report: bool = True
) -> dict[str, Any]:
    data = view(row, report=report)
    if row.status in UNFINISHED:
        data["progress"] = await progress(repository, row)
    return data


async def last_verdicts(repository: DrillsRepository) -> dict[str, dict[str, Any]]:
    """Each route's most recent finished drill with a verdict (what the gauge exports)."""
    out: dict[str, dict[str, Any]] = {}
    for row in await repository.recent(limit=1000, statuses=FINAL):
        if row.result is None or row.route in out:
            continue
        out[row.route] = {
            "drill_id": row.id,
            "target": row.target,
            "result": row.result,
            "status": row.status,
            "finished_at": row.finished_at.isoformat() if row.finished_at else None,
            "reasons": list((row.verdict or {}).get("reasons", [])),
        }
    return out


async def overview(repository: DrillsRepository, limit: int = 50) -> dict[str, Any]:
    """Recent drills (live progress for unfinished ones) and the last verdict per route."""
    rows = await repository.recent(limit=limit)
    data = [await view_with_progress(repository, r, report=False) for r in rows]
    return {"object": "list", "data": data, "last_verdicts": await last_verdicts(repository)}


def is_running(row: DrillRow) -> bool:
    return row.status == RUNNING


async def audit(
    keys: KeysRepository | None,
    action: str,
    row: DrillRow,
    *,
    actor: str,
    client: str | None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """An `admin_audit` row, through the keys repository's own audit SQL. After the drill's
    own commit and best effort: the drill is what matters, and it is stored with its
    `created_by` anyway."""
    if keys is None:
        return
    payload = {
        "route": row.route,
        "target": row.target,
        "percent": row.percent,
        "simulate_outage": row.simulate_outage,
        **(detail or {}),
    }
    try:
        await keys.audit(action, row.id, payload, actor=actor, client=client)
    except database_errors() as exc:  # any database error: say so, the drill change stands
        log.warning("could not write the audit row for %s %s (%s)", action, row.id, exc)
