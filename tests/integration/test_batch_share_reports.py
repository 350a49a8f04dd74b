"""`farebox lcpr`'s batch tier over ledger rows, on Postgres and SQLite: the batch-eligible
share of deferrable workloads and dedicated utilization before/after batch fill, their red
flags, and the CLI (console and --json) showing them.

November 2025 (720 paid GPU hours × 4 slots = 10,368,000 slot-seconds, $1,440):

- nightly-enrich (deferrable, route enrich: fast@sim, falling back to the GPU): 4 requests
  ran live on fast@sim ($10 in / $30 out per 1M tokens), each 1,000 in + 500 out tokens
  ($0.025), one after a failed first try (1,000 estimated input tokens, $0.01): $0.11 live;
  the same 5,000 in + 2,000 out tokens at its batch price ($5 / $15) are $0.055. One request ran
  as a batch line on the GPU (role batch, 1 h). Live share 4 / 5 = 80 % > 20 %: flagged.
- reindex (deferrable): 2 batch lines on fast@sim at $0.0125, no live request: no flag.
- support (not deferrable): 2 live requests on the GPU, 2 h each.

The GPU was busy 14,400 s live and 3,600 s with the batch line: 0.1389 % and 0.1736 %,
under 40 % → dedicated_underused, naming the $0.11 of deferrable enrich work that ran on
fast@sim meanwhile. $ / success: $1,440 / 2 live successes = $720; with the batch line
$1,440 / 3 = $480.

December 2025 (744 h × 4 slots): support live 10 % of the slot time, a batch job of
nightly-enrich lines another 40 %: with batch fill 50 %, no dedicated_underused; one live
enrich request against 9 batch lines (10 %): no batch_eligible_live_high.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.config.loading import load_config
from gateway.ledger.migrate import upgrade
from gateway.ledger.pricing import load_price_book
from gateway.ledger.repository import LedgerRepository
from gateway.ledger_rows import AttemptRow, RequestRow
from gateway.reports.lcpr import lcpr_report
from gateway.reports.store import ReportStore
from tests.integration.test_ledger_repository import att, req, with_repo
from tests.integration.test_reports_store import _run

D = Decimal
NOV = datetime(2025, 11, 10, 1, tzinfo=UTC)
DEC = datetime(2025, 12, 10, 1, tzinfo=UTC)
CONFIG = """
auth: none
providers:
  sim: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:9/v1"}
  gpu: {kind: dedicated, protocol: openai, api_base: "http://127.0.0.1:9/v1", hourly_usd: 2,
        max_concurrency: 4}
deployments:
  fast@sim: {provider: sim, model: m-fast,
             price: {input: 10, output: 30, batch: {input: 5, output: 15}}}
  big@gpu: {provider: gpu, model: m-big}
routes:
  enrich: {targets: [fast@sim], fallbacks: [big@gpu], workload: nightly-enrich}
  reindex: {targets: [fast@sim], workload: reindex}
  chat: {targets: [big@gpu], workload: support}
lcpr:
  deferrable_workloads: [nightly-enrich, reindex]
