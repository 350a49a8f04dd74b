"""The lean upstream client (gateway/providers/http1.py) against scripted HTTP/1.1 servers.

Each server is a real asyncio TCP server on loopback that answers with exact bytes, so the
framing cases the simulator never produces (chunked bodies split anywhere, gzip, a close
mid-body, an idle connection closed by the server, silence) are tested on the wire.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable

import pytest

from gateway.providers.http1 import Client
from gateway.providers.http1_response import UpstreamClosed

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat/completions"


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    return head + body


def _run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


def test_keep_alive_reuses_one_connection_and_sends_head_and_body() -> None:
    seen: list[bytes] = []
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while (request := await _read_request(reader)) is not None:
            seen.append(request)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: r1\r\n"
                b'Content-Length: 8\r\n\r\n{"a": 1}'
            )
            await writer.drain()
        writer.close()

    async def main() -> None:
        server, url = await _serve(handler)
        client = Client()
        target = client.target(url)
        for _ in range(3):
            resp = await client.request(target, b"Authorization: Bearer k\r\n", b"{}", connect_s=5)
            assert (resp.status, resp.body, resp.headers["x-request-id"]) == (
                200,
                b'{"a": 1}',
                "r1",
            )
        await client.close()
        server.close()
        assert connections == 1
        assert seen[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"Authorization: Bearer k\r\nContent-Length: 2\r\n\r\n{}" in seen[0]

    _run(main())


def test_chunked_gzip_stream_split_anywhere() -> None:
    events = b"".join(b'data: {"n": %d}\n\n' % i for i in range(50)) + b"data: [DONE]\n\n"
    packed = gzip.compress(events)
    third = len(packed) // 3
    parts = [packed[:third], packed[third : 2 * third], packed[2 * third :]]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for part in parts:
            frame = b"%x\r\n%s\r\n" % (len(part), part)
            # Split each frame mid-size-line and mid-data: the parser must not care.
            for piece in (frame[:1], frame[1:5], frame[5:]):
                writer.write(piece)
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the client closes

    async def main() -> None:
        server, url = await _serve(handler)
        client = Client()
        resp = await client.request(client.target(url), b"", b"{}", connect_s=5, stream=True)
        got = b"".join([piece async for piece in resp.iter(5)])
        assert got == events
        await client.close()
        server.close()

    _run(main())


def test_cut_mid_body_and_before_answer() -> None:
    async def mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial')
        await writer.drain()
        writer.close()

    async def no_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    async def main() -> None:
        client = Client()
        for handler, before in ((mid_body, False), (no_answer, True)):
            server, url = await _serve(handler)
            with pytest.raises(UpstreamClosed) as caught:
                await client.request(client.target(url), b"", b"{}", connect_s=5)
            assert caught.value.before_status is before
            server.close()
        await client.close()

    _run(main())


def test_idle_connection_closed_by_server_is_not_reused() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        # Keep-alive is allowed, but the server closes right after answering.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, url = await _serve(handler)
        client = Client()
        target = client.target(url)
        first = await client.request(target, b"", b"{}", connect_s=5)
        assert first.body == b"{}"
        origin = target.origin
        # The loop sees the server's EOF; the pooled connection is then known dead.
        for _ in range(100):
            if not origin.idle or not origin.idle[-1].usable():
                break
            await asyncio.sleep(0.01)
        second = await client.request(target, b"", b"{}", connect_s=5)
        assert second.body == b"{}"
        assert connections == 2
        await client.close()
        server.close()

    _run(main())


def test_total_and_read_bounds_raise_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await reader.read()

    async def main() -> None:
        server, url = await _serve(silent)
        client = Client()
        with pytest.raises(TimeoutError):
            await client.request(client.target(url), b"", b"{}", connect_s=5, total_s=0.2)
        resp = await client.request(
            client.target(url), b"", b"{}", connect_s=5, read_s=0.2, stream=True
        )
        pieces = resp.iter(0.2)
        assert await anext(pieces) == b"hello"
        with pytest.raises(TimeoutError):
            await anext(pieces)
        resp.close()
        await client.close()
        server.close()

    _run(main())


def test_stream_released_after_its_end_reuses_the_connection() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while await _read_request(reader) is not None:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\ne\r\ndata: [DONE]\n\n\r\n"
            )
            await writer.drain()
            await asyncio.sleep(0.05)  # the last chunk in a read of its own
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def main() -> None:
        server, url = await _serve(handler)
        client = Client()
        target = client.target(url)
        for _ in range(2):
            resp = await client.request(target, b"", b"{}", connect_s=5, stream=True)
            pieces = resp.iter(5)
            assert await anext(pieces) == b"data: [DONE]\n\n"
            resp.release()
            await resp.done
        assert connections == 1
        await client.close()
        server.close()

    _run(main())


def test_connect_refused_is_an_os_error() -> None:
    async def main() -> None:
        server, url = await _serve(lambda r, w: asyncio.sleep(0))
        server.close()
        await server.wait_closed()
        client = Client()
        with pytest.raises(OSError):
            await client.request(client.target(url), b"", b"{}", connect_s=5)
        await client.close()

    _run(main())
