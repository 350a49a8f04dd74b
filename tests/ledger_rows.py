"""Ledger rows for tests: a plausible one-attempt success, any field overridable."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.ledger_rows import PROVIDER, AttemptRow, RequestRow

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