"""
SIM: dict[str, Any] = {"upstream_model": "m-fast"}
GPU: dict[str, Any] = {
    "deployment": "big@gpu",
    "provider": "gpu",
    "provider_kind": "dedicated",
    "upstream_model": "m-big",
    "cost_usd": D(0),
}
HOUR_MS = 3_600_000.0


def _ledger() -> tuple[list[RequestRow], list[AttemptRow]]:
    requests: list[RequestRow] = []
    attempts: list[AttemptRow] = []

    def add(
        rid: str, at: datetime, route: str, workload: str, tries: list[dict[str, Any]], **kw: Any
    ) -> None:
        requests.append(
            req(rid, received_at=at, route=route, workload=workload, attempts=len(tries), **kw)
        )
        for n, fields in enumerate(tries):
            attempts.append(att(f"{rid}-{n}", rid, attempt_no=n + 1, started_at=at, **fields))

    served = {"input_uncached_tokens": 1000, "output_tokens": 500, "cost_usd": D("0.025"), **SIM}
    failed = {
        "input_uncached_tokens": 1000, "token_source": "estimated", "cost_usd": D("0.01"),
        "error_class": "http_500", "http_status": 500, **SIM,
    }  # fmt: skip
    # November.
    for n in range(3):
        add(f"e{n}", NOV, "enrich", "nightly-enrich", [served])
    add("e3", NOV, "enrich", "nightly-enrich", [failed, {**served, "role": "retry"}])
    add(
        "eb", NOV, "enrich", "nightly-enrich", [{**GPU, "role": "batch", "latency_ms": HOUR_MS}],
        batch_id="batch_nov", final_deployment="big@gpu",
    )  # fmt: skip
    for n in range(2):
        add(
            f"rb{n}", NOV, "reindex", "reindex",
            [{**SIM, "role": "batch", "cost_usd": D("0.0125"), "input_uncached_tokens": 2500}],
            batch_id="batch_reindex",
        )  # fmt: skip
    for n in range(2):
        add(
            f"s{n}", NOV, "chat", "support", [{**GPU, "latency_ms": 2 * HOUR_MS}],
            final_deployment="big@gpu",
        )  # fmt: skip
    # December: 744 h × 4 slots; live 10 % of it, batch lines another 40 %.
    slot_ms = 744 * 4 * HOUR_MS
    add(
        "ds", DEC, "chat", "support", [{**GPU, "latency_ms": slot_ms / 10}],
        final_deployment="big@gpu",
    )  # fmt: skip
    add("de", DEC, "enrich", "nightly-enrich", [served])
    for n in range(9):
        add(
            f"db{n}", DEC, "enrich", "nightly-enrich",
            [{**GPU, "role": "batch", "latency_ms": slot_ms * 4 / 10 / 9}],
            batch_id="batch_dec", final_deployment="big@gpu",
        )  # fmt: skip
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


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    return path


def _report(url: str, config: Path, month: str) -> Any:
    loaded = load_config(config)
    book = load_price_book(loaded)

    async def read(repo: LedgerRepository) -> Any:
        return await lcpr_report(ReportStore(repo.engine), month, "workload", loaded, book)

    return with_repo(url, read)


def test_batch_eligible_share_and_dedicated_fill(db: str, config: Path) -> None:
    report = _report(db, config, "2025-11")
    batch = report.batch
    lines = {line.workload: line for line in batch.workloads}
    assert set(lines) == {"nightly-enrich", "reindex"}  # support: not deferrable, no batch
    enrich = lines["nightly-enrich"]
    assert (enrich.live_requests, enrich.batch_lines) == (4, 1)
    assert enrich.live_cost_usd == D("0.11") and enrich.batch_rate_usd == D("0.055")
    assert enrich.saving_usd == D("0.055") and enrich.live_share == D("0.8")
    assert enrich.batch_cost_usd == 0  # its batch line ran on the GPU's idle slots
    reindex = lines["reindex"]
    assert (reindex.live_requests, reindex.batch_lines, reindex.live_share) == (0, 2, 0)
    assert reindex.batch_cost_usd == D("0.025")
    assert (batch.total.live_requests, batch.total.batch_lines) == (4, 3)
    assert batch.total.saving_usd == D("0.055")

    (fill,) = batch.dedicated
    assert fill.provider == "gpu" and (fill.paid_hours, fill.cost_usd) == (720, 1440)
    capacity = D(720 * 3600 * 4)
    assert fill.utilization_live == D(14_400) / capacity
    assert fill.utilization_with_batch == D(18_000) / capacity
    assert (fill.live_successful, fill.batch_successful) == (2, 1)
    assert (fill.cost_per_success_live, fill.cost_per_success_with_batch) == (720, 480)
    # The dedicated line's utilization is the one with batch fill.
    (line,) = report.dedicated
    assert line.utilization == fill.utilization_with_batch

    flags = {f.code: f for f in report.red_flags}
    live = flags["batch_eligible_live_high"]
    assert live.subject == "nightly-enrich"
    assert "80.0 % live (4 of 5 requests" in live.message
    assert "$0.1100 live would have cost $0.0550 at the batch rate" in live.message
    assert "$0.0550 to save" in live.message
    under = flags["dedicated_underused"]
    assert under.subject == "gpu" and "0.2 % for the period with batch fill" in under.message
    assert "live alone 0.1 %" in under.message
    assert "4 deferrable requests of enrich ran on paid deployments for $0.1100" in under.message
    assert [f.code for f in report.red_flags].count("batch_eligible_live_high") == 1


def test_batch_fill_lifts_utilization_over_the_floor(db: str, config: Path) -> None:
    report = _report(db, config, "2025-12")
    (fill,) = report.batch.dedicated
    assert fill.paid_hours == 744
    assert fill.utilization_live == D("0.1")
    assert fill.utilization_with_batch == D("0.5")
    assert (fill.live_successful, fill.batch_successful) == (1, 9)
    assert fill.cost_per_success_live == D(1488) and fill.cost_per_success_with_batch == D("148.8")
    (enrich,) = [w for w in report.batch.workloads if w.workload == "nightly-enrich"]
    assert (enrich.live_requests, enrich.batch_lines, enrich.live_share) == (1, 9, D("0.1"))
    codes = {f.code for f in report.red_flags}
    assert "dedicated_underused" not in codes and "batch_eligible_live_high" not in codes


def test_without_deferrable_workloads_nothing_is_eligible(
    db: str, config: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        CONFIG.replace("deferrable_workloads: [nightly-enrich, reindex]", "repair_cost_usd: 0")
    )
    report = _report(db, plain, "2025-11")
    lines = {line.workload: line for line in report.batch.workloads}
    # Batch lines still count; no live request is eligible and nothing is flagged for it.
    assert {w: (x.live_requests, x.batch_lines) for w, x in lines.items()} == {
        "nightly-enrich": (0, 1),
        "reindex": (0, 2),
    }
    assert all(x.live_share is None for x in lines.values())
    under = next(f for f in report.red_flags if f.code == "dedicated_underused")
    assert "ran on paid deployments" not in under.message  # nothing deferrable ran there
    assert "batch_eligible_live_high" not in {f.code for f in report.red_flags}


def test_cli_shows_the_batch_tier(db: str, config: Path) -> None:
    base = ("lcpr", "--month", "2025-11", "--config", str(config), "--database-url", db)
    code, output = _run(*base, "--json")
    assert code == 0, output
    batch = json.loads(output)["batch"]
    assert batch["batch_rate"].startswith("PriceBook.batch_price_for") and not batch["notes"]
    enrich = next(w for w in batch["workloads"] if w["workload"] == "nightly-enrich")
    assert enrich["live_requests"] == 4 and enrich["batch_lines"] == 1
    assert D(enrich["live_cost_usd"]) == D("0.11") and D(enrich["at_batch_rate_usd"]) == D("0.055")
    assert D(enrich["live_share"]) == D("0.8")
    assert batch["total"]["workload"] == "(all)" and batch["total"]["batch_lines"] == 3
    (fill,) = batch["dedicated_fill"]
    assert D(fill["utilization_live"]) == D("0.0014") and D(fill["utilization_with_batch"]) == D(
        "0.0017"
    )
    assert D(fill["cost_per_success_live_usd"]) == 720
    assert D(fill["cost_per_success_with_batch_usd"]) == 480
    codes = {(f["code"], f["subject"]) for f in json.loads(output)["red_flags"]}
    assert {("batch_eligible_live_high", "nightly-enrich"), ("dedicated_underused", "gpu")} <= codes

    code, output = _run(*base, "--by", "workload")
    assert code == 0, output
    assert "batch-eligible share" in output and "dedicated utilization before/after" in output
    assert "red flag batch_eligible_live_high nightly-enrich" in output
    assert "red flag dedicated_underused gpu" in output
    row = next(line for line in output.splitlines() if "nightly-enrich" in line and "$" in line)
    assert "$0.1100" in row and "$0.0550" in row and "80.0 %" in row
    gpu = next(line for line in output.splitlines() if line.lstrip("│ ").startswith("gpu"))
    assert "$720.000000" in gpu and "$480.000000" in gpu


def test_without_a_batch_rate_the_live_price_stands(db: str, tmp_path: Path) -> None:
    """No batch price and no batch_discount for fast@sim: a batch line there would be
    charged the live price, so nothing is saved and nothing is flagged for it."""
    path = tmp_path / "no-batch-rate.yaml"
    path.write_text(CONFIG.replace(", batch: {input: 5, output: 15}", ""))
    report = _report(db, path, "2025-11")
    (enrich,) = [w for w in report.batch.workloads if w.workload == "nightly-enrich"]
    assert enrich.live_cost_usd == enrich.batch_rate_usd == D("0.11")
    assert enrich.saving_usd == 0 and enrich.live_share == D("0.8")
    assert "batch_eligible_live_high" not in {f.code for f in report.red_flags}
    assert any("no batch rate known for fast@sim" in n for n in report.notes)


def test_out_writes_markdown_html_and_csv(db: str, config: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    args = ("lcpr", "--month", "2025-11", "--by", "workload", "--out", str(out))
    code, output = _run(*args, "--config", str(config), "--database-url", db)
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == [
        "batch_share.csv",
        "lcpr.csv",
        "lcpr.html",
        "lcpr.md",
    ]
    assert "wrote " in output
    md = (out / "lcpr.md").read_text()
    assert "## Batch tier" in md and "### Dedicated utilization before/after batch fill" in md
    row = next(x for x in md.splitlines() if x.startswith("| nightly-enrich | yes"))
    assert row == (
        "| nightly-enrich | yes | 4 | $0.1100 | $0.0550 | $0.0550 | 1 | $0.0000 | 80.0 % |"
    )
    assert "| gpu | 4 | 720.0 | $1,440.00 | 0.1 % | 0.2 % | $720.000000 | $480.000000 |" in md
    assert "- `batch_eligible_live_high` nightly-enrich:" in md
    assert "- `dedicated_underused` gpu:" in md
    page = (out / "lcpr.html").read_text()
    assert "<h2>Batch tier</h2>" in page and "<td>nightly-enrich</td>" in page
    assert "<code>batch_eligible_live_high</code>" in page
    assert '<td class="n">$480.000000</td>' in page
    with (out / "batch_share.csv").open() as f:
        rows = list(csv.DictReader(f))
    enrich = next(x for x in rows if x["workload"] == "nightly-enrich")
    assert (enrich["kind"], enrich["live_requests"], D(enrich["saving_usd"])) == (
        "workload",
        "4",
        D("0.055"),
    )
    (gpu,) = [x for x in rows if x["kind"] == "dedicated_fill"]
    assert (gpu["provider"], D(gpu["cost_per_success_with_batch_usd"])) == ("gpu", D(480))
    with (out / "lcpr.csv").open() as f:
        segments = {x["segment"]: x for x in csv.DictReader(f)}
    assert set(segments) == {"nightly-enrich", "reindex", "support"}
    assert D(segments["nightly-enrich"]["token_cost_usd"]) == D("0.11")
