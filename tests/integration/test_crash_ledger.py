"""Fault matrix, ledger part: a gateway killed with `kill -9` mid-load, or stopped with
SIGTERM while Postgres is frozen, loses no attempt row and invents none.

Real `farebox serve` processes, real Postgres, the simulator over HTTP. The simulator logs
the `x-client-request-id` of every call it receives (the gateway sends the attempt's ledger
id there), so the ledger is compared with what reached the upstream id by id.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.ledger.journal import open_calls
from tests import waiting
from tests.gateway_process import GatewayProcess, gateway_process
from tests.ledger_reads import sql_rows
from tests.services import PostgresServer
from tests.simulator import running_simulator

# Runs beside other tests: the gateways it kills and the Postgres it freezes are its own
# (each test worker has its own server), and it waits on conditions, never on timing.

KEY = "sk-crash-ledger-1"
CONFIG = """
auth: {keys: [{name: crash, key: KEY}]}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: k}
deployments:
  slow@sim: {provider: sim, model: "sim-slow::latency=LATENCY", price: {input: 0.5, output: 1.5}}
routes:
  chat: {targets: [slow@sim]}
""".replace("KEY", KEY)

BODY = {"model": "chat", "messages": [{"role": "user", "content": "count me"}], "max_tokens": 8}


def received_ids(sim: str) -> list[str]:
    with urllib.request.urlopen(f"{sim}/_received_ids") as resp:
        return list(orjson.loads(resp.read()))


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    waiting.wait_until(predicate, what, within_s=timeout)


class Load:
    """`concurrency` closed-loop clients in a background thread, every 3rd request a stream,
    until stop(). Counts what the clients saw."""

    def __init__(self, base_url: str, concurrency: int) -> None:
        self.base_url = base_url
        self.concurrency = concurrency
        self.statuses: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def ok(self) -> int:
        return self.statuses.get("200", 0)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
        ) as session:
            await asyncio.gather(*(self._client(session, n) for n in range(self.concurrency)))

    async def _client(self, session: aiohttp.ClientSession, n: int) -> None:
        issued = 0
        while not self._stop.is_set():
            issued += 1
            body = {**BODY, "stream": (issued + n) % 3 == 0}
            try:
                async with session.post(
                    f"{self.base_url}/chat/completions",
                    json=body,
                    # One workflow per client: rows rebuilt after the kill must keep it.
                    headers={"Authorization": f"Bearer {KEY}", "x-farebox-workflow": f"wf-{n}"},
                ) as resp:
                    payload = await resp.read()
                    whole = resp.status == 200 and (not body["stream"] or b"[DONE]" in payload)
                    outcome = "200" if whole else str(resp.status)
            except (aiohttp.ClientError, TimeoutError):
                outcome = "connection"
                await asyncio.sleep(0.01)  # the gateway is gone: don't spin
            self.statuses[outcome] = self.statuses.get(outcome, 0) + 1


def kill_when_every_open_call_reached_the_upstream(gw: GatewayProcess, sim: str, tmp: Path) -> int:
    """SIGSTOP the gateway, and SIGKILL it only at a moment when every upstream call it has
    journalled as started did reach the simulator. (A call journalled but not yet sent when
    the process dies is billed as crashed — the provider *may* have it — and that is the
    only case where ledger and upstream may honestly differ; this picks a moment without it
    so the comparison below can be exact.) Returns the number of calls open at the kill."""
    journal_dir = tmp / "spool" / "journal"
    for _ in range(200):
        os.kill(gw.proc.pid, signal.SIGSTOP)
        pending = open_calls(journal_dir)
        deadline = time.monotonic() + 0.3
        while pending - set(received_ids(sim)) and time.monotonic() < deadline:
            time.sleep(0.01)  # bytes already on the wire still reach the simulator
        if not pending - set(received_ids(sim)):
            os.kill(gw.proc.pid, signal.SIGKILL)
            gw.proc.wait(10)
            return len(pending)
        os.kill(gw.proc.pid, signal.SIGCONT)
        time.sleep(0.005)  # let the gateway run a moment before the next try
    raise AssertionError("never found a moment to kill the gateway")


def ledger_ids(pg_url: str) -> list[str]:
    return [row[0] for row in sql_rows(pg_url, "SELECT id FROM attempts")]


@pytest.fixture
def sim() -> Iterator[str]:
    with running_simulator(seed=3) as url:
        yield url


def test_kill_9_at_concurrency_16_loses_and_invents_no_attempt(
    sim: str, pg_url: str, tmp_path: Path
) -> None:
    env = {"SIM_URL": sim, "FAREBOX_DATABASE_URL": pg_url}
    config = CONFIG.replace("LATENCY", "40")
    with gateway_process(config, tmp_path, env) as gw, Load(gw.base_url, 16) as load:
        wait_until(lambda: load.ok() >= 300, "300 answered requests")
        in_flight = kill_when_every_open_call_reached_the_upstream(gw, sim, tmp_path)
    answered = load.ok()
    sent = received_ids(sim)
    assert len(sent) == len(set(sent)), "an attempt id was sent upstream twice"
    # Rows of the last ~200 ms sat in the writer's memory when the process died.
    in_db_before_restart = len(ledger_ids(pg_url))
    assert in_db_before_restart < len(sent)

    with gateway_process(config, tmp_path, env):  # start-up recovers the journal
        wait_until(lambda: len(ledger_ids(pg_url)) >= len(sent), "the ledger to catch up")
    ids = ledger_ids(pg_url)
    assert len(ids) == len(set(ids))
    assert set(ids) == set(sent), (
        f"lost: {len(set(sent) - set(ids))}, invented: {len(set(ids) - set(sent))}"
    )
    crashed = sql_rows(
        pg_url,
        "SELECT a.token_source, a.input_uncached_tokens, a.cost_usd, r.error_class "
        "FROM attempts a JOIN requests r ON r.id = a.request_id "
        "WHERE a.error_class = 'gateway_crashed'",
    )
    assert len(crashed) == in_flight
    assert all(r[0] == "estimated" and r[1] > 0 and r[2] > 0 for r in crashed)
    # Request rows rebuilt from the journal (and all the others) keep the client's workflow.
    untagged = sql_rows(
        pg_url,
        "SELECT count(*) FROM requests WHERE workflow_id IS NULL OR workflow_id NOT LIKE 'wf-%'",
    )
    assert untagged[0][0] == 0
    # Every attempt has its request row, and every answered request is in the ledger.
    orphans = sql_rows(
        pg_url,
        "SELECT count(*) FROM attempts a LEFT JOIN requests r ON r.id = a.request_id "
        "WHERE r.id IS NULL",
    )
    assert orphans[0][0] == 0
    ok_requests = sql_rows(pg_url, "SELECT count(*) FROM requests WHERE final_status = 200")
    assert ok_requests[0][0] >= answered
    print(
        f"\nkill -9 at c16: {len(sent)} upstream calls, {in_db_before_restart} rows in "
        f"Postgres at the kill, {len(ids)} after recovery ({in_flight} gateway_crashed)"
    )


def test_sigterm_with_postgres_frozen_loses_no_row(
    sim: str, pg_url: str, postgres: PostgresServer, tmp_path: Path
) -> None:
    env = {
        "SIM_URL": sim,
        "FAREBOX_DATABASE_URL": pg_url,
        "FAREBOX_GRACEFUL_SHUTDOWN_S": "2",
        "FAREBOX_LEDGER_CLOSE_TIMEOUT_S": "2",
    }
    config = CONFIG.replace("LATENCY", "5")
    try:
        with gateway_process(config, tmp_path, env) as gw:
            with Load(gw.base_url, 8) as load:
                wait_until(lambda: load.ok() >= 100, "100 answered requests")
                postgres.freeze()
                answered_at_freeze = load.ok()
                wait_until(lambda: load.ok() >= answered_at_freeze + 200, "200 more answers")
            started = time.monotonic()
            assert gw.terminate(timeout=60) in (0, -signal.SIGTERM)
            stopped_in = time.monotonic() - started
    finally:
        postgres.thaw()
    sent = received_ids(sim)
    assert sent and len(sent) == len(set(sent))
    with gateway_process(config, tmp_path, env):  # replays the spool once Postgres answers
        wait_until(lambda: len(ledger_ids(pg_url)) >= len(sent), "the ledger to catch up")
    ids = ledger_ids(pg_url)
    assert len(ids) == len(set(ids))
    assert set(ids) == set(sent), (
        f"lost: {len(set(sent) - set(ids))}, invented: {len(set(ids) - set(sent))}"
    )
    print(f"\nSIGTERM with Postgres frozen: exit in {stopped_in:.1f} s, {len(ids)} rows, 0 lost")
