"""The batch tier's LCPR arithmetic and flags (routing/batch_share.py) at their thresholds,
and the `lcpr: deferrable_workloads` config key's validation."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.config.loading import parse_config
from gateway.runtime.yaml_loader import ConfigError
from routing.batch_share import (
    BATCH_LIVE_SHARE_LIMIT,
    DedicatedFillTotals,
    PaidElsewhere,
    WorkloadBatch,
    batch_live_flag,
    dedicated_fill,
    dedicated_underused_flag,
    total,
)

D = Decimal


def _line(
    live: int, lines: int, live_usd: str = "1", at_batch: str = "0.5", **kw: object
) -> WorkloadBatch:
    fields: dict[str, object] = {
        "workload": "nightly",
        "deferrable": True,
        "live_requests": live,
        "live_cost_usd": D(live_usd),
        "batch_rate_usd": D(at_batch),
        "batch_lines": lines,
        "batch_cost_usd": D(0),
    }
    fields.update(kw)
    return WorkloadBatch(**fields)  # type: ignore[arg-type]


def test_live_share_and_saving() -> None:
    line = _line(3, 7)
    assert line.live_share == D("0.3") and line.saving_usd == D("0.5")
    assert _line(0, 0).live_share is None  # nothing deferrable ran
    assert _line(2, 0, deferrable=False).live_share is None  # not deferrable: no share
    # A batch rate above what it cost live (a cached prompt priced live) saves nothing.
    assert _line(1, 0, live_usd="0.1", at_batch="0.2").saving_usd == 0


def test_batch_live_flag_at_the_limit() -> None:
    # 20 % exactly is allowed; one more live request in 100 is not.
    assert D("0.20") == BATCH_LIVE_SHARE_LIMIT
    assert batch_live_flag(_line(20, 80)) == []
    (flag,) = batch_live_flag(_line(21, 79, live_usd="2.1", at_batch="1.05"))
    assert (flag.code, flag.subject) == ("batch_eligible_live_high", "nightly")
    assert "21.0 % live (21 of 100 requests; limit 20.0 %)" in flag.message
    assert "$2.1000 live would have cost $1.0500 at the batch rate" in flag.message
    assert "$1.0500 to save" in flag.message
    # All live but nothing to save (no batch rate): no money figure, no flag.
    assert batch_live_flag(_line(5, 0, live_usd="1", at_batch="1")) == []
    assert batch_live_flag(_line(5, 0, deferrable=False)) == []


def test_total_sums_every_line() -> None:
    all_ = total([_line(1, 1), _line(3, 0, workload="other", deferrable=False)])
    assert (all_.workload, all_.live_requests, all_.batch_lines) == ("(all)", 4, 1)
    assert all_.live_cost_usd == 2 and all_.saving_usd == 1 and all_.deferrable


def _fill(live_s: int, batch_s: int, live_ok: int = 10, batch_ok: int = 30) -> DedicatedFillTotals:
    # 10 h × 2 slots = 72,000 slot-seconds for $40.
    return DedicatedFillTotals("gpu", 2, D(10), D(40), D(live_s), D(batch_s), live_ok, batch_ok)


def test_dedicated_fill_before_and_after() -> None:
    fill = dedicated_fill(_fill(7_200, 21_600))
    assert fill.utilization_live == D("0.1") and fill.utilization_with_batch == D("0.4")
    assert fill.cost_per_success_live == 4 and fill.cost_per_success_with_batch == 1
    idle = dedicated_fill(_fill(0, 0, 0, 0))
    assert idle.utilization_live == 0 and idle.cost_per_success_live is None
    assert idle.cost_per_success_with_batch is None


def test_dedicated_underused_flag_with_and_without_deferrable_work_elsewhere() -> None:
    # Batch fill takes it to exactly the 40 % floor: no flag, whatever ran elsewhere.
    elsewhere = PaidElsewhere(("enrich",), 12, D("3.5"))
    assert dedicated_underused_flag(dedicated_fill(_fill(7_200, 21_600)), elsewhere) == []
    low = dedicated_fill(_fill(7_200, 7_200))
    (flag,) = dedicated_underused_flag(low)
    assert (flag.code, flag.subject) == ("dedicated_underused", "gpu")
    assert "20.0 % for the period with batch fill (live alone 10.0 %; < 40.0 %)" in flag.message
    assert "paid deployments" not in flag.message
    (flag,) = dedicated_underused_flag(low, elsewhere)
    assert "12 deferrable requests of enrich ran on paid deployments for $3.5000" in flag.message
    # Deferrable work that cost nothing elsewhere is not worth naming.
    (flag,) = dedicated_underused_flag(low, PaidElsewhere(("enrich",), 3, D(0)))
    assert "paid deployments" not in flag.message


_CONFIG = """
providers:
  sim: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:9/v1"}
deployments:
  fast@sim: {provider: sim, model: m-fast, price: {input: 1, output: 1}}
routes:
  enrich: {targets: [fast@sim], workload: nightly-enrich}
lcpr: {deferrable_workloads: %s}
"""


def test_deferrable_workloads_config() -> None:
    config = parse_config(_CONFIG % "[nightly-enrich, reindex]", "g.yaml", {})
    assert config.lcpr.deferrable_workloads == ["nightly-enrich", "reindex"]
    assert parse_config(_CONFIG % "[]", "g.yaml", {}).lcpr.deferrable_workloads == []
    for bad, why in (
        ("[nightly-enrich, nightly-enrich]", "'nightly-enrich' is listed twice"),
        ('[""]', "at least 1 character"),
        ("nightly-enrich", "valid list"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_config(_CONFIG % bad, "g.yaml", {})
        assert "g.yaml:8: lcpr.deferrable_workloads" in str(err.value) and why in str(err.value), (
            str(err.value)
        )
