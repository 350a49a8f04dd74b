"""LCPR arithmetic, checked against figures worked out by hand (shown in each test).

LCPR = (token cost of every attempt + repair cost + engineering cost) / successful requests;
overhead ratio = LCPR / list price of one clean attempt.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from routing.lcpr import (
    DeploymentCost,
    LoadedCosts,
    SegmentTotals,
    Workload,
    estimate,
    segment_lcpr,
)
from routing.red_flags import (
    DailyRates,
    fallback_flag,
    price_change_flags,
    trend_flags,
    utilization,
    utilization_flag,
)

D = Decimal

# One month: 1M requests of 1,200 input + 300 output tokens; 8 % of requests retried once;
# 92 % pass the quality gate; each failure costs $0.002 to repair; 8 h × $100 engineering.
WORKLOAD = Workload(
    requests=D(1_000_000),
    input_tokens=D(1200),
    output_tokens=D(300),
    retry_rate=D("0.08"),
    gate_pass_rate=D("0.92"),
    engineering_hours=D(8),
    hourly_rate_usd=D(100),
    repair_cost_usd=D("0.002"),
)
REPAIR = D(80_000) * D("0.002")  # 1M × (1 − 0.92) failures × $0.002 = $160
ENGINEERING = D(800)  # 8 h × $100
SUCCESSFUL = D(920_000)  # 1M × 0.92


def test_serverless_deployment() -> None:
    d = DeploymentCost("deepseek-v3@together", "serverless", input=D("1.25"), output=D("1.25"))
    e = estimate(WORKLOAD, d)
    # raw = (1200 × 1.25 + 300 × 1.25) / 1M = $0.001875 per clean attempt
    assert e.raw_per_request == D("0.001875")
    # attempts = 1M × 1.08 = 1,080,000; token cost = 1,080,000 × 0.001875 = $2,025
    assert e.attempts == D(1_080_000)
    assert e.token_cost == D(2025)
    assert (e.repair_cost, e.engineering_cost) == (REPAIR, ENGINEERING)
    # monthly = 2025 + 160 + 800 = $2,985; LCPR = 2985 / 920,000
    assert e.monthly_cost == D(2985)
    assert e.lcpr == D(2985) / SUCCESSFUL
    assert round(e.lcpr, 12) == D("0.003244565217")
    # overhead = 0.0032445652… / 0.001875 = 1.7304…: a good answer costs 73 % over list
    assert round(e.overhead_ratio, 6) == D("1.730435")


def test_closed_api_deployment_with_prompt_cache() -> None:
    d = DeploymentCost(
        "gpt-4o@openai", "closed_api", input=D("2.50"), output=D(10), cached_input=D("1.25")
    )
    w = Workload(**{**_fields(WORKLOAD), "cache_hit_rate": D("0.25")})
    e = estimate(w, d)
    # 25 % of 1,200 input tokens are cache reads: 900 × 2.50 + 300 × 1.25 + 300 × 10.00
    # = 2250 + 375 + 3000 = 5625 micro-dollars → $0.005625
    assert e.raw_per_request == D("0.005625")
    # token cost = 1,080,000 × 0.005625 = $6,075; monthly = 6075 + 160 + 800 = $7,035
    assert e.token_cost == D(6075)
    assert e.monthly_cost == D(7035)
    assert round(e.lcpr, 12) == D("0.007646739130")  # 7035 / 920,000
    assert round(e.overhead_ratio, 6) == D("1.359420")  # 0.0076467… / 0.005625


def test_dedicated_deployment_pays_hours_not_retries() -> None:
    d = DeploymentCost("llama-70b@gpu-east", "dedicated", hourly_usd=D("3.99"))
    e = estimate(WORKLOAD, d)
    # 730 h × $3.99 = $2,912.70 a month whatever the traffic; raw = 2912.70 / 1M requests
    assert e.token_cost == D("2912.70")
    assert e.raw_per_request == D("0.0029127")
    # retries run on hours already paid: monthly = 2912.70 + 160 + 800 = $3,872.70
    assert e.monthly_cost == D("3872.70")
    assert round(e.lcpr, 12) == D("0.004209456522")  # 3872.70 / 920,000
    # overhead = (3872.70 / 920,000) / (2912.70 / 1M) = 1.4452077…
    assert round(e.overhead_ratio, 6) == D("1.445208")


def test_perfect_traffic_has_overhead_one() -> None:
    w = Workload(requests=D(1000), input_tokens=D(100), output_tokens=D(100))
    e = estimate(w, DeploymentCost("x", "serverless", input=D(1), output=D(1)))
    assert e.lcpr == e.raw_per_request == D("0.0002")
    assert e.overhead_ratio == 1


@pytest.mark.parametrize(
    "change",
    [
        {"requests": D(0)},
        {"gate_pass_rate": D(0)},
        {"gate_pass_rate": D("1.1")},
        {"retry_rate": D(-1)},
        {"cache_hit_rate": D(2)},
    ],
)
def test_workload_rejects_impossible_values(change: dict[str, Decimal]) -> None:
    with pytest.raises(ValueError):
        Workload(**{**_fields(WORKLOAD), **change})


def _fields(w: Workload) -> dict[str, Decimal]:
    return {name: getattr(w, name) for name in w.__slots__}  # type: ignore[attr-defined]


CONFIG = """
auth: none
providers:
  together: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:9/v1"}
  openai: {kind: closed_api, protocol: openai, api_base: "http://127.0.0.1:9/v1"}
  gpu-east: {kind: dedicated, protocol: openai, api_base: "http://127.0.0.1:9/v1",
             hourly_usd: 3.99}
