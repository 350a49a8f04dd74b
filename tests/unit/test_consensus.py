"""routing.consensus (compare, vote, tie-break), routing.fanout (reservations, cancelled
tokens), the consensus report arithmetic, the fan-out route config and the simulator's
`reply=` / `tool=` directives."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from gateway.config.loading import parse_config
from gateway.runtime.yaml_loader import ConfigError
from routing.consensus import (
    AGREE,
    DISAGREE,
    MAJORITY,
    Ballot,
    candidates_body,
    canonical,
    decide,
    normalize_text,
    vote_of,
)
from routing.fanout import cancelled_output_tokens, widen, width
from routing.lcpr import ConsensusTotals, consensus_line
from routing.quota import Ask
from routing.resolve import describe_plan
from simulator.behaviour import DirectiveError, resolve


def text(content: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


def tools(*calls: tuple[str, str]) -> dict[str, Any]:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ],
    }
    return {"choices": [{"index": 0, "message": message}]}


def ballots(*answers: dict[str, Any], costs: Any = None, strengths: Any = None) -> list[Ballot]:
    return [
        Ballot(
            order=i,
            deployment=f"d{i}",
            data=a,
            cost_usd=None if costs is None else costs[i],
            strength=None if strengths is None else strengths[i],
        )
        for i, a in enumerate(answers)
    ]


# --- normalization and comparison ------------------------------------------------------


def test_text_normalization() -> None:
    assert normalize_text("  Paris.  ") == normalize_text("paris") == "paris"
    assert normalize_text("New\n  York") == "new york"
    assert normalize_text("ＡＢＣ") == "abc"  # NFKC: full-width letters
    assert normalize_text("Paris") != normalize_text("Lyon")


def test_json_compares_field_by_field() -> None:
    assert canonical({"b": 1.0, "a": [" X "]}) == {"a": ["x"], "b": 1}
    one = vote_of(Ballot(0, "a", text('{"city": "Paris", "n": 2}')))
    two = vote_of(Ballot(1, "b", text('```json\n{"n": 2.0, "city": "paris"}\n```')))
    assert one.kind == two.kind == "json" and one.key == two.key
    assert one.shown == {"city": "Paris", "n": 2}


def test_auto_mode_picks_the_kind_and_kinds_never_agree() -> None:
    assert vote_of(Ballot(0, "a", text("42"))).kind == "text"  # a JSON scalar reads as text
    assert vote_of(Ballot(0, "a", text("[1, 2]"))).kind == "json"
    assert vote_of(Ballot(0, "a", tools(("f", "{}")))).kind == "tool_calls"
    verdict = decide(ballots(text('{"a": 1}'), text("{'a': 1}")))
    assert verdict.outcome == DISAGREE


def test_forced_modes() -> None:
    # compare: text treats JSON as text (spacing then matters).
    assert decide(ballots(text('{"a":1}'), text('{"a": 1}')), compare="text").outcome == DISAGREE
    assert decide(ballots(text('{"a":1}'), text('{"a": 1}')), compare="json").outcome == AGREE
    # compare: json on text that does not parse falls back to the normalized text.
    assert decide(ballots(text("Yes."), text("yes")), compare="json").outcome == AGREE


def test_tool_calls_compare_names_and_arguments_as_a_set() -> None:
    a = tools(("weather", '{"city": "Paris"}'), ("time", "{}"))
    b = tools(("time", "{ }"), ("weather", '{"city":"paris"}'))
    c = tools(("weather", '{"city": "Lyon"}'), ("time", "{}"))
    verdict = decide(ballots(a, b, c))
    assert verdict.outcome == MAJORITY and verdict.agreeing == 2
    assert verdict.votes[0].shown[0] == {"name": "weather", "arguments": {"city": "Paris"}}
    assert decide(ballots(tools(("f", "{}")), tools(("g", "{}")))).outcome == DISAGREE


# --- voting ----------------------------------------------------------------------------


def test_outcomes() -> None:
    assert decide(ballots(text("a"), text("A."))).outcome == AGREE
    majority = decide(ballots(text("a"), text("b"), text("a")))
    assert (majority.outcome, majority.agreeing, majority.winner.order) == (MAJORITY, 2, 0)
    assert majority.groups == ((0, 2), (1,))
    assert decide(ballots(text("a"), text("b"), text("c"))).outcome == DISAGREE
    # 2-2 and 2-1-1 have no majority; a lone answer is no consensus.
    assert decide(ballots(text("a"), text("a"), text("b"), text("b"))).outcome == DISAGREE
    assert decide(ballots(text("a"), text("a"), text("b"), text("c"))).outcome == DISAGREE
    lone = decide(ballots(text("a")))
    assert (lone.outcome, lone.agreeing) == (DISAGREE, 1)
    with pytest.raises(ValueError):
        decide([])


def test_tie_breaks() -> None:
    split = (text("a"), text("b"), text("c"))
    assert decide(ballots(*split), tie_break="first").winner.order == 0
    cheap = decide(ballots(*split, costs=[0.3, 0.1, None]), tie_break="cheapest")
    assert cheap.winner.order == 1
    strong = decide(ballots(*split, strengths=[2.0, 15.0, None]), tie_break="strongest")
    assert strong.winner.order == 1
    # Equal prices: the later target (targets list cheap first, strong last).
    assert decide(ballots(*split, strengths=[5, 5, 1]), tie_break="strongest").winner.order == 1
    # The plurality group wins over a cheaper lone answer; the tie-break picks within it.
    plural = decide(
        ballots(text("x"), text("a"), text("b"), text("a"), costs=[0.0, 0.5, 0.1, 0.2]),
        tie_break="cheapest",
    )
    assert plural.outcome == DISAGREE and plural.winner.order == 3


def test_disagreement_body_names_fields_and_groups() -> None:
    verdict = decide(ballots(text('{"city": "Paris", "n": 1}'), text('{"city": "Lyon", "n": 1}')))
    assert verdict.differing_fields == ("city",)
    body = candidates_body(verdict)
    assert [(c["deployment"], c["kind"], c["group"]) for c in body] == [
        ("d0", "json", 0),
        ("d1", "json", 1),
    ]
    assert body[1]["answer"] == {"city": "Lyon", "n": 1}
    nested = decide(ballots(text('{"a": {"b": [1, 2]}}'), text('{"a": {"b": [1, 3]}, "c": 0}')))
    assert nested.differing_fields == ("a.b[1]", "c")


# --- fan-out arithmetic ----------------------------------------------------------------


def _plan(text_config: str, route: str) -> Any:
    plan = parse_config(text_config, "cfg.yaml", {}).model_index().plan(route)
    assert plan is not None
    return plan


BASE = """\
providers:
  sim: {kind: serverless, api_base: "http://127.0.0.1:9/v1"}
