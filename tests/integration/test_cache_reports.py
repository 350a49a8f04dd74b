"""Response-cache hits in the reports, on both dialects: LCPR counts a hit as a successful
request with no token cost and shows hits and savings per route; reconciliation leaves hits
out of the metered side (no provider served or bills them)."""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.ledger.repository import LedgerRepository
from tests.integration.test_ledger_repository import att, req, with_repo
from tests.integration.test_reports_store import CONFIG, DAY1, _run
from tests.integration.test_reports_store import db as db

D = Decimal


@pytest.fixture
def with_hit(db: str) -> str:
    at = DAY1 + timedelta(minutes=5)
    hit = req("r-hit", received_at=at, route="chat", cost_usd=D(0), input_uncached_tokens=100)
    row = att(
        "a-hit",
        "r-hit",
        started_at=at,
        role="cache_hit",
        token_source="cache",
        http_status=200,
        input_uncached_tokens=100,
        output_tokens=20,
        cost_usd=D(0),
        saved_usd=D("0.00012"),
    )

    async def write(repo: LedgerRepository) -> None:
        await repo.write_batch([hit], [row])

    with_repo(db, write)
    return db


def test_lcpr_shows_hits_and_savings_per_route(with_hit: str, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    code, output = _run(
        "lcpr", "--month", "2025-11", "--json", "--config", str(config),
        "--database-url", with_hit, "--by", "route",
    )  # fmt: skip
    assert code == 0, output
    chat = {s["segment"]: s for s in json.loads(output)["segments"]}["chat"]
    # Without the hit chat had 2 requests, 2 successes and $0.00032 of tokens.
    assert (chat["requests"], chat["successful"]) == (3, 3)
    assert D(chat["token_cost_usd"]) == D("0.00032")
    assert chat["response_cache_hits"] == 1
    assert D(chat["response_cache_rate"]) == D("0.3333")
    assert D(chat["response_cache_saved_usd"]) == D("0.00012")
    # The hit's tokens were never served: the prompt-cache rate and GPU shares ignore them.
    assert D(chat["cache_hit_rate"]) == 0


def test_reconciliation_ignores_hits_on_the_metered_side(with_hit: str, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    invoice = tmp_path / "sim.csv"
    # Day 1 exactly as the provider served it: the hit's 100 + 20 tokens are not on it.
    invoice.write_text(
        "provider,date,model,token_type,tokens,amount_usd\n"
        "sim,2025-11-03,m-fast,input_uncached,200,0.0002\n"
        "sim,2025-11-03,m-fast,output,20,0.00002\n"
    )
    out = tmp_path / "out"
    _run(
        "reconcile", "--month", "2025-11", "--invoice", f"sim={invoice}", "--out", str(out),
        "--config", str(config), "--database-url", with_hit,
    )  # fmt: skip
    with (out / "reconciliation.csv").open() as fh:
        day1 = [r for r in csv.DictReader(fh) if r["day"] == "2025-11-03"]
    assert day1 and {r["token_variance_pct"] for r in day1} == {"0"}
