"""Operational endpoints: liveness and readiness probes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

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
        return _json(
            {
                "status": "ready",
                "routes": len(current.config.routes),
                "deployments": len(current.config.deployments),
            }
        )

    return router
