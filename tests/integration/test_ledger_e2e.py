"""The ledger end to end: real gateway, real simulator, real PostgreSQL.

What the providers counted must equal what the ledger recorded; nothing is lost when the
database goes away or the gateway is told to stop mid-load.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.ledger.repository import LedgerRepository
from gateway.settings import Settings
from tests.gateway_harness import config_from_yaml, running_gateway
from tests.gateway_process import gateway_process
from tests.ledger_reads import sql_rows
from tests.services import PostgresServer
from tests.simulator import reset_simulator as reset
from tests.simulator import running_simulator
from tests.simulator import simulator_stats as stats

KEY = "sk-ledger-test-01"
CONFIG = """
auth: {keys: [{name: ledger-tests, key: "KEY"}]}
providers:
  sim: {kind: serverless, api_base: "${SIM_URL}/v1", api_key: k}
  gpu: {kind: dedicated, api_base: "${SIM_URL}/v1", hourly_usd: 2.5}
deployments:
  plain@sim: {provider: sim, model: sim-plain, price: {input: 0.10, output: 0.20}}
  cached@sim:
    provider: sim
    model: "sim-cachedx::cached=5,cache_write=2,reasoning=3,tokens=7"
    price: {input: 1.0, output: 4.0, cached_input: 0.25, cache_write: 1.25}
  flaky@sim: {provider: sim, model: "sim-flaky::fail_rate=0.3", price: {input: 1, output: 1}}
  cut@sim: {provider: sim, model: "sim-cutx::cut_after=2,tokens=6", price: {input: 1, output: 1}}
  err@sim: {provider: sim, model: "sim-err::status=500", price: {input: 1, output: 1}}
  unpriced@sim: {provider: sim, model: sim-unknown-model}
  gpu@gpu: {provider: gpu, model: sim-gpu}
  slow@sim: {provider: sim, model: "sim-slow::latency=150", price: {input: 0.1, output: 0.2}}
routes:
  plain: {targets: [plain@sim]}
  cached: {targets: [cached@sim]}
  flaky: {targets: [flaky@sim]}
  cut: {targets: [cut@sim]}
  err: {targets: [err@sim]}
  unpriced: {targets: [unpriced@sim]}
  gpu: {targets: [gpu@gpu]}
  slow: {targets: [slow@sim]}
