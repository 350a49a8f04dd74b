"""Operational endpoints: liveness and readiness probes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from gateway import metrics as prometheus
from gateway.state import GatewayState


def _json(data: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def ops_router(state: Callable[[], GatewayState | None]) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @router.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        current = state()
        if current is None:
            return _json({"status": "starting"}, 503)
        if current.draining:
            return _json({"status": "draining"}, 503)
        body: dict[str, Any] = {
            "status": "ready",
            "routes": len(current.config.routes),
            "deployments": len(current.config.deployments),
        }
        writer = current.writer
        if writer is not None:
            # A database outage degrades the ledger to the disk spool; it does not make the
            # gateway unready, since no request is lost or refused because of it.
            body["ledger"] = {
                "database": "down" if writer.db_down else "up",
                "queued_rows": writer.queued_rows,
                "rows_written": writer.rows_written,
                "rows_spooled": writer.rows_spooled,
            }
        return _json(body)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        # With several workers, every worker's values merged (prometheus multiprocess mode).
        body, content_type = prometheus.scrape()
        return Response(body, media_type=content_type)

    return router
