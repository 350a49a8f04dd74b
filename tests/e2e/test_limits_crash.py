"""Budgets that cannot get stuck (issue 21, item 4): a gateway killed with requests in flight
leaves their budget reservations in Redis; they expire, so the key's whole budget is
usable again within the reservation TTL — not at the end of the month.

A real `farebox serve` process (Postgres ledger, Redis limits), a virtual key with a $0.05
budget, 20 requests hanging on the simulator, `kill -9`, restart, then the key must admit a
request whose worst case is ~90 % of its budget. Takes ~10 s (two gateway start-ups and one
reservation TTL of 5 s).
"""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import redis

from tests.conftest import SIM_KEY
from tests.gateway_process import GatewayProcess, gateway_process
from tests.services import RedisServer
from tests.waiting import wait_until

# Runs beside other tests: the gateway it kills is its own, and the reservation TTL is waited
# on as a condition (the budget usable again within 30 s), not timed.

MASTER = "master-key-for-crash-tests"
BUDGET_USD = "0.05"
IN_FLIGHT = 20
# Each hanging request reserves 200 output tokens at $10/M (+ its prompt at $1/M) ≈ $0.002:
# twenty of them hold ~$0.041 of the $0.05 budget.
HANG_MAX_TOKENS = 200
# ≈ $0.045 worst case: fits only if the dead requests' reservations are gone.
PROBE_MAX_TOKENS = 4_500

CONFIG = """
limits:
  reservation_ttl_s: 5
  reconcile_interval_s: 1
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
deployments:
  fast@sim: {provider: sim, model: sim-small, price: {input: 1, output: 10}}
  hang@sim: {provider: sim, model: "sim-hang::hang", price: {input: 1, output: 10}}
routes:
  chat: {targets: [fast@sim]}
  hang: {targets: [hang@sim], timeouts: {ttft_ms: 3000, total_ms: 3000}}
"""


def client(gw: GatewayProcess, key: str, timeout: float = 10) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gw.base_url, max_retries=0, timeout=timeout)


def test_reservations_of_a_killed_gateway_expire(
    simulator: str, pg_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {
        "SIM_URL": simulator,
        "SIM_KEY": SIM_KEY,
        "FAREBOX_DATABASE_URL": pg_url,
        "FAREBOX_REDIS_URL": redis_server.url,
        "FAREBOX_MASTER_KEY": MASTER,
        "FAREBOX_SPOOL_DIR": str(tmp_path / "spool"),  # shared: the restart replays it
    }
    store = redis.Redis.from_url(redis_server.url)
    month = datetime.now(UTC).strftime("%Y-%m")
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()

    with gateway_process(CONFIG, tmp_path / "first", env) as gw:
        created = httpx.post(
            f"http://127.0.0.1:{gw.port}/admin/keys",
            headers={"authorization": f"Bearer {MASTER}"},
            json={"name": "crash", "budget_usd": BUDGET_USD},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        key_id, secret = created.json()["id"], created.json()["secret"]
        budget_key = f"{{farebox:lim:{key_id}}}:budget:{month}"

        def hang() -> None:
            with contextlib.suppress(openai.APIError):  # the gateway dies under it
                client(gw, secret, timeout=30).chat.completions.create(
                    model="hang",
                    messages=[{"role": "user", "content": "wait"}],
                    max_tokens=HANG_MAX_TOKENS,
                )

        threads = [threading.Thread(target=hang, daemon=True) for _ in range(IN_FLIGHT)]
        for thread in threads:
            thread.start()

        def reserved_nano() -> int:
            return int(store.hget(budget_key, "reserved") or 0)

        # All twenty admitted (each holds > $0.002), none settled: kill the gateway now.
        wait_until(
            lambda: reserved_nano() >= IN_FLIGHT * 2_000_000, "20 reservations", 10, poll_s=0.05
        )
        gw.proc.kill()
        gw.proc.wait(10)
        leaked = reserved_nano()
    for thread in threads:
        thread.join(10)
    assert leaked >= IN_FLIGHT * 2_000_000

    with gateway_process(CONFIG, tmp_path / "second", env) as gw:
        probe = client(gw, secret)

        def full_budget_usable() -> bool:
            try:
                probe.chat.completions.create(
                    model="chat",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=PROBE_MAX_TOKENS,
                )
            except openai.RateLimitError as exc:
                assert "insufficient_quota" in str(exc)
                return False
            return True

        # Within the reservation TTL (5 s) of the kill, plus start-up and a loaded machine.
        wait_until(full_budget_usable, "the key's budget to be usable again", 30, poll_s=0.05)
        # The dead requests' reservations are gone from Redis, not just outweighed. Expired
        # ones leave the counter when the key is next touched in Redis or at the background
        # repair; on a loaded machine the probe may have been admitted by the in-process
        # fallback (a Redis call that timed out at start-up) and touched nothing, so the
        # repair (every second here) is what this waits for. The probe's own reservation
        # settles a moment after its answer.
        wait_until(
            lambda: int(store.hget(budget_key, "reserved") or 0) == 0,
            "nothing reserved",
            15,
            poll_s=0.05,
        )
    store.close()
