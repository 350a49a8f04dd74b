"""Reconciliation of a month with live and batch traffic, on Postgres, against the invoices the
simulator renders for the traffic it really served.

Three days of November 2025, each with the simulator's billing day pinned: live chat calls
and provider batches (the OpenAI SDK's Files + Batch API, straight at the simulator) for
gpt-4o-mini (OpenAI usage + costs exports) and claude-sonnet-4-5 (Anthropic usage + cost
reports), and for Llama on Together (generic CSV) live calls plus batch lines run on the
serverless deployment one by one (billed live). The ledger gets what the gateway would have
written for that traffic, from the usage each answer reported: one attempt per call, role
`batch` for batch lines, whose requests point at a `batches` row with path `provider_batch`
(or `serverless`). Providers discount batches 50 % (`batch_discount: 0.5`), as the simulator
does.

- Every model reconciles within 0.5 %, its provider-batch lines as `<model> (batch)` at the
  batch rate, apart from its live lines.
- A batch the simulator bills at the live price (metadata `sim_bill_live`) is flagged on its
  batch verdict with `batch_price_not_applied`, naming its day; the live verdicts stay clean.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.config.loading import parse_config
from gateway.ledger.models_batches import batches_table
from gateway.ledger.pricing import PriceBook, load_price_book
from gateway.ledger.repository import LedgerRepository
from gateway.ledger_rows import AttemptRow, RequestRow
from gateway.reports.importers import ImportedFile, parse_bytes
from gateway.reports.reconcile import ReconcileResult, reconcile
from gateway.reports.reconcile_batch import BATCH_PRICE_NOT_APPLIED
from gateway.reports.render import csv_text, html_report, markdown
from gateway.reports.store import ReportStore
from routing.cost import MILLION
from tests.ledger_rows import attempt_row, request_row
from tests.simulator import reset_simulator, running_simulator
from tests.waiting import wait_until

MONTH = "2025-11"
DAYS = [date(2025, 11, 4), date(2025, 11, 12), date(2025, 11, 20)]
MINI = "gpt-4o-mini::cached=12,tokens=20"
SONNET = "claude-sonnet-4-5::cached=10,cache_write=6,tokens=25"
LLAMA = "meta-llama/Llama-3.3-70B-Instruct-Turbo::tokens=22"

CONFIG = (
    """
auth: none
providers:
  openai: {kind: closed_api, api_base: "http://127.0.0.1:9/v1", api_key: k, batch_discount: 0.5}
  anthropic: {kind: closed_api, api_base: "http://127.0.0.1:9/v1", api_key: k,
              batch_discount: 0.5}
  together: {kind: serverless, api_base: "http://127.0.0.1:9/v1", api_key: k}
deployments:
  mini@openai: {provider: openai, model: "MINI"}
  sonnet@anthropic: {provider: anthropic, model: "SONNET"}
  llama@together: {provider: together, model: "LLAMA"}
routes:
  mini: {targets: [mini@openai]}
  sonnet: {targets: [sonnet@anthropic]}
  llama: {targets: [llama@together]}
