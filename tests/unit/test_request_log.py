"""The request log: one JSON line per request from Meter.finish, never the prompt or answer."""

from __future__ import annotations

import io
import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.core.metering import CallContext, Meter
from gateway.observability import request_log
from gateway.providers.base import STATUS, UpstreamError
from gateway.settings import Settings
from routing.model import DeploymentSpec, Plan, PlannedAttempt, Timeouts
from tests.ledger_rows import attempt_row, priced_meter, request_row

A = DeploymentSpec("a@p", "p", "serverless", "openai", "m-a")
B = DeploymentSpec("b@q", "q", "serverless", "openai", "m-b")
PLAN = Plan(
    route="chat",
    strategy="failover",
    attempts=(PlannedAttempt(A, "primary"), PlannedAttempt(B, "fallback")),
    timeouts=Timeouts(1000, 1000, 1000),
)
SECRET_PROMPT = "my card number is 4111 1111 1111 1111"
SECRET_ANSWER = "here is your card"


@pytest.fixture
def meter(tmp_path: Path) -> Meter:
    return priced_meter(tmp_path, ("a@p", "b@q"), "test")


@pytest.fixture
def lines() -> Any:
    out = io.StringIO()
    request_log.close()
    # pytest's capture handlers may sit on the logger: they would count as the operator's.
    saved = request_log.log.handlers[:]
    for handler in saved:
        request_log.log.removeHandler(handler)
    request_log.configure(True, stream=out)

    def read() -> list[dict[str, Any]]:
        request_log.close()  # flushes the writer thread
        return [json.loads(line) for line in out.getvalue().splitlines()]

    yield read
    request_log.close()
    request_log.configure(False)
    for handler in saved:
        request_log.log.addHandler(handler)


def _ctx() -> CallContext:
    payload = {"model": "chat", "messages": [{"role": "user", "content": SECRET_PROMPT}]}
    return CallContext("req_1", "team-key", "chat/completions", "chat", False, payload)


def test_one_line_per_request_with_its_figures(meter: Meter, lines: Any) -> None:
    ctx = _ctx()
    failure = UpstreamError(STATUS, "a@p said 500", status=500, upstream_status=500)
    meter.failed_upstream(ctx, PLAN.attempts[0], failure, ctx.t0)
    usage = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    meter.succeeded(ctx, PLAN.attempts[1], usage, "up-1", ctx.t0)
    row = meter.finish(ctx, PLAN, 200, None, "b@q")
    ctx2 = CallContext("req_2", None, "chat/completions", "chat", True, {"model": "chat"})
    meter.finish(ctx2, PLAN, 503, "no_attempt", None)

    first, second = lines()
    assert first["request_id"] == "req_1" and first["route"] == "chat"
    assert first["deployment"] == "b@q" and first["attempts"] == 2 and first["status"] == 200
    assert first["client_id"] == "team-key"
    assert first["tokens"]["output"] == 4 and first["tokens"]["input_uncached"] >= 10
    assert first["tried"] == ["a@p:primary:http_500", "b@q:fallback:ok"]
    assert row.cost_usd is not None and Decimal(first["cost_usd"]) == row.cost_usd
    assert first["latency_ms"] >= 0 and 0 <= first["overhead_ms"] <= first["latency_ms"] + 1e-3
    assert first["ts"].startswith(str(row.received_at.year))
    assert second["request_id"] == "req_2" and second["status"] == 503
    assert second["error_class"] == "no_attempt" and second["client_id"] is None
    assert "tried" not in second and second["stream"] is True


def test_never_the_prompt_or_the_answer(meter: Meter, lines: Any) -> None:
    ctx = _ctx()
    usage = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    meter.succeeded(ctx, PLAN.attempts[0], usage, SECRET_ANSWER, ctx.t0)
    meter.finish(ctx, PLAN, 200, None, "a@p")
    (entry,) = lines()
    text = json.dumps(entry)
    assert "4111" not in text and "messages" not in text and SECRET_ANSWER not in text


def test_switched_off(meter: Meter, lines: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAREBOX_REQUEST_LOG", "false")
    assert Settings().request_log is False
    request_log.configure(Settings().request_log)
    ctx = _ctx()
    meter.finish(ctx, PLAN, 503, "no_attempt", None)
    assert lines() == []


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_operator_handlers_get_the_records(meter: Meter) -> None:
    request_log.close()
    mine = _Collect()
    request_log.log.addHandler(mine)  # e.g. from the operator's logging config
    try:
        request_log.configure(True)
        # No stdout writer of ours next to it.
        assert not any(isinstance(h, request_log._LineWriter) for h in request_log.log.handlers)
        meter.finish(_ctx(), PLAN, 503, "no_attempt", None)
    finally:
        request_log.log.removeHandler(mine)
        request_log.configure(False)
    (message,) = mine.messages
    assert json.loads(message)["request_id"] == "req_1"


def test_stdout_gets_the_lines_as_bytes_after_what_was_written_before(meter: Meter) -> None:
    """A real stdout has a binary buffer: the lines go there, after anything the text layer
    still holds, each a whole line."""
    raw = io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="utf-8", write_through=False)
    saved = request_log.log.handlers[:]
    for handler in saved:
        request_log.log.removeHandler(handler)
    request_log.close()
    try:
        request_log.configure(True, stream=stdout)
        stdout.write("before\n")  # still in the text layer's buffer
        meter.finish(_ctx(), PLAN, 503, "no_attempt", None)
        ctx = CallContext("req_é", None, "chat/completions", "chat", False, {"model": "chat"})
        meter.finish(ctx, PLAN, 503, "no_attempt", None)
        request_log.close()
        text = raw.getvalue().decode()
    finally:
        request_log.configure(False)
        for handler in saved:
            request_log.log.addHandler(handler)
    before, *logged, tail = text.split("\n")
    assert before == "before" and tail == ""
    assert [json.loads(entry)["request_id"] for entry in logged] == ["req_1", "req_é"]


def test_each_figure_comes_from_its_own_field() -> None:
    """Every value distinct, so a field read from the wrong place in the row shows."""
    row = request_row(
        "req_9",
        key_id="key_9",
        route="route_9",
        requested_model="model_9",
        endpoint="embeddings",
        workload="wl_9",
        stream=True,
        final_status=201,
        error_class="err_9",
        final_deployment="dep_9",
        attempts=3,
        input_uncached_tokens=11,
        cached_read_tokens=12,
        cache_write_tokens=13,
        output_tokens=14,
        reasoning_tokens=15,
        cost_usd=Decimal("0.0000000016"),
        latency_ms=17.0004,
        ttft_ms=18.0004,
        gate_outcome="gate_9",
        decision="decision_9",
        team="team_9",
        segment="segment_9",
    )
    entry = json.loads(request_log.line(row, [attempt_row("a", "req_9", drill_id="d_9")], 0.019))
    assert entry == {
        "ts": row.received_at.isoformat(),
        "request_id": "req_9",
        "route": "route_9",
        "deployment": "dep_9",
        "attempts": 3,
        "status": 201,
        "error_class": "err_9",
        "stream": True,
        "endpoint": "embeddings",
        "tokens": {
            "input_uncached": 11,
            "cached_read": 12,
            "cache_write": 13,
            "output": 14,
            "reasoning": 15,
        },
        "cost_usd": "0.0000000016",
        "latency_ms": 17.0,
        "ttft_ms": 18.0,
        "overhead_ms": 19.0,
        "client_id": "key_9",
        "team": "team_9",
        "workload": "wl_9",
        "gate": "gate_9",
        "drill_id": "d_9",
    }
