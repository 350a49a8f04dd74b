"""What a request asks of its key's limits (gateway/limit_answers.ask_for), the error an ask
that can never fit gets, and when the budget reconciler corrects Redis
(gateway/limits_reconcile.correction): pure, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from gateway.keys.auth import Principal
from gateway.ledger.pricing import PriceBook
from gateway.limits.answers import ask_for, too_large
from gateway.limits.reconcile import correction
from routing import quota
from routing.cost import TokenPrice
from routing.model import DeploymentSpec, Plan, PlannedAttempt, Timeouts
from routing.quota import Limits

DEP = DeploymentSpec("a@p", "p", "serverless", "openai", "m-a")
PLAN = Plan("chat", "direct", (PlannedAttempt(DEP, "primary"),), Timeouts(1000, 1000, 45_000))
NOW = datetime(2026, 1, 15, tzinfo=UTC)
PRICES = PriceBook(
    overrides={"a@p": TokenPrice.of(input=Decimal(100), output=Decimal(100), version="t")}
)


def ask(payload: dict[str, Any], prices: PriceBook | None = None) -> quota.Ask:
    return ask_for(PLAN, payload, 300, prices, 4096, NOW)


def test_the_ask_says_which_tokens_the_client_asked_for_and_how_long_it_may_run() -> None:
    explicit = ask({"max_tokens": 500, "n": 3})
    assert explicit == quota.Ask(101 + 1500, 0, default_tokens=0, hold_ms=45_000)
    implicit = ask({})
    assert implicit == quota.Ask(101 + 4096, 0, default_tokens=4096, hold_ms=45_000)
    # max_completion_tokens wins; bad values fall back to the default reservation.
    assert ask({"max_completion_tokens": 7, "max_tokens": 9}).tokens == 108
    assert ask({"max_tokens": True}).default_tokens == 4096
    assert ask({"max_tokens": -5, "n": "2"}).default_tokens == 4096


def test_max_tokens_times_n_saturates_instead_of_overflowing() -> None:
    # The largest integers a JSON body can carry (orjson: 64-bit), multiplied.
    huge = ask({"max_tokens": 2**64 - 1, "n": 2**63 - 1}, PRICES)
    assert huge.tokens == quota.MAX_ASK and huge.reserve_nano == quota.MAX_ASK
    assert huge.default_tokens == 0
    # So the TPM check refuses it as too large, and the budget check as too expensive.
    assert quota.fit_tpm(huge, 2_147_483_647) is None
    state, limits = quota.KeyState(), Limits(budget_nano=quota.to_nano(Decimal("1e6")))
    refused = quota.admit(state, limits, huge, "a", 1_000, 0)
    assert not refused.allowed and refused.refused_by == quota.BUDGET


def test_a_request_larger_than_the_tpm_limit_gets_a_400_naming_the_limit() -> None:
    principal = Principal("team-a", tpm=1_000)
    error = too_large(principal, Limits(tpm=1_000), ask({"max_tokens": 5_000}))
    assert error.status == 400
    body = error.body().decode()
    assert "invalid_request_error" in body and "tokens_exceed_limit" in body
    assert "TPM): Limit 1000, Requested 5101" in error.message


def test_only_a_persistent_difference_is_corrected() -> None:
    # The first look only records.
    assert correction(5_000_000, None) == 0
    # Redis behind twice: add what persisted (rows in flight only shrink a shortfall).
    assert correction(5_000_000, 3_000_000) == 3_000_000
    assert correction(3_000_000, 5_000_000) == 3_000_000
    # Redis ahead: only when nothing moved in between (a busy key may have rows in flight).
    assert correction(-4_000_000, -4_000_000) == -4_000_000
    assert correction(-4_000_000, -3_000_000) == 0
    # Signs disagree, or rounding-sized: nothing.
    assert correction(2_000_000, -2_000_000) == 0
    assert correction(999, 999) == 0