""".replace("MINI", MINI)
    .replace("SONNET", SONNET)
    .replace("LLAMA", LLAMA)
)
DEPLOYMENTS = {MINI: ("mini@openai", "openai"), SONNET: ("sonnet@anthropic", "anthropic")}
DEPLOYMENTS[LLAMA] = ("llama@together", "together")
# provider → (invoice formats, the models of its account)
INVOICES = {
    "openai": (("openai_usage", "openai_costs"), "gpt-4o-mini"),
    "anthropic": (("anthropic_usage", "anthropic_cost"), "claude-sonnet-4-5"),
    "together": (("generic",), "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
}


@dataclass
class Ledger:
    """The rows the gateway would have written for the traffic, and its batches."""

    book: PriceBook
    requests: list[RequestRow] = field(default_factory=list)
    attempts: list[AttemptRow] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)

    def add(self, model: str, usage: dict[str, Any], at: datetime, batch: str | None) -> None:
        """One answered call: `batch` is its batch id (role `batch`) or None (live)."""
        deployment, provider = DEPLOYMENTS[model]
        kind = "serverless" if provider == "together" else "closed_api"
        details = usage.get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0)
        write = int(details.get("cache_write_tokens") or 0)
        tokens = {
            "input_uncached_tokens": usage["prompt_tokens"] - cached - write,
            "cached_read_tokens": cached,
            "cache_write_tokens": write,
            "output_tokens": usage["completion_tokens"],
        }
        path = next((b["path"] for b in self.batches if b["id"] == batch), None)
        price = None
        if path == "provider_batch":
            price = self.book.batch_price_for(deployment, model, kind, at)
        price = price or self.book.price_for(deployment, model, kind, at)
        assert price is not None
        cost = (
            tokens["input_uncached_tokens"] * price.input
            + cached * price.cached_input
            + write * price.cache_write
            + tokens["output_tokens"] * price.output
        ) / MILLION
        n = len(self.requests)
        self.requests.append(
            request_row(f"r{n}", received_at=at, final_deployment=deployment, batch_id=batch)
        )
        self.attempts.append(
            attempt_row(
                f"a{n}",
                f"r{n}",
                role="batch" if batch else "primary",
                deployment=deployment,
                provider=provider,
                provider_kind=kind,
                upstream_model=model,
                started_at=at,
                cost_usd=cost,
                price_version=price.version,
                **tokens,
            )
        )

    def batch(self, batch_id: str, path: str, at: datetime) -> str:
        self.batches.append(
            {
                "id": batch_id,
                "endpoint": "/v1/chat/completions",
                "input_file_id": "file-x",
                "completion_window": "24h",
                "status": "completed",
                "path": path,
                "created_at": at,
                "total": 0,
                "completed": 0,
                "failed": 0,
            }
        )
        return batch_id

    def write(self, url: str) -> None:
        async def run() -> None:
            repo = LedgerRepository.create(url)
            try:
                # Batches first, as the gateway creates a batch before writing its lines:
                # the rollups record each line's batch path as it is written.
                async with repo.engine.begin() as conn:
                    await conn.execute(batches_table.insert(), self.batches)
                await repo.write_batch(self.requests, self.attempts)
            finally:
                await repo.close()

        asyncio.run(run())


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with running_simulator() as url:
        yield url


def _prompt(i: int) -> list[dict[str, str]]:
    # Different lengths, so days and calls differ.
    return [{"role": "user", "content": " ".join(["summarize the figures"] * (3 + i % 7))}]


def _provider_batch(
    client: openai.OpenAI, model: str, lines: int, offset: int, metadata: dict[str, str]
) -> list[dict[str, Any]]:
    """Run a batch on the simulator; the usage of each line's answer."""
    body = b"".join(
        orjson.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": _prompt(offset + i)},
            }
        )
        + b"\n"
        for i in range(lines)
    )
    upload = client.files.create(file=("in.jsonl", body), purpose="batch")
    created = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata,
    )

    def done() -> bool:
        return client.batches.retrieve(created.id).status == "completed"

    wait_until(done, f"batch {created.id} completed")
    output = client.batches.retrieve(created.id).output_file_id
    assert output is not None
    rows = [orjson.loads(line) for line in client.files.content(output).content.splitlines()]
    assert len(rows) == lines
    return [row["response"]["body"]["usage"] for row in rows]


def _traffic(sim: str, book: PriceBook, bill_live_on: date | None = None) -> Ledger:
    reset_simulator(sim)
    client = openai.OpenAI(base_url=f"{sim}/v1", api_key="k", max_retries=0, timeout=10)
    ledger = Ledger(book)
    try:
        for d, day in enumerate(DAYS):
            httpx.post(f"{sim}/_clock", params={"day": day.isoformat()})
            at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
            for model, live, batched in ((MINI, 5, 6), (SONNET, 3, 4), (LLAMA, 4, 3)):
                for i in range(live + d):
                    answer = client.chat.completions.create(model=model, messages=_prompt(i))  # type: ignore[arg-type]
                    assert answer.usage is not None
                    ledger.add(model, answer.usage.model_dump(), at, None)
                if model == LLAMA:
                    # Batch lines on a serverless deployment: live calls, billed live.
                    batch_id = ledger.batch(f"batch_sl_{d}", "serverless", at)
                    for i in range(batched):
                        answer = client.chat.completions.create(model=model, messages=_prompt(i))  # type: ignore[arg-type]
                        assert answer.usage is not None
                        ledger.add(model, answer.usage.model_dump(), at, batch_id)
                    continue
                live_price = model == MINI and day == bill_live_on
                metadata = {"sim_bill_live": "true"} if live_price else {}
                batch_id = ledger.batch(f"batch_{model[:6]}_{d}", "provider_batch", at)
                for usage in _provider_batch(client, model, batched + d, d, metadata):
                    ledger.add(model, usage, at, batch_id)
    finally:
        httpx.post(f"{sim}/_clock", params={"day": ""})
    return ledger


