"""/metrics on a 2-worker `farebox serve` adds up to the ledger.

Known traffic — successes, a route whose only deployment fails (retried), a fallback and
streams — goes to a real 2-worker gateway over fresh connections, so both workers serve
some of it. Every scrape, whichever worker answers, must show the same merged totals
(prometheus multiprocess mode), and after SIGTERM (the writers flush) those totals must equal
the ledger's rows: requests by route and status, attempts by deployment, role and outcome,
tokens by type and cost.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.ledger.migrate import upgrade
from gateway.observability.metrics import FLUSH_S
from tests.gateway_process import GatewayProcess, gateway_process
from tests.ledger_reads import sql_rows
from tests.simulator import start_simulator
from tests.waiting import wait_until

# Breakers that never open keep the traffic's attempts deterministic.
CONFIG = """
auth: none
server:
  breaker: {consecutive_failures: 100000, min_requests: 100000}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "%(sim)s/v1"}
deployments:
  small@sim: {provider: sim, model: sim-small, price: {input: 0.1, output: 0.2}}
  cached@sim: {provider: sim, model: "sim-cached::cached=6,reasoning=3,tokens=12",
               price: {input: 1.0, output: 2.0, cached_input: 0.5}}
  broken@sim: {provider: sim, model: "sim-broken::status=500", price: {input: 1, output: 1}}
routes:
  chat: {targets: [small@sim]}
  cached: {targets: [cached@sim]}
  broken: {targets: [broken@sim], retry: {attempts: 2, backoff_ms: 1}}
  rescued: {targets: [broken@sim], fallbacks: [small@sim], retry: {attempts: 1}}
"""

TRAFFIC = [("chat", False)] * 60 + [("chat", True)] * 20 + [("cached", False)] * 20
TRAFFIC += [("broken", False)] * 10 + [("rescued", False)] * 10 + [("rescued", True)] * 5


def _send(gw: GatewayProcess, route: str, stream: bool) -> int:
    body: dict[str, Any] = {"model": route, "messages": [{"role": "user", "content": "count me"}]}
    if stream:
        body["stream"] = True
    request = urllib.request.Request(
        gw.base_url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Connection": "close"},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


Series = dict[tuple[tuple[str, str], ...], float]


def _scrape(gw: GatewayProcess) -> dict[str, Series]:
    with urllib.request.urlopen(gw.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, Series] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            series = out.setdefault(sample.name, {})
            series[labels] = series.get(labels, 0.0) + sample.value
    return out


def _by(series: Series, *names: str) -> dict[tuple[str, ...], float]:
    grouped: dict[tuple[str, ...], float] = {}
    for labels, value in series.items():
        found = dict(labels)
        key = tuple(found[n] for n in names)
        grouped[key] = grouped.get(key, 0.0) + value
    return {key: value for key, value in grouped.items() if value}  # drop zero series


def test_two_workers_metrics_add_up_to_the_ledger(tmp_path: Path) -> None:
    sim, stop_sim = start_simulator()
    db = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    upgrade(db)
    # The operator's directory: serve makes this run's own inside it.
    metrics_parent = tmp_path / "metrics"
    metrics_parent.mkdir()
    env = {
        "FAREBOX_DATABASE_URL": db,
        "FAREBOX_SPOOL_DIR": str(tmp_path / "spool"),
        "FAREBOX_REQUEST_LOG": "false",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_parent),
    }
    try:
        with gateway_process(CONFIG % {"sim": sim}, tmp_path, env, workers=2) as gw:
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(lambda t: _send(gw, *t), TRAFFIC))
            assert Counter(statuses) == {200: 115, 502: 10}, Counter(statuses)

            # A worker hands its numbers to prometheus_client every FLUSH_S (a scrape flushes
            # only the worker that answers it): wait until both flushes show all the traffic.
            def all_counted() -> bool:
                counted = _scrape(gw).get("farebox_requests_total", {})
                return sum(counted.values()) == len(TRAFFIC)

            wait_until(all_counted, "both workers' metrics flush", within_s=FLUSH_S + 10)
            scrapes = [_scrape(gw) for _ in range(6)]
            # Both workers served traffic: each wrote its own counter file.
            (run_dir,) = (p for p in metrics_parent.iterdir() if p.is_dir())
            pids = {p.stem.rsplit("_", 1)[1] for p in run_dir.glob("counter_*.db")}
            assert len(pids) == 2, sorted(run_dir.iterdir())
            assert gw.terminate() == 0, gw.output()[-3000:]
        assert not run_dir.exists(), "serve removes its metrics directory at exit"
    finally:
        stop_sim()

    requests = _by(scrapes[0]["farebox_requests_total"], "route", "status")
    for other in scrapes[1:]:  # whichever worker answered, the same merged numbers
        assert _by(other["farebox_requests_total"], "route", "status") == requests

    metrics = scrapes[-1]
    ledger_requests = {
        (route, str(status)): float(n)
        for route, status, n in sql_rows(
            db, "SELECT route, final_status, count(*) FROM requests GROUP BY 1, 2"
        )
    }
    assert requests == ledger_requests
    assert sum(requests.values()) == len(TRAFFIC)

    attempts = _by(metrics["farebox_attempts_total"], "deployment", "role", "outcome")
    ledger_attempts = {
        (dep, role, error or "ok"): float(n)
        for dep, role, error, n in sql_rows(
            db, "SELECT deployment, role, error_class, count(*) FROM attempts GROUP BY 1, 2, 3"
        )
    }
    assert attempts == ledger_attempts
    assert attempts.get(("broken@sim", "retry", "http_500")) == 10
    assert attempts.get(("small@sim", "fallback", "ok")) == 15

    (tokens_row,) = sql_rows(
        db,
        "SELECT sum(input_uncached_tokens), sum(cached_read_tokens), sum(cache_write_tokens),"
        " sum(output_tokens), sum(reasoning_tokens) FROM attempts",
    )
    tokens = _by(metrics["farebox_tokens_total"], "type")
    kinds = ("input_uncached", "cached_read", "cache_write", "output", "reasoning")
    by_type = {k: tokens.get((k,), 0) for k in kinds}
    assert by_type == dict(zip(kinds, map(int, tokens_row), strict=True))
    assert by_type["cached_read"] > 0 and by_type["reasoning"] > 0  # every type is carried

    (cost,) = sql_rows(db, "SELECT sum(cost_usd) FROM attempts")[0]
    exported = sum(metrics["farebox_cost_usd_total"].values())
    assert abs(Decimal(str(exported)) - Decimal(str(cost))) < Decimal("1e-9"), (exported, cost)

    # The GenAI histograms count every attempt; the overhead and latency ones every request.
    assert sum(metrics["gen_ai_client_operation_duration_seconds_count"].values()) == sum(
        ledger_attempts.values()
    )
    assert sum(metrics["gen_ai_client_token_usage_count"].values()) == 2 * sum(
        ledger_attempts.values()
    )
    assert sum(metrics["farebox_gateway_overhead_seconds_count"].values()) == len(TRAFFIC)
    assert sum(metrics["farebox_upstream_time_to_first_token_seconds_count"].values()) == 25
    # No breaker opened (the config keeps them closed), so none shows as open.
    assert not _by(metrics.get("farebox_breaker_open", {}), "deployment")
