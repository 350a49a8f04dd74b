"""Lease mode (issue 25, item 1): a replica killed with `kill -9` while holding a slice of a
key's limits gives nothing away for good. Its concurrency slots and budget entry expire in
Redis, and another replica can then use the key's whole limit.

Two real `farebox serve` replicas sharing Redis and a Postgres ledger. A key allows 4
requests at once and $0.05 a month, and its slices may take all of it (`max_share: 1`).
Replica A admits 4 hanging requests (4 slots, ~$0.044 reserved in its slice) and is killed.
Replica B must then run 4 requests at once and one whose worst case is 80 % of the budget.
Conditions are waited on, never slept on.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import openai
import redis

from tests.conftest import SIM_KEY
from tests.gateway_process import GatewayProcess, gateway_processes
from tests.services import RedisServer
from tests.waiting import wait_until

SECRET = "sk-crashy-key-0001"
# Each hanging request reserves 1,000 output tokens at $10/M + its prompt ≈ $0.011: four of
# them hold ~$0.044 of the $0.05 budget and all 4 slots.
HANG_MAX_TOKENS = 1_000
# $0.04 worst case: fits only once the dead replica's entry is gone.
PROBE_MAX_TOKENS = 4_000

CONFIG = """
auth:
  keys:
    - {name: crashy, key: "%(secret)s", max_concurrency: 4, budget_usd: 0.05}
limits:
  mode: lease
  reservation_ttl_s: 2
  lease: {max_share: 1.0, idle_return_s: 60}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
deployments:
  fast@sim: {provider: sim, model: sim-small, price: {input: 1, output: 10}}
  slow@sim: {provider: sim, model: "sim-small::latency=1500", price: {input: 1, output: 10}}
  hang@sim: {provider: sim, model: "sim-hang::hang", price: {input: 1, output: 10}}
routes:
  chat: {targets: [fast@sim]}
  slow: {targets: [slow@sim]}
  hang: {targets: [hang@sim], timeouts: {ttft_ms: 20000, total_ms: 20000}}
"""


def client(gw: GatewayProcess, timeout: float = 10) -> openai.OpenAI:
    return openai.OpenAI(api_key=SECRET, base_url=gw.base_url, max_retries=0, timeout=timeout)


def metric(gw: GatewayProcess, name: str) -> float:
    with urllib.request.urlopen(gw.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_a_killed_replicas_slice_expires_and_another_uses_the_whole_limit(
    simulator: str, pg_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {
        "SIM_URL": simulator,
        "SIM_KEY": SIM_KEY,
        "FAREBOX_DATABASE_URL": pg_url,
        "FAREBOX_REDIS_URL": redis_server.url,
    }
    store = redis.Redis.from_url(redis_server.url)
    month = datetime.now(UTC).strftime("%Y-%m")
    tag = "{farebox:lim:crashy}"
    for stale in store.scan_iter(match=f"{tag}*"):
        store.delete(stale)
    specs = []
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir()
        specs.append((CONFIG % {"secret": SECRET}, home, {**env, "FAREBOX_SPOOL_DIR": str(home)}))

    with gateway_processes(specs) as (a, b):

        def hang() -> None:
            with contextlib.suppress(openai.APIError):  # the replica dies under it
                client(a, timeout=30).chat.completions.create(
                    model="hang",
                    messages=[{"role": "user", "content": "wait"}],
                    max_tokens=HANG_MAX_TOKENS,
                )

        threads = [threading.Thread(target=hang, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()

        def held_by_a() -> bool:
            members = [str(m) for m in store.zrange(f"{tag}:conc", 0, -1)]
            slots = [m for m in members if "slice-" in m]
            reserved = int(store.hget(f"{tag}:budget:{month}", "reserved") or 0)
            return len(slots) == 4 and reserved >= 4 * 10_000_000

        wait_until(held_by_a, "A's slice holding 4 slots and $0.04", 15, poll_s=0.05)
        wait_until(
            lambda: metric(a, 'farebox_limits_lease_outstanding{kind="concurrency"}') == 4,
            "A's outstanding slots in /metrics",
            5,
            poll_s=0.05,
        )
        a.proc.kill()
        a.proc.wait(10)
        for thread in threads:
            thread.join(10)
        # Nothing of A's is returned: its entries are still in Redis.
        assert held_by_a()

        def probe_admitted() -> bool:
            try:
                client(b).chat.completions.create(
                    model="chat",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=PROBE_MAX_TOKENS,
                )
            except openai.RateLimitError:
                return False
            return True

        # Within the slice's deadline (2 s) of the kill, plus a loaded machine.
        wait_until(probe_admitted, "the whole budget usable on B", 30, poll_s=0.05)

        def four_at_once() -> bool:
            def one(_: int) -> int:
                try:
                    client(b).chat.completions.create(
                        model="slow",
                        messages=[{"role": "user", "content": "hi"}],
                        max_tokens=5,
                    )
                except openai.RateLimitError:
                    return 429
                return 200

            with ThreadPoolExecutor(4) as pool:
                return list(pool.map(one, range(4))) == [200] * 4

        wait_until(four_at_once, "all 4 slots usable on B", 30, poll_s=0.05)
        assert metric(b, "farebox_limits_lease_expired_total") >= 1
    store.close()


def test_a_replica_shut_down_hands_its_slice_back(
    simulator: str, pg_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """SIGTERM (the app's shutdown): the replica returns its slots and budget entry at once
    and its settled spend is in Redis — nothing is left to expire."""
    env = {
        "SIM_URL": simulator,
        "SIM_KEY": SIM_KEY,
        "FAREBOX_DATABASE_URL": pg_url,
        "FAREBOX_REDIS_URL": redis_server.url,
        "FAREBOX_SPOOL_DIR": str(tmp_path),
    }
    store = redis.Redis.from_url(redis_server.url)
    month = datetime.now(UTC).strftime("%Y-%m")
    tag = "{farebox:lim:crashy}"
    for stale in store.scan_iter(match=f"{tag}*"):
        store.delete(stale)
    budget = f"{tag}:budget:{month}"
    with gateway_processes([(CONFIG % {"secret": SECRET}, tmp_path, env)]) as (gw,):
        for _ in range(5):
            client(gw).chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=10
            )
        # Idle return is a minute away here: the replica still holds its slice.
        assert int(store.hget(budget, "reserved") or 0) > 0
        assert store.zcard(f"{tag}:conc") > 0
        assert gw.terminate() in (0, -15), gw.output()[-2000:]
    assert int(store.hget(budget, "reserved") or -1) == 0
    assert store.zcard(f"{tag}:conc") == 0
    assert store.zcard(f"{tag}:resv:{month}") == 0
    assert int(store.hget(budget, "spent") or 0) > 0, "the settled spend reached Redis"
    store.close()
