"""TEMPORARY stand-in for gateway.mock_upstream (dev only; delete once it exists)."""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
from aiohttp import web


async def chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    model: str = body.get("model", "")
    if "::latency=" in model:
        await asyncio.sleep(int(model.split("::latency=")[1]) / 1000)
    created = int(time.time())
    if not body.get("stream"):
        payload = {
            "id": "chatcmpl-sim",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the simulator."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
        }
        return web.Response(body=orjson.dumps(payload), content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i, word in enumerate(["Hello", " from", " the", " simulator", "."]):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        chunk = {
            "id": "chatcmpl-sim",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    final = {
        "id": "chatcmpl-sim",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
    }
    await resp.write(b"data: " + orjson.dumps(final) + b"\n\ndata: [DONE]\n\n")
    await resp.write_eof()
    return resp


def run(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host=host, port=port, access_log=None, print=None)


if __name__ == "__main__":
    run("127.0.0.1", int(sys.argv[1]))
