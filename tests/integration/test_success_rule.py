"""The one rule for a successful request (gateway/ledger/success.py), on both dialects.

A ledger holding every way a request can end — a plain answer, a cache hit, a gate that
passed or failed, a consensus answer, streams broken after their first byte (an upstream
error event, a cut, `shutdown` at SIGTERM, a `gateway_crashed` replay), a refusal, a client
hang-up, a 5xx — is read by every report that counts successes. Each must count exactly the
requests the Python predicate accepts, and group them so that every grouping adds up to the
same total. Drill verdicts count a drill attempt as a success only when its answer is the
one the client got whole.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.ledger.drills_repository import DrillsRepository
from gateway.ledger.migrate import upgrade
from gateway.ledger.repository import LedgerRepository
from gateway.ledger.success import is_successful, request_succeeded
from gateway.ledger_rows import AttemptRow, RequestRow
from gateway.reports.store import SEGMENTS, ReportStore
from tests.integration.test_ledger_repository import T0, att, req, with_repo

SINCE = T0 - timedelta(hours=1)
MONTH_START = datetime(2025, 1, 1, tzinfo=UTC)
MONTH_END = datetime(2025, 2, 1, tzinfo=UTC)

# (id, final_status, error_class, gate_outcome, final_deployment, successful?)
CASES: list[tuple[str, int, str | None, str | None, str | None, bool]] = [
    ("plain", 200, None, None, "fast@sim", True),
    ("gate-pass", 200, None, "pass", "fast@sim", True),
    ("cache-hit", 200, None, None, "fast@sim", True),
    ("consensus-pass", 200, None, None, "slow@other", True),  # on_disagree: pass
    ("rescued", 200, None, None, "slow@other", True),  # fast@sim failed, fallback answered
    ("gate-fail", 200, None, "schema", "fast@sim", False),
    ("stream-error", 200, "stream_error", None, "fast@sim", False),
    ("stream-cut", 200, "cut", None, "slow@other", False),
    ("shutdown", 200, "shutdown", None, "fast@sim", False),
    ("crashed", 200, "gateway_crashed", None, "fast@sim", False),
    ("crashed-500", 500, "gateway_crashed", None, None, False),
    ("hung-up", 499, "client_cancelled", None, "fast@sim", False),
    ("disagree", 409, "consensus_disagreement", None, None, False),
    ("upstream-5xx", 502, "http_500", None, None, False),
    ("refused", 429, "rate_limited", None, None, False),
]


def _ledger() -> tuple[list[RequestRow], list[AttemptRow]]:
    requests, attempts = [], []
    for n, (rid, status, error, gate, final, _) in enumerate(CASES):
        at = T0 + timedelta(seconds=n)
        route = "chat" if n % 2 else "extract"
        requests.append(
            req(
                rid,
                received_at=at,
                route=route,
                final_status=status,
                error_class=error,
                gate_outcome=gate,
                final_deployment=final,
                attempts=0 if rid == "refused" else 1,
            )
        )
        if rid == "refused":
            continue  # refused before any upstream call
        if rid == "rescued":
            attempts.append(att("a-rescued-1", rid, started_at=at, error_class="http_500"))
            attempts.append(
                att(
                    "a-rescued-2",
                    rid,
                    started_at=at,
                    attempt_no=2,
                    role="fallback",
                    deployment="slow@other",
                    provider="other",
                    cost_usd=Decimal("0.001"),
                )
            )
            continue
        attempts.append(
            att(
                f"a-{rid}",
                rid,
                started_at=at,
                deployment=final or "fast@sim",
                role="cache_hit" if rid == "cache-hit" else "primary",
                error_class=error if error not in (None, "consensus_disagreement") else None,
                gate_outcome=gate,
                cost_usd=Decimal("0.001"),
            )
        )
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


def test_the_python_rule_matches_the_cases() -> None:
    requests, _ = _ledger()
    expected = {rid for rid, *_, ok in CASES if ok}
    assert {r.id for r in requests if request_succeeded(r)} == expected
    # Any error class fails, including ones nobody has invented yet.
    assert not is_successful(200, "some_future_class", None)
    assert not is_successful(200, None, "regex")
    assert is_successful(200, None, "pass")


def test_every_grouping_counts_the_same_successes(db: str) -> None:
    expected = sum(ok for *_, ok in CASES)

    async def read(repo: LedgerRepository) -> dict[str, Any]:
        usage = {by: await repo.usage(SINCE, by) for by in ("route", "key", "deployment")}
        store = ReportStore(repo.engine)
        segments = {
            by: (await store.segment_report(by, MONTH_START, MONTH_END))[0] for by in SEGMENTS
        }
        answered = await store.answered_requests(MONTH_START, MONTH_END)
        return {"usage": usage, "segments": segments, "answered": answered}

    got = with_repo(db, read)
    for by, lines in got["usage"].items():
        assert sum(line.successful for line in lines) == expected, by
        assert sum(line.requests for line in lines) == len(CASES), by
    for by, totals in got["segments"].items():
        assert sum(t.successful for t in totals) == expected, by
        assert sum(t.requests for t in totals) == len(CASES), by
    assert sum(a.successful for a in got["answered"]) == expected
    # By deployment, a request belongs to the deployment whose answer the client got.
    deployments = {line.group: line for line in got["usage"]["deployment"]}
    assert deployments["slow@other"].successful == 2  # consensus-pass, rescued
    assert deployments["fast@sim"].successful == expected - 2
    # Failed attempts stay attempt-level: fast@sim's are stream-error, shutdown, both
    # crashed, hung-up, upstream-5xx and the attempt the fallback rescued.
    assert deployments["fast@sim"].failed_attempts == 7
    assert deployments["slow@other"].failed_attempts == 1  # the cut stream
    models = {t.segment: t for t in got["segments"]["model"]}
    assert models["slow@other"].successful == 2
    assert models["-"].successful == 0 and models["-"].requests == 4


DRILL = "drill_test"


def _drill_ledger() -> tuple[list[RequestRow], list[AttemptRow]]:
    """Drill attempts on slow@other (the target); fast@sim is the route's primary."""
    requests: list[RequestRow] = []
    attempts: list[AttemptRow] = []
    target: dict[str, Any] = {
        "deployment": "slow@other",
        "provider": "other",
        "role": "drill",
        "drill_id": DRILL,
    }

    def add(rid: str, request: dict[str, Any], *rows: dict[str, Any]) -> None:
        at = T0 + timedelta(seconds=len(requests))
        requests.append(req(rid, received_at=at, **request))
        for n, row in enumerate(rows, 1):
            fields = {"started_at": at, "attempt_no": n, "latency_ms": 100.0 * n, **row}
            attempts.append(att(f"a-{rid}-{n}", rid, **fields))

    # The drill target answered and the client got it: the only two successes (one of them
    # a stream that ended cleanly without a usage chunk).
    add("ok", {"final_deployment": "slow@other"}, {**target, "cost_usd": Decimal("0.002")})
    add(
        "no-usage",
        {"final_deployment": "slow@other", "stream": True},
        {**target, "error_class": "no_usage", "cost_usd": Decimal("0.004")},
    )
    # The target's answers failed the gate: the client got failed answers.
    for outcome in ("schema", "json_invalid"):
        add(
            f"gate-{outcome}",
            {"final_deployment": "slow@other", "gate_outcome": outcome},
            {**target, "gate_outcome": outcome},
        )
    # The target's stream broke after its first byte.
    add(
        "broken",
        {"final_deployment": "slow@other", "error_class": "stream_error"},
        {**target, "error_class": "stream_error"},
    )
    # The target failed; the primary answered as the fallback.
    add(
        "fell-back",
        {"final_deployment": "fast@sim"},
        {**target, "error_class": "http_500"},
        {"role": "fallback"},
    )
    return requests, attempts


def test_drill_side_counts_only_answers_the_client_got_whole(db: str) -> None:
    requests, attempts = _drill_ledger()

    async def side(repo: LedgerRepository) -> Any:
        await repo.write_batch(requests, attempts)
        drills = DrillsRepository(repo.engine)
        return await drills.side(
            drill_id=DRILL,
            deployment="slow@other",
            role="drill",
            since=T0 - timedelta(minutes=1),
            until=T0 + timedelta(minutes=1),
        )

    got = with_repo(db, side)
    assert (got.attempts, got.successes) == (6, 2)
    assert got.errors == {"gate_failed": 2, "stream_error": 1, "http_500": 1}
    assert got.cost_per_success == pytest.approx(0.003)
    assert got.p95_ms == 100.0  # successful latencies only
    assert (got.gate_checked, got.gate_passed) == (2, 0)
