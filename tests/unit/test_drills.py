"""Drill decisions (routing/drills.py): cohort, plan rewrite, answer shapes, verdict, abort."""

from __future__ import annotations

from typing import Any

from routing import drills
from routing.drills import DrillSpec, Side
from routing.model import DeploymentSpec, Plan, PlannedAttempt, Timeouts

A = DeploymentSpec("a@p", "p", "serverless", "openai", "m-a")
B = DeploymentSpec("b@q", "q", "serverless", "openai", "m-b")
C = DeploymentSpec("c@r", "r", "closed_api", "openai", "m-c")
PLAN = Plan(
    route="chat",
    strategy="failover",
    attempts=(
        PlannedAttempt(A, "primary"),
        PlannedAttempt(B, "fallback"),
        PlannedAttempt(C, "fallback"),
    ),
    timeouts=Timeouts(1000, 1000, 1000),
)


def roles(plan: Plan) -> list[tuple[str, str]]:
    return [(a.deployment.id, a.role) for a in plan.attempts]


def test_cohort_share_is_the_percent_and_stable_per_request() -> None:
    ids = [f"req_{i:08x}" for i in range(20_000)]
    share = sum(drills.in_cohort("drill_1", r, 5) for r in ids) / len(ids)
    assert 0.045 < share < 0.055
    assert drills.in_cohort("drill_1", ids[7], 5) == drills.in_cohort("drill_1", ids[7], 5)
    # Another drill picks a different cohort (no route is drilled on the same users forever).
    first = {r for r in ids if drills.in_cohort("drill_1", r, 5)}
    second = {r for r in ids if drills.in_cohort("drill_2", r, 5)}
    assert len(first & second) < len(first) * 0.2
    assert not drills.in_cohort("d", "r", 0) and drills.in_cohort("d", "r", 100)


def test_drill_target_goes_first_and_the_route_plan_stays_behind_it() -> None:
    plan = drills.drill_plan(PLAN, C, simulate_outage=False)
    assert roles(plan) == [("c@r", "drill"), ("a@p", "fallback"), ("b@q", "fallback")]
    assert plan.reason == "drill to c@r"


def test_a_target_outside_the_route_still_runs_first() -> None:
    other = DeploymentSpec("x@s", "s", "serverless", "openai", "m-x")
    plan = drills.drill_plan(PLAN, other, simulate_outage=False)
    assert roles(plan)[0] == ("x@s", "drill")
    assert len(plan.attempts) == 4


def test_simulated_outage_drops_the_primary_and_walks_the_fallback_path() -> None:
    plan = drills.drill_plan(PLAN, C, simulate_outage=True)
    assert roles(plan) == [("b@q", "fallback"), ("c@r", "drill")]
    plan = drills.drill_plan(PLAN, B, simulate_outage=True)
    assert roles(plan) == [("b@q", "drill"), ("c@r", "fallback")]


def test_abort_needs_both_enough_errors_and_a_high_rate() -> None:
    spec = DrillSpec("d", "chat", "c@r", 5, 0, 60, abort_after_errors=10, abort_error_rate=0.5)
    assert not drills.should_abort(spec, 9, 9)
    assert drills.should_abort(spec, 10, 10)
    assert not drills.should_abort(spec, 100, 10)  # 10 % is bad luck, not a broken fallback
    assert drills.should_abort(spec, 20, 10)


def answer(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    body.update(overrides)
    return body


def test_shapes_ignore_values_and_catch_structure() -> None:
    one = drills.shape_of(answer())
    assert one == drills.shape_of(answer(id="other", model="x", created=99))
    assert drills.conforms(one, {one}) == (True, "")
    # Extra fields are fine: clients ignore what they don't read.
    assert drills.conforms(drills.shape_of(answer(system_fingerprint="fp")), {one})[0]
    no_usage = drills.shape_of({k: v for k, v in answer().items() if k != "usage"})
    ok, why = drills.conforms(no_usage, {one})
    assert not ok and "usage:object" in why
    retyped = drills.shape_of(answer(created="yesterday"))
    ok, why = drills.conforms(retyped, {one})
    assert not ok and "created:number" in why


def test_without_references_the_openai_required_fields_decide() -> None:
    assert drills.conforms(drills.shape_of(answer()), set())[0]
    bare = drills.shape_of({"choices": [{"message": {"content": "x"}}]})
    ok, why = drills.conforms(bare, set())
    assert not ok and "id:string" in why


def test_a_tool_call_answer_conforms_to_a_text_reference() -> None:
    tool = answer()
    tool["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    tool["choices"][0]["finish_reason"] = "tool_calls"
    assert drills.conforms(drills.shape_of(tool), {drills.shape_of(answer())})[0]


def side(attempts: int, successes: int, **kw: Any) -> Side:
    return Side(attempts=attempts, successes=successes, **kw)


def test_a_healthy_fallback_passes_with_its_numbers() -> None:
    result = drills.verdict(
        side(50, 50, p50_ms=40, p95_ms=80, cost_per_success=0.003),
        side(900, 900, p50_ms=30, p95_ms=60, cost_per_success=0.001),
        conforming=50,
        checked=50,
    )
    assert result.passed and result.reasons == ()
    assert result.success_rate == 1.0 and result.conformance == 1.0
    assert result.latency_ratio_p95 is not None and abs(result.latency_ratio_p95 - 80 / 60) < 1e-9
    assert result.cost_delta_per_request is not None
    assert abs(result.cost_delta_per_request - 0.002) < 1e-12
    assert result.as_dict()["result"] == "PASS"


def test_a_fallback_with_a_wrong_key_fails_naming_auth() -> None:
    result = drills.verdict(side(40, 0, errors={"http_401": 40}), side(800, 800), 0, 0)
    assert not result.passed
    assert any(r.startswith("auth errors: 40") for r in result.reasons)
    assert any(r.startswith("success rate 0.0%") for r in result.reasons)


def test_every_failing_rule_is_a_reason() -> None:
    result = drills.verdict(
        side(
            10,
            7,
            p95_ms=900,
            gate_checked=7,
            gate_passed=3,
            errors={"http_404": 1, "http_429": 1, "timeout": 1},
        ),
        side(100, 100, p95_ms=100),
        conforming=5,
        checked=7,
        aborted="failed past the drill's error budget",
    )
    text = " | ".join(result.reasons)
    for expected in (
        "aborted",
        "only 10 drill attempts",
        "success rate 70.0%",
        "model not found: 1",
        "rate limited: 1",
        "timeouts: 1",
        "schema conformance 71.4%",
        "gate pass rate 42.9%",
        "p95 latency 9.0×",
    ):
        assert expected in text, expected


def test_latency_is_not_judged_against_too_little_primary_traffic() -> None:
    # A 100 % drill leaves one stray primary answer: no baseline, no latency verdict.
    result = drills.verdict(side(30, 30, p95_ms=900), side(1, 1, p95_ms=5), 30, 30)
    assert result.passed and result.latency_ratio_p95 is None
