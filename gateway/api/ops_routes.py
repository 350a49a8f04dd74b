"""The ops endpoints that live on the FastAPI app: /metrics on the API port
(FAREBOX_METRICS_ON_API_PORT=admin or off; a GET under `open` is HotPath's), and the probes'
answers to methods other than GET. Loaded with the FastAPI app,
on first use (GET /healthz and /readyz are gateway/api/ops.py's `Probes`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.admin import authorize_admin
from gateway.api.ops import readiness
from gateway.errors import GatewayError, error_body
from gateway.observability import metrics as prometheus
from gateway.runtime.db_probe import DatabaseProbe
from gateway.runtime.shutdown import Drain
from gateway.settings import Settings
from gateway.state import GatewayState


def ops_router(
    state: Callable[[], GatewayState | None],
    settings: Settings | None = None,
    drain: Drain | None = None,
    probe: DatabaseProbe | None = None,
) -> APIRouter:
    """/metrics on the API port (FAREBOX_METRICS_ON_API_PORT), for the FastAPI app."""
    router = APIRouter()
    settings = settings or Settings(master_key=None)
    api_metrics = settings.metrics_on_api_port

    def _json(data: dict[str, Any], status: int = 200) -> Response:
        return Response(orjson.dumps(data), status_code=status, media_type="application/json")

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        # The metrics listener never gets here (HotPath answers it); this is the API port.
        if api_metrics == "off":
            return Response(
                error_body("Unknown path.", "invalid_request_error", "not_found"),
                status_code=404,
                media_type="application/json",
            )
        if api_metrics == "admin":
            current = state()
            if current is None:
                return _json({"status": "starting"}, 503)
            try:
                await authorize_admin(request, current, settings.master_key)
            except GatewayError as exc:
                return Response(exc.body(), status_code=exc.status, media_type="application/json")
        body, content_type = prometheus.scrape()
        return Response(body, media_type=content_type)

    # HotPath answers GET /healthz and /readyz with Probes; these routes answer the
    # FastAPI-only cases the same way (HEAD, and a 405 naming GET for other methods).
    @router.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @router.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        status, body = readiness(state(), drain, probe)
        return _json(body, status)

    return router
