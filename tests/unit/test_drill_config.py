"""Drill schedules in the YAML (`drills:`), the `every` duration syntax, and the checks the
admin API and `farebox drill start` share."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config.drills import DrillSchedule, DrillStart, parse_every
from gateway.config.loading import parse_config
from gateway.drills.admin import problems
from gateway.runtime.yaml_loader import ConfigError

BASE = """\
providers:
  sim: {kind: serverless, api_base: "http://127.0.0.1:9/v1", api_key: k}
deployments:
  small@sim: {provider: sim, model: sim-small}
  big@sim: {provider: sim, model: sim-big}
routes:
  chat:
    targets: [small@sim]
    fallbacks: [big@sim]
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml", {})
    return [str(issue) for issue in info.value.issues]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * 86400),
        ("12h", 12 * 3600),
        ("90m", 90 * 60),
        ("45s", 45),
        ("2w", 14 * 86400),
        ("1.5h", 5400),
        ("1d12h", 36 * 3600),
        (" 7D ", 7 * 86400),
    ],
)
def test_every_durations(text: str, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "30x", "0d", "-1d", "1d 2h", "h12", "1e3m", "∞h"])
def test_bad_every_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_every(text)


def test_schedule_defaults_and_name() -> None:
    config = parse_config(
        BASE + "drills:\n  - {route: chat, to: big@sim, every: 30d}\n", "cfg.yaml", {}
    )
    (schedule,) = config.drills
    assert schedule.schedule_name == "chat->big@sim"
    assert (schedule.percent, schedule.minutes, schedule.simulate_outage) == (5, 15, False)
    assert (schedule.abort_after_errors, schedule.abort_error_rate) == (10, 0.5)
    assert schedule.every_s == 30 * 86400
    named = DrillSchedule(name="weekly", route="chat", to="big@sim", every="1w")
    assert named.schedule_name == "weekly"


def test_schedule_cross_references_are_checked_with_lines() -> None:
    text = BASE + (
        "drills:\n"
        "  - {route: chta, to: big@sim, every: 30d}\n"
        "  - {route: chat, to: bgi@sim, every: 30d}\n"
        "  - {route: chat, to: big@sim, every: 30d}\n"
        "  - {route: chat, to: big@sim, every: 7d}\n"
    )
    assert errors_of(text) == [
        "cfg.yaml:11: drills[0].route: unknown route 'chta' (did you mean 'chat'?)",
        "cfg.yaml:12: drills[1].to: unknown deployment 'bgi@sim' (did you mean 'big@sim'?)",
        "cfg.yaml:14: drills[3]: duplicate drill schedule 'chat->big@sim': give each a `name:`",
    ]


def test_schedule_field_errors() -> None:
    errors = errors_of(
        BASE
        + "drills:\n"
        + "  - {route: chat, to: big@sim, every: monthly}\n"
        + "  - {route: chat, to: big@sim, every: 30d, percent: 0, name: a}\n"
        + "  - {route: chat, to: big@sim, every: 30d, percent: 101, name: b}\n"
        + "  - {route: chat, to: big@sim, every: 10m, minutes: 15, name: c}\n"
        + "  - {route: chat, to: big@sim, every: 30d, evry: 1d, name: d}\n"
        + "  - {route: chat, every: 30d, name: e}\n"
    )
    assert errors[0].startswith("cfg.yaml:11: drills[0].every: 'monthly' is not a duration")
    assert errors[1].startswith("cfg.yaml:12: drills[1].percent: Input should be greater than 0")
    assert errors[2].startswith("cfg.yaml:13: drills[2].percent: Input should be less than or")
    assert errors[3].startswith(
        "cfg.yaml:14: drills[3]: every (10m) must be longer than the drill itself (15 min)"
    )
    assert errors[4] == "cfg.yaml:15: drills[4].evry: unknown key 'evry' (did you mean 'every'?)"
    assert errors[5] == "cfg.yaml:16: drills[5].to: required key is missing"


def test_start_requests_are_bounded() -> None:
    DrillStart(route="chat", to="big@sim", percent=100, minutes=10080)
    for bad in (
        {"percent": 0},
        {"percent": 100.5},
        {"percent": float("nan")},
        {"minutes": 0},
        {"minutes": 10**30},
        {"abort_error_rate": 0},
        {"abort_after_errors": 0},
        {"extra": 1},
    ):
        with pytest.raises(ValidationError):
            DrillStart.model_validate({"route": "chat", "to": "big@sim", **bad})


def test_start_problems_against_the_config() -> None:
    config = parse_config(BASE, "cfg.yaml", {})

    def check(route: str, to: str) -> list[tuple[str, str]]:
        return problems(config, DrillStart(route=route, to=to))

    assert check("chat", "big@sim") == []
    assert check("chta", "big@sim") == [("route", "unknown route 'chta' (did you mean 'chat'?)")]
    assert check("chat", "nope") == [
        ("to", "unknown deployment 'nope'; configured: big@sim, small@sim")
    ]
    ((field, message),) = check("chat", "small@sim")
    assert field == "to" and "primary" in message