deployments:
  deepseek-v3@together: {provider: together, model: deepseek-ai/DeepSeek-V3}   # prices.yaml
  gpt-4o@openai: {provider: openai, model: gpt-4o,
                  price: {input: 2.50, output: 10.00, cached_input: 1.25}}
  llama-70b@gpu-east: {provider: gpu-east, model: meta-llama/Llama-3.3-70B-Instruct}
routes:
  chat: {targets: [deepseek-v3@together]}
lcpr: {engineering_hours_per_month: 8, hourly_rate_usd: 100, repair_cost_usd: 0.002}
"""


def test_cli_estimate_matches_the_hand_figures(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    args = [
        "lcpr",
        "estimate",
        "--config",
        str(config),
        "--requests",
        "1000000",
        "--input-tokens",
        "1200",
        "--output-tokens",
        "300",
        "--retry-rate",
        "0.08",
        "--gate-pass-rate",
        "0.92",
        "--json",
        "-d",
        "deepseek-v3@together",
        "-d",
        "gpt-4o@openai",
        "-d",
        "llama-70b@gpu-east",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {r["deployment"]: r for r in json.loads(result.output)}
    # engineering hours, rate and repair cost came from the config's lcpr: section
    assert D(rows["deepseek-v3@together"]["lcpr_usd"]) == round(D(2985) / SUCCESSFUL, 10)
    assert D(rows["deepseek-v3@together"]["monthly_cost_usd"]) == D(2985)
    assert D(rows["llama-70b@gpu-east"]["monthly_cost_usd"]) == D("3872.70")
    # no cache-hit rate given here: gpt-4o = (1200 × 2.5 + 300 × 10) / 1M = $0.006
    assert D(rows["gpt-4o@openai"]["raw_usd_per_request"]) == D("0.006")
    assert D(rows["gpt-4o@openai"]["monthly_cost_usd"]) == D(1_080_000) * D("0.006") + 960
    text = CliRunner().invoke(app, [*args[:-7], "-d", "deepseek-v3@together"])
    assert text.exit_code == 0 and "0.00324457" in text.output
    bad = CliRunner().invoke(app, [*args[:-6], "-d", "nope"])
    assert bad.exit_code == 1 and "unknown deployment 'nope'" in bad.output


# --- from the ledger -----------------------------------------------------------------------


def _totals(segment: str, **kw: object) -> SegmentTotals:
    base: dict[str, object] = dict(
        segment=segment,
        requests=100,
        successful=90,
        attempts=110,
        retries=10,
        fallback_requests=5,
        gated=100,
        gate_passed=90,
        input_tokens=80_000,
        cached_tokens=20_000,
        output_tokens=20_000,
        token_cost_usd=D("1.00"),
        clean_attempts=85,
        clean_attempt_cost_usd=D("0.765"),
        clean_attempt_tokens=85_000,
        dedicated_tokens={},
    )
    base.update(kw)
    return SegmentTotals(**base)  # type: ignore[arg-type]


def test_segment_lcpr_allocates_gpu_hours_by_tokens_and_engineering_by_requests() -> None:
    a = _totals("chat", dedicated_tokens={"gpu": 30_000})
    b = _totals(
        "extract",
        requests=300,
        successful=240,
        token_cost_usd=D(3),
        dedicated_tokens={"gpu": 10_000},
    )
    costs = LoadedCosts(
        dedicated_usd={"gpu": D(400)}, engineering_usd=D(80), repair_cost_usd=D("0.01")
    )
    out = {s.segment: s for s in segment_lcpr([a, b], costs)}
    chat = out["chat"]
    # GPU: 30k of 40k served tokens → 3/4 × $400 = $300; engineering: 100 of 400 requests
    # → $20; repair: 10 failures × $0.01 = $0.10; loaded = 1 + 300 + 0.10 + 20 = $321.10
    assert chat.dedicated_cost_usd == D(300)
    assert chat.engineering_cost_usd == D(20)
    assert chat.repair_cost_usd == D("0.10")
    assert chat.loaded_cost_usd == D("321.10")
    assert chat.lcpr == D("321.10") / 90
    # clean attempt: 0.765 / 85 = $0.009 of tokens + GPU at 300 / 100k tokens × 1,000 tokens
    # = $3 → $3.009
    assert chat.clean_attempt_usd == D("3.009")
    assert chat.retry_rate == D("0.1") and chat.gate_pass_rate == D("0.9")
    assert chat.fallback_share == D("0.05") and chat.cache_hit_rate == D("0.25")
    ext = out["extract"]
    assert ext.dedicated_cost_usd == D(100) and ext.engineering_cost_usd == D(60)
    assert ext.loaded_cost_usd == D(3) + 100 + 60 + D("0.60")


# --- red flags -----------------------------------------------------------------------------


def _days(start: date, n: int, **kw: int) -> list[DailyRates]:
    base = dict(
        requests=100, retries=2, gated=100, gate_passed=95, input_tokens=1000, cached_tokens=400
    )
    base.update(kw)
    return [DailyRates("chat", start + timedelta(days=i), **base) for i in range(n)]


def test_trend_flags_compare_the_last_two_weeks_with_the_two_before() -> None:
    end = date(2026, 12, 1)
    steady = _days(date(2026, 11, 3), 14) + _days(date(2026, 11, 17), 14)
    assert trend_flags(steady, end) == []
    # retries 2 % → 8 % (+6 points), cache hits 40 % → 28 % (−12), gate 95 % → 89 % (−6)
    worse = _days(date(2026, 11, 3), 14) + _days(
        date(2026, 11, 17), 14, retries=8, cached_tokens=280, gate_passed=89
    )
    codes = [f.code for f in trend_flags(worse, end)]
    assert codes == ["retry_rate_rising", "cache_hit_falling", "gate_pass_falling"]
    # +4 points of retries is under the limit
    mild = _days(date(2026, 11, 3), 14) + _days(date(2026, 11, 17), 14, retries=6)
    assert trend_flags(mild, end) == []


def test_share_utilization_and_price_flags() -> None:
    assert fallback_flag("chat", D("0.21"))[0].code == "fallback_share_high"
    assert fallback_flag("chat", D("0.20")) == []
    # 100 busy hours on 8 slots over 730 paid hours = 1.7 % utilization
    used = utilization(D(100 * 3600), D(730), 8)
    assert used is not None and round(used, 4) == D("0.0171")
    assert utilization_flag("gpu", used)[0].code == "dedicated_underused"
    assert utilization_flag("gpu", D("0.5")) == []
    flags = price_change_flags([("together", "ds@together", ["a", "b"]), ("x", "y", ["a"])])
    assert [f.subject for f in flags] == ["together"]
