"""requests.guard read back: the x-farebox-guard summaries parsed and tallied per route, and
the reports' "guardrail hits" section rendered from the tally (omitted when empty)."""

from __future__ import annotations

from gateway.guard import apply
from gateway.reports.guard_hits import hits_dict, html_section, markdown_section
from routing.guard import Verdict
from routing.guard_summary import BLOCKED_ERROR, GuardSummary, fit, parse, tally


def test_each_outcome_and_its_checks_are_read_back() -> None:
    assert parse("reroute; rerouted=pii-local; masked=mask-rest") == GuardSummary(
        "rerouted", (("rerouted", "pii-local"), ("masked", "mask-rest"))
    )
    assert parse("block; blocked=no-keys") == GuardSummary("blocked", (("blocked", "no-keys"),))
    assert parse("mask; masked=a,b.c") == GuardSummary(
        "masked", (("masked", "a"), ("masked", "b.c"))
    )
    assert parse("flag; flagged=injection") == GuardSummary("flagged", (("flagged", "injection"),))
    # A verb a later version adds is kept as it is rather than dropped.
    assert parse("withhold; withheld=leaks") == GuardSummary("withhold", (("withheld", "leaks"),))
    assert parse("") is None


def test_what_the_gateway_writes_parses_back() -> None:
    """The summary format is gateway.guard.apply's: a round trip ties the two."""
    verdict = Verdict(rerouted_by=["pii"], masked_by=["m1", "m2"], flagged_by=["inj"])
    assert parse(apply._header(verdict)) == GuardSummary(
        "rerouted",
        (("rerouted", "pii"), ("masked", "m1"), ("masked", "m2"), ("flagged", "inj")),
    )
    assert apply.BLOCKED == BLOCKED_ERROR


def test_a_long_summary_is_cut_at_a_whole_check_name() -> None:
    short = "flag; flagged=a"
    assert fit(short) is short
    names = [f"check-{i}" for i in range(40)]
    long = "flag; flagged=" + ",".join(names)
    cut = fit(long, 60)
    assert len(cut) <= 60 and long.startswith(cut)
    parsed = parse(cut)
    assert parsed is not None and all(name in names for _, name in parsed.checks)


def test_tally_splits_by_outcome_and_check_per_route() -> None:
    rows = [
        ("support", "reroute; rerouted=pii-local; masked=mask-rest", None, 3),
        ("support", "reroute; rerouted=pii-local", "http_500", 1),
        ("support", "block; blocked=no-keys", BLOCKED_ERROR, 2),
        # A reroute that left no allowed deployment: refused, so blocked.
        ("support", "reroute; rerouted=pii-local", BLOCKED_ERROR, 1),
        ("agents", "flag; flagged=injection", None, 5),
        ("agents", "mask; masked=m,m", None, 1),  # a check counts once per request
        ("agents", "", None, 9),  # nothing to read: skipped
    ]
    agents, support = tally(rows)
    assert support.route == "support" and support.requests == 7
    assert support.outcomes == {"blocked": 3, "rerouted": 4, "masked": 0, "flagged": 0}
    assert support.ranked_checks() == [
        ("pii-local", "rerouted", 5),
        ("mask-rest", "masked", 3),
        ("no-keys", "blocked", 2),
    ]
    assert agents.requests == 6
    assert agents.outcomes == {"blocked": 0, "rerouted": 0, "masked": 1, "flagged": 5}
    assert agents.ranked_checks() == [("injection", "flagged", 5), ("m", "masked", 1)]


def test_the_section_renders_each_route_and_is_omitted_without_hits() -> None:
    assert markdown_section([]) == "" and html_section([]) == ""
    lines = tally(
        [
            ("support", "block; blocked=no-keys", BLOCKED_ERROR, 1200),
            ("support", "mask; masked=mask-rest", None, 3),
        ]
    )
    markdown = markdown_section(lines)
    assert markdown.startswith("## Guardrail hits\n")
    assert "| route | requests | blocked | rerouted | masked | flagged | checks |" in markdown
    assert (
        "| support | 1,203 | 1,200 | 0 | 3 | 0 | no-keys (blocked) 1,200, mask-rest (masked) 3 |"
        in markdown
    )
    page = html_section(lines)
    assert page.startswith("<h2>Guardrail hits</h2>") and "<td>1,203</td>" in page
    assert hits_dict(lines[0]) == {
        "route": "support",
        "requests": 1203,
        "blocked": 1200,
        "rerouted": 0,
        "masked": 3,
        "flagged": 0,
        "checks": [
            {"check": "no-keys", "outcome": "blocked", "requests": 1200},
            {"check": "mask-rest", "outcome": "masked", "requests": 3},
        ],
    }
    escaped = html_section(tally([("<r>", "flag; flagged=x", None, 1)]))
    assert "&lt;r&gt;" in escaped and "<r>" not in escaped


def test_a_request_let_by_without_a_model_verdict_gets_its_own_column() -> None:
    """`pass; model-timeout=classifier`: a guard model gave no verdict and `on_error: open`
    let the request by. It is a guard decision (counted), in a `passed` column that only
    reports where such requests occur have."""
    assert parse("pass; model-timeout=classifier") == GuardSummary(
        "passed", (("model-timeout", "classifier"),)
    )
    plain = tally([("a", "flag; flagged=x", None, 1)])
    assert "passed" not in markdown_section(plain) and "passed" not in hits_dict(plain[0])
    lines = tally(
        [
            ("a", "flag; flagged=x", None, 1),
            ("b", "pass; model-timeout=classifier", None, 2),
            ("b", "block; blocked=classifier; model-error=classifier", BLOCKED_ERROR, 1),
        ]
    )
    markdown = markdown_section(lines)
    assert (
        "| route | requests | blocked | rerouted | masked | flagged | passed | checks |" in markdown
    )
    assert "| a | 1 | 0 | 0 | 0 | 1 | 0 | x (flagged) 1 |" in markdown
    assert (
        "| b | 3 | 1 | 0 | 0 | 0 | 2 | classifier (model-timeout) 2, classifier (blocked) 1, "
        "classifier (model-error) 1 |"
    ) in markdown
    assert hits_dict(lines[1])["passed"] == 2
