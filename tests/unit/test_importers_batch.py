"""Batch line items in every invoice format: the simulator's own renderings (the shapes it
bills batch lines in) and hand-written variants parse into `batch_…` token types, apart from
the live lines of the same model and day, with their own dollars."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import orjson
import pytest

from gateway.reports.importers import InvoiceFormatError, parse_bytes
from gateway.reports.invoice_lines import InvoiceLine, split_batch
from simulator.invoices import DayUsage, Rates, render

D = Decimal
DAY = date(2026, 11, 3)
RATES = {"m": Rates(D(2), D(8), D(1), D("2.5"))}
LIVE = DayUsage("m", DAY, requests=4, uncached=1000, cached=200, cache_write=50, output=400)
BATCH = DayUsage(
    "m", DAY, requests=6, uncached=3000, cached=600, cache_write=0, output=900, batch=True
)


def _sums(lines: tuple[InvoiceLine, ...]) -> dict[str, tuple[Decimal | None, Decimal | None]]:
    out: dict[str, tuple[Decimal | None, Decimal | None]] = {}
    for line in lines:
        tok, usd = out.get(line.token_type, (None, None))
        if line.tokens is not None:
            tok = (tok or D(0)) + line.tokens
        if line.amount_usd is not None:
            usd = (usd or D(0)) + line.amount_usd
        out[line.token_type] = (tok, usd)
    return out


def _parse(fmt: str, usage: list[DayUsage] | None = None) -> tuple[InvoiceLine, ...]:
    body, _ = render(fmt, usage or [LIVE, BATCH], RATES, "acct")
    imported = parse_bytes("acct", body, f"sim.{fmt}")
    assert imported.format == fmt
    return imported.lines


def test_openai_usage_batch_results_are_batch_lines() -> None:
    lines = _parse("openai_usage")
    sums = _sums(lines)
    assert sums["input_uncached"] == (D(1000), None)
    assert sums["batch_input_uncached"] == (D(3000), None)
    assert sums["batch_input_cached"] == (D(600), None)
    assert sums["batch_output"] == (D(900), None)
    assert "batch_cache_write" not in sums  # no batch cache writes: no line
    requests = {line.token_type: line.requests for line in lines if line.requests is not None}
    assert requests == {"input_uncached": 4, "batch_input_uncached": 6}


def test_openai_costs_batch_line_items_carry_half_the_dollars() -> None:
    sums = _sums(_parse("openai_costs"))
    assert sums["output"] == (None, D("0.0032"))  # 400 × $8/M
    assert sums["batch_output"] == (None, D("0.0036"))  # 900 × $4/M
    assert sums["batch_input_uncached"] == (None, D("0.003"))
    assert sums["batch_input_cached"] == (None, D("0.0003"))


def test_openai_costs_batch_label_variants() -> None:
    page = {
        "object": "page",
        "data": [
            {
                "object": "bucket",
                "start_time": 1793664000,
                "end_time": 1793750400,
                "results": [
                    {
                        "object": "organization.costs.result",
                        "amount": {"value": 0.5, "currency": "usd"},
                        "line_item": f"gpt-4o-mini-2024-07-18, {label}",
                    }
                    for label in ("input (batch)", "Batch output", "output", "web search")
                ],
            }
        ],
    }
    lines = parse_bytes("openai", orjson.dumps(page), "costs.json").lines
    assert [(line.model, line.token_type) for line in lines] == [
        ("gpt-4o-mini-2024-07-18", "batch_input_uncached"),
        ("gpt-4o-mini-2024-07-18", "batch_output"),
        ("gpt-4o-mini-2024-07-18", "output"),
        ("gpt-4o-mini-2024-07-18, web search", "other"),
    ]


def test_openai_usage_batch_must_be_a_flag() -> None:
    body = orjson.loads(render("openai_usage", [BATCH], RATES, "acct")[0])
    body["data"][0]["results"][0]["batch"] = "yes"
    with pytest.raises(InvoiceFormatError) as err:
        parse_bytes("openai", orjson.dumps(body), "usage.json")
    assert err.value.column == "batch" and err.value.row == "data[0].results[0]"


@pytest.mark.parametrize("fmt", ["anthropic_usage", "anthropic_cost"])
def test_anthropic_service_tier_batch(fmt: str) -> None:
    sums = _sums(_parse(fmt))
    live_out, batch_out = sums["output"], sums["batch_output"]
    if fmt == "anthropic_usage":
        assert (live_out[0], batch_out[0]) == (D(400), D(900))
        assert sums["cache_write"] == (D(50), None) and sums["batch_cache_write"] == (D(0), None)
    else:
        assert (live_out[1], batch_out[1]) == (D("0.0032"), D("0.0036"))
        assert sums["batch_input_cached"] == (None, D("0.0003"))
    assert sums["input_uncached"][0 if fmt == "anthropic_usage" else 1] is not None


def test_anthropic_service_tier_must_be_a_string() -> None:
    body = orjson.loads(render("anthropic_usage", [BATCH], RATES, "acct")[0])
    body["data"][0]["results"][0]["service_tier"] = 1
    with pytest.raises(InvoiceFormatError) as err:
        parse_bytes("anthropic", orjson.dumps(body), "usage.json")
    assert err.value.column == "service_tier"


def test_generic_csv_batch_token_types() -> None:
    sums = _sums(_parse("generic"))
    assert sums["input_uncached"] == (D(1000), D("0.002"))
    assert sums["batch_input_uncached"] == (D(3000), D("0.003"))
    assert sums["batch_output"] == (D(900), D("0.0036"))
    assert sums["batch_input_cached"] == (D(600), D("0.0003"))


@pytest.mark.parametrize("bad", ["batch_gpu_hours", "batch_other", "batch_", "Batch_output"])
def test_generic_csv_refuses_other_batch_types(bad: str) -> None:
    text = f"provider,date,model,token_type,tokens,amount_usd\nacct,2026-11-03,m,{bad},1,\n"
    with pytest.raises(InvoiceFormatError) as err:
        parse_bytes("acct", text.encode(), "g.csv")
    assert (err.value.row, err.value.column) == (2, "token_type")
    assert "batch_output" in err.value.message  # the message lists what is accepted


def test_bedrock_cur_batch_usage_types() -> None:
    sums = _sums(_parse("bedrock_cur"))
    assert sums["batch_input_uncached"] == (D(3000), D("0.003"))
    assert sums["batch_output"] == (D(900), D("0.0036"))
    assert sums["output"] == (D(400), D("0.0032"))
    header = (
        "line_item_line_item_type,line_item_usage_start_date,line_item_usage_type,"
        "line_item_operation,line_item_usage_amount,line_item_unblended_cost\n"
    )
    rows = (
        "Usage,2026-11-03T00:00:00Z,USE1-Claude3Haiku-input-tokens-batch,InvokeModel,10,1\n"
        "Usage,2026-11-03T00:00:00Z,USE1-Claude3Haiku-output-tokens,"
        "InvokeModelBatchInference,5,1\n"
        "Usage,2026-11-03T00:00:00Z,USE1-Claude3Haiku-output-tokens,InvokeModel,7,1\n"
    )
    lines = parse_bytes("bedrock", (header + rows).encode(), "cur.csv").lines
    assert [(line.model, line.token_type, line.tokens) for line in lines] == [
        ("Claude3Haiku", "batch_input_uncached", D(10)),
        ("Claude3Haiku", "batch_output", D(5)),
        ("Claude3Haiku", "output", D(7)),
    ]


def test_fireworks_batch_inference_usage() -> None:
    sums = _sums(_parse("fireworks"))
    assert sums["input"] == (D(1250), None)
    assert sums["batch_input"] == (D(3600), None)
    assert sums["batch_output"] == (D(900), None)


def test_split_batch() -> None:
    assert split_batch("batch_output") == ("output", True)
    assert split_batch("output") == ("output", False)
    line = _parse("generic", [BATCH])[0]
    assert line.batch and line.line_item == "m batch_input_uncached"
