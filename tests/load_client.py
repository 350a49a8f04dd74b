"""Closed-loop load from its own process: `python -m tests.load_client URL BODY SECONDS C`.

Prints one JSON object: per-request (status, x-farebox-deployment, x-farebox-route-reason)
counts. A separate process keeps the load generator off the gateway's GIL in load tests.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import aiohttp


async def run(url: str, body: bytes, seconds: float, concurrency: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    headers = {"Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                key = "|".join(
                    (
                        str(resp.status),
                        resp.headers.get("x-farebox-deployment", ""),
                        resp.headers.get("x-farebox-route-reason", ""),
                    )
                )
                seen[key] += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return seen


def main() -> None:
    url, body, seconds, concurrency = sys.argv[1:5]
    seen = asyncio.run(run(url, body.encode(), float(seconds), int(concurrency)))
    print(json.dumps(dict(seen)))


if __name__ == "__main__":
    main()
