"""The status page at /ui: one server-rendered HTML page for operators (master key).

Routes and their plans, deployments with breaker state, in-flight calls and error rate,
spend today and this month, running drills and the last verdicts, the last reconciliation.
No front-end build and nothing fetched by the browser: inline CSS, and the page reloads
itself every REFRESH_S seconds.

Live state (breakers, in-flight, drills running) is this worker's, read from memory on the
event loop; spend and error rates come from the ledger, so they are the whole fleet's, and
are cached for LEDGER_CACHE_S so a page left open does not run month-long aggregates
every few seconds.

Browsers cannot send a bearer token from the address bar, so HTTP Basic auth is accepted
too (any user name, the master key as password) and a 401 asks for it.
"""

from __future__ import annotations

import base64
import binascii
import html
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.admin import authorize_admin
from gateway.errors import GatewayError
from gateway.ledger.db_errors import DATABASE_ERRORS
from gateway.state import GatewayState
from routing.resolve import describe_plan

log = logging.getLogger("farebox.api")

REFRESH_S = 10
LEDGER_CACHE_S = 15.0
ERROR_WINDOW = timedelta(minutes=15)
# Breaker colours; the browser test counts pixels of OPEN_COLOUR.
OPEN_COLOUR = "#c62828"
HALF_OPEN_COLOUR = "#ef6c00"
CLOSED_COLOUR = "#2e7d32"
_BADGE = {"open": OPEN_COLOUR, "half_open": HALF_OPEN_COLOUR, "closed": CLOSED_COLOUR}

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
table{border-collapse:collapse;background:#fff;min-width:480px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.muted{color:#777}.cards{display:flex;gap:16px}
.card{background:#fff;border:1px solid #ddd;padding:8px 16px;min-width:160px}
.card b{display:block;font-size:20px}ul{margin:0;padding-left:18px}
"""


@dataclass(slots=True)
class _LedgerFigures:
    today_usd: Decimal | None
    month_usd: Decimal | None
    today_requests: int
    # route → spend, requests and successful requests (gateway.ledger.success)
    month_by_route: list[tuple[str, Decimal, int, int]]
    # deployment → (attempts, failed attempts) in ERROR_WINDOW
    errors: dict[str, tuple[int, int]]
    reconciliation: dict[str, Any] | None
    problem: str | None = None


def status_router(state: Callable[[], GatewayState | None], master_key: str | None) -> APIRouter:
    router = APIRouter()
    cache: dict[str, tuple[float, _LedgerFigures]] = {}

    @router.get("/ui", include_in_schema=False)
    async def status_page(request: Request) -> Response:
        current = state()
        if current is None:
            return Response("Farebox is starting.", 503, media_type="text/plain")
        try:
            await authorize_admin(_as_bearer(request), current, master_key)
        except GatewayError as exc:
            headers = {"www-authenticate": 'Basic realm="Farebox"'} if exc.status == 401 else {}
            return Response(exc.body(), exc.status, headers, media_type="application/json")
        now = time.monotonic()
        cached = cache.get("ledger")
        if cached is None or now - cached[0] > LEDGER_CACHE_S:
            cached = cache["ledger"] = (now, await _ledger_figures(current))
        page = await render(current, cached[1])
        return Response(
            page,
            media_type="text/html; charset=utf-8",
            headers={"cache-control": "no-store"},
        )

    return router


def _as_bearer(request: Request) -> Request:
    """The request, with HTTP Basic credentials turned into the bearer token they carry."""
    value = request.headers.get("authorization", "")
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return request
    try:
        _, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return request
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"]
    headers.append((b"authorization", f"Bearer {password}".encode()))
    return Request({**request.scope, "headers": headers})


async def _ledger_figures(state: GatewayState) -> _LedgerFigures:
    repo = state.repository
    empty = _LedgerFigures(None, None, 0, [], {}, None)
    if repo is None:
        empty.problem = "ledger disabled (FAREBOX_LEDGER_ENABLED=false)"
        return empty
    now = datetime.now(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    try:
        today = await repo.usage(day, "route")
        this_month = await repo.usage(month, "route")
        recent = await repo.usage(now - ERROR_WINDOW, "deployment")
    except DATABASE_ERRORS as exc:  # the page still shows live state with the database down
        log.warning("status page: ledger unreadable: %s", exc)
        empty.problem = f"ledger unreadable: {type(exc).__name__}"
        return empty
    return _LedgerFigures(
        today_usd=sum((line.cost_usd for line in today), Decimal(0)),
        month_usd=sum((line.cost_usd for line in this_month), Decimal(0)),
        today_requests=sum(line.requests for line in today),
        month_by_route=[
            (line.group or "-", line.cost_usd, line.requests, line.successful)
            for line in this_month
        ],
        # Attempt-level: an attempt that failed, whatever became of its request.
        errors={line.group or "-": (line.attempts, line.failed_attempts) for line in recent},
        reconciliation=await _last_reconciliation(state, now),
    )


async def _last_reconciliation(state: GatewayState, now: datetime) -> dict[str, Any] | None:
    repo = state.repository
    if repo is None:
        return None
    from gateway.reports.store import ReportStore

    store = ReportStore(repo.engine)
    previous = (now.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    try:
        for month in (now.strftime("%Y-%m"), previous):
            found = await store.latest_reconciliation(month)
            if found is not None:
                return found
    except DATABASE_ERRORS as exc:  # no report tables yet, or the database is down
        log.info("status page: no reconciliation: %s", exc)
    return None


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _usd(value: Decimal | None) -> str:
    if value is None:
        return "—"
    # Test and low-traffic spend is fractions of a cent: keep six places below a dollar.
    return f"${value:,.6f}" if abs(value) < 1 else f"${value:,.2f}"


def _success(successful: int, requests: int) -> str:
    """Successful requests and their share (answered whole, gate passed: the one rule of
    gateway.ledger.success, applied by the ledger query)."""
    if not requests:
        return "—"
    return f"{successful:,} ({100 * successful / requests:.1f} %)"


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], empty: str) -> str:
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    if not body:
        return f'<p class="muted">{_e(empty)}</p>'
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table><tr>{header}</tr>{body}</table>"


def _td(value: Any, numeric: bool = False) -> str:
    return f'<td class="n">{_e(value)}</td>' if numeric else f"<td>{_e(value)}</td>"


def _routes(state: GatewayState) -> str:
    rows = []
    for name, route in state.config.routes.items():
        plan = state.index.plan(name)
        lines = describe_plan(plan) if plan is not None else ["(no plan)"]
        items = "".join(f"<li>{_e(line)}</li>" for line in lines)
        rows.append([_td(name), _td(route.workload or ""), f"<td><ul>{items}</ul></td>"])
    return _table(("route", "workload", "plan"), rows, "No routes configured.")


def _deployments(state: GatewayState, figures: _LedgerFigures) -> str:
    views = state.breakers.snapshot() if state.breakers is not None else {}
    loads = state.live.loads if state.live is not None else {}
    rows = []
    for dep_id, dep in state.config.deployment_specs().items():
        view = views.get(dep_id)
        status = view.state if view is not None else "closed"
        badge = (
            f'<td><span class="badge" style="background:{_BADGE[status]}">'
            f"{_e(status.replace('_', '-'))}</span></td>"
        )
        detail = ""
        if view is not None and view.state != "closed":
            detail = f"trip {view.trips}, cooldown {view.cooldown_remaining_s:.0f} s left"
        load = loads.get(dep_id)
        attempts, failed = figures.errors.get(dep_id, (0, 0))
        rate = f"{100 * failed / attempts:.1f} %" if attempts else "—"
        rows.append(
            [
                _td(dep_id),
                _td(f"{dep.provider} ({dep.provider_kind})"),
                badge,
                _td(detail),
                _td("—" if load is None else load.in_flight, numeric=True),
                _td(attempts, numeric=True),
                _td(rate, numeric=True),
            ]
        )
    head = (
        "deployment",
        "provider",
        "breaker",
        "",
        "in flight",
        "attempts 15 min",
        "failed attempts",
    )
    return _table(head, rows, "No deployments configured.")


async def _drills(state: GatewayState) -> str:
    board = state.drills
    if board is None:
        return '<p class="muted">Drills need the ledger database.</p>'
    running = [
        [
            _td(spec.route),
            _td(spec.target),
            _td(f"{spec.percent:g} %", numeric=True),
            _td(datetime.fromtimestamp(spec.ends_at, UTC).strftime("%H:%M:%S UTC")),
            _td("simulated outage" if spec.simulate_outage else ""),
        ]
        for spec in board.active.values()
    ]
    out = "<h3>Running</h3>" + _table(
        ("route", "to", "share", "ends", ""), running, "No drill is running."
    )
    verdicts: list[list[str]] = []
    if board.repository is not None:
        try:
            recent = await board.repository.recent(limit=20)
        except DATABASE_ERRORS as exc:  # the page still shows live state with the database down
            log.info("status page: drills unreadable: %s", exc)
            recent = []
        for row in [r for r in recent if r.result is not None][:5]:
            finished = row.finished_at.strftime("%Y-%m-%d %H:%M UTC") if row.finished_at else ""
            colour = CLOSED_COLOUR if row.result == "PASS" else OPEN_COLOUR
            verdicts.append(
                [
                    _td(row.route),
                    _td(row.target),
                    f'<td><span class="badge" style="background:{colour}">'
                    f"{_e(row.result)}</span></td>",
                    _td(finished),
                ]
            )
    return (
        out
        + "<h3>Last verdicts</h3>"
        + _table(("route", "to", "verdict", "finished"), verdicts, "No finished drill yet.")
    )


def _reconciliation(found: dict[str, Any] | None) -> str:
    if found is None:
        return '<p class="muted">No reconciliation yet (farebox reconcile --month …).</p>'
    rows = [
        [_td("month"), _td(found.get("month"))],
        [_td("run"), _td(found.get("created_at"))],
        [_td("status"), _td(found.get("status"))],
        [_td("metered"), _td(_usd(found.get("metered_usd")))],
        [_td("invoiced"), _td(_usd(found.get("invoiced_usd")))],
        [_td("token variance"), _td(f"{found.get('token_variance_pct')} %")],
        [_td("cost variance"), _td(f"{found.get('cost_variance_pct')} %")],
    ]
    return _table(("", ""), rows, "")


async def render(state: GatewayState, figures: _LedgerFigures) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    problem = f'<p class="muted">{_e(figures.problem)}</p>' if figures.problem else ""
    cards = "".join(
        f'<div class="card">{_e(label)}<b>{_e(value)}</b></div>'
        for label, value in (
            ("spend today", _usd(figures.today_usd)),
            ("spend this month", _usd(figures.month_usd)),
            ("requests today", f"{figures.today_requests:,}"),
        )
    )
    by_route = _table(
        ("route", "spend this month", "requests", "successful"),
        (
            [_td(r), _td(_usd(c), True), _td(f"{n:,}", True), _td(_success(ok, n), True)]
            for r, c, n, ok in figures.month_by_route
        ),
        "No traffic this month.",
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>Farebox status</title><style>{_CSS}</style></head><body>
<h1>Farebox status</h1>
<p class="muted">{_e(now)} · refreshes every {REFRESH_S} s · breakers and in-flight are this
worker's; spend and error rates are the ledger's (all replicas)</p>
<h2>Spend</h2>{problem}<div class="cards">{cards}</div>
<h2>Spend by route this month</h2>{by_route}
<h2>Deployments</h2>{_deployments(state, figures)}
<h2>Routes</h2>{_routes(state)}
<h2>Drills</h2>{await _drills(state)}
<h2>Last reconciliation</h2>{_reconciliation(figures.reconciliation)}
</body></html>"""
