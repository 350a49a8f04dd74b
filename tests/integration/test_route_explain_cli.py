"""`farebox route explain`: the plan a route would make from an idle snapshot of the config.

Costs are checked against hand arithmetic: a 400-byte user message is 100 tokens for a
`gpt-*` model (4 bytes/token) and 106 for a `llama-*` one (3.8), plus 3 framing tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from gateway.cli.main import app

CONFIG = """
auth: none
providers:
  cloud: {kind: serverless, api_base: "http://127.0.0.1:9/v1", region: eu}
  closed: {kind: closed_api, api_base: "http://127.0.0.1:9/v1", region: eu}
  gpu: {kind: dedicated, api_base: "http://127.0.0.1:9/v1", region: eu}
  us: {kind: serverless, api_base: "http://127.0.0.1:9/v1", region: us}
deployments:
  cheap@cloud: {provider: cloud, model: gpt-cheap, price: {input: 0.5, output: 1.5}}
  pricey@closed:
    provider: closed
    model: gpt-pricey
    price: {input: 3, output: 15}
    capabilities: [json_schema]
  # A token price on a dedicated deployment is ignored: its GPU hours are already paid.
  local@gpu: {provider: gpu, model: llama-local, max_concurrency: 4, price: {input: 9, output: 9}}
  far@us: {provider: us, model: gpt-far, price: {input: 0.01, output: 0.01}}
  mystery@cloud: {provider: cloud, model: gpt-mystery-unpriced}
routes:
  chat:
    strategy: cost
    targets: [pricey@closed, cheap@cloud, local@gpu, far@us]
    fallbacks: [mystery@cloud]
    require: {region: [eu]}
  paid:
    strategy: cost
    targets: [local@gpu, pricey@closed, cheap@cloud]
    require: {kind: [serverless, closed_api]}
  steady:
    strategy: failover
    targets: [pricey@closed, cheap@cloud]
    fallbacks: [mystery@cloud]
  split:
    strategy: weighted
    targets: [cheap@cloud, pricey@closed]
    weights: {cheap@cloud: 3}
    sticky: header:x-team
