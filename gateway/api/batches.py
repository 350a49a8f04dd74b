"""The Batch API: `POST /v1/batches`, `GET /v1/batches`, `GET /v1/batches/{id}` and
`POST /v1/batches/{id}/cancel` in OpenAI's wire shapes (gateway/batch/ runs them).

Served by FastAPI, not the hot path. Same keys as /v1/*; a batch is visible only to the key
that created it. Creating a batch checks its input file, chooses the path and holds the
key's budget for the batch's worst case; the runner (gateway/batch/runner.py) does the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.common import check_route_allowed
from gateway.api.rest_edge import needs_database, serve_rest
from gateway.batch.budget import check_budget
from gateway.batch.objects import batch_object
from gateway.batch.principal import dump
from gateway.batch.store import BatchStore, Planned
from gateway.errors import bad_request
from gateway.keys.auth import Principal
from gateway.runtime import shutdown
from gateway.state import GatewayState

Handler = Callable[[GatewayState, BatchStore, Principal | None], Awaitable[dict[str, Any]]]
_BODY_MAX = 64 * 1024


def batches_router(
    state: Callable[[], GatewayState | None], drain: shutdown.Drain | None = None
) -> APIRouter:
    router = APIRouter()

    async def serve(request: Request, handler: Handler) -> Response:
        async def on_batches(current: GatewayState, principal: Principal | None) -> Response:
            if current.batches is None:
                raise needs_database("Batch API", "batches_unavailable")
            body = await handler(current, current.batches, principal)
            return Response(orjson.dumps(body), media_type="application/json")

        return await serve_rest(request, state, drain, on_batches)

    @router.post("/v1/batches", include_in_schema=False)
    async def create(request: Request) -> Response:
        async def handler(
            current: GatewayState, batches: BatchStore, principal: Principal | None
        ) -> dict[str, Any]:
            body = await _json_body(request)

            async def admit(route: str, worst: Decimal | None) -> None:
                check_route_allowed(principal, route)
                assert current.repository is not None
                await check_budget(current.repository, batches.repository, principal, worst)

            planned = Planned(
                current.index.plan,
                current.prices,
                current.config.batch.default_max_tokens,
                admit,
                dump(principal),
            )
            return await batches.create(_key(principal), body, planned)

        return await serve(request, handler)

    @router.get("/v1/batches", include_in_schema=False)
    async def list_batches(request: Request) -> Response:
        query = request.query_params

        async def handler(
            current: GatewayState, batches: BatchStore, principal: Principal | None
        ) -> dict[str, Any]:
            limit = query.get("limit") or "20"
            if not limit.isdigit():
                raise bad_request("limit must be an integer.", param="limit", code="invalid_value")
            return await batches.list(
                _key(principal), after=query.get("after") or None, limit=int(limit)
            )

        return await serve(request, handler)

    @router.get("/v1/batches/{batch_id}", include_in_schema=False)
    async def retrieve(batch_id: str, request: Request) -> Response:
        async def handler(
            current: GatewayState, batches: BatchStore, principal: Principal | None
        ) -> dict[str, Any]:
            return batch_object(await batches.get(batch_id, _key(principal)))

        return await serve(request, handler)

    @router.post("/v1/batches/{batch_id}/cancel", include_in_schema=False)
    async def cancel(batch_id: str, request: Request) -> Response:
        async def handler(
            current: GatewayState, batches: BatchStore, principal: Principal | None
        ) -> dict[str, Any]:
            return await batches.cancel(batch_id, _key(principal))

        return await serve(request, handler)

    return router


def _key(principal: Principal | None) -> str | None:
    return principal.key_name if principal is not None else None


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > _BODY_MAX:
        raise bad_request("The request body is too large for a batch creation.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("The request body is not valid JSON.") from None
