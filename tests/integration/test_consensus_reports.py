"""Consensus routes in the reports, on both dialects: `farebox lcpr` (console and --json)
and the reconciliation report (Markdown, HTML, consensus.csv) show each consensus route's
agreement rate and its cost multiple versus a single call."""

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
VOTE_CONFIG = CONFIG.replace(
    "  extract: {targets: [fast@sim]}",
    "  extract: {targets: [fast@sim]}\n"
    "  vote: {strategy: consensus, targets: [fast@sim, slow@sim, odd@sim]}",
).replace(
    "  big@gpu: {provider: gpu, model: m-big}",
    "  big@gpu: {provider: gpu, model: m-big}\n"
    "  slow@sim: {provider: sim, model: m-slow, price: {input: 1, output: 1}}\n"
    "  odd@sim: {provider: sim, model: m-odd, price: {input: 1, output: 1}}",
)


@pytest.fixture
def with_votes(db: str) -> str:
    """Four consensus requests of three candidates at $0.0001 each: agree, majority,
    majority, disagree (409); one majority request's third candidate was cancelled
    ($0.00004, estimated)."""
    requests, attempts = [], []
    outcomes = ["agree", "majority", "majority", "disagree"]
    for i, outcome in enumerate(outcomes):
        at = DAY1 + timedelta(minutes=10 + i)
        rid = f"r-vote-{i}"
        costs = [D("0.0001"), D("0.0001"), D("0.00004") if i == 2 else D("0.0001")]
        requests.append(
            req(
                rid,
                received_at=at,
                route="vote",
                consensus=outcome,
                attempts=3,
                cost_usd=sum(costs, D(0)),
                final_status=409 if outcome == "disagree" else 200,
                error_class="consensus_disagreement" if outcome == "disagree" else None,
            )
        )
        for n, (dep, cost) in enumerate(
            zip(("fast@sim", "slow@sim", "odd@sim"), costs, strict=True)
        ):
            cancelled = i == 2 and n == 2
            attempts.append(
                att(
                    f"a-vote-{i}-{n}",
                    rid,
                    attempt_no=n + 1,
                    started_at=at,
                    role="primary" if n == 0 else "candidate",
                    deployment=dep,
                    error_class="cancelled" if cancelled else None,
                    http_status=None if cancelled else 200,
                    token_source="estimated" if cancelled else "provider",
                    input_uncached_tokens=80,
                    output_tokens=0 if cancelled else 20,
                    cost_usd=cost,
                )
            )

    async def write(repo: LedgerRepository) -> None:
        await repo.write_batch(requests, attempts)

    with_repo(db, write)
    return db


def test_lcpr_shows_agreement_and_cost_multiple(with_votes: str, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(VOTE_CONFIG)
    args = ("lcpr", "--month", "2025-11", "--config", str(config), "--database-url", with_votes)
    code, output = _run(*args, "--json")
    assert code == 0, output
    (vote,) = json.loads(output)["consensus"]
    assert vote["route"] == "vote" and vote["requests"] == 4
    assert (D(vote["agree_rate"]), D(vote["majority_rate"]), D(vote["disagree_rate"])) == (
        D("0.25"),
        D("0.5"),
        D("0.25"),
    )
    # Mean request $0.000285 (1.14 m$ / 4) over a mean answered candidate call of $0.0001.
    assert D(vote["mean_request_usd"]) == D("0.000285")
    assert D(vote["mean_candidate_usd"]) == D("0.0001")
    assert D(vote["cost_multiple"]) == D("2.85")
    assert D(vote["attempts_per_request"]) == 3
    code, output = _run(*args)
    assert code == 0, output
    assert "consensus routes" in output and "2.85×" in output and "25.0 %" in output


def test_reconciliation_report_has_a_consensus_section(with_votes: str, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(VOTE_CONFIG)
    invoice = tmp_path / "sim.csv"
    invoice.write_text(
        "provider,date,model,token_type,tokens,amount_usd\n"
        "sim,2025-11-03,m-fast,input_uncached,400,0.0004\n"
    )
    out = tmp_path / "out"
    _run(
        "reconcile", "--month", "2025-11", "--invoice", f"sim={invoice}", "--out", str(out),
        "--config", str(config), "--database-url", with_votes,
    )  # fmt: skip
    markdown = (out / "reconciliation.md").read_text()
    assert "## Consensus routes" in markdown
    assert "| vote | 4 | 25.0 % | 50.0 % | 25.0 % | 3.00 |" in markdown
    assert "2.85×" in markdown and "Cost multiple = mean cost of a consensus request" in markdown
    page = (out / "reconciliation.html").read_text()
    assert "<h2>Consensus routes</h2>" in page and "<td>2.85×</td>" in page
    with (out / "consensus.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["route"] == "vote" and D(row["cost_multiple"]) == D("2.85")
    assert D(row["disagree_rate"]) == D("0.25")
