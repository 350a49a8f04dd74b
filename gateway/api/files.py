"""The Files API: `POST/GET /v1/files`, `GET /v1/files/{id}`, `GET /v1/files/{id}/content` and
`DELETE /v1/files/{id}` in OpenAI's wire shapes (gateway/files/ holds the store).

Served by FastAPI, not the hot path: uploads and listings are rare next to completions. The
caller authenticates with the same keys as /v1/*; a file is visible only to the key that
uploaded it. The upload is read part by part (gateway/api/files_form.py) and its file part
streams straight into storage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from gateway.api.files_form import StreamingForm, boundary_of
from gateway.api.rest_edge import needs_database, serve_rest
from gateway.errors import PayloadTooLarge, Unavailable, bad_request
from gateway.files.store import (
    FileStore,
    Staged,
    check_expires_after,
    check_purpose,
    file_object,
)
from gateway.keys.auth import Principal
from gateway.runtime import shutdown
from gateway.state import GatewayState

# Room for the form's boundaries, part headers and the purpose field around the file.
FORM_OVERHEAD = 64 * 1024

Handler = Callable[[FileStore, str | None], Awaitable[Response]]

EXPIRES_AFTER_FIELDS = {"expires_after[anchor]": "anchor", "expires_after[seconds]": "seconds"}


def files_router(
    state: Callable[[], GatewayState | None], drain: shutdown.Drain | None = None
) -> APIRouter:
    """`drain`: from SIGTERM on, new requests get the hot path's 503 (another replica can
    take them); one already running finishes."""
    router = APIRouter()

    async def serve(request: Request, handler: Handler) -> Response:
        async def on_files(current: GatewayState, principal: Principal | None) -> Response:
            if current.files is None:
                raise needs_database("Files API", "files_unavailable")
            return await handler(current.files, principal.key_name if principal else None)

        return await serve_rest(request, state, drain, on_files)

    @router.post("/v1/files", include_in_schema=False)
    async def upload(request: Request) -> Response:
        async def handler(files: FileStore, key_id: str | None) -> Response:
            return _json(await _upload(request, files, key_id))

        return await serve(request, handler)

    @router.get("/v1/files", include_in_schema=False)
    async def list_files(request: Request) -> Response:
        query = request.query_params

        async def handler(files: FileStore, key_id: str | None) -> Response:
            purpose = query.get("purpose")
            body = await files.list(
                key_id,
                purpose=purpose or None,
                limit=_int(query.get("limit"), 10_000, "limit"),
                after=query.get("after") or None,
                order=query.get("order") or "desc",
            )
            return _json(body)

        return await serve(request, handler)

    @router.get("/v1/files/{file_id}", include_in_schema=False)
    async def retrieve(file_id: str, request: Request) -> Response:
        async def handler(files: FileStore, key_id: str | None) -> Response:
            return _json(file_object(await files.get(file_id, key_id)))

        return await serve(request, handler)

    @router.get("/v1/files/{file_id}/content", include_in_schema=False)
    async def content(file_id: str, request: Request) -> Response:
        async def handler(files: FileStore, key_id: str | None) -> Response:
            row = await files.get(file_id, key_id)
            chunks = files.content(row)
            try:
                first = await anext(chunks, b"")
            except FileNotFoundError:
                raise Unavailable(
                    "The file's bytes are missing from storage.", code="file_content_missing"
                ) from None
            return StreamingResponse(
                _prepend(first, chunks),
                media_type="application/octet-stream",
                headers={"content-length": str(row["bytes"])},
            )

        return await serve(request, handler)

    @router.delete("/v1/files/{file_id}", include_in_schema=False)
    async def delete(file_id: str, request: Request) -> Response:
        async def handler(files: FileStore, key_id: str | None) -> Response:
            return _json(await files.delete(file_id, key_id))

        return await serve(request, handler)

    return router


async def _upload(request: Request, files: FileStore, key_id: str | None) -> dict[str, Any]:
    boundary = boundary_of(request.headers.get("content-type"))
    declared = request.headers.get("content-length")
    # A declared length well past the limit is refused before a byte is read.
    if (
        declared is not None
        and declared.isdigit()
        and int(declared) > files.max_bytes + FORM_OVERHEAD
    ):
        raise PayloadTooLarge(
            f"The upload is larger than this gateway's limit of {files.max_bytes} bytes "
            "per file (FAREBOX_FILES_MAX_BYTES).",
            param="file",
            code="file_too_large",
        )
    form = StreamingForm(request.stream(), boundary)
    purpose: str | None = None
    # `expires_after[anchor]` and `expires_after[seconds]`, as the SDKs send the object.
    expiry: dict[str, str] = {}
    staged: Staged | None = None
    try:
        while (part := await form.next_part()) is not None:
            if part.name == "purpose" and part.filename is None:
                purpose = check_purpose(await form.field("purpose"))
            elif part.name in EXPIRES_AFTER_FIELDS and part.filename is None:
                expiry[EXPIRES_AFTER_FIELDS[part.name]] = await form.field(part.name)
            elif part.name == "file" and part.filename is not None:
                if staged is not None:
                    raise bad_request("Send one 'file' per upload.", param="file")
                staged = await files.stage(part.filename, purpose, form.data())
        if staged is None:
            raise bad_request(
                "Missing the 'file' field (a file part of the multipart/form-data body).",
                param="file",
                code="missing_required_parameter",
            )
        if purpose is None:
            raise bad_request(
                "Missing the 'purpose' field.", param="purpose", code="missing_required_parameter"
            )
        expires_after_s = check_expires_after(expiry.get("anchor"), expiry.get("seconds"))
    except BaseException:
        if staged is not None:
            await files.discard(staged)
        raise
    return await files.commit(staged, key_id, purpose, expires_after_s=expires_after_s)


def _int(value: str | None, default: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise bad_request(f"{name} must be an integer.", param=name, code="invalid_value") from None


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")
