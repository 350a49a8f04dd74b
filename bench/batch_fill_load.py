"""Closed-loop live clients for batch_fill_bench.py, in a process of their own.

    python bench/batch_fill_load.py URL MODEL KEY CLIENTS OUT

CLIENTS coroutines each POST a chat request (16 tokens) to URL and send the next as soon as
the answer is in, until stdin closes; then every answer goes to OUT as JSON lines
`[start, seconds, ok]` (start on CLOCK_MONOTONIC, which the harness shares). Its own process
(and interpreter) so that the harness's SDK calls and polling never stall the clients: a
stalled load generator leaves the gateway with fewer live requests in flight than the load
it is meant to hold.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp


async def client(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    out: list[tuple[float, float, bool]],
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        start = time.monotonic()
        ok = False
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                ok = resp.status == 200
        except (TimeoutError, aiohttp.ClientError):
            pass
        out.append((start, time.monotonic() - start, ok))


async def main(url: str, model: str, key: str, clients: int) -> list[tuple[float, float, bool]]:
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    ).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    samples: list[tuple[float, float, bool]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    connector = aiohttp.TCPConnector(limit=clients * 2)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [
            asyncio.create_task(client(session, url, body, headers, samples, stop))
            for _ in range(clients)
        ]
        print("ready", flush=True)
        await reader.read()  # EOF: the harness is done with this load
        stop.set()
        await asyncio.gather(*tasks)
    return samples


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    url, model, key, clients, path = sys.argv[1:6]
    answers = runner(main(url, model, key, int(clients)))
    with open(path, "w") as out:
        for sample in answers:
            out.write(json.dumps(sample) + "\n")