""".replace("KEY", KEY)


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with running_simulator(seed=7) as url:
        yield url


def ledger(url: str) -> LedgerRepository:
    return LedgerRepository.create(url)


async def fire(
    base: str, jobs: list[tuple[str, bool, bool]], concurrency: int
) -> list[tuple[int, str]]:
    """Send (route, stream, include_usage) jobs; returns (status, x-request-id) per job."""
    results: list[tuple[int, str]] = []
    queue: asyncio.Queue[tuple[str, bool, bool]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            route, stream, usage = queue.get_nowait()
            body: dict[str, Any] = {
                "model": route,
                "messages": [{"role": "user", "content": "Count the cost of this request."}],
                "max_tokens": 9,
            }
            if stream:
                body["stream"] = True
                if usage:
                    body["stream_options"] = {"include_usage": True}
            try:
                async with session.post(
                    f"{base}/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {KEY}"},
                ) as resp:
                    await resp.read()
                    results.append((resp.status, resp.headers.get("x-request-id", "")))
            except aiohttp.ClientError:
                results.append((0, ""))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return results


def test_ledger_matches_what_the_provider_served(sim: str, pg_url: str, tmp_path: Path) -> None:
    reset(sim)
    config = config_from_yaml(CONFIG, {"SIM_URL": sim})
    settings = Settings(database_url=pg_url, spool_dir=str(tmp_path / "spool"), master_key=None)
    routes = ["plain", "cached", "flaky", "cut", "err", "unpriced", "gpu"]
    jobs = [(routes[i % len(routes)], i % 3 != 0, i % 2 == 0) for i in range(420)]
    with running_gateway(config, settings) as gw:
        results = asyncio.run(fire(gw.base_url, jobs, concurrency=12))
    # Leaving the block shut the gateway down, which flushed the ledger.
    assert len(results) == len(jobs)
    served = stats(sim)
    upstream_calls = sum(m["total"] for m in served["requests"].values())

    async def read() -> tuple[tuple[int, int], dict[str, dict[str, int]]]:
        repo = ledger(pg_url)
        try:
            return await repo.counts(), await repo.token_sums_by_model()
        finally:
            await repo.close()

    (n_requests, n_attempts), sums = asyncio.run(read())
    assert n_requests == len(jobs)
    # Every upstream call is one attempt row, retries included (err and flaky retry).
    assert n_attempts == upstream_calls
    assert n_attempts > len(jobs)
    by_base: dict[str, dict[str, int]] = {}
    for model, tokens in sums.items():
        base = model.split("::")[0]
        acc = by_base.setdefault(base, dict.fromkeys(tokens, 0))
        for kind, value in tokens.items():
            acc[kind] += value
    served_tokens = {m: t for m, t in served["tokens"].items() if any(t.values())}
    assert by_base == served_tokens
    assert (
        served_tokens["sim-cachedx"]["cached"] > 0 and served_tokens["sim-cachedx"]["reasoning"] > 0
    )


def test_failed_attempts_carry_estimated_input_and_cost(
    sim: str, pg_url: str, tmp_path: Path
) -> None:
    config = config_from_yaml(CONFIG, {"SIM_URL": sim})
    settings = Settings(database_url=pg_url, spool_dir=str(tmp_path / "spool"), master_key=None)
    with running_gateway(config, settings) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
        msgs = [{"role": "user", "content": "Please estimate me."}]
        with pytest.raises(openai.APIError):
            for _ in client.chat.completions.create(model="cut", messages=msgs, stream=True):  # type: ignore[arg-type]
                pass
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="err", messages=msgs)  # type: ignore[arg-type]
        raw = client.chat.completions.with_raw_response.create(model="plain", messages=msgs)  # type: ignore[arg-type]
        header_cost = Decimal(raw.headers["x-farebox-cost-usd"])
        usage = raw.parse().usage
        assert usage is not None
        unpriced = client.chat.completions.with_raw_response.create(model="unpriced", messages=msgs)  # type: ignore[arg-type]
        assert "x-farebox-cost-usd" not in unpriced.headers
        gpu = client.chat.completions.with_raw_response.create(model="gpu", messages=msgs)  # type: ignore[arg-type]
        assert Decimal(gpu.headers["x-farebox-cost-usd"]) == 0
        stream = client.chat.completions.create(
            model="cached",
            messages=msgs,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        last = list(stream)[-1]
    expected = (
        Decimal(usage.prompt_tokens) * Decimal("0.10")
        + Decimal(usage.completion_tokens) * Decimal("0.20")
    ) / 1_000_000
    assert header_cost == expected
    assert last.usage is not None
    streamed_cost = last.usage.model_extra["cost_usd"]  # type: ignore[index]
    u = last.usage
    cached = u.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    write = 2
    uncached = u.prompt_tokens - cached - write  # type: ignore[operator]
    expect_stream = (
        uncached * Decimal("1.0")
        + cached * Decimal("0.25")
        + write * Decimal("1.25")
        + u.completion_tokens * Decimal("4.0")
    ) / 1_000_000
    assert Decimal(str(streamed_cost)) == pytest.approx(expect_stream)

    rows = sql_rows(
        pg_url,
        "SELECT deployment, token_source, input_uncached_tokens, output_tokens, "
        "error_class, http_status, cost_usd FROM attempts ORDER BY started_at",
    )
    by_dep = {r[0]: r for r in rows}
    err_rows = [r for r in rows if r[0] == "err@sim"]
    assert len(err_rows) == 2 and all(r[4] == "http_500" for r in err_rows)
    cut = by_dep["cut@sim"]
    assert cut[1] == "estimated" and cut[2] > 0 and cut[4] == "cut" and cut[6] > 0
    assert cut[3] >= 1  # the chunks that reached the client before the cut
    err = by_dep["err@sim"]
    assert err[1] == "estimated" and err[2] > 0 and err[4] == "http_500" and err[5] == 500
    assert by_dep["plain@sim"][1] == "provider"
    assert by_dep["unpriced@sim"][6] is None  # unknown price is NULL, never $0
    assert by_dep["gpu@gpu"][6] == 0
    requests = sql_rows(pg_url, "SELECT route, final_status, error_class, attempts FROM requests")
    statuses = {r[0]: (r[1], r[2], r[3]) for r in requests}
    assert statuses["err"] == (502, "http_500", 2)  # the first try and one retry
    assert statuses["cut"] == (200, "cut", 1)
    assert statuses["plain"] == (200, None, 1)


def test_postgres_outage_mid_load_loses_nothing(
    sim: str, postgres: PostgresServer, pg_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    env = {
        "SIM_URL": sim,
        "FAREBOX_DATABASE_URL": pg_url,
        "FAREBOX_SPOOL_DIR": str(spool),
        "FAREBOX_LEDGER_BATCH_ROWS": "200",
    }
    jobs = [("plain" if i % 4 else "cached", i % 5 == 0, True) for i in range(3000)]
    with gateway_process(CONFIG, tmp_path, env) as gw:
        outage = threading.Thread(target=_outage, args=(postgres,))
        outage.start()
        results = asyncio.run(fire(gw.base_url, jobs, concurrency=24))
        outage.join()
        # uvicorn re-raises SIGTERM after a graceful shutdown, so -15 is a clean exit.
        assert gw.terminate() in (0, -15), gw.output()
        log = gw.output()
    statuses = [s for s, _ in results]
    assert statuses.count(200) == len(jobs), f"clients saw errors: {set(statuses)}"
    assert "spooling" in log  # the outage really hit the writer
    ids = {rid for _, rid in results}
    db_ids = {r[0] for r in sql_rows(pg_url, "SELECT id FROM requests")}
    assert db_ids == ids
    (n_attempts,) = sql_rows(pg_url, "SELECT count(*), count(DISTINCT request_id) FROM attempts")[
        0
    ][:1]
    assert n_attempts == len(jobs)
    assert not list(spool.glob("ledger-*")), "spool not fully replayed"


def _outage(postgres: PostgresServer) -> None:
    time.sleep(0.8)  # load runs a while before the outage
    postgres.stop()
    time.sleep(2.5)  # the outage lasts 2.5 s under load
    postgres.start()


def test_sigterm_mid_load_records_every_accepted_request(
    sim: str, pg_url: str, tmp_path: Path
) -> None:
    env = {
        "SIM_URL": sim,
        "FAREBOX_DATABASE_URL": pg_url,
        "FAREBOX_SPOOL_DIR": str(tmp_path / "spool"),
    }
    jobs = [("slow", i % 3 == 0, True) for i in range(2000)]
    with gateway_process(CONFIG, tmp_path, env) as gw:

        def stop_soon() -> None:
            time.sleep(1.5)  # SIGTERM while jobs are in flight
            gw.proc.send_signal(__import__("signal").SIGTERM)

        stopper = threading.Thread(target=stop_soon)
        stopper.start()
        results = asyncio.run(fire(gw.base_url, jobs, concurrency=30))
        stopper.join()
        assert gw.proc.wait(60) in (0, -15), gw.output()
        assert "Application shutdown complete" in gw.output()
    accepted = {rid for status, rid in results if status == 200}
    assert len(accepted) > 100, "the load never got going"
    assert len(accepted) < len(jobs), "SIGTERM came after the load finished"
    db_ids = {r[0] for r in sql_rows(pg_url, "SELECT id FROM requests WHERE final_status = 200")}
    assert accepted <= db_ids
    missing = sql_rows(
        pg_url,
        "SELECT count(*) FROM requests r WHERE NOT EXISTS "
        "(SELECT 1 FROM attempts a WHERE a.request_id = r.id)",
    )[0][0]
    assert missing == 0
