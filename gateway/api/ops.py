"""Operational endpoints: liveness and readiness probes."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import ORJSONResponse

from gateway.state import GatewayState


def ops_router(state: Callable[[], GatewayState | None]) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", include_in_schema=False)
    async def healthz() -> ORJSONResponse:
        return ORJSONResponse({"status": "ok"})

    @router.get("/readyz", include_in_schema=False)
    async def readyz() -> ORJSONResponse:
        current = state()
        if current is None:
            return ORJSONResponse({"status": "starting"}, status_code=503)
        if current.draining:
            return ORJSONResponse({"status": "draining"}, status_code=503)
        return ORJSONResponse(
            {
                "status": "ready",
                "routes": len(current.config.routes),
                "deployments": len(current.config.deployments),
            }
        )

    return router
