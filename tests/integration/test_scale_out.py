"""Issue 12's acceptance: three `farebox serve` replicas on one Postgres and one Redis.

A round-robin client (the load balancer) drives mixed load — a failover route, a budgeted
key, a virtual key, a route on a provider that starts failing — while, mid-run, a drill
starts, the provider fails and the virtual key is revoked. Then:

- one shared breaker: the replica that saw the failures tripped it, and the two replicas that
  never saw one skip the deployment too (no further upstream call reaches it);
- the budget holds across replicas (spend ≤ budget + the largest single reservation);
- the revocation is honoured by every replica within 1 s;
- the drill takes its share of the route's traffic on every replica (20 % ± 5 points);
- the ledger is complete: one attempt row per upstream call (simulator + failing provider).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import redis
from aiohttp import web

from gateway.ledger.drills_repository import DrillsRepository
from tests.gateway_process import GatewayProcess, gateway_processes
from tests.ledger_reads import sql_rows
from tests.simulator import start_simulator

# Run alone (make test's serial phase): three gateway processes under load.
pytestmark = pytest.mark.serial

MASTER = "master-key-scale-out-0001"
LOAD_KEY = "sk-scale-load-0001"
BUDGET_KEY = "sk-scale-budget-0001"
BUDGET_USD = 0.3
THRESHOLD = 4
CONFIG = """
auth:
  keys:
    - {name: load, key: "%(load)s"}
    - {name: budgeted, key: "%(budget)s", budget_usd: %(budget_usd)s}
server:
  breaker: {consecutive_failures: %(threshold)d, cooldown_s: 120}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: sim}
  flaky: {kind: serverless, protocol: openai, api_base: "${FLAKY_URL}/v1", api_key: flaky}
deployments:
  main@sim: {provider: sim, model: "sim-main::tokens=5,latency=5", price: {input: 1, output: 2}}
  backup@sim: {provider: sim, model: "sim-backup::tokens=5,latency=5", price: {input: 1, output: 2}}
  pricey@sim:
    {provider: sim, model: "sim-pricey::tokens=400,latency=30", price: {input: 10, output: 40}}
  flaky@flaky: {provider: flaky, model: flaky-model, price: {input: 1, output: 2}}
routes:
  chat: {strategy: failover, targets: [main@sim], fallbacks: [backup@sim]}
  flaky: {strategy: failover, targets: [flaky@flaky], fallbacks: [backup@sim], retry: {attempts: 1}}
  pricey: {targets: [pricey@sim]}
