"""CPU per upstream POST: aiohttp's ClientSession beside Farebox's lean client (http1).

    .venv/bin/python bench/upstream_client.py [--requests 10000] [--concurrency 32]

Starts the simulator (its own process; pin it away with `taskset` for steadier figures),
then, in this process, sends the same non-stream chat POST through each client at a fixed
concurrency, alternating clients over rounds, and prints requests/s and this process's CPU
µs per request (user+sys from getrusage). The simulator's work is not counted. This is the
measurement behind gateway/providers/http1.py: the upstream side of a gateway request.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import uvloop

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.providers.http1 import Client  # noqa: E402

BODY = orjson.dumps(
    {"model": "sim-small", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
)
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sim-key"}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(
    one: Callable[[], Awaitable[None]], requests: int, concurrency: int
) -> tuple[float, float]:
    for _ in range(200):
        await one()
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    cpu0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - t0), (_cpu() - cpu0) / requests * 1e6


async def _aiohttp(url: str, requests: int, concurrency: int) -> tuple[float, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as resp:
                await resp.read()
                resp.headers.get("x-request-id")

        return await _measure(one, requests, concurrency)


async def _http1(url: str, requests: int, concurrency: int) -> tuple[float, float]:
    client = Client()
    target = client.target(url)
    head = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in HEADERS.items())

    async def one() -> None:
        resp = await client.request(target, head, BODY, connect_s=5, total_s=30)
        resp.headers.get("x-request-id")

    try:
        return await _measure(one, requests, concurrency)
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sim = subprocess.Popen(
        [sys.executable, "-c", f"from simulator import run; run('127.0.0.1', {port})"], cwd=ROOT
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        uvloop.install()
        for round_no in range(args.rounds):
            for name, run in (("aiohttp", _aiohttp), ("http1", _http1)):
                rps, cpu = asyncio.run(run(url, args.requests, args.concurrency))
                print(f"round {round_no + 1} {name:8} {rps:8.0f} req/s {cpu:6.1f} µs CPU/request")
    finally:
        sim.terminate()
        sim.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
