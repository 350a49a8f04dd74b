"""Guard checks on trial in a drill (routing/guard_trial.py): every check is run (a block
does not hide the others), nothing is acted on, the summary says what each would have done,
and the verdict's counts read those summaries back."""

from __future__ import annotations

from routing.answer_guard import AnswerGuard
from routing.guard import BLOCK, FLAG, MASK, REROUTE, Check
from routing.guard_summary import parse
from routing.guard_trial import TrialCounts, trial, with_trial
from routing.pii import CARD, EMAIL, SECRET

CHECKS = (
    Check("no-keys", BLOCK, kinds=(SECRET,)),
    Check("pii-local", REROUTE, kinds=(EMAIL, CARD), allow_kinds=frozenset({"dedicated"})),
    Check("mask-cards", MASK, kinds=(CARD,)),
    Check.injection("injection", FLAG),
)


def test_every_check_is_tried_and_none_acts() -> None:
    text = "key sk-proj-ABCDEFGHIJ0123456789abcd for ann@example.org"
    fired = trial(CHECKS, [text])
    assert fired == {"no-keys": BLOCK, "pii-local": REROUTE}
    assert trial(CHECKS, ["card 4111 1111 1111 1111"]) == {"pii-local": REROUTE, "mask-cards": MASK}
    assert trial(CHECKS, ["What is the capital of France?"]) == {}


def test_the_summary_keeps_the_route_s_own_outcome_first() -> None:
    fired = {"no-keys": BLOCK, "pii-local": REROUTE}
    assert with_trial(None, fired) == "flag; trial-blocked=no-keys; trial-rerouted=pii-local"
    assert with_trial("mask; masked=m", {"x": FLAG}) == "mask; masked=m; trial-flagged=x"
    assert with_trial("mask; masked=m", {}) == "mask; masked=m"
    # The reports' parser reads it like any summary.
    parsed = parse("flag; trial-blocked=no-keys; trial-rerouted=pii-local")
    assert parsed is not None and parsed.checks == (
        ("trial-blocked", "no-keys"),
        ("trial-rerouted", "pii-local"),
    )


def test_counts_read_the_summaries_back() -> None:
    counts = TrialCounts()
    counts.add(None, 10)
    counts.add("flag; trial-blocked=no-keys,other; trial-rerouted=pii-local", 2)
    counts.add("mask; masked=m; trial-flagged=injection", 3)
    counts.add("reroute; rerouted=own", 4)  # the route's own checks: not the trial's
    assert counts.requests == 19
    assert counts.would == {"blocked": 2, "rerouted": 2, "masked": 0, "flagged": 3}
    assert counts.by_check == {
        "no-keys": {"blocked": 2},
        "other": {"blocked": 2},
        "pii-local": {"rerouted": 2},
        "injection": {"flagged": 3},
    }


def test_answer_summaries_join_the_request_s() -> None:
    guard = AnswerGuard(
        (Check("leaks", MASK, kinds=(EMAIL,), on_request=False, on_answer=True),),
        before="reroute; rerouted=pii-local",
    )
    assert guard.summary() == "reroute; rerouted=pii-local"
    guard.text("mail a@example.com")
    assert guard.summary() == "reroute; rerouted=pii-local; answer-masked=leaks"
    blocked = AnswerGuard(
        (Check("keys", BLOCK, kinds=(SECRET,), on_request=False, on_answer=True),),
        before="flag; flagged=injection",
    )
    blocked.text("sk-proj-ABCDEFGHIJ0123456789abcd")
    assert blocked.summary() == "block; flagged=injection; answer-blocked=keys"
