"""Per-key limits across real `farebox serve` replicas sharing Redis and a Postgres ledger,
in both `limits.mode`s (docs/keys-and-limits.md gives each mode's overspend bound; with no
replica dying and Redis up, lease mode's is exact mode's: its slices are reservations in Redis).

- 3 replicas, 200 concurrent requests against a key with a $1 budget: the ledger's spend
  stays within $1 + the largest single reservation.
- 3 replicas under closed-loop load against a key with an RPM limit: the admitted count
  holds within 1 % of what the bucket allows.
- Redis stopped mid-load: fail_open serves everything (counted in process), fail_closed
  answers 503 with a clear message; once Redis is back, enforcement resumes within 5 s.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway_process import ROOT, GatewayProcess, gateway_processes
from tests.ledger_reads import sql_rows
from tests.redis_topologies import on_every_topology, sync_client
from tests.simulator import start_simulator

BUDGET_KEY = "sk-budget-key-0001"
PACED_KEY = "sk-paced-key-0001"
OPEN_KEY = "sk-open-key-0001"
RPM = 600
# Every answer costs the same: 400 output tokens at $40/M = $0.016, plus the prompt.
CONFIG = """
auth:
  keys:
    - {name: budgeted, key: "%(budget)s", budget_usd: 1.0}
    - {name: paced, key: "%(paced)s", rpm: %(rpm)d}
    - {name: open, key: "%(open)s", rpm: 1000000, budget_usd: 1000}
limits:
  mode: %(mode)s
  # Small slices here, so that a 1.5 s Redis outage outlasts them (the failure policy only
  # answers once a replica's slice is used up).
  lease: {target_s: 0.05}
  on_redis_failure: {default: %(policy)s}
  probe_interval_ms: 200
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: sim}
deployments:
  pricey@sim:
    provider: sim
    model: "sim-pricey::tokens=400,latency=%(latency)d"
    price: {input: 10.0, output: 40.0}
routes:
  chat: {targets: [pricey@sim]}
"""
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 500}


def flush(redis_url: str) -> None:
    """Limit counters of earlier tests in this session's Redis must not leak in."""
    client = sync_client(redis_url)
    client.flushall()
    client.close()


@contextmanager
def replicas(
    tmp: Path,
    pg_url: str,
    redis_url: str,
    n: int,
    *,
    mode: str,
    policy: str = "fail_open",
    latency: int = 0,
) -> Iterator[list[GatewayProcess]]:
    sim_url, stop_sim = start_simulator()
    text = CONFIG % {
        "budget": BUDGET_KEY,
        "paced": PACED_KEY,
        "open": OPEN_KEY,
        "rpm": RPM,
        "policy": policy,
        "latency": latency,
        "mode": mode,
    }
    env = {
        "SIM_URL": sim_url,
        "FAREBOX_DATABASE_URL": pg_url,
        "FAREBOX_REDIS_URL": redis_url,
        "FAREBOX_LEDGER_MAX_DELAY_MS": "50",
    }
    specs = []
    for i in range(n):
        home = tmp / f"replica{i}"
        home.mkdir()
        # Each its own spool and journal (they start side by side).
        specs.append((text, home, {**env, "FAREBOX_SPOOL_DIR": str(home / "spool")}))
    try:
        with gateway_processes(specs) as gws:
            yield gws
    finally:
        stop_sim()


async def burst(urls: list[str], key: str, count: int) -> list[tuple[int, dict[str, Any]]]:
    """`count` requests at once, dealt round-robin over the replicas."""
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> tuple[int, dict[str, Any]]:
            url = urls[i % len(urls)] + "/chat/completions"
            async with session.post(url, json=BODY, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)

        return await asyncio.gather(*(one(i) for i in range(count)))


def ledger_spend(pg_url: str, key: str, expected_rows: int) -> Decimal:
    deadline = time.monotonic() + 15
    while True:
        rows = sql_rows(
            pg_url,
            "SELECT count(*), coalesce(sum(cost_usd), 0) FROM requests WHERE key_id = :k",
            {"k": key},
        )
        count, total = rows[0]
        if count >= expected_rows or time.monotonic() > deadline:
            assert count == expected_rows, f"{count} ledger rows for {expected_rows} answers"
            return Decimal(str(total))
        time.sleep(0.1)  # poll: a condition wait


MODES = ["exact", "lease"]


