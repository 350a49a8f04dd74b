"""Config reload on SIGHUP, against real `farebox serve` processes.

- Under closed-loop load on two uvicorn workers, a valid new file moves the route to another
  deployment with zero failed requests (the master forwards SIGHUP to each worker; requests
  running at the swap finish on the old state). A bad file then changes nothing and is
  reported with file:line in the log and `farebox_config_reload_total{result="error"}`.
- What a reload must not lose: rows queued in the ledger writer, a breaker that is open,
  a drill that is running; and, in process, which parts are carried over and which rebuilt.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.config.loading import parse_config
from gateway.ledger.drills_repository import DrillsRepository
from gateway.serving.reload import start_components
from gateway.state import build_state
from tests.conftest import sqlite_settings
from tests.gateway_process import GatewayProcess, gateway_process
from tests.ledger_reads import sql_rows
from tests.simulator import start_simulator

CONFIG = """
auth: none
server:
  breaker: {consecutive_failures: 2, cooldown_s: 120}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: sim}
deployments:
  a@sim: {provider: sim, model: "sim-a::tokens=5,latency=%(latency)d", price: {input: 1, output: 2}}
  b@sim: {provider: sim, model: "sim-b::tokens=5,latency=%(latency)d", price: {input: 1, output: 2}}
  broken@sim: {provider: sim, model: "sim-broken::status=500"}
routes:
  chat: {targets: [%(target)s]}
  broken: {strategy: failover, targets: [broken@sim], fallbacks: [b@sim], retry: {attempts: 1}}