def _invoices(sim: str) -> list[ImportedFile]:
    files = []
    for provider, (formats, models) in INVOICES.items():
        for fmt in formats:
            params = {"format": fmt, "provider": provider, "models": models, "month": MONTH}
            body = httpx.get(f"{sim}/_invoice", params=params).content
            files.append(parse_bytes(provider, body, f"{provider}.{fmt}", fmt))
    return files


def _reconcile(url: str, sim: str, bill_live_on: date | None = None) -> ReconcileResult:
    config = parse_config(CONFIG, "gw.yaml", {})
    book = load_price_book(config)
    ledger = _traffic(sim, book, bill_live_on)
    ledger.write(url)
    files = _invoices(sim)

    async def run() -> ReconcileResult:
        store = ReportStore.create(url)
        try:
            return await reconcile(store, MONTH, files, config, book)
        finally:
            await store.close()

    return asyncio.run(run())


def test_month_with_live_and_batch_traffic_reconciles_within_half_a_percent(
    sim: str, pg_url: str
) -> None:
    result = _reconcile(pg_url, sim)
    verdicts = {v.model: v for v in result.verdicts}
    assert set(verdicts) == {
        "gpt-4o-mini",
        "gpt-4o-mini (batch)",
        "claude-sonnet-4-5",
        "claude-sonnet-4-5 (batch)",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",  # its serverless batch lines included
    }
    half = Decimal("0.5")
    for v in result.verdicts:
        assert not v.flagged, (v.model, v.causes)
        assert v.token_variance_pct is not None and abs(v.token_variance_pct) <= half, v.model
        assert v.cost_variance_pct is not None and abs(v.cost_variance_pct) <= half, v.model
    assert result.ok
    assert result.token_variance_pct is not None and abs(result.token_variance_pct) <= half
    assert result.cost_variance_pct is not None and abs(result.cost_variance_pct) <= half
    # The batch side is priced at half the live rate: per token, the batch verdict's dollars
    # are half the live verdict's (same prompts' shapes, same rates per token type).
    for model in ("gpt-4o-mini", "claude-sonnet-4-5"):
        live, batch = verdicts[model], verdicts[f"{model} (batch)"]
        assert batch.metered_tokens["output"] > 0 and live.metered_tokens["output"] > 0
        assert batch.invoiced_usd is not None and batch.metered_usd > 0
        live_rate = live.metered_usd / sum(live.metered_tokens.values())
        batch_rate = batch.metered_usd / sum(batch.metered_tokens.values())
        assert batch_rate < live_rate * Decimal("0.75")
    # The month's batch line counts: 6 + 7 + 8 mini lines, and the simulator billed them so.
    mini_batch = verdicts["gpt-4o-mini (batch)"]
    assert mini_batch.invoiced_tokens == mini_batch.metered_tokens
    # A deployment charged at its live and its batch rate is no price change.
    assert not [f for f in result.red_flags if f.code == "price_changed"]


def test_batch_billed_at_the_live_price_is_flagged(sim: str, pg_url: str) -> None:
    result = _reconcile(pg_url, sim, bill_live_on=DAYS[1])
    verdicts = {v.model: v for v in result.verdicts}
    flagged = verdicts["gpt-4o-mini (batch)"]
    assert flagged.flagged and not result.ok
    codes = [c.code for c in flagged.causes]
    assert codes == [BATCH_PRICE_NOT_APPLIED], flagged.causes
    message = flagged.causes[0].message
    assert "billed at the live price on 2025-11-12" in message
    assert "2025-11-04" not in message and "2025-11-20" not in message
    # Tokens agree; only dollars are off, on the batch verdict alone.
    assert flagged.token_variance_pct == 0
    assert flagged.cost_variance_pct is not None and flagged.cost_variance_pct > 0
    for model, v in verdicts.items():
        if model != "gpt-4o-mini (batch)":
            assert not v.flagged, (model, v.causes)
    # The report names the cause and its explanation like the others'.
    assert "batch_price_not_applied" in markdown(result)
    assert message.split(":")[0] in html_report(result)
    rows = [line for line in csv_text(result).splitlines() if "gpt-4o-mini (batch)" in line]
    assert rows and all("batch_price_not_applied" in line for line in rows)
