"""Bare passthrough: the ceiling a Python gateway can reach on this machine.

Raw ASGI (no framework) + one shared aiohttp ClientSession + orjson, served by uvicorn
(uvloop, httptools, 1 worker). Forwards POST /v1/chat/completions to the upstream,
streaming SSE through chunk by chunk. GET /healthz answers 200.

    python bench/passthrough.py --port 8001 --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import orjson
import uvicorn

UPSTREAM = "http://127.0.0.1:8000"
_session: aiohttp.ClientSession | None = None
_JSON = [(b"content-type", b"application/json")]


async def _plain(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        _session = aiohttp.ClientSession(UPSTREAM, connector=aiohttp.TCPConnector(limit=0))
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await _session.close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    path, method = scope["path"], scope["method"]
    if method == "GET" and path == "/healthz":
        return await _plain(send, 200, b'{"status":"ok"}')
    if method != "POST" or path != "/v1/chat/completions" or _session is None:
        return await _plain(send, 404, b'{"error":"not found"}')
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    body = b"".join(chunks)
    stream = bool(orjson.loads(body).get("stream"))
    headers = {"content-type": "application/json", "authorization": "Bearer sim-key"}
    async with _session.post("/v1/chat/completions", data=body, headers=headers) as up:
        out = [(b"content-type", up.headers.get("content-type", "application/json").encode())]
        if not stream:
            data = await up.read()
            out.append((b"content-length", str(len(data)).encode()))
            await send({"type": "http.response.start", "status": up.status, "headers": out})
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": up.status, "headers": out})
        async for piece in up.content.iter_any():
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def main() -> None:
    global UPSTREAM
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default=UPSTREAM, help="simulator base URL (no /v1)")
    args = parser.parse_args()
    UPSTREAM = args.upstream
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
