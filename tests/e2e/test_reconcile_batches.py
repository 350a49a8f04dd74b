"""A month of live and batch traffic reconciles against the provider's invoice (issue 24).

Real traffic through the gateway (OpenAI SDK) to the simulator: live calls and a batch that
runs through the provider's own Batch API (path `provider_batch`, priced at the provider's
batch rate: `batch_discount: 0.5`), on a pinned billing day. The simulator bills batch lines
as separate line items at half price. `farebox reconcile` must find the month within 0.5 %,
live and batch apart. Then a second batch, on another day, is billed by the provider at the
live price (the simulator's `sim_bill_live` metadata, which Farebox passes on to the upstream
batch with the client's other metadata): that day is flagged `batch_price_not_applied`.
"""

from __future__ import annotations

import io
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.ledger.migrate import upgrade
from gateway.settings import Settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import sql_rows
from tests.reconcile_helpers import edit_ledger, flagged_models, post
from tests.services import PostgresServer
from tests.simulator import running_simulator
from tests.waiting import wait_until

MONTH = "2025-11"
DAY_1, DAY_2 = date(2025, 11, 5), date(2025, 11, 12)
MODEL = "gpt-4o-mini"
CONFIG = """
auth: none
batch: {poll_interval_s: 0.1, provider_poll_interval_s: 0.1}
providers:
  acct: {kind: closed_api, protocol: openai, api_base: "${SIM}/v1", api_key: k,
         batch_api: true, batch_discount: 0.5}
deployments:
  mini@acct: {provider: acct, model: "gpt-4o-mini::tokens=20"}
routes:
  mini: {targets: [mini@acct]}
"""


@dataclass
class World:
    sim: str
    db: str
    config: Path
    tmp: Path
    gw: RunningGateway


def _move_to(db: str, day: date) -> None:
    """Rows still at real time (this day's traffic) go to noon of the simulator's day."""
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    cut = datetime(2026, 1, 1, tzinfo=UTC)
    edit_ledger(
        db, "UPDATE attempts SET started_at = :t WHERE started_at > :c", {"t": noon, "c": cut}
    )
    edit_ledger(
        db, "UPDATE requests SET received_at = :t WHERE received_at > :c", {"t": noon, "c": cut}
    )


def _batch(gw: RunningGateway, lines: int, day: int, **metadata: str) -> Any:
    sdk = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    out = io.BytesIO()
    for n in range(lines):
        words = " ".join(["summarize the ledger"] * (2 + (n * 5 + day) % 9))
        body = {"model": "mini", "messages": [{"role": "user", "content": words}]}
        line = {"custom_id": f"d{day}-{n}", "method": "POST", "url": "/v1/chat/completions"}
        out.write(orjson.dumps({**line, "body": body}) + b"\n")
    uploaded = sdk.files.create(file=("b.jsonl", out.getvalue()), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata or None,
    )

    def done() -> bool:
        nonlocal batch
        batch = sdk.batches.retrieve(batch.id)
        return batch.status == "completed"

    wait_until(done, f"batch {batch.id}", within_s=60)
    assert batch.metadata is not None and batch.metadata["farebox_path"] == "provider_batch"
    return batch


def _live(gw: RunningGateway, calls: int, day: int) -> None:
    sdk = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    for i in range(calls):
        words = " ".join(["please reconcile this month"] * (3 + (i * 7 + day) % 11))
        sdk.chat.completions.create(model="mini", messages=[{"role": "user", "content": words}])


def _wait_for_rows(db: str, n: int) -> None:
    wait_until(
        lambda: sql_rows(db, "SELECT count(*) FROM attempts")[0][0] >= n,
        f"{n} attempts in the ledger",
        within_s=20,
    )


@pytest.fixture(scope="module")
def world(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("reconcile_batches")
    name = f"t_{uuid.uuid4().hex[:16]}"
    postgres.create_database(name)
    db = postgres.url(name)
    upgrade(db)
    try:
        with running_simulator() as sim:
            text_config = CONFIG.replace("${SIM}", sim)
            config_path = tmp / "gateway.yaml"
            config_path.write_text(text_config)
            settings = Settings(
                database_url=db,
                spool_dir=str(tmp / "spool"),
                master_key=None,
                ledger_max_delay_ms=20,
            )
            with running_gateway(config_from_yaml(text_config, {}), settings) as gw:
                post(f"{sim}/_clock?day={DAY_1.isoformat()}")
                _live(gw, 30, 1)
                _batch(gw, 120, 1)
                _wait_for_rows(db, 150)
                _move_to(db, DAY_1)
                yield World(sim=sim, db=db, config=config_path, tmp=tmp, gw=gw)
    finally:
        postgres.drop_database(name)


def _reconcile(w: World, out: Path) -> tuple[int, str, dict[tuple[str, str], set[str]]]:
    out.mkdir(parents=True, exist_ok=True)
    query = f"format=generic&provider=acct&models={MODEL}&month={MONTH}"
    invoice = out / "acct.csv"
    with urllib.request.urlopen(f"{w.sim}/_invoice?{query}") as resp:
        invoice.write_bytes(resp.read())
    result = CliRunner().invoke(
        app,
        [
            "reconcile",
            "--month",
            MONTH,
            "--invoice",
            f"acct={invoice}",
            "--out",
            str(out),
            "--config",
            str(w.config),
            "--database-url",
            w.db,
        ],
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output, flagged_models(out)


def test_live_and_batch_reconcile_within_half_a_percent(world: World) -> None:
    invoice_batch = sql_rows(
        world.db,
        "SELECT count(*), sum(a.cost_usd) FROM attempts a JOIN requests r ON r.id = a.request_id"
        " WHERE r.batch_id IS NOT NULL AND a.price_version LIKE '%+batch%'",
    )
    assert invoice_batch[0][0] == 120  # every line priced at the batch rate
    code, output, flagged = _reconcile(world, world.tmp / "clean")
    assert code == 0, output
    assert flagged == {}
    (row,) = sql_rows(
        world.db,
        "SELECT status, token_variance_pct, cost_variance_pct FROM reconciliations"
        " ORDER BY created_at DESC LIMIT 1",
    )
    status, token_var, cost_var = row
    assert status == "ok"
    assert abs(token_var) <= Decimal("0.5") and abs(cost_var) <= Decimal("0.5"), row
    lines = sql_rows(
        world.db, "SELECT DISTINCT token_type FROM invoice_lines WHERE token_type LIKE 'batch_%'"
    )
    assert lines, "the invoice's batch line items were imported as batch"


def test_a_batch_billed_at_the_live_price_is_flagged(world: World) -> None:
    post(f"{world.sim}/_clock?day={DAY_2.isoformat()}")
    before = sql_rows(world.db, "SELECT count(*) FROM attempts")[0][0]
    _batch(world.gw, 80, 2, sim_bill_live="true")
    _wait_for_rows(world.db, before + 80)
    _move_to(world.db, DAY_2)
    code, output, flagged = _reconcile(world, world.tmp / "billed_live")
    assert code != 0, output
    batch_rows = {k: v for k, v in flagged.items() if "(batch)" in k[1]}
    assert batch_rows and all("batch_price_not_applied" in c for c in batch_rows.values()), flagged
    assert ("acct", MODEL) not in flagged  # live traffic still reconciles
    md = (world.tmp / "billed_live" / "reconciliation.md").read_text()
    assert "batch_price_not_applied" in md and DAY_2.isoformat() in md
