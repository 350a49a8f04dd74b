"""`farebox lcpr --by workflow` over ledger rows, on Postgres and SQLite.

The month holds three groups of workflows (by the route of their first call):

- chat: A (3 calls, the 2nd retried twice, all good), B (2 calls, the last a 502: failed),
  C (2 calls, the first a 500, the last good: succeeded) — failures no worse than
  compounding explains, so no flag;
- extract: A again but under another key (its own workflow), and D, whose first call is
  on extract and whose last call (on chat) failed its gate — the last call decides;
- agent: two 4-call workflows whose first three calls succeed and last one fails (75 %
  per-call success, every workflow failed): the red flag.

Around them: an untagged request, and a call of A in October, neither counted.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.ledger.migrate import upgrade
from gateway.ledger.repository import LedgerRepository
from gateway.ledger_rows import AttemptRow, RequestRow
from gateway.reports.store import ReportStore
from gateway.reports.workflows import workflow_report
from tests.integration.test_ledger_repository import att, req, with_repo
from tests.integration.test_reports_store import _run

D = Decimal
T = datetime(2025, 11, 5, 9, tzinfo=UTC)
USD = D("0.001")  # every attempt
FAILED: dict[str, Any] = {"final_status": 502, "error_class": "http_500", "final_deployment": None}
# (key, workflow, route, attempts, outcome) per call, in arrival order within each workflow
CALLS: list[tuple[str, str | None, str, int, dict[str, Any]]] = [
    ("k1", "A", "chat", 1, {}),
    ("k1", "A", "chat", 3, {}),
    ("k1", "A", "chat", 1, {}),
    ("k1", "B", "chat", 1, {}),
    ("k1", "B", "chat", 1, FAILED),
    ("k1", "C", "chat", 1, FAILED),
    ("k1", "C", "chat", 1, {}),
    ("k2", "A", "extract", 1, {}),
    ("k1", "D", "extract", 1, {}),
    ("k1", "D", "chat", 1, {"gate_outcome": "schema"}),
    *(("k1", f"E{n}", "agent", 1, {}) for n in (1, 2) for _ in range(3)),
    *(("k1", f"E{n}", "agent", 1, FAILED) for n in (1, 2)),
    ("k1", None, "chat", 1, {}),  # untagged: not a workflow
]


def _ledger() -> tuple[list[RequestRow], list[AttemptRow]]:
    requests, attempts = [], []
    order = sorted(range(len(CALLS)), key=lambda i: (CALLS[i][0], CALLS[i][1] or ""))
    for position, i in enumerate(order):
        key, workflow, route, tries, outcome = CALLS[i]
        rid = f"r{i:02d}"
        at = T + timedelta(minutes=position)
        workload = "support" if route == "chat" else None
        requests.append(
            req(
                rid, received_at=at, key_id=key, route=route, workflow_id=workflow,
                workload=workload, attempts=tries, **outcome,
            )
        )  # fmt: skip
        for n in range(tries):
            role = "primary" if n == 0 else "retry"
            attempts.append(
                att(f"a{i:02d}-{n}", rid, attempt_no=n + 1, role=role, started_at=at, cost_usd=USD)
            )
    # A's key-1 workflow also had a call in October: another month, not counted here.
    early = T - timedelta(days=10)
    requests.append(req("r-oct", received_at=early, key_id="k1", route="chat", workflow_id="A"))
    attempts.append(att("a-oct", "r-oct", started_at=early, cost_usd=USD))
    return requests, attempts


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
        upgrade(url)
    else:
        url = str(request.getfixturevalue("pg_url"))
    requests, attempts = _ledger()

    async def write(repo: LedgerRepository) -> None:
        await repo.write_batch(requests, attempts)

    with_repo(url, write)
    return url


def _report(url: str, group_by: str = "route") -> Any:
    async def read(repo: LedgerRepository) -> Any:
        return await workflow_report(ReportStore(repo.engine), "2025-11", group_by)

    return with_repo(url, read)


def test_workflows_by_route_of_the_first_call(db: str) -> None:
    report = _report(db)
    lines = {line.group: line for line in report.lines}
    assert set(lines) == {"chat", "extract", "agent"}
    chat = lines["chat"]
    assert (chat.workflows, chat.calls, chat.calls_p50, chat.calls_max) == (3, 7, 2, 3)
    assert chat.succeeded == 2  # A and C (C's first call failed, its last did not); not B
    assert chat.cost_usd == 9 * USD  # 5 attempts of A, 2 of B (the failed one's too), 2 of C
    assert chat.cost_per_success == D("0.0045")
    assert chat.retries_mean == D(2) / D(3) and chat.retry_share == D(1) / D(3)
    assert chat.call_success_rate == D(5) / D(7)
    extract = lines["extract"]
    # key 2's "A" is a workflow of its own; D failed: its last call failed the gate.
    assert (extract.workflows, extract.calls, extract.succeeded) == (2, 3, 1)
    agent = lines["agent"]
    assert (agent.workflows, agent.calls_mean, agent.succeeded) == (2, D(4), 0)
    assert agent.cost_per_success is None and agent.call_success_rate == D("0.75")
    total = report.total
    assert (total.workflows, total.calls, total.succeeded) == (7, 18, 3)  # untagged: not here
    assert total.cost_usd == 20 * USD and total.cost_per_success == 20 * USD / 3

    # Red flag: agent fails 100 % of workflows against 1 − 0.75^4 = 68.4 % (+ 5 points);
    # chat (33 % against 54 %) and extract (50 % against 45.6 % + 5) stay quiet.
    (flag,) = report.red_flags
    assert (flag.code, flag.subject) == ("workflow_failure_high", "agent")
    assert "100.0 %" in flag.message and "0.750^4.00" in flag.message
    assert "68.4 %" in flag.message and "73.4 %" in flag.message


def test_workflows_by_workload_and_the_cli(db: str) -> None:
    lines = {line.group: line.workflows for line in _report(db, "workload").lines}
    assert lines == {"support": 3, "-": 4}  # D's first call was on extract: no workload
    base = ("lcpr", "--month", "2025-11", "--by", "workflow", "--database-url", db)
    code, output = _run(*base, "--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["by"] == "workflow" and report["group_by"] == "route"
    chat = next(g for g in report["groups"] if g["group"] == "chat")
    assert chat["calls_per_workflow"] == {"mean": "2.3333", "p50": 2, "max": 3}
    assert D(chat["workflow_success_rate"]) == D("0.6667")
    assert D(chat["cost_per_successful_workflow_usd"]) == D("0.0045")
    assert D(chat["workflows_with_retries_share"]) == D("0.3333")
    assert [f["subject"] for f in report["red_flags"]] == ["agent"]
    assert report["total"]["workflows"] == 7
    code, output = _run(*base)
    assert code == 0, output
    assert "7 workflows" in output and "red flag workflow_failure_high agent" in output
    assert "(all)" in output and "0.004500" in output
    code, output = _run(*base, "--workflows-by", "key")
    assert code != 0 and "--workflows-by must be one of route, workload" in output
    code, output = _run("lcpr", "--month", "2025-10", "--by", "workflow", "--database-url", db)
    assert code == 0 and "1 workflows" in output  # October: A's lone call
