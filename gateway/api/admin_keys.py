"""Admin API for virtual keys: /admin/keys and /admin/audit (master key only).

Bodies are read and validated by hand, after the caller is authorized, so an anonymous
client learns nothing about the schema from a validation error; the request models are still
published in the OpenAPI document. Every change writes an `admin_audit` row in the same
transaction (actor "admin-api", the client's address) and is announced to every replica.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from gateway.api.admin import authorize_admin, forbidden, read_limited
from gateway.api.app_errors import field_path
from gateway.api.asgi import new_request_id
from gateway.errors import Conflict, GatewayError, NotFound, Unavailable, bad_request, clip
from gateway.keys.admin import (
    KeyAdmin,
    KeyDatabaseError,
    KeyNotFound,
    KeyRevoked,
    audit_view,
    key_view,
)
from gateway.keys.models import KeyCreate, KeyUpdate

if TYPE_CHECKING:
    from gateway.state import GatewayState

KEY_ID = re.compile(r"key_[0-9a-f]{1,64}")
# A key's settings fit in a few KB; anything far larger is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


async def _body(request: Request) -> bytes:
    return await read_limited(request, MAX_BODY_BYTES)


def _parse(model: type[BaseModel], body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise bad_request("The request body must be a JSON object.")
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        # Field names can be the client's own (an unknown key): field_path bounds them.
        where = field_path(first["loc"])
        message = clip(first["msg"]) if where is None else f"{where}: {clip(first['msg'])}"
        raise bad_request(f"Invalid request body: {message}", param=where) from None
    return {name: getattr(parsed, name) for name in parsed.model_fields_set}


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    body = {"content": {"application/json": {"schema": model.model_json_schema()}}}
    return {"requestBody": {**body, "required": True}}


def _json(data: Any, status: int, request_id: str) -> Response:
    return Response(
        orjson.dumps(data),
        status,
        headers={"x-request-id": request_id},
        media_type="application/json",
    )


def admin_keys_router(
    state: Callable[[], GatewayState | None], master_key: str | None
) -> APIRouter:
    router = APIRouter(tags=["admin"])

    async def authorized(request: Request) -> KeyAdmin:
        current = state()
        if current is None:
            raise Unavailable("The gateway is still starting.")
        await authorize_admin(request, current, master_key)
        if current.key_admin is None:
            # 4xx, like a disabled admin API: a configuration, not an outage to retry.
            raise forbidden(
                "Virtual keys need the ledger database; this gateway runs without one "
                "(FAREBOX_LEDGER_ENABLED=false).",
                "virtual_keys_disabled",
            )
        return current.key_admin

    async def answer(
        request: Request, work: Callable[[KeyAdmin], Awaitable[tuple[Any, int]]]
    ) -> Response:
        request_id = new_request_id()
        try:
            try:
                admin = await authorized(request)
                data, status = await work(admin)
            except KeyNotFound as exc:
                raise NotFound(f"No API key with id {exc}.", code="key_not_found") from None
            except KeyRevoked as exc:
                raise Conflict(f"API key {exc} is revoked.", code="key_revoked") from None
            except KeyDatabaseError:
                raise Unavailable(
                    "The key database is unreachable; nothing was changed. Retry shortly.",
                    code="key_store_unavailable",
                ) from None
        except GatewayError as exc:
            headers = {"x-request-id": request_id}
            headers.update((k.decode(), v.decode()) for k, v in exc.extra_headers)
            return Response(exc.body(), exc.status, headers=headers, media_type="application/json")
        return _json(data, status, request_id)

    def client_of(request: Request) -> str | None:
        return request.client.host if request.client is not None else None

    def key_id_of(key_id: str) -> str:
        # Checked before any query: an arbitrary path segment never reaches the database.
        if KEY_ID.fullmatch(key_id) is None:
            raise KeyNotFound(key_id[:80].encode("unicode_escape").decode())
        return key_id

    @router.post("/admin/keys", openapi_extra=_schema(KeyCreate), status_code=201)
    async def create_key(request: Request) -> Response:
        """Create a virtual key. The secret is in this answer only: store it now."""

        async def work(admin: KeyAdmin) -> tuple[Any, int]:
            fields = _parse(KeyCreate, await _body(request))
            expires = fields.get("expires_at")
            if expires is not None and _utc(expires) <= datetime.now(UTC):
                raise bad_request("expires_at: is in the past", param="expires_at")
            key, secret = await admin.create(fields, client_of(request))
            return {**key_view(key), "secret": secret}, 201

        return await answer(request, work)

    @router.get("/admin/keys")
    async def list_keys(request: Request, include_revoked: bool = True) -> Response:
        """Every key with its prefix, limits and status; never a secret or hash."""

        async def work(admin: KeyAdmin) -> tuple[Any, int]:
            keys = await admin.all(include_revoked=include_revoked)
            return {"object": "list", "data": [key_view(k) for k in keys]}, 200

        return await answer(request, work)

    @router.get("/admin/keys/{key_id}")
    async def get_key(key_id: str, request: Request) -> Response:
        async def work(admin: KeyAdmin) -> tuple[Any, int]:
            return key_view(await admin.get(key_id_of(key_id))), 200

        return await answer(request, work)

    @router.patch("/admin/keys/{key_id}", openapi_extra=_schema(KeyUpdate))
    async def update_key(key_id: str, request: Request) -> Response:
        """Change limits, budget, routes, tags, expiry or labels; takes effect on every
        replica within about a second."""

        async def work(admin: KeyAdmin) -> tuple[Any, int]:
            checked = key_id_of(key_id)
            changes = _parse(KeyUpdate, await _body(request))
            if changes.get("name", "") is None:
                raise bad_request("name: cannot be null", param="name")
            if "tags" in changes and changes["tags"] is None:
                changes["tags"] = {}
            if not changes:
                raise bad_request("Nothing to change: send at least one field.")
            return key_view(await admin.update(checked, changes, client_of(request))), 200

        return await answer(request, work)

    @router.post("/admin/keys/{key_id}/revoke")
    async def revoke_key(key_id: str, request: Request) -> Response:
        """Refused by every replica within a second; cannot be undone."""

        async def work(admin: KeyAdmin) -> tuple[Any, int]:
            return key_view(await admin.revoke(key_id_of(key_id), client_of(request))), 200

        return await answer(request, work)

    @router.post("/admin/keys/{key_id}/rotate")
    async def rotate_key(key_id: str, request: Request) -> Response:
        """A new secret for the same key (limits, budget and spend carry over); the old
        secret stops working at once."""

        async def work(admin: KeyAdmin) -> tuple[Any, int]:
            key, secret = await admin.rotate(key_id_of(key_id), client_of(request))
            return {**key_view(key), "secret": secret}, 200

        return await answer(request, work)

    @router.get("/admin/audit")
    async def audit(
        request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> Response:
        """The most recent admin actions, newest first."""

        async def work(admin: KeyAdmin) -> tuple[Any, int]:
            entries = await admin.recent_audit(limit)
            return {"object": "list", "data": [audit_view(e) for e in entries]}, 200

        return await answer(request, work)

    return router
