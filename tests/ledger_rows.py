"""Ledger rows for tests: a plausible one-attempt success, any field overridable."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.core.metering import Meter
from gateway.ledger.pricing import LitellmPriceMap, PriceBook
from gateway.ledger_rows import PROVIDER, AttemptRow, RequestRow
from routing.cost import TokenPrice

T0 = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)


def request_row(id: str, **fields: Any) -> RequestRow:
    base = RequestRow(
        id=id,
        received_at=T0,
        key_id="k1",
        route="chat",
        requested_model="chat",
        endpoint="chat/completions",
        workload=None,
        stream=False,
        final_status=200,
        error_class=None,
        final_deployment="fast@sim",
        attempts=1,
        input_uncached_tokens=0,
        cached_read_tokens=0,
        cache_write_tokens=0,
        output_tokens=0,
        reasoning_tokens=0,
        cost_usd=None,
        latency_ms=10.0,
        ttft_ms=None,
    )
    return base._replace(**fields)


def attempt_row(id: str, request_id: str, **fields: Any) -> AttemptRow:
    base = AttemptRow(
        id=id,
        request_id=request_id,
        attempt_no=1,
        role="primary",
        deployment="fast@sim",
        provider="sim",
        provider_kind="serverless",
        upstream_model="m-fast",
        provider_request_id=None,
        started_at=T0,
        ttft_ms=None,
        latency_ms=10.0,
        http_status=200,
        error_class=None,
        input_uncached_tokens=0,
        cached_read_tokens=0,
        cache_write_tokens=0,
        output_tokens=0,
        reasoning_tokens=0,
        token_source=PROVIDER,
        cost_usd=None,
        price_version=None,
    )
    return base._replace(**fields)


class RecordingLedger:
    """A ledger that keeps what the meter hands it, in order."""

    def __init__(self) -> None:
        self.rows: list[tuple[RequestRow, list[AttemptRow]]] = []

    def record(self, request: RequestRow, attempts: list[AttemptRow]) -> None:
        self.rows.append((request, attempts))


def priced_meter(tmp_path: Path, deployments: tuple[str, ...], version: str) -> Meter:
    """A Meter over a RecordingLedger, every deployment priced $1 in / $2 out per 1M tokens
    (no litellm prices: an empty map file in `tmp_path`)."""
    empty = tmp_path / "litellm.json"
    empty.write_text("{}")
    price = TokenPrice.of(input=Decimal(1), output=Decimal(2), version=version)
    book = PriceBook(overrides=dict.fromkeys(deployments, price), litellm=LitellmPriceMap(empty))
    return Meter(book, RecordingLedger())
