"""A burst: N requests with large prompts sent at once to a target (issue 13: 100 x 32 KB).

`run.py` runs it at every production-profile target after the load scenarios (so the
ledger check counts it too). Standalone, it starts its own production stack (simulator,
Postgres, Redis, Farebox; see production.py), bursts, and checks the ledger:

    .venv/bin/python bench/burst.py [--requests 100] [--kb 32] [--workers 1]

Each request has its own prompt (a distinct prefix, so nothing is a repeat), non-stream,
`max_tokens` 16. Latency is measured by the client (aiohttp, one connection per request,
all opened at once), so it includes connection set-up and the client's own scheduling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from targets import Target

MIB = 1024 * 1024
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "box",
    "nimbly",
]


def prompt(i: int, size: int) -> str:
    head = f"request {i}: summarize the following. "
    words, n = [head], len(head)
    k = i
    while n < size:
        w = WORDS[k % len(WORDS)]
        words.append(w)
        n += len(w) + 1
        k = k * 31 + 7
    return " ".join(words)[:size]


async def _one(
    session: aiohttp.ClientSession, url: str, key: str, body: bytes
) -> tuple[int, float, str]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            text = await resp.read()
            elapsed = time.perf_counter() - started
            if resp.status == 200 and b'"choices"' in text:
                return 200, elapsed, ""
            # A 200 without an answer counts as a failure (status 0).
            status = resp.status if resp.status != 200 else 0
            return status, elapsed, text[:200].decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return -1, time.perf_counter() - started, repr(exc)[:200]


def bodies(model: str, n: int, size: int) -> list[bytes]:
    return [
        json.dumps(
            {"model": model, "messages": [{"role": "user", "content": prompt(i, size)}],
             "max_tokens": 16}
        ).encode()
        for i in range(n)
    ]  # fmt: skip


async def _burst(url: str, key: str, bodies: list[bytes]) -> tuple[list[Any], float]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        results = await asyncio.gather(*(_one(session, url, key, b) for b in bodies))
        return results, time.perf_counter() - started


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def run(target: Target, n: int = 100, kb: int = 32) -> dict[str, Any]:
    """Burst `n` requests of `kb` KB prompts at the target; counts, latency, RSS around it."""
    payloads = bodies(target.model_fast, n, kb * 1024)
    rss_before = target.proc.rss_bytes() if target.proc else 0
    results, wall = asyncio.run(_burst(target.url(), target.api_key, payloads))
    rss_peakish = target.proc.rss_bytes() if target.proc else 0
    if target.proc is not None:
        target.proc.wait_idle()
    if target.sim is not None:
        target.sim.wait_idle()
    time.sleep(1.0)
    rss_after = target.proc.rss_bytes() if target.proc else 0
    lat = [s * 1000 for code, s, _ in results if code == 200]
    errors = sorted({f"{code}: {why}" for code, _, why in results if code != 200})
    return {
        "requests": n,
        "prompt_bytes": kb * 1024,
        "ok": len(lat),
        "failed": n - len(lat),
        "errors": errors[:5],
        "wall_s": round(wall, 3),
        "p50_ms": round(statistics.median(lat), 1) if lat else None,
        "p99_ms": round(_pct(lat, 0.99), 1) if lat else None,
        "max_ms": round(max(lat), 1) if lat else None,
        "rss_before_mib": round(rss_before / MIB, 1),
        "rss_right_after_mib": round(rss_peakish / MIB, 1),
        "rss_after_mib": round(rss_after / MIB, 1),
    }


def describe(b: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "—" if v is None else f"{v:,.0f}"

    failed = f", **{b['failed']} failed** ({'; '.join(b['errors'])})" if b["failed"] else ""
    return (
        f"{b['ok']}/{b['requests']} succeeded{failed} in {b['wall_s']:.2f} s; latency p50 "
        f"{ms(b['p50_ms'])} ms, p99 {ms(b['p99_ms'])} ms, max {ms(b['max_ms'])} ms; gateway "
        f"RSS {b['rss_before_mib']:.1f} MiB before, {b['rss_right_after_mib']:.1f} MiB as "
        f"the last answer arrived, {b['rss_after_mib']:.1f} MiB 1 s after"
    )


def main(argv: list[str] | None = None) -> int:
    import launch
    import production

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--kb", type=int, default=32, help="prompt size, KB")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=launch.WORK / "burst.json")
    args = p.parse_args(argv)
    launch.WORK.mkdir(exist_ok=True)
    sim_cpus, gw_cpus = launch.cpu_plan("auto")
    services = production.start_services(sim_cpus)
    target = production.farebox_prod(args.workers, production.env_base(), (sim_cpus, gw_cpus),
                                     services)  # fmt: skip
    try:
        launch.start(target, 60)
        if target.available and (err := launch.check(target)) is not None:
            target.mark_unavailable(err)
        if not target.available:
            print(f"burst: {target.name} unavailable: {target.note}", file=sys.stderr)
            return 1
        result = run(target, args.requests, args.kb)
        print(f"burst: {target.name}: {describe(result)}")
        check = production.verify(target, services.pg)
        print(f"burst: {production.describe_check(target.name, check)}")
        args.out.write_text(json.dumps({"burst": result, "ledger_check": check}, indent=2))
        return 0 if result["failed"] == 0 and check["covered"] else 1
    finally:
        production.stop(target)
        services.close()


if __name__ == "__main__":
    raise SystemExit(main())
