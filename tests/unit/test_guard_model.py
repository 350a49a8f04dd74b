"""A guard model's question (gateway/guard/model.py) without a network: the label
contract, and the call's bookkeeping — journalled before it starts, metered as a `guard`
attempt of the request (its own input estimate on failure), and a cancelled question
still ends in the request's row."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.core.metering import CallContext, Meter
from gateway.core.service import Service
from gateway.guard.model import GUARD_ROLE, ask_guard_models, read_label
from gateway.providers.base import UpstreamReply
from routing.guard import Check, GuardModel, Guards
from routing.model import DeploymentSpec, Plan, PlannedAttempt, Timeouts
from routing.resolve import ModelIndex
from tests.ledger_rows import RecordingLedger, priced_meter

GUARD = DeploymentSpec("guard@sl", "sl", "serverless", "openai", "llama-guard")
MAIN = DeploymentSpec("main@p", "p", "serverless", "openai", "m")
TIMEOUTS = Timeouts(1000, 1000, 5000)
PLAN = Plan("chat", "direct", (PlannedAttempt(MAIN, "primary"),), TIMEOUTS)
INDEX = ModelIndex({}, {GUARD.id: GUARD, MAIN.id: MAIN}, TIMEOUTS)


def _reply(text: str) -> UpstreamReply:
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 80, "completion_tokens": 3, "total_tokens": 83},
    }
    return UpstreamReply(200, orjson.dumps(body), body, "req-up")


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("safe", False),
        ("\n\nunsafe\nS1", True),
        ("**Unsafe**\nS2,S10", True),
        ("Safe.", False),
        ("safety first", None),
        ("maybe", None),
        ("", None),
    ],
)
def test_the_label_is_the_answers_first_word(text: str, label: bool | None) -> None:
    assert read_label(_reply(text)) is label


def test_an_answer_without_content_has_no_label() -> None:
    body: dict[str, Any] = {"choices": []}
    assert read_label(UpstreamReply(200, orjson.dumps(body), body, None)) is None


class _Journal:
    def __init__(self) -> None:
        self.intents: list[tuple[Any, ...]] = []

    def intent(self, attempt_id: str, record: tuple[Any, ...]) -> None:
        self.intents.append(record)

    def forget(self, attempt_ids: Iterable[str]) -> None:
        return None


class _Breakers:
    def allow(self, deployment: str) -> bool:
        return True

    def record(self, deployment: str, success: bool) -> None:
        return None

    def force_open(self, deployment: str) -> None:
        return None

    def open_map(self) -> Mapping[str, bool]:
        return {}

    def last_failure_map(self) -> Mapping[str, float]:
        return {}


class _Adapter:
    """Answers `answer` after `delay_s`; notes what it was sent and whether the call's
    intent was journalled by then."""

    def __init__(self, journal: _Journal, answer: str = "safe", delay_s: float = 0.0) -> None:
        self.journal, self.answer, self.delay_s = journal, answer, delay_s
        self.sent: list[dict[str, Any]] = []
        self.journalled_first = True

    def supports(self, deployment: DeploymentSpec, endpoint: str) -> bool:
        return True

    async def call(
        self, deployment: DeploymentSpec, endpoint: str, payload: dict[str, Any], timeouts: Timeouts
    ) -> UpstreamReply:
        self.journalled_first &= len(self.journal.intents) > len(self.sent)
        self.sent.append(payload)
        await asyncio.sleep(self.delay_s)
        return _reply(self.answer)

    async def open_stream(self, *args: Any) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def _setup(tmp_path: Path, **adapter: Any) -> tuple[Service, Meter, _Journal, _Adapter]:
    meter = priced_meter(tmp_path, (GUARD.id, MAIN.id), "v1")
    journal = _Journal()
    meter.journal = journal  # type: ignore[assignment]
    fake = _Adapter(journal, **adapter)
    return Service(fake, meter, _Breakers()), meter, journal, fake


def _guards(timeout_s: float = 1.0, fail_closed: bool = False) -> Guards:
    model = GuardModel(GUARD.id, timeout_s, fail_closed)
    return Guards.of([Check("classifier", "block", kinds=(), model=model)])


def _ctx(text: str) -> CallContext:
    payload = {"model": "chat", "messages": [{"role": "user", "content": text}]}
    return CallContext("req_1", None, "chat/completions", "chat", False, payload)


def test_an_unsafe_answer_is_a_hit_and_a_guard_attempt(tmp_path: Path) -> None:
    service, _, journal, fake = _setup(tmp_path, answer="unsafe\nS1")
    ctx = _ctx("something forbidden")
    found = asyncio.run(ask_guard_models(service, INDEX, _guards(), ctx, PLAN))
    assert (found.hits, found.failed) == ({"classifier": 1}, {})
    assert fake.journalled_first and journal.intents[0][4] == GUARD_ROLE
    (row,) = ctx.attempts
    assert (row.role, row.deployment, row.input_uncached_tokens, row.output_tokens) == (
        GUARD_ROLE,
        GUARD.id,
        80,
        3,
    )
    assert row.cost_usd is not None and row.cost_usd > 0
    assert row.id == journal.intents[0][1] and not ctx.intents
    (question,) = fake.sent
    assert question["messages"][1] == {"role": "user", "content": "something forbidden"}
    assert question["stream"] is False and question["max_tokens"] <= 32


def test_no_text_no_question(tmp_path: Path) -> None:
    service, _, _, fake = _setup(tmp_path)
    ctx = _ctx("")
    ctx.payload["messages"] = [{"role": "user", "content": []}]
    found = asyncio.run(ask_guard_models(service, INDEX, _guards(), ctx, PLAN))
    assert (found.hits, found.failed, fake.sent, ctx.attempts) == ({}, {}, [], [])


@pytest.mark.parametrize("fail_closed", [False, True])
def test_a_timeout_is_no_verdict_and_a_billed_attempt(tmp_path: Path, fail_closed: bool) -> None:
    service, _, _, _ = _setup(tmp_path, delay_s=5)
    ctx = _ctx("hello " * 50)
    guards = _guards(timeout_s=0.05, fail_closed=fail_closed)
    found = asyncio.run(ask_guard_models(service, INDEX, guards, ctx, PLAN))
    assert found.failed == {"classifier": "timeout"}
    assert found.hits == ({"classifier": 1} if fail_closed else {})
    (row,) = ctx.attempts
    assert (row.role, row.error_class) == (GUARD_ROLE, "timeout")
    # The question's own tokens (prompt + texts) are estimated; the client payload's
    # estimate is not taken from it.
    assert row.input_uncached_tokens > 50 and ctx.input_estimate is None


def test_a_cancelled_question_ends_in_the_requests_row(tmp_path: Path) -> None:
    service, meter, _, _ = _setup(tmp_path, delay_s=5)
    ctx = _ctx("hello")

    async def run() -> None:
        task = asyncio.ensure_future(ask_guard_models(service, INDEX, _guards(5), ctx, PLAN))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    ledger = meter.ledger
    assert isinstance(ledger, RecordingLedger)
    ((request, attempts),) = ledger.rows
    assert (request.attempts, request.error_class) == (1, "client_cancelled")
    assert attempts[0].role == GUARD_ROLE and not ctx.intents