"""
DRILL_PERCENT = 20.0
WORKERS = 15  # concurrent client connections
# Bounds each answer's reservation (and so the budget's possible overshoot).
MAX = {"max_tokens": 500}


class FlakyProvider:
    """An OpenAI-wire provider that answers until told to fail (500s), counting every call."""

    def __init__(self) -> None:
        self.failing = False
        self.calls: Counter[str] = Counter()
        self.url = ""
        self._stop: Callable[[], None] = lambda: None

    async def _chat(self, request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.005)  # simulated upstream latency
        if self.failing:
            self.calls["failed"] += 1
            body = {"error": {"message": "boom", "type": "server_error", "code": None}}
            return web.json_response(body, status=500)
        self.calls["ok"] += 1
        return web.json_response(
            {
                "id": f"flaky-{sum(self.calls.values())}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "flaky-model",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
        )

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        done = asyncio.Event()

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._chat)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            ready.set()
            await done.wait()
            await runner.cleanup()

        thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
        thread.start()
        assert ready.wait(10)

        def stop() -> None:
            loop.call_soon_threadsafe(done.set)
            thread.join(10)

        self._stop = stop

    def stop(self) -> None:
        self._stop()


@dataclass
class Seen:
    started: float
    replica: int
    route: str
    who: str
    status: int
    deployment: str
    drill: str


@dataclass
class Timeline:
    drill_at: float = 0.0
    fail_at: float = 0.0
    revoked_at: float = 0.0
    failed_after_1s: int = 0  # failing calls to the provider 1 s after it began to fail
    drill_id: str = ""
    seen: list[Seen] = field(default_factory=list)


@contextmanager
def cluster(tmp: Path, pg_url: str, redis_url: str, env: dict[str, str]) -> Iterator[list[Any]]:
    text = CONFIG % {
        "load": LOAD_KEY,
        "budget": BUDGET_KEY,
        "budget_usd": BUDGET_USD,
        "threshold": THRESHOLD,
    }
    base = {
        **env,
        "FAREBOX_DATABASE_URL": pg_url,
        "FAREBOX_REDIS_URL": redis_url,
        "FAREBOX_MASTER_KEY": MASTER,
        "FAREBOX_LEDGER_MAX_DELAY_MS": "50",
    }
    specs = []
    for i in range(3):
        home = tmp / f"replica{i}"
        home.mkdir()
        specs.append((text, home, {**base, "FAREBOX_SPOOL_DIR": str(home / "spool")}))
    with gateway_processes(specs) as gws:
        yield gws


async def start_drill(pg_url: str, redis_url: str) -> str:
    repo = DrillsRepository.create(pg_url)
    try:
        row = await repo.start(
            "chat", "backup@sim", DRILL_PERCENT, 5, simulate_outage=False, created_by="test"
        )
    finally:
        await repo.close()
    client = redis.Redis.from_url(redis_url)
    client.publish("farebox:drills", b"changed")
    client.close()
    return row.id


async def run_load(
    gws: list[GatewayProcess],
    virtual: tuple[str, str],
    flaky: FlakyProvider,
    pg_url: str,
    redis_url: str,
) -> Timeline:
    tl = Timeline()
    roots = [f"http://127.0.0.1:{g.port}" for g in gws]
    # (route, who, key); the flaky route goes to replica 0 only, as a client pinned by its
    # keep-alive connection would: the other replicas never see the provider fail.
    mix = [
        ("chat", "load", LOAD_KEY),
        ("chat", "virtual", virtual[1]),
        ("chat", "load", LOAD_KEY),
        ("pricey", "budgeted", BUDGET_KEY),
        ("flaky", "load", LOAD_KEY),
    ]
    t0 = time.monotonic()
    deadline = t0 + 7.0
    turn = iter(range(10**9))

    async def worker(n: int, session: aiohttp.ClientSession) -> None:
        i = n
        while time.monotonic() < deadline:
            route, who, key = mix[i % len(mix)]
            replica = 0 if route == "flaky" else next(turn) % len(roots)
            body = {"model": route, "messages": [{"role": "user", "content": "hi"}], **MAX}
            started = time.monotonic()
            async with session.post(
                roots[replica] + "/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {key}"},
            ) as resp:
                await resp.read()
                tl.seen.append(
                    Seen(
                        started,
                        replica,
                        route,
                        who,
                        resp.status,
                        resp.headers.get("x-farebox-deployment", ""),
                        resp.headers.get("x-farebox-drill", ""),
                    )
                )
            i += 1

    async def events() -> None:
        await asyncio.sleep(1.0)  # the scenario's timeline under steady load
        tl.drill_id = await start_drill(pg_url, redis_url)
        tl.drill_at = time.monotonic()
        await asyncio.sleep(1.0)  # the scenario's timeline under steady load
        flaky.failing = True
        tl.fail_at = time.monotonic()
        await asyncio.sleep(1.0)  # the scenario's timeline under steady load
        tl.failed_after_1s = flaky.calls["failed"]
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.post(
                f"{roots[1]}/admin/keys/{virtual[0]}/revoke",
                headers={"authorization": f"Bearer {MASTER}"},
            )
        assert resp.status_code == 200, resp.text
        tl.revoked_at = time.monotonic()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(events(), *(worker(n, session) for n in range(WORKERS)))
    return tl


def create_virtual_key(gw: GatewayProcess) -> tuple[str, str]:
    """(id, secret) of a new virtual key, made through one replica's admin API."""
    resp = httpx.post(
        f"http://127.0.0.1:{gw.port}/admin/keys",
        json={"name": "scale-out-virtual"},
        headers={"authorization": f"Bearer {MASTER}"},
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    data = resp.json()
    return str(data["id"]), str(data["secret"])


def test_three_replicas_share_breakers_budgets_revocations_drills_and_one_ledger(
    tmp_path: Path, pg_url: str, redis_server: Any
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()  # breaker and limit keys of earlier tests in this session's Redis
    client.close()
    sim_url, stop_sim = start_simulator()
    flaky = FlakyProvider()
    flaky.start()
    env = {"SIM_URL": sim_url, "FLAKY_URL": flaky.url}
    try:
        with cluster(tmp_path, pg_url, redis_server.url, env) as gws:
            virtual = create_virtual_key(gws[2])
            tl = asyncio.run(run_load(gws, virtual, flaky, pg_url, redis_server.url))
            failed_during_load = flaky.calls["failed"]
            # After the run: the replicas that never saw a failure skip the deployment too.
            probes = [_flaky_request(gws[i]) for i in (1, 2) for _ in range(10)]
            for gw in gws:
                # SIGTERM drains the ledger writers (uvicorn re-raises it once done: -15).
                assert gw.terminate() in (0, -15), gw.output()[-2000:]
        upstream = _simulator_calls(sim_url) + sum(flaky.calls.values())
        ledger = sql_rows(pg_url, "SELECT count(*) FROM attempts")[0][0]
        spend = Decimal(
            str(
                sql_rows(
                    pg_url,
                    "SELECT coalesce(sum(cost_usd), 0) FROM requests WHERE key_id = 'budgeted'",
                )[0][0]
            )
        )
    finally:
        flaky.stop()
        stop_sim()

    seen = tl.seen
    statuses = Counter((s.who, s.status) for s in seen)
    print(f"\n{len(seen)} requests over 3 replicas: {dict(statuses)}")
    assert {s.status for s in seen if s.who == "load"} == {200}, "no load request failed"

    # One shared breaker.
    # Replica 0 tripped it after THRESHOLD failures (plus what its workers had in flight)...
    assert THRESHOLD <= failed_during_load <= THRESHOLD + WORKERS
    # ...and nothing reached the provider after that, for the rest of the load...
    assert failed_during_load == tl.failed_after_1s, "the open breaker is honoured"
    # ...nor from replicas 1 and 2, which never saw a failure themselves.
    assert flaky.calls["failed"] == failed_during_load
    assert {(status, dep) for status, dep in probes} == {(200, "backup@sim")}
    after_trip = [s for s in seen if s.route == "flaky" and s.started > tl.fail_at + 1.0]
    assert after_trip and {s.deployment for s in after_trip} == {"backup@sim"}
    print(
        f"breaker: {failed_during_load} failed calls reached the provider (threshold {THRESHOLD})"
    )

    # Budget held across replicas.
    budgeted = Counter(s.status for s in seen if s.who == "budgeted")
    assert set(budgeted) <= {200, 429} and budgeted[429] > 0, budgeted
    # The largest single reservation: 500 output tokens at $40/M plus a generous prompt.
    largest = Decimal(500 * 40 + 100 * 10) / 1_000_000
    print(f"budget ${BUDGET_USD}: {budgeted[200]} answered, spend ${spend}")
    assert Decimal(str(BUDGET_USD)) * Decimal("0.5") < spend
    assert spend <= Decimal(str(BUDGET_USD)) + largest

    # Revocation honoured by every replica within 1 s.
    virtual = [s for s in seen if s.who == "virtual"]
    assert {s.status for s in virtual if s.started < tl.revoked_at - 0.2} == {200}
    late = [s for s in virtual if s.started > tl.revoked_at + 1.0]
    assert late and {s.status for s in late} == {401}, Counter(s.status for s in late)
    assert {s.replica for s in late} == {0, 1, 2}
    first_401 = {
        r: min(s.started for s in virtual if s.replica == r and s.status == 401) - tl.revoked_at
        for r in range(3)
    }
    last_200 = max(s.started for s in virtual if s.status == 200) - tl.revoked_at
    assert last_200 < 1.0, last_200
    print(
        "revocation: first 401 per replica "
        + ", ".join(f"{v * 1000:+.0f} ms" for v in first_401.values())
        + f" after the revoke returned; last 200 started {last_200 * 1000:+.0f} ms after it"
    )

    # Drill share, on every replica.
    chat = [
        s for s in seen if s.route == "chat" and s.status == 200 and s.started > tl.drill_at + 1.5
    ]
    drilled = [s for s in chat if s.drill == tl.drill_id]
    share = len(drilled) / len(chat)
    print(f"drill: {share:.1%} of {len(chat)} chat requests (target {DRILL_PERCENT:.0f} %)")
    assert abs(share * 100 - DRILL_PERCENT) <= 5, share
    assert {s.replica for s in drilled} == {0, 1, 2}
    assert {s.deployment for s in drilled} == {"backup@sim"}

    # The ledger: one attempt row per upstream call.
    print(f"ledger: {ledger} attempt rows for {upstream} upstream calls")
    assert ledger == upstream


def _flaky_request(gw: GatewayProcess) -> tuple[int, str]:
    resp = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "flaky", "messages": [{"role": "user", "content": "probe"}]},
        headers={"authorization": f"Bearer {LOAD_KEY}"},
        timeout=10,
    )
    return resp.status_code, resp.headers.get("x-farebox-deployment", "")


def _simulator_calls(sim_url: str) -> int:
    stats = httpx.get(sim_url + "/_stats", timeout=10).json()
    return sum(int(model["total"]) for model in stats["requests"].values())
