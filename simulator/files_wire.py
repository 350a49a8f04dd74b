"""OpenAI Files API, in memory: ``POST/GET /v1/files``, ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``.

Files are kept in a :class:`FileStore` on the app (cleared by ``POST /_reset``); the batch
simulator (:mod:`.batch_wire`) reads its input files from it and writes its output and
error files (purpose ``batch_output``) into it.  Auth is the OpenAI bearer, as on chat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from .errors import openai_error_body
from .runtime import STATE, new_id

__all__ = ["FILES", "FileStore", "SimFile", "files_routes"]

_PURPOSES = frozenset(
    {"assistants", "batch", "fine-tune", "vision", "user_data", "evals", "batch_output"}
)


@dataclass(slots=True)
class SimFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


class FileStore:
    """Uploaded and generated files by id, oldest first."""

    def __init__(self) -> None:
        self.files: dict[str, SimFile] = {}

    def add(self, filename: str, purpose: str, data: bytes) -> SimFile:
        f = SimFile(new_id("file-"), filename, purpose, data, int(time.time()))
        self.files[f.id] = f
        return f

    def clear(self) -> None:
        self.files.clear()


FILES: web.AppKey[FileStore] = web.AppKey("sim_files", FileStore)


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    code = "not_found" if status == 404 else None
    body = openai_error_body(status, message, code=code, param=param)
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _denied(request: web.Request) -> web.Response | None:
    bearer = request.app[STATE].bearer
    if bearer is None or request.headers.get("Authorization") == bearer:
        return None
    return _error(401, "Incorrect API key provided.")


def _json(payload: Any) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


async def create_file(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    if not request.content_type.startswith("multipart/"):
        return _error(400, "Expected a multipart/form-data body with 'file' and 'purpose'.")
    purpose: str | None = None
    filename = "upload"
    data: bytes | None = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = (await part.read()).decode()
        elif part.name == "file":
            filename = part.filename or filename
            data = bytes(await part.read())
    if data is None:
        return _error(400, "'file' is required.", param="file")
    if purpose not in _PURPOSES:
        return _error(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
    return _json(request.app[FILES].add(filename, purpose, data).public())


async def list_files(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    purpose = request.query.get("purpose")
    data = [
        f.public()
        for f in reversed(request.app[FILES].files.values())
        if purpose is None or f.purpose == purpose
    ]
    return _json(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }
    )


def _find(request: web.Request) -> SimFile | web.Response:
    file_id = request.match_info["file_id"]
    found = request.app[FILES].files.get(file_id)
    if found is None:
        return _error(404, f"No such File object: {file_id}", param="id")
    return found


async def retrieve_file(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    found = _find(request)
    return found if isinstance(found, web.Response) else _json(found.public())


async def file_content(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    found = _find(request)
    if isinstance(found, web.Response):
        return found
    return web.Response(body=found.data, content_type="application/octet-stream")


async def delete_file(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    found = _find(request)
    if isinstance(found, web.Response):
        return found
    del request.app[FILES].files[found.id]
    return _json({"id": found.id, "object": "file", "deleted": True})


def files_routes(app: web.Application) -> None:
    """Register the Files routes and the app's :class:`FileStore`."""
    app[FILES] = FileStore()
    app.router.add_post("/v1/files", create_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", retrieve_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