deployments:
  a: {provider: sim, model: m-a}
  b: {provider: sim, model: m-b}
  c: {provider: sim, model: m-c}
routes:
"""


def test_reservation_covers_every_candidate() -> None:
    plan = _plan(BASE + "  v: {strategy: consensus, targets: [a, b, c], consensus: {n: 2}}\n", "v")
    assert width(plan) == 2
    assert widen(Ask(100, 7), plan) == Ask(200, 14)
    single = _plan(BASE + "  s: {targets: [a]}\n", "s")
    assert width(single) == 1 and widen(Ask(100, 7), single) == Ask(100, 7)


def test_cancelled_output_is_prorated_from_the_answers() -> None:
    assert cancelled_output_tokens([], 500) == 0
    assert cancelled_output_tokens([(100, 200.0), (50, 100.0)], 100) == 50  # 100/150 of 75
    assert cancelled_output_tokens([(100, 200.0)], 5_000) == 100  # capped at the mean
    assert cancelled_output_tokens([(10, 0.0)], 5) == 10


def test_consensus_line() -> None:
    line = consensus_line(
        ConsensusTotals("v", 4, 1, 2, 1, 12, Decimal("0.0012"), 10, Decimal("0.001"))
    )
    assert (line.agree_rate, line.majority_rate, line.disagree_rate) == (
        Decimal("0.25"),
        Decimal("0.5"),
        Decimal("0.25"),
    )
    assert line.cost_multiple == Decimal(3)  # $0.0003 a request over $0.0001 a call
    assert line.attempts_per_request == 3
    empty = consensus_line(ConsensusTotals("v", 0, 0, 0, 0, 0, Decimal(0), 0, Decimal(0)))
    assert empty.cost_multiple is None and empty.agree_rate is None


# --- config ----------------------------------------------------------------------------


def errors_of(routes: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + routes, "cfg.yaml", {})
    return [str(issue) for issue in info.value.issues]


def test_consensus_config_resolves_to_a_plan() -> None:
    plan = _plan(
        BASE
        + "  v:\n    strategy: consensus\n    targets: [a, b, c]\n"
        + "    consensus: {tie_break: strongest, on_disagree: pass, compare: json}\n"
        + "    streaming: refuse\n",
        "v",
    )
    fanout = plan.fanout
    assert fanout is not None
    assert (fanout.kind, fanout.n, fanout.tie_break, fanout.on_disagree, fanout.compare) == (
        "consensus",
        3,
        "strongest",
        "pass",
        "json",
    )
    assert fanout.streaming == "refuse"
    described = "\n".join(describe_plan(plan))
    assert "consensus: 3 candidates at once, compare json, tie-break strongest" in described
    assert "streams refused" in described
    spec = _plan(
        BASE + "  s: {strategy: speculative, targets: [a, b], gate: {non_empty: true}}\n", "s"
    )
    assert spec.fanout is not None and (spec.fanout.kind, spec.fanout.n) == ("speculative", 2)
    assert spec.fanout.streaming == "buffer"


def test_fanout_config_errors_are_clear() -> None:
    assert errors_of(
        "  v: {strategy: consensus, targets: [a], consensus: {tiebreak: first}}\n"
    ) == [
        "cfg.yaml:8: routes.v.consensus.tiebreak: unknown key 'tiebreak' "
        "(did you mean 'tie_break'?)"
    ]
    (bad,) = errors_of("  v: {strategy: consensus, targets: [a, b], consensus: {tie_break: x}}\n")
    assert "routes.v.consensus.tie_break" in bad and "'cheapest'" in bad
    assert errors_of("  v: {strategy: consensus, targets: [a, b], consensus: {n: 3}}\n") == [
        "cfg.yaml:8: routes.v.consensus.n: n is 3 but the route has 2 targets"
    ]
    (few,) = errors_of("  v: {strategy: consensus, targets: [a]}\n")
    assert "strategy consensus needs at least two targets" in few
    (gate,) = errors_of("  v: {strategy: speculative, targets: [a, b]}\n")
    assert "strategy speculative needs a `gate:`" in gate
    (repair,) = errors_of(
        "  v: {strategy: speculative, targets: [a, b], gate: {on_fail: repair}}\n"
    )
    assert "routes.v.gate.on_fail" in repair and "does not repair" in repair
    (gated,) = errors_of("  v: {strategy: consensus, targets: [a, b], gate: {}}\n")
    assert "routes.v.gate" in gated
    (misplaced,) = errors_of("  v: {strategy: failover, targets: [a, b], streaming: refuse}\n")
    assert "routes.v.streaming: this is for strategies consensus and speculative" in misplaced
    (wrong,) = errors_of("  v: {strategy: failover, targets: [a, b], consensus: {}}\n")
    assert "routes.v.consensus: this is for strategy consensus" in wrong
    (hedge,) = errors_of("  v: {strategy: consensus, targets: [a, b], hedge_after_ms: 100}\n")
    assert "drop hedge_after_ms" in hedge
    (one,) = errors_of("  v: {strategy: consensus, targets: [a, b], consensus: {n: 1}}\n")
    assert "routes.v.consensus.n" in one


# --- simulator directives --------------------------------------------------------------


def test_reply_and_tool_directives() -> None:
    b = resolve('reply={"a": 1%2C "b": 2},tool=lookup', "")
    assert b.reply == '{"a": 1, "b": 2}' and b.tool == "lookup"
    assert resolve("reply=", "").reply == ""
    with pytest.raises(DirectiveError):
        resolve("reply", "")  # needs a value
    with pytest.raises(DirectiveError):
        resolve("tool=", "")
