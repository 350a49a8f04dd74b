"""Report SQL on both dialects (SQLite, the embedded default, and Postgres): a small ledger
with retries, a fallback to a dedicated GPU and a failed gate, checked by hand against
`farebox lcpr` and `farebox reconcile`."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.ledger.migrate import upgrade
from gateway.ledger.repository import LedgerRepository
from tests.integration.test_ledger_repository import att, req, with_repo

D = Decimal
DAY1 = datetime(2025, 11, 3, 10, tzinfo=UTC)
DAY2 = datetime(2025, 11, 20, 10, tzinfo=UTC)
CONFIG = """
auth: none
providers:
  sim: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:9/v1"}
  gpu: {kind: dedicated, protocol: openai, api_base: "http://127.0.0.1:9/v1", hourly_usd: 2,
        max_concurrency: 4}
deployments:
  fast@sim: {provider: sim, model: m-fast, price: {input: 1, output: 1}}
  big@gpu: {provider: gpu, model: m-big}
routes:
  chat: {targets: [fast@sim], fallbacks: [big@gpu]}
  extract: {targets: [fast@sim]}
lcpr: {engineering_hours_per_month: 1, hourly_rate_usd: 30, repair_cost_usd: 0.05}
"""


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
        upgrade(url)
    else:
        url = str(request.getfixturevalue("pg_url"))
    tokens = {"input_uncached_tokens": 100, "output_tokens": 20}
    failed = {"input_uncached_tokens": 100, "token_source": "estimated"}
    requests = [
        req("r1", received_at=DAY1, route="chat"),
        req("r2", received_at=DAY2, route="chat", final_deployment="big@gpu"),
        req("r3", received_at=DAY2, route="extract", gate_outcome="fail"),
    ]
    attempts = [
        att(
            "a1",
            "r1",
            started_at=DAY1,
            error_class="http_500",
            http_status=500,
            cost_usd=D("0.0001"),
            upstream_model="m-fast",
            **failed,
        ),
        att(
            "a2",
            "r1",
            started_at=DAY1,
            role="retry",
            attempt_no=2,
            cost_usd=D("0.00012"),
            upstream_model="m-fast",
            **tokens,
        ),
        att(
            "a3",
            "r2",
            started_at=DAY2,
            error_class="timeout",
            http_status=None,
            cost_usd=D("0.0001"),
            upstream_model="m-fast",
            **failed,
        ),
        att(
            "a4",
            "r2",
            started_at=DAY2,
            role="fallback",
            attempt_no=2,
            deployment="big@gpu",
            provider="gpu",
            provider_kind="dedicated",
            upstream_model="m-big",
            cost_usd=D(0),
            **tokens,
        ),
        att(
            "a5",
            "r3",
            started_at=DAY2,
            gate_outcome="fail",
            cost_usd=D("0.00012"),
            upstream_model="m-fast",
            **tokens,
        ),
    ]

    async def write(repo: LedgerRepository) -> None:
        await repo.write_batch(requests, attempts)

    with_repo(url, write)
    return url


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_lcpr_by_route(db: str, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    base = ("lcpr", "--month", "2025-11", "--json", "--config", str(config), "--database-url", db)
    code, output = _run(*base, "--by", "route")
    assert code == 0, output
    report = json.loads(output)
    seg = {s["segment"]: s for s in report["segments"]}
    chat, extract = seg["chat"], seg["extract"]
    # chat: tokens 0.0001 + 0.00012 + 0.0001 = $0.00032; the GPU served only chat, so all of
    # its 720 paid hours × $2 = $1,440 land there; engineering 1 h × $30 split 2 : 1 by
    # requests → $20; nothing failed → no repair. LCPR = 1460.00032 / 2 successes.
    assert D(chat["token_cost_usd"]) == D("0.00032")
    assert D(chat["dedicated_cost_usd"]) == D(1440)
    assert D(chat["engineering_cost_usd"]) == D(20)
    assert D(chat["lcpr_usd"]) == D("730.00016")
    assert (D(chat["retry_rate"]), D(chat["fallback_share"])) == (D("0.5"), D("0.5"))
    # extract: its one answer failed the gate: $0.00012 + $10 + one repair at $0.05, and
    # no success to divide by.
    assert D(extract["loaded_cost_usd"]) == D("10.05012")
    assert extract["lcpr_usd"] is None and D(extract["gate_pass_rate"]) == 0
    (gpu,) = report["dedicated"]
    assert (D(gpu["paid_hours"]), gpu["hours_from"], D(gpu["cost_usd"])) == (720, "month", 1440)
    codes = {(f["code"], f["subject"]) for f in report["red_flags"]}
    assert codes == {("fallback_share_high", "chat"), ("dedicated_underused", "gpu")}

    code, output = _run(*base, "--by", "key")
    assert code == 0 and [s["segment"] for s in json.loads(output)["segments"]] == ["k1"]

    code, output = _run(*base, "--by", "model")
    by_dep = {s["segment"]: s for s in json.loads(output)["segments"]}
    # A request belongs to the deployment that answered it: fast@sim answered r1 (retry
    # succeeded) and r3 (gate failed): 1 success; big@gpu answered r2 as the fallback and
    # carries the GPU's $1,440. fast@sim's tokens still include r2's timed-out attempt.
    fast, big = by_dep["fast@sim"], by_dep["big@gpu"]
    assert (fast["requests"], fast["successful"]) == (2, 1)
    assert D(fast["token_cost_usd"]) == D("0.00044")
    assert (big["requests"], big["successful"], D(big["dedicated_cost_usd"])) == (1, 1, 1440)
    # Same requests and successes as by route: 3 and 2.
    assert (sum(s["requests"] for s in by_dep.values()), json.loads(output)["successful"]) == (
        3,
        2,
    )


def test_reconcile_names_the_day_missing_from_the_invoice(db: str, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    invoice = tmp_path / "sim.csv"
    # Day 1 as metered (the failed attempt's estimated input is billed too); day 2 absent.
    invoice.write_text(
        "provider,date,model,token_type,tokens,amount_usd\n"
        "sim,2025-11-03,m-fast,input_uncached,200,0.0002\n"
        "sim,2025-11-03,m-fast,output,20,0.00002\n"
    )
    gpu = tmp_path / "gpu.csv"
    # November has 720 hours; at $2 an hour the GPU bill matches the contract exactly.
    gpu.write_text(
        "provider,date,model,token_type,tokens,amount_usd\ngpu,2025-11-01,h100,gpu_hours,720,1440\n"
    )
    out = tmp_path / "out"
    code, output = _run(
        "reconcile",
        "--month",
        "2025-11",
        "--invoice",
        f"sim={invoice}",
        "--invoice",
        f"gpu={gpu}",
        "--out",
        str(out),
        "--config",
        str(config),
        "--database-url",
        db,
    )
    assert code == 3, output
    with (out / "reconciliation.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    day1 = [r for r in rows if r["day"] == "2025-11-03"]
    assert {r["token_variance_pct"] for r in day1} == {"0"}
    assert {r["causes"] for r in rows if r["provider"] == "sim"} == {"days_missing_on_invoice"}
    md = (out / "reconciliation.md").read_text()
    assert "metered but not invoiced on 2025-11-20" in md
    # The GPU is compared on hours only, and they agree; its 0.01 s of work in 720 paid hours
    # is a red flag.
    hours = [r for r in rows if r["provider"] == "gpu"]
    assert [(r["token_type"], r["metered_tokens"], r["invoiced_tokens"]) for r in hours] == [
        ("gpu_hours", "720", "720")
    ]
    assert "`dedicated_underused` gpu" in md