"""

USER = [{"role": "user", "content": "x" * 400}]
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
PLAIN = {"model": "chat", "max_tokens": 100, "messages": USER}
WITH_TOOLS = {**PLAIN, "tools": [TOOL]}

CHEAP_USD = (103 * 0.5 + 100 * 1.5) / 1e6  # 0.0002015
PRICEY_USD = (103 * 3 + 100 * 15) / 1e6  # 0.001809


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "gateway.yaml").write_text(CONFIG)
    # An empty prices.yaml: only the config's `price:` entries (and litellm's map, which
    # knows none of these made-up models) price anything.
    (tmp_path / "prices.yaml").write_text("models: {}\n")
    monkeypatch.setenv("FAREBOX_PRICES_FILE", str(tmp_path / "prices.yaml"))
    monkeypatch.setenv("FAREBOX_CONFIG", str(tmp_path / "gateway.yaml"))
    (tmp_path / "plain.json").write_text(json.dumps(PLAIN))
    (tmp_path / "tools.json").write_text(json.dumps(WITH_TOOLS))
    return tmp_path


def explain(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, ["route", "explain", *args], input=stdin)


def explain_json(*args: str) -> dict[str, Any]:
    result = explain(*args, "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def by_deployment(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["deployment"]: e for e in entries}


def test_cost_route_orders_by_expected_cost_with_hand_checked_numbers(files: Path) -> None:
    data = explain_json("chat", "--request", str(files / "plain.json"))
    assert data["route"] == "chat"
    assert data["strategy"] == "cost"
    assert data["cost_planned"] is True
    assert data["fixed_plan"] is False
    assert data["snapshot"] == "idle"
    assert data["reason"] == "dedicated capacity free"
    plan = data["plan"]
    assert [e["deployment"] for e in plan] == [
        "local@gpu",  # free while it has room
        "cheap@cloud",
        "pricey@closed",
        "mystery@cloud",  # the route's fallback comes after every target
    ]
    assert [e["position"] for e in plan] == [1, 2, 3, 4]
    assert [e["role"] for e in plan] == ["primary", "fallback", "fallback", "fallback"]
    assert [e["kind"] for e in plan] == ["dedicated", "serverless", "closed_api", "serverless"]
    rows = by_deployment(plan)
    assert rows["cheap@cloud"]["expected_cost_usd"] == pytest.approx(CHEAP_USD, rel=1e-9)
    assert rows["pricey@closed"]["expected_cost_usd"] == pytest.approx(PRICEY_USD, rel=1e-9)
    assert rows["local@gpu"]["expected_cost_usd"] == 0.0
    assert rows["mystery@cloud"]["expected_cost_usd"] is None  # unknown price
    assert rows["cheap@cloud"]["input_tokens"] == 103
    assert rows["local@gpu"]["input_tokens"] == 109  # ceil(400 / 3.8) + 3
    assert all(e["output_tokens"] == 100 for e in plan)  # max_tokens
    assert all(e["cached_tokens"] == 0 for e in plan)  # idle: no prompt-cache affinity yet
    assert rows["local@gpu"]["note"] == "dedicated, 0/4 in flight"
    # The route requires region eu: the cheapest deployment of all is left out.
    assert data["left_out"] == [
        {
            "deployment": "far@us",
            "provider": "us",
            "kind": "serverless",
            "expected_cost_usd": pytest.approx((103 * 0.01 + 100 * 0.01) / 1e6),
            "cost_without_cache_usd": pytest.approx((103 * 0.01 + 100 * 0.01) / 1e6),
            "input_tokens": 103,
            "cached_tokens": 0,
            "output_tokens": 100,
            "note": "",
            "skipped": "region us not in ['eu']",
            "reason": "region us not in ['eu']",
        }
    ]
    assert data["soft_skipped"] == []  # nothing is busy in an idle snapshot


def test_a_tools_request_hard_skips_the_deployment_without_tools(files: Path) -> None:
    data = explain_json("chat", "-r", str(files / "tools.json"))
    assert [e["deployment"] for e in data["plan"]] == ["local@gpu", "cheap@cloud", "mystery@cloud"]
    reasons = {e["deployment"]: e["reason"] for e in data["left_out"]}
    assert reasons == {"pricey@closed": "no tools support", "far@us": "region us not in ['eu']"}


def test_require_kind_leaves_the_dedicated_gpu_out(files: Path) -> None:
    data = explain_json("paid", "-r", str(files / "plain.json"))
    assert data["reason"] == "cheapest eligible"
    assert [e["deployment"] for e in data["plan"]] == ["cheap@cloud", "pricey@closed"]
    assert [(e["deployment"], e["reason"]) for e in data["left_out"]] == [
        ("local@gpu", "kind dedicated not allowed")
    ]


def test_text_output_has_the_reason_table_and_skips(files: Path) -> None:
    result = explain("chat", "--request", str(files / "tools.json"), "--request-id", "req_x")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "route chat: strategy cost (cost-planned; idle snapshot" in out
    assert "reason: dedicated capacity free" in out
    assert "request id: req_x" in out
    lines = [line for line in out.splitlines() if "@" in line and "│" in line]
    assert [line.split("│")[2].strip() for line in lines] == [
        "local@gpu",
        "cheap@cloud",
        "mystery@cloud",
    ]
    cheap = lines[1]
    assert "serverless" in cheap and "fallback" in cheap
    assert "unknown" in lines[2]  # no price known for the fallback
    assert "dedicated, 0/4 in flight" in lines[0]
    assert "left out (hard skips" in out
    assert "  pricey@closed: no tools support" in out
    assert "  far@us: region us not in ['eu']" in out


def test_costs_print_with_eight_significant_digits(files: Path) -> None:
    request = {"model": "chat", "max_tokens": 7, "messages": [{"role": "user", "content": "hi"}]}
    (files / "tiny.json").write_text(json.dumps(request))
    data = explain_json("paid", "-r", str(files / "tiny.json"))
    pricey = by_deployment(data["plan"])["pricey@closed"]
    # ceil(2 / 4) + 3 = 4 input tokens: (4 × 3 + 7 × 15) / 1e6 = 0.000117 exactly.
    assert pricey["expected_cost_usd"] == 0.000117
    text = explain("paid", "-r", str(files / "tiny.json")).stdout
    assert "0.000117" in text and "e-0" not in text  # positional, not scientific


def test_fixed_route_prints_its_configured_plan_with_costs(files: Path) -> None:
    data = explain_json("steady", "-r", str(files / "plain.json"))
    assert data["strategy"] == "failover"
    assert data["cost_planned"] is False
    assert data["fixed_plan"] is True
    assert "not cost-planned" in data["reason"]
    # Configured order even though pricey@closed costs more than cheap@cloud.
    assert [(e["deployment"], e["role"]) for e in data["plan"]] == [
        ("pricey@closed", "primary"),
        ("cheap@cloud", "fallback"),
        ("mystery@cloud", "fallback"),
    ]
    rows = by_deployment(data["plan"])
    assert rows["pricey@closed"]["expected_cost_usd"] == pytest.approx(PRICEY_USD, rel=1e-9)
    assert rows["cheap@cloud"]["expected_cost_usd"] == pytest.approx(CHEAP_USD, rel=1e-9)
    assert any("cost strategy's estimates" in note for note in data["notes"])
    text = explain("steady", "-r", str(files / "plain.json")).stdout
    assert "fixed plan, not cost-planned" in text


def test_sticky_header_keeps_a_client_on_one_target(files: Path) -> None:
    args = ("split", "-r", str(files / "plain.json"), "-H", "X-Team: search")
    first = explain_json(*args, "--request-id", "req_1")
    second = explain_json(*args, "--request-id", "req_2")
    assert first["reason"] == "weighted (sticky header:x-team)"
    assert first["plan"] == second["plan"]
    assert first["cost_planned"] is False


def test_json_shape(files: Path) -> None:
    data = explain_json("chat", "-r", str(files / "plain.json"))
    assert set(data) == {
        "route",
        "strategy",
        "cost_planned",
        "fixed_plan",
        "reason",
        "snapshot",
        "request_id",
        "plan",
        "left_out",
        "soft_skipped",
        "notes",
    }
    entry = {
        "deployment",
        "provider",
        "kind",
        "expected_cost_usd",
        "cost_without_cache_usd",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "note",
        "skipped",
    }
    assert all(set(e) == entry | {"position", "role"} for e in data["plan"])
    assert all(set(e) == entry | {"reason"} for e in data["left_out"])


def test_request_from_stdin_and_explicit_config(files: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.yaml"
    other.write_text(CONFIG.replace("chat:", "talk:"))
    result = explain("talk", "-r", "-", "--config", str(other), "--json", stdin=json.dumps(PLAIN))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["route"] == "talk"
    assert "the body's model 'chat' is ignored" in data["notes"][0]


def expect_usage_error(result: Result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback, only a message
    assert message in result.stderr
    assert result.stdout == ""


def test_unknown_route_suggests_the_closest(files: Path) -> None:
    expect_usage_error(
        explain("chta", "-r", str(files / "plain.json")),
        "error: Unknown route 'chta' (did you mean 'chat'?). Routes: chat, paid, split, steady",
    )
    expect_usage_error(
        explain("cheap@cloud", "-r", str(files / "plain.json")),
        "'cheap@cloud' is a deployment id, not a route",
    )


def test_unreadable_or_invalid_requests_exit_2(files: Path) -> None:
    expect_usage_error(
        explain("chat", "-r", str(files / "missing.json")),
        f"error: cannot read {files / 'missing.json'}: No such file or directory",
    )
    (files / "bad.json").write_text("{not json")
    expect_usage_error(
        explain("chat", "-r", str(files / "bad.json")),
        f"error: {files / 'bad.json'}: Request body is not valid JSON",
    )
    expect_usage_error(
        explain("chat", "-r", "-", stdin="[1, 2]"),
        "error: stdin: Request body must be a JSON object, not an array.",
    )
    expect_usage_error(
        explain("chat", "-r", "-", stdin='{"model": "chat"}'),
        "error: stdin: Missing required parameter: 'messages'.",
    )


def test_broken_config_exits_1_like_config_check(files: Path) -> None:
    (files / "gateway.yaml").write_text("routes:\n  r: {targets: [nowhere]}\n")
    result = explain("r", "-r", str(files / "plain.json"))
    assert result.exit_code == 1
    assert "unknown deployment 'nowhere'" in result.stderr
