"""Admin API for failover drills: /admin/drills (master key only).

Start, list, inspect, stop and report drills on the running gateway. A start or stop is
committed to the `drills` table, then announced (DrillBoard.announce: at once on this
replica, through Redis on the others), so every replica applies or drops the drill within
about a second. The verdict is written by the replicas when the drill ends, never here.

As in admin_keys, bodies are validated by hand after the caller is authorized (an anonymous
client learns nothing about the schema from a validation error); the request model is still
published in the OpenAPI document.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from gateway.api.admin import authorize_admin, read_limited
from gateway.api.admin_keys import _json, _schema
from gateway.api.app_errors import field_path
from gateway.api.asgi import new_request_id
from gateway.config.drills import DrillStart
from gateway.drills import admin as drill_admin
from gateway.errors import Conflict, GatewayError, NotFound, Unavailable, bad_request, clip
from gateway.ledger.db_errors import DATABASE_ERRORS
from gateway.ledger.drills_repository import RUNNING, STOPPING, DrillsRepository

if TYPE_CHECKING:
    from gateway.state import GatewayState

log = logging.getLogger("farebox.drills")

DRILL_ID = re.compile(r"drill_[0-9a-f]{1,64}")
ACTOR = "admin-api"


class _DatabaseDown(Exception):
    pass


def _parse_start(body: bytes) -> DrillStart:
    if not body.strip():
        raise bad_request("The request body must be a JSON object.")
    try:
        return DrillStart.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        # Field names can be the client's own (an unknown key): field_path bounds them.
        where = field_path(first["loc"])
        message = clip(first["msg"]) if where is None else f"{where}: {clip(first['msg'])}"
        raise bad_request(f"Invalid request body: {message}", param=where) from None


def _not_found(drill_id: str) -> NotFound:
    shown = drill_id[:80].encode("unicode_escape").decode()
    return NotFound(f"No drill with id {shown}.", code="drill_not_found")


def admin_drills_router(
    state: Callable[[], GatewayState | None], master_key: str | None
) -> APIRouter:
    router = APIRouter(tags=["admin"])

    async def authorized(request: Request) -> tuple[GatewayState, DrillsRepository]:
        current = state()
        if current is None:
            raise Unavailable("The gateway is still starting.")
        await authorize_admin(request, current, master_key)
        board = current.drills
        if board is None or board.repository is None:
            raise Unavailable(
                "Drills need the ledger database; this gateway runs without one "
                "(FAREBOX_LEDGER_ENABLED=false).",
                code="drills_disabled",
            )
        return current, board.repository

    async def db(work: Awaitable[Any]) -> Any:
        try:
            return await work
        except ValueError:
            raise  # the repository's "route already has a drill running"
        except DATABASE_ERRORS as exc:  # driver, pool or SQL error: a clean 503, not a 500
            log.warning("drill database error (%s: %s)", type(exc).__name__, exc)
            raise _DatabaseDown from exc

    async def answer(request: Request, work: Callable[[], Awaitable[Response]]) -> Response:
        request_id = new_request_id()
        try:
            try:
                response = await work()
            except _DatabaseDown:
                raise Unavailable(
                    "The drill database is unreachable; nothing was changed. Retry shortly.",
                    code="drill_store_unavailable",
                ) from None
        except GatewayError as exc:
            headers = {"x-request-id": request_id}
            headers.update((k.decode(), v.decode()) for k, v in exc.extra_headers)
            return Response(exc.body(), exc.status, headers=headers, media_type="application/json")
        response.headers["x-request-id"] = request_id
        return response

    def client_of(request: Request) -> str | None:
        return request.client.host if request.client is not None else None

    async def load(repository: DrillsRepository, drill_id: str) -> Any:
        # Checked before any query: an arbitrary path segment never reaches the database.
        if DRILL_ID.fullmatch(drill_id) is None:
            raise _not_found(drill_id)
        row = await db(repository.get(drill_id))
        if row is None:
            raise _not_found(drill_id)
        return row

    @router.post("/admin/drills", openapi_extra=_schema(DrillStart), status_code=201)
    async def start_drill(request: Request) -> Response:
        """Start a drill: `percent` of the route's requests go to `to` first, for `minutes`,
        and/or are read by the `guard` checks on trial (flag mode). 409 while the route
        already has a drill running."""

        async def work() -> Response:
            current, repository = await authorized(request)
            body = await read_limited(request, current.max_body_bytes)
            start = _parse_start(body)
            problems = drill_admin.problems(current.config, start)
            if problems:
                field, message = problems[0]
                raise bad_request(message[0].upper() + message[1:] + ".", param=field)
            try:
                row = await db(
                    repository.start(
                        start.route,
                        start.to,
                        start.percent,
                        start.minutes,
                        simulate_outage=start.simulate_outage,
                        abort_after_errors=start.abort_after_errors,
                        abort_error_rate=start.abort_error_rate,
                        created_by=ACTOR,
                        guard=start.stored_guard(),
                    )
                )
            except ValueError as exc:
                raise Conflict(f"{clip(str(exc))}; stop it first.", code="drill_running") from None
            assert current.drills is not None
            await current.drills.announce()
            keys = current.key_admin.repository if current.key_admin is not None else None
            await drill_admin.audit(
                keys, "drill.start", row, actor=ACTOR, client=client_of(request)
            )
            return _json(drill_admin.view(row), 201, "")

        return await answer(request, work)

    @router.get("/admin/drills")
    async def list_drills(
        request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 50
    ) -> Response:
        """Recent drills, newest first (live progress for unfinished ones), and the last
        verdict per route."""

        async def work() -> Response:
            _, repository = await authorized(request)
            return _json(await db(drill_admin.overview(repository, limit)), 200, "")

        return await answer(request, work)

    @router.get("/admin/drills/{drill_id}")
    async def get_drill(drill_id: str, request: Request) -> Response:
        """One drill: its settings, status, live progress or verdict and Markdown report."""

        async def work() -> Response:
            _, repository = await authorized(request)
            row = await load(repository, drill_id)
            data = await db(drill_admin.view_with_progress(repository, row))
            return _json(data, 200, "")

        return await answer(request, work)

    @router.post("/admin/drills/{drill_id}/stop")
    async def stop_drill(drill_id: str, request: Request) -> Response:
        """End a running drill now; the replicas write its verdict within a few seconds
        (poll GET /admin/drills/{id} until `status` is `stopped`)."""

        async def work() -> Response:
            current, repository = await authorized(request)
            row = await load(repository, drill_id)
            if row.status != RUNNING or not await db(repository.move(row.id, (RUNNING,), STOPPING)):
                latest = await db(repository.get(row.id)) or row
                raise Conflict(
                    f"Drill {row.id} is not running (status {latest.status}).",
                    code="drill_not_running",
                )
            # Read before announcing: this replica's board moves it on to `finishing` at once.
            stopped = await db(repository.get(row.id)) or row
            assert current.drills is not None
            await current.drills.announce()
            keys = current.key_admin.repository if current.key_admin is not None else None
            await drill_admin.audit(
                keys, "drill.stop", stopped, actor=ACTOR, client=client_of(request)
            )
            return _json(drill_admin.view(stopped), 200, "")

        return await answer(request, work)

    @router.get(
        "/admin/drills/{drill_id}/report",
        responses={200: {"content": {"text/markdown": {}}}},
    )
    async def drill_report(drill_id: str, request: Request) -> Response:
        """The verdict as Markdown; 409 until the drill has one."""

        async def work() -> Response:
            _, repository = await authorized(request)
            row = await load(repository, drill_id)
            if row.report is None:
                raise Conflict(
                    f"Drill {row.id} has no verdict yet (status {row.status}).",
                    code="drill_not_finished",
                )
            return Response(row.report, 200, media_type="text/markdown; charset=utf-8")

        return await answer(request, work)

    return router
