"""The meter's rows are tuples in their tables' column order, built positionally: every
field lands where its name says, and a later fact (a gate's verdict) replaces the row the
ledger gets rather than mutating it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from gateway.core.metering import CallContext, Meter
from gateway.ledger_rows import CACHE, PROVIDER, AttemptRow, RequestRow
from routing.cost import Usage
from routing.model import DeploymentSpec, Plan, PlannedAttempt, Timeouts
from tests.ledger_rows import RecordingLedger, priced_meter

A = DeploymentSpec("a@p", "p", "serverless", "openai", "m-a")
PLAN = Plan(
    route="chat",
    strategy="failover",
    attempts=(PlannedAttempt(A, "primary"),),
    timeouts=Timeouts(1000, 1000, 1000),
    reason="cheapest",
)


@pytest.fixture
def meter(tmp_path: Path) -> Meter:
    return priced_meter(tmp_path, ("a@p",), "v1")


def _ctx() -> CallContext:
    ctx = CallContext("req_1", "key_1", "chat/completions", "chat", True, {"model": "chat"})
    ctx.workflow_id, ctx.batch_id, ctx.drill_id = "wf_1", "batch_1", "drill_1"
    ctx.guard = "mask; masked=mask-rest"
    return ctx


def test_every_field_is_where_its_name_says(meter: Meter) -> None:
    ctx = _ctx()
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    attempt = meter.succeeded(ctx, PLAN.attempts[0], usage, "up-1", ctx.t0, ttft_ms=5.0)
    request = meter.finish(ctx, PLAN, 200, None, "a@p", gate_outcome="pass", consensus="agree")
    assert type(attempt) is AttemptRow and len(attempt) == len(AttemptRow._fields)
    assert type(request) is RequestRow and len(request) == len(RequestRow._fields)
    assert attempt._asdict() == {
        **attempt._asdict(),
        "request_id": "req_1",
        "attempt_no": 1,
        "role": "primary",
        "deployment": "a@p",
        "provider": "p",
        "provider_kind": "serverless",
        "upstream_model": "m-a",
        "provider_request_id": "up-1",
        "started_at": ctx.received_at,
        "ttft_ms": 5.0,
        "http_status": 200,
        "error_class": None,
        "input_uncached_tokens": 7,
        "cached_read_tokens": 3,
        "cache_write_tokens": 0,
        "output_tokens": 4,
        "reasoning_tokens": 1,
        "token_source": PROVIDER,
        "cost_usd": Decimal("0.0000180000"),  # (7 + 3) x $1 + 4 x $2 per 1M
        "price_version": "v1",
        "gate_outcome": None,
        "drill_id": "drill_1",
        "saved_usd": None,
        "units": None,
        "unit": None,
    }
    assert request._asdict() == {
        **request._asdict(),
        "id": "req_1",
        "received_at": ctx.received_at,
        "key_id": "key_1",
        "route": "chat",
        "requested_model": "chat",
        "endpoint": "chat/completions",
        "workload": None,
        "stream": True,
        "final_status": 200,
        "error_class": None,
        "final_deployment": "a@p",
        "attempts": 1,
        "input_uncached_tokens": 7,
        "cached_read_tokens": 3,
        "cache_write_tokens": 0,
        "output_tokens": 4,
        "reasoning_tokens": 1,
        "cost_usd": Decimal("0.0000180000"),
        "ttft_ms": None,
        "gate_outcome": "pass",
        "decision": "cheapest",
        "team": None,
        "segment": None,
        "consensus": "agree",
        "workflow_id": "wf_1",
        "batch_id": "batch_1",
        "guard": "mask; masked=mask-rest",
    }
    assert request.latency_ms >= 0 and attempt.latency_ms >= 0


def test_a_cache_hit_costs_nothing_and_records_the_saving(meter: Meter) -> None:
    ctx = _ctx()
    row = meter.cache_hit(ctx, PlannedAttempt(A, "cache_hit"), Usage(10, 0, 0, 4, 0), ctx.t0)
    assert row.cost_usd == Decimal(0) and row.token_source == CACHE
    assert row.saved_usd == Decimal("0.0000180000")


def test_a_replaced_row_is_the_one_the_ledger_gets(meter: Meter) -> None:
    ctx = _ctx()
    first = meter.failed(ctx, PLAN.attempts[0], "timeout", http_status=None,
                         provider_request_id=None, started=ctx.t0)  # fmt: skip
    second = meter.succeeded(ctx, PLAN.attempts[0], None, None, ctx.t0)
    gated = meter.replace_attempt(ctx, second, gate_outcome="fail")
    assert gated.gate_outcome == "fail" and second.gate_outcome is None
    meter.finish(ctx, PLAN, 200, None, "a@p")
    ledger = meter.ledger
    assert isinstance(ledger, RecordingLedger)
    (_, attempts), = ledger.rows  # fmt: skip
    assert attempts == [first, gated] and attempts[1] is gated


def test_a_blocked_request_is_one_row_without_attempts_that_cost_nothing(meter: Meter) -> None:
    """What Call.begin records when a guard check refuses the request: no attempt, $0 (not
    the NULL of an unknown price), the summary as the guard left it by finish time."""
    ctx = _ctx()
    ctx.guard = "block; blocked=no-keys"
    request = meter.finish(ctx, PLAN, 400, "guardrail_blocked", None)
    assert (request.attempts, request.final_status, request.error_class) == (
        0,
        400,
        "guardrail_blocked",
    )
    assert request.cost_usd == Decimal(0) and request.final_deployment is None
    assert request.guard == "block; blocked=no-keys"
    ledger = meter.ledger
    assert isinstance(ledger, RecordingLedger)
    assert ledger.rows == [(request, [])]


def test_the_guard_summary_is_read_at_finish_and_fits_its_column(meter: Meter) -> None:
    ctx = _ctx()
    ctx.guard = None
    meter.succeeded(ctx, PLAN.attempts[0], None, None, ctx.t0)
    names = ",".join(f"check-{i:02d}-{'x' * 40}" for i in range(8))
    ctx.guard = f"flag; flagged={names}"  # an answer check fired after the attempt
    request = meter.finish(ctx, PLAN, 200, None, "a@p")
    assert request.guard is not None and len(request.guard) <= 255
    assert ctx.guard.startswith(request.guard) and request.guard.endswith("x" * 40)
