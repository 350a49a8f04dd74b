"""What the hardening checks cost per request, in µs (micro-benchmark, one core).

    .venv/bin/python bench/validate_cost.py

Compares the body parse without limits (the code before the hardening work) with the
parse plus the JSON depth/width check, for typical bodies and for a long prompt whose
byte counts force the walk; the header check in the front door; the body read with the
slow-client deadline against a plain read and against `asyncio.timeout`; and the
per-request check of a route's `log_payloads` flag.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.api.asgi import headers_too_large, read_body
from gateway.api.validate import check_chat, check_embedding, parse_object
from gateway.config.schema import Route, ServerConfig
from gateway.observability import payload_log

SERVER = ServerConfig()

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city, in the unit asked for.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
PROSE = "The quick brown fox, as usual, jumps over the lazy dog; then it rests. "
BODIES: dict[str, bytes] = {
    "small chat (1 turn)": orjson.dumps(
        {"model": "chat", "messages": [{"role": "user", "content": "Say hello in French."}]}
    ),
    "chat, system + 6 turns": orjson.dumps(
        {
            "model": "chat",
            "messages": [{"role": "system", "content": PROSE * 4}]
            + [{"role": ("user", "assistant")[i % 2], "content": PROSE * 6} for i in range(6)],
            "temperature": 0.2,
            "max_tokens": 256,
        }
    ),
    "chat with 3 tools": orjson.dumps(
        {
            "model": "chat",
            "messages": [{"role": "user", "content": "Weather in Paris and Oslo?"}],
            "tools": [TOOL] * 3,
            "tool_choice": "auto",
        }
    ),
    "long prompt, 160 KB (walked)": orjson.dumps(
        {"model": "chat", "messages": [{"role": "user", "content": PROSE * 2300}]}
    ),
    "multimodal, 40 parts": orjson.dumps(
        {
            "model": "chat",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": f"part {i}, see above"} for i in range(40)
                    ],
                }
            ],
        }
    ),
    "embeddings, 2000 inputs (walked)": orjson.dumps(
        {"model": "embed", "input": [f"document {i}" for i in range(2000)]}
    ),
}

SDK_HEADERS = [
    (b"host", b"127.0.0.1:8080"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"accept", b"application/json"),
    (b"content-type", b"application/json"),
    (b"user-agent", b"OpenAI/Python 1.99.0"),
    (b"x-stainless-lang", b"python"),
    (b"x-stainless-package-version", b"1.99.0"),
    (b"x-stainless-os", b"Linux"),
    (b"x-stainless-arch", b"x64"),
    (b"x-stainless-runtime", b"CPython"),
    (b"x-stainless-runtime-version", b"3.11.9"),
    (b"authorization", b"Bearer sk-test-client-0001"),
    (b"x-stainless-async", b"false"),
    (b"x-stainless-retry-count", b"0"),
    (b"x-stainless-read-timeout", b"600"),
    (b"content-length", b"1234"),
]


def best_us(func: Callable[[], Any], number: int) -> float:
    """Best of 7 repeats, µs per call (the least disturbed by other processes)."""
    runs = timeit.repeat(func, number=number, repeat=7)
    return min(runs) / number * 1e6


def body_checks() -> None:
    print(f"{'body':32} {'bytes':>8} {'before µs':>10} {'after µs':>10} {'delta µs':>9}")
    for name, body in BODIES.items():
        number = 200 if len(body) > 50_000 else 5_000
        check: Callable[[dict[str, Any]], object] = (
            check_embedding if b'"input"' in body[:40] else check_chat
        )

        def before_fn(b: bytes = body, c: Callable[[dict[str, Any]], object] = check) -> None:
            c(parse_object(b))

        def after_fn(b: bytes = body, c: Callable[[dict[str, Any]], object] = check) -> None:
            c(parse_object(b, SERVER))

        before = best_us(before_fn, number)
        after = best_us(after_fn, number)
        print(f"{name:32} {len(body):8d} {before:10.2f} {after:10.2f} {after - before:9.2f}")


def header_check() -> None:
    scope = {"headers": SDK_HEADERS}
    cost = best_us(lambda: headers_too_large(scope, 100, 32 * 1024), 50_000)
    print(f"\nheader limits, {len(SDK_HEADERS)} SDK headers: {cost:.2f} µs")


def route_flag() -> None:
    routes = {"chat": Route(targets=["a@b"])}
    cost = best_us(lambda: payload_log.wanted(routes, "chat"), 200_000)
    print(f"log_payloads flag check: {cost:.3f} µs")


async def body_reads() -> None:
    message = {"type": "http.request", "body": BODIES["small chat (1 turn)"], "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    scope = {"headers": SDK_HEADERS}
    n = 50_000

    async def run(label: str, read: Callable[[], Any]) -> float:
        samples = []
        for _ in range(5):
            start = asyncio.get_running_loop().time()
            for _ in range(n):
                await read()
            samples.append((asyncio.get_running_loop().time() - start) / n * 1e6)
        best = min(samples)
        print(f"{label:44} {best:6.2f} µs (median {statistics.median(samples):.2f})")
        return best

    async def with_asyncio_timeout() -> bytes:
        async with asyncio.timeout(30):
            return await read_body(scope, receive, 1 << 24)

    print("\nbody read (uvloop, body already buffered):")
    plain = await run("read_body, no deadline (before)", lambda: read_body(scope, receive, 1 << 24))
    ours = await run(
        "read_body + body_timeout_s deadline (after)",
        lambda: read_body(scope, receive, 1 << 24, 30.0),
    )
    alt = await run("read_body inside asyncio.timeout (rejected)", with_asyncio_timeout)
    print(f"deadline cost: {ours - plain:.2f} µs (asyncio.timeout would cost {alt - plain:.2f} µs)")


def main() -> None:
    body_checks()
    header_check()
    route_flag()
    uvloop.run(body_reads())


if __name__ == "__main__":
    main()