"""
BODY = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})


def config(target: str, latency: int = 100, extra: str = "") -> str:
    return CONFIG % {"target": target, "latency": latency} + extra


def replace_file(path: Path, text: str) -> None:
    """Atomically, as a ConfigMap update (symlink swap) does: never a half-written file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def metric(gw: GatewayProcess, name: str) -> float:
    with urllib.request.urlopen(gw.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def wait_log(gw: GatewayProcess, pattern: str, count: int = 1, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = gw.output()
        if len(re.findall(pattern, out)) >= count:
            return out
        assert time.monotonic() < deadline, f"no {count}× {pattern!r} in the log:\n{out}"
        time.sleep(0.05)  # poll: a condition wait


async def load(url: str, seconds: float, concurrency: int) -> list[tuple[float, int, str]]:
    """Closed loop: (finished at, status, deployment) per request."""
    seen: list[tuple[float, int, str]] = []
    deadline = time.monotonic() + seconds
    headers = {"content-type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            async with session.post(url + "/chat/completions", data=BODY, headers=headers) as r:
                await r.read()
                seen.append((time.monotonic(), r.status, r.headers.get("x-farebox-deployment", "")))

    # A new connection per request, so the kernel deals requests to both workers (16 kept-
    # alive connections would often all land on one).
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return seen


def test_sighup_under_load_switches_routing_with_zero_failed_requests(tmp_path: Path) -> None:
    sim_url, stop_sim = start_simulator()
    env = {"SIM_URL": sim_url, "FAREBOX_LEDGER_ENABLED": "false"}
    try:
        with gateway_process(config("a@sim"), tmp_path, env, workers=2) as gw:
            try:
                _switch_under_load_then_refuse_bad_files(gw, tmp_path)
            finally:
                # SIGTERM, not the fixture's SIGKILL: that would orphan the workers.
                if gw.proc.poll() is None:
                    gw.terminate()
    finally:
        stop_sim()


def _switch_under_load_then_refuse_bad_files(gw: GatewayProcess, tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"

    async def scenario() -> tuple[list[tuple[float, int, str]], float]:
        task = asyncio.create_task(load(gw.base_url, 4.0, 16))
        await asyncio.sleep(1.5)  # load runs a while before the switch
        replace_file(path, config("b@sim"))
        sent = time.monotonic()
        gw.proc.send_signal(signal.SIGHUP)
        return await task, sent

    sent_wall = time.time() - 10
    seen, sent = asyncio.run(scenario())
    statuses = Counter(status for _, status, _ in seen)
    assert set(statuses) == {200}, statuses
    last_a = max(t for t, _, dep in seen if dep == "a@sim")
    first_b = min(t for t, _, dep in seen if dep == "b@sim")
    # 100 ms upstream latency: an `a` answer may finish a request started just
    # before the swap; after that every worker routes to `b`.
    assert last_a - sent < 1.5, last_a - sent
    tail = [dep for t, _, dep in seen if t > last_a]
    assert tail and set(tail) == {"b@sim"}
    out = wait_log(gw, r"config reloaded from", count=2)  # both workers
    print(
        f"\nreload under load (2 workers, 16 concurrent): {len(seen)} requests, "
        f"0 failed; first b@sim {1000 * (first_b - sent):.0f} ms after SIGHUP, "
        f"last a@sim {1000 * (last_a - sent):.0f} ms after"
    )
    assert "SIGHUP: asking 2 worker(s) to reload the config" in out

    # A bad file: validation error (unknown deployment) — nothing changes.
    replace_file(path, config("nowhere@sim"))
    gw.proc.send_signal(signal.SIGHUP)
    out = wait_log(gw, r"config reload refused", count=2)
    assert re.search(r"gateway\.yaml:\d+: routes\.chat", out), out
    # And a file that is not YAML at all.
    replace_file(path, "routes: [unclosed\n")
    gw.proc.send_signal(signal.SIGHUP)
    out = wait_log(gw, r"config reload refused", count=4)
    assert re.search(r"gateway\.yaml:\d+", out.split("refused")[-1]), out
    after = asyncio.run(load(gw.base_url, 0.5, 4))
    assert {(s, dep) for _, s, dep in after} == {(200, "b@sim")}
    # /metrics merges the workers: each refused two files and took one.
    assert metric(gw, 'farebox_config_reload_total{result="error"}') == 4
    assert metric(gw, 'farebox_config_reload_total{result="ok"}') == 2
    # The digest served is 1, the replaced one 0.
    assert metric(gw, "farebox_config_info") == 1
    assert metric(gw, "farebox_config_loaded_timestamp_seconds") > sent_wall
    assert gw.terminate() == 0


def _post(gw: GatewayProcess, model: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(
        gw.base_url + "/chat/completions",
        data=orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read()), dict(err.headers)


def _skips_broken(gw: GatewayProcess) -> bool:
    status, _, headers = _post(gw, "broken")
    return (
        status == 200
        and headers.get("x-farebox-deployment") == "b@sim"
        and headers.get("x-farebox-attempts") == "1"
    )


def _readyz(gw: GatewayProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.port}/readyz", timeout=5) as resp:
        data: dict[str, Any] = orjson.loads(resp.read())
        return data


async def _start_drill(pg_url: str) -> str:
    repo = DrillsRepository.create(pg_url)
    try:
        row = await repo.start("chat", "b@sim", 50.0, 5, simulate_outage=False, created_by="t")
        return row.id
    finally:
        await repo.close()


def test_a_reload_keeps_queued_rows_open_breakers_and_running_drills(
    tmp_path: Path, pg_url: str, redis_server: Any
) -> None:
    sim_url, stop_sim = start_simulator()
    env = {
        "SIM_URL": sim_url,
        "FAREBOX_DATABASE_URL": pg_url,
        "FAREBOX_REDIS_URL": redis_server.url,
        "FAREBOX_SPOOL_DIR": str(tmp_path / "spool"),
        # Rows wait in the writer's queue across the reload.
        "FAREBOX_LEDGER_MAX_DELAY_MS": "3000",
    }
    try:
        with gateway_process(config("a@sim", latency=0), tmp_path, env) as gw:
            drill_id = asyncio.run(_start_drill(pg_url))
            deadline = time.monotonic() + 5
            while _post(gw, "chat")[2].get("x-farebox-drill") != drill_id:
                assert time.monotonic() < deadline, "the drill never started on the replica"
            # Trip `broken`'s breaker: two failures in a row (each answered by the fallback).
            for _ in range(2):
                assert _post(gw, "broken")[0] == 200
            wait_log(gw, r"breaker broken@sim opened")
            assert _skips_broken(gw), "open: straight to the fallback, one attempt"
            answered = [_post(gw, "chat") for _ in range(20)]
            assert all(s == 200 for s, _, _ in answered)
            assert _readyz(gw)["ledger"]["queued_rows"] > 0, "rows are waiting in the queue"

            # The new file adds a route; nothing else about the replica's live state changes.
            replace_file(tmp_path / "gateway.yaml", config("a@sim", latency=0, extra=EXTRA))
            gw.proc.send_signal(signal.SIGHUP)
            wait_log(gw, r"config reloaded from")
            assert _post(gw, "extra")[0] == 200, "the new route serves"
            # The open breaker is the same breaker: still open, no new upstream attempt.
            assert _skips_broken(gw)
            # The drill still takes its share.
            drilled = sum(
                1 for _ in range(40) if _post(gw, "chat")[2].get("x-farebox-drill") == drill_id
            )
            assert 8 <= drilled <= 32, drilled
            # Every request of the replica's life is in the ledger once, the queued ones too.
            ready = _readyz(gw)
            assert gw.terminate() in (0, -15), gw.output()[-2000:]
        sent = sql_rows(pg_url, "SELECT count(*) FROM requests")[0][0]
        spooled = ready["ledger"]["rows_spooled"]
        assert spooled == 0
        broken_attempts = sql_rows(
            pg_url, "SELECT count(*) FROM attempts WHERE deployment = 'broken@sim'"
        )[0][0]
        assert broken_attempts == 2, "no attempt reached the tripped deployment after the trip"
        # drill probe requests + 3 broken + 20 + extra + broken + 40
        assert sent >= 20 + 1 + 40 + 4
        assert sent == _requests_answered(pg_url)
    finally:
        stop_sim()


EXTRA = """
  extra: {targets: [b@sim]}
"""


def _requests_answered(pg_url: str) -> int:
    """Distinct request ids in the attempts table plus requests that made no attempt."""
    with_attempts = sql_rows(pg_url, "SELECT count(DISTINCT request_id) FROM attempts")[0][0]
    without = sql_rows(
        pg_url,
        "SELECT count(*) FROM requests r WHERE NOT EXISTS "
        "(SELECT 1 FROM attempts a WHERE a.request_id = r.id)",
    )[0][0]
    return int(with_attempts) + int(without)


def test_a_new_state_carries_over_what_the_yaml_does_not_own(tmp_path: Path) -> None:
    """build_state(previous=…) and close(keep=…), in process: the writer (with its queue),
    breakers, quality stats and an unchanged limiter are the old objects; everything the
    YAML describes is new; closing the old state leaves the carried parts running."""
    settings = sqlite_settings(tmp_path)
    env = {"SIM_URL": "http://127.0.0.1:9"}

    async def scenario() -> None:
        old = build_state(settings, parse_config(config("a@sim"), "v1.yaml", env))
        await start_components(old)
        new = build_state(
            settings, parse_config(config("b@sim", extra=EXTRA), "v2.yaml", env), previous=old
        )
        await start_components(new, previous=old)
        assert new.writer is old.writer and new.repository is old.repository
        assert new.breakers is old.breakers and new.quality is old.quality
        assert new.limiter is old.limiter, "limits: unchanged"
        # The files store: its storage backend and purge are the process's, not the YAML's.
        assert new.files is not None and new.files is old.files
        for part in ("service", "keys", "live", "drills", "key_sync", "index"):
            assert getattr(new, part) is not getattr(old, part), part
        changed = config("b@sim") + "limits: {probe_interval_ms: 900}\n"
        third = build_state(settings, parse_config(changed, "v3.yaml", env), previous=new)
        await start_components(third, previous=new)
        assert third.limiter is not new.limiter, "limits: changed"
        assert third.writer is old.writer

        await old.close(keep=[new, third])
        await new.close(keep=[third])
        writer = third.writer
        assert writer is not None and writer._task is not None and not writer._task.done()
        files = third.files
        assert files is old.files and files is not None
        assert files._purger is not None and not files._purger.done()
        await third.close()
        assert writer._task is None
        assert files._purger is None

    asyncio.run(scenario())