@on_every_topology
@pytest.mark.parametrize("mode", MODES)
def test_three_replicas_hold_a_one_dollar_budget(
    tmp_path: Path, pg_url: str, redis_server: Any, mode: str
) -> None:
    flush(redis_server.url)
    with replicas(tmp_path, pg_url, redis_server.url, 3, mode=mode, latency=150) as gws:
        results = asyncio.run(burst([g.base_url for g in gws], BUDGET_KEY, 200))
        statuses = Counter(status for status, _ in results)
        spend = ledger_spend(pg_url, "budgeted", statuses[200])
        # Every check went through Redis (a replica counting alone could overspend).
        assert [_metric(g, "farebox_limits_degraded_total") for g in gws] == [0, 0, 0]
    assert set(statuses) <= {200, 429}, statuses
    refused = [body for status, body in results if status == 429]
    assert refused, "a $1 budget cannot pay for 200 answers at ~$0.016"
    assert {b["error"]["code"] for b in refused} == {"insufficient_quota"}
    assert "monthly budget of $1" in refused[0]["error"]["message"]
    # The largest reservation: 500 output tokens at $40/M plus the body at a token per
    # 3 bytes at $10/M (the gateway's own over-estimate), one attempt.
    body_bytes = len(json.dumps(BODY, separators=(",", ":")))
    largest = Decimal(500 * 40 + (body_bytes // 3 + 10) * 10) / 1_000_000
    print(f"\n{mode}: budget $1: {statuses[200]} answered, {len(refused)} refused, spend ${spend}")
    assert spend <= Decimal(1) + largest
    assert spend > Decimal("0.5"), "the budget was used, not refused from the start"


def _load(url: str, key: str, seconds: float, concurrency: int) -> subprocess.Popen[str]:
    script = (
        "import asyncio, json, sys, time, aiohttp\n"
        "from collections import Counter\n"
        "async def main(url, key, seconds, c):\n"
        "    seen = Counter(); body = sys.argv[5].encode()\n"
        "    h = {'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json'}\n"
        "    deadline = time.monotonic() + seconds\n"
        "    async def worker(s):\n"
        "        while time.monotonic() < deadline:\n"
        "            async with s.post(url, data=body, headers=h) as r:\n"
        "                await r.read(); seen[str(r.status)] += 1\n"
        "    async with aiohttp.ClientSession() as s:\n"
        "        await asyncio.gather(*(worker(s) for _ in range(c)))\n"
        "    print(json.dumps(seen))\n"
        "asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))\n"
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            url + "/chat/completions",
            key,
            str(seconds),
            str(concurrency),
            json.dumps(BODY),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


@on_every_topology
@pytest.mark.parametrize("mode", MODES)
def test_rpm_holds_within_one_percent_across_three_replicas(
    tmp_path: Path, pg_url: str, redis_server: Any, mode: str
) -> None:
    flush(redis_server.url)
    seconds = 4.0
    with replicas(tmp_path, pg_url, redis_server.url, 3, mode=mode) as gws:
        started = time.monotonic()
        loads = [_load(g.base_url, PACED_KEY, seconds, 8) for g in gws]
        counts = [Counter(json.loads(p.communicate(timeout=60)[0])) for p in loads]
        elapsed = time.monotonic() - started
    total = sum(counts, Counter())
    admitted = total["200"]
    assert set(total) <= {"200", "429"}, total
    # The bucket holds RPM and refills RPM per minute; the load ran at most `elapsed`
    # seconds (interpreter start-up included, so this bound is generous to the gateway).
    allowed = RPM + RPM * elapsed / 60
    print(
        f"\n{mode}: rpm {RPM}: {admitted} admitted of {sum(total.values())} in {elapsed:.2f} s; "
        f"bucket allows at most {allowed:.0f}"
    )
    assert admitted <= allowed * 1.01
    assert admitted >= RPM * 0.99, "the burst capacity was granted"


def _metric(gw: GatewayProcess, name: str) -> float:
    with urllib.request.urlopen(gw.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _steady(url: str, key: str, seconds: float) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                async with session.post(
                    url + "/chat/completions", json=BODY, headers=headers
                ) as resp:
                    seen.append((resp.status, await resp.text()))

        await asyncio.gather(*(worker() for _ in range(4)))
    return seen


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
def test_redis_outage_mid_load_follows_the_policy_and_recovers(
    tmp_path: Path, pg_url: str, redis_server: Any, policy: str, mode: str
) -> None:
    with replicas(
        tmp_path, pg_url, redis_server.url, 1, mode=mode, policy=policy, latency=5
    ) as gws:
        gw = gws[0]

        async def scenario() -> tuple[list[tuple[int, str]], float]:
            load = asyncio.create_task(_steady(gw.base_url, OPEN_KEY, 4.0))
            await asyncio.sleep(1.0)  # load runs a while before the outage
            redis_server.stop()
            await asyncio.sleep(1.5)  # the outage lasts 1.5 s under load
            redis_server.start()
            back = time.monotonic()
            while await asyncio.to_thread(_metric, gw, "farebox_limits_redis_up") != 1:
                assert time.monotonic() - back < 5, "limits back on Redis within 5 s"
                await asyncio.sleep(0.05)  # poll: a condition wait
            recovered = time.monotonic() - back
            return await load, recovered

        try:
            seen, recovered = asyncio.run(scenario())
        finally:
            redis_server.start()
        statuses = Counter(status for status, _ in seen)
        print(
            f"\n{mode} {policy}: {dict(statuses)}; limits on Redis again within {recovered:.2f} s"
        )
        if policy == "fail_open":
            assert set(statuses) == {200}, (statuses, [t for s, t in seen if s != 200][:1])
            assert _metric(gw, "farebox_limits_degraded_total") > 0, "counted in process"
        else:
            assert statuses[503] > 0 and statuses[200] > 0, statuses
            assert set(statuses) == {200, 503}, statuses
            message = json.loads(next(t for s, t in seen if s == 503))["error"]
            assert message["code"] == "limits_unavailable"
            assert "unreachable" in message["message"]
        # Enforcement is back: a request now goes through Redis, no restart.
        results = asyncio.run(burst([gw.base_url], OPEN_KEY, 3))
        assert [s for s, _ in results] == [200, 200, 200]
