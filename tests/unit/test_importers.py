"""Invoice importers on realistic samples (fields as documented in ../shared/reference/WIRE.md
and OpenAI's published OpenAPI spec) and on malformed files: every error names the file, the
row and the column, and a bad file yields no lines at all."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.reports.importers import (
    InvoiceFormatError,
    detect_format,
    import_file,
    parse_bytes,
)

D = Decimal
NOV3 = datetime(2026, 11, 3, tzinfo=UTC)
NOV4 = datetime(2026, 11, 4, tzinfo=UTC)


def by_type(lines: object) -> dict[tuple[str, str], tuple[Decimal | None, Decimal | None]]:
    out = {}
    for line in lines:  # type: ignore[attr-defined]
        out[(line.model, line.token_type)] = (line.tokens, line.amount_usd)
    return out


# --- OpenAI usage API --------------------------------------------------------------------

OPENAI_USAGE = {
    "object": "page",
    "data": [
        {
            "object": "bucket",
            "start_time": 1793664000,  # 2026-11-03T00:00:00Z
            "end_time": 1793750400,
            "results": [
                {
                    "object": "organization.usage.completions.result",
                    "input_tokens": 125_000,
                    "output_tokens": 40_100,
                    "input_cached_tokens": 25_000,
                    "input_audio_tokens": 0,
                    "output_audio_tokens": 0,
                    "num_model_requests": 412,
                    "project_id": None,
                    "user_id": None,
                    "api_key_id": None,
                    "model": "gpt-4o-mini-2024-07-18",
                    "batch": None,
                },
                {
                    "object": "organization.usage.completions.result",
                    "input_tokens": 9_000,
                    "input_cached_tokens": 0,
                    "input_uncached_tokens": 9_000,
                    "output_tokens": 3_000,
                    "num_model_requests": 12,
                    "model": "gpt-4o-2024-08-06",
                },
            ],
        }
    ],
    "has_more": False,
    "next_page": None,
}


def test_openai_usage_splits_cached_out_of_input_tokens() -> None:
    f = parse_bytes("openai", json.dumps(OPENAI_USAGE).encode(), "usage.json")
    assert f.format == "openai_usage"
    lines = by_type(f.lines)
    # input_tokens INCLUDES cached: uncached = 125000 − 25000.
    assert lines[("gpt-4o-mini-2024-07-18", "input_uncached")] == (D(100_000), None)
    assert lines[("gpt-4o-mini-2024-07-18", "input_cached")] == (D(25_000), None)
    assert lines[("gpt-4o-mini-2024-07-18", "output")] == (D(40_100), None)
    assert lines[("gpt-4o-2024-08-06", "input_uncached")] == (D(9_000), None)
    assert {line.period_start for line in f.lines} == {NOV3}
    assert {line.period_end for line in f.lines} == {NOV4}
    # Requests ride on one line per result, so they add up once.
    assert sum(line.requests or 0 for line in f.lines) == 412 + 12


def test_openai_usage_accepts_a_list_of_pages() -> None:
    page2 = json.loads(json.dumps(OPENAI_USAGE))
    page2["data"][0]["start_time"] += 86400
    page2["data"][0]["end_time"] += 86400
    f = parse_bytes("openai", json.dumps([OPENAI_USAGE, page2]).encode(), "pages.json")
    assert {line.day.isoformat() for line in f.lines} == {"2026-11-03", "2026-11-04"}


def test_openai_usage_malformed_names_row_and_field() -> None:
    bad = json.loads(json.dumps(OPENAI_USAGE))
    bad["data"][0]["results"][1]["output_tokens"] = "lots"
    with pytest.raises(InvoiceFormatError) as err:
        parse_bytes("openai", json.dumps(bad).encode(), "usage.json")
    assert str(err.value) == (
        "usage.json: row data[0].results[1], column output_tokens: expected a number, got 'lots'"
    )
    bad["data"][0]["results"][1]["output_tokens"] = 3
    bad["data"][0]["results"][0]["input_cached_tokens"] = 200_000
    with pytest.raises(InvoiceFormatError, match=r"results\[0\], column input_cached_tokens"):
        parse_bytes("openai", json.dumps(bad).encode(), "usage.json")
    bad["data"][0]["results"][0]["input_cached_tokens"] = -5
    with pytest.raises(InvoiceFormatError, match="cannot be negative"):
        parse_bytes("openai", json.dumps(bad).encode(), "usage.json")


# --- OpenAI costs API --------------------------------------------------------------------

OPENAI_COSTS = {
    "object": "page",
    "data": [
        {
            "object": "bucket",
            "start_time": 1793664000,
            "end_time": 1793750400,
            "results": [
                {
                    "object": "organization.costs.result",
                    "amount": {"value": 0.015, "currency": "usd"},
                    "line_item": "gpt-4o-mini-2024-07-18, input",
                    "project_id": "proj_abc",
                    "quantity": 100000,
                    "quantity_unit": "tokens",
                },
                {
                    "object": "organization.costs.result",
                    "amount": {"value": 0.001875, "currency": "usd"},
                    "line_item": "gpt-4o-mini-2024-07-18, cached input",
                    "project_id": "proj_abc",
                },
                {
                    "object": "organization.costs.result",
                    "amount": {"value": 0.02406, "currency": "usd"},
                    "line_item": "gpt-4o-mini-2024-07-18, output",
                    "project_id": "proj_abc",
                },
                {
                    "object": "organization.costs.result",
                    "amount": {"value": 0.3, "currency": "usd"},
                    "line_item": "web search tool calls",
                    "project_id": "proj_abc",
                },
            ],
        }
    ],
    "has_more": False,
    "next_page": None,
}


def test_openai_costs_attributes_dollars_by_line_item() -> None:
    f = parse_bytes("openai", json.dumps(OPENAI_COSTS).encode(), "costs.json")
    assert f.format == "openai_costs"
    lines = by_type(f.lines)
    # Dollars only: tokens come from the usage export, so nothing is counted twice.
    assert lines[("gpt-4o-mini-2024-07-18", "input_uncached")] == (None, D("0.015"))
    assert lines[("gpt-4o-mini-2024-07-18", "input_cached")] == (None, D("0.001875"))
    assert lines[("gpt-4o-mini-2024-07-18", "output")] == (None, D("0.02406"))
    assert lines[("web search tool calls", "other")] == (None, D("0.3"))


def test_openai_costs_without_line_items_or_in_euros_is_refused() -> None:
    bad = json.loads(json.dumps(OPENAI_COSTS))
    bad["data"][0]["results"][2]["line_item"] = None
    with pytest.raises(InvoiceFormatError, match=r"results\[2\], column line_item: null"):
        parse_bytes("openai", json.dumps(bad).encode(), "costs.json")
    bad["data"][0]["results"][2]["line_item"] = "x, output"
    bad["data"][0]["results"][0]["amount"]["currency"] = "eur"
    with pytest.raises(InvoiceFormatError, match=r"column amount\.currency: only USD"):
        parse_bytes("openai", json.dumps(bad).encode(), "costs.json")


# --- Anthropic usage and cost reports ---------------------------------------------------

ANTHROPIC_USAGE = {
    "data": [
        {
            "starting_at": "2026-11-03T00:00:00Z",
            "ending_at": "2026-11-04T00:00:00Z",
            "results": [
                {
                    "uncached_input_tokens": 52_000,
                    "cache_creation": {
                        "ephemeral_1h_input_tokens": 1_000,
                        "ephemeral_5m_input_tokens": 4_000,
                    },
                    "cache_read_input_tokens": 30_000,
                    "output_tokens": 12_500,
                    "server_tool_use": {"web_search_requests": 0},
                    "api_key_id": "apikey_01",
                    "workspace_id": None,
                    "model": "claude-sonnet-4-5-20250929",
                    "service_tier": "standard",
                    "context_window": "0-200k",
                }
            ],
        }
    ],
    "has_more": False,
    "next_page": None,
}

ANTHROPIC_COST = {
    "data": [
        {
            "starting_at": "2026-11-03T00:00:00Z",
            "ending_at": "2026-11-04T00:00:00Z",
            "results": [
                {
                    "currency": "USD",
                    "amount": "15.60",  # cents: $0.156
                    "workspace_id": None,
                    "description": "Claude Sonnet 4.5 Usage - Input Tokens",
                    "cost_type": "tokens",
                    "context_window": "0-200k",
                    "model": "claude-sonnet-4-5-20250929",
                    "service_tier": "standard",
                    "token_type": "uncached_input_tokens",
                },
                {
                    "currency": "USD",
                    "amount": "0.9",
                    "cost_type": "tokens",
                    "model": "claude-sonnet-4-5-20250929",
                    "token_type": "cache_read_input_tokens",
                },
                {
                    "currency": "USD",
                    "amount": "1.5",
                    "cost_type": "tokens",
                    "model": "claude-sonnet-4-5-20250929",
                    "token_type": "cache_creation.ephemeral_5m_input_tokens",
                },
                {
                    "currency": "USD",
                    "amount": "18.75",
                    "cost_type": "tokens",
                    "model": "claude-sonnet-4-5-20250929",
                    "token_type": "output_tokens",
                },
                {
                    "currency": "USD",
                    "amount": "1000",
                    "cost_type": "web_search",
                    "model": None,
                    "token_type": None,
                    "description": "Web search",
                },
            ],
        }
    ],
    "has_more": False,
    "next_page": None,
}


def test_anthropic_usage_counts_both_cache_creation_windows_as_writes() -> None:
    f = parse_bytes("anthropic", json.dumps(ANTHROPIC_USAGE).encode(), "usage.json")
    assert f.format == "anthropic_usage"
    lines = by_type(f.lines)
    m = "claude-sonnet-4-5-20250929"
    assert lines[(m, "input_uncached")] == (D(52_000), None)
    assert lines[(m, "input_cached")] == (D(30_000), None)
    assert lines[(m, "cache_write")] == (D(5_000), None)  # 1h + 5m
    assert lines[(m, "output")] == (D(12_500), None)


def test_anthropic_cost_amounts_are_cents() -> None:
    f = parse_bytes("anthropic", json.dumps(ANTHROPIC_COST).encode(), "cost.json")
    assert f.format == "anthropic_cost"
    lines = by_type(f.lines)
    m = "claude-sonnet-4-5-20250929"
    assert lines[(m, "input_uncached")] == (None, D("0.156"))
    assert lines[(m, "input_cached")] == (None, D("0.009"))
    assert lines[(m, "cache_write")] == (None, D("0.015"))
    assert lines[(m, "output")] == (None, D("0.1875"))
    assert lines[("web_search", "other")] == (None, D(10))


def test_anthropic_cost_refuses_a_number_that_is_not_a_cents_string() -> None:
    bad = json.loads(json.dumps(ANTHROPIC_COST))
    bad["data"][0]["results"][3]["amount"] = 18.75
    with pytest.raises(InvoiceFormatError) as err:
        parse_bytes("anthropic", json.dumps(bad).encode(), "cost.json")
    assert err.value.row == "data[0].results[3]" and err.value.column == "amount"
    bad["data"][0]["results"][3]["amount"] = "18.75"
    bad["data"][0]["results"][3]["token_type"] = "thinking_tokens"
    with pytest.raises(InvoiceFormatError, match="column token_type: unknown token type"):
        parse_bytes("anthropic", json.dumps(bad).encode(), "cost.json")
    bad["data"][0]["starting_at"] = "yesterday"
    with pytest.raises(InvoiceFormatError, match=r"row data\[0\], column starting_at"):
        parse_bytes("anthropic", json.dumps(bad).encode(), "cost.json")


# --- AWS Bedrock CUR 2.0 ----------------------------------------------------------------

CUR_HEADER = (
    "identity_line_item_id,bill_billing_period_start_date,line_item_line_item_type,"
    "line_item_usage_start_date,line_item_usage_end_date,line_item_product_code,"
    "line_item_usage_type,line_item_operation,line_item_resource_id,line_item_usage_amount,"
    "line_item_unblended_rate,line_item_unblended_cost,line_item_currency_code"
)
ARN = "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0"
CUR_ROWS = [
    f"a1,2026-11-01T00:00:00Z,Usage,2026-11-03T00:00:00Z,2026-11-04T00:00:00Z,AmazonBedrock,"
    f"USE1-Claude3Haiku-input-tokens,InvokeModelInference,{ARN},200000,0.00000025,0.05,USD",
    f"a2,2026-11-01T00:00:00Z,Usage,2026-11-03T00:00:00Z,2026-11-04T00:00:00Z,AmazonBedrock,"
    f"USE1-Claude3Haiku-output-tokens,InvokeModelInference,{ARN},40000,0.00000125,0.05,USD",
    f"a3,2026-11-01T00:00:00Z,Usage,2026-11-03T00:00:00Z,2026-11-04T00:00:00Z,AmazonBedrock,"
    f"USE1-Claude3Haiku-cache-read-input-token-count,InvokeModelInference,{ARN},80000,"
    "0.00000003,0.0024,USD",
    f"a4,2026-11-01T00:00:00Z,Usage,2026-11-03T00:00:00Z,2026-11-04T00:00:00Z,AmazonBedrock,"
    f"USE1-Claude3Haiku-cache-write-input-token-count,InvokeModelInference,{ARN},10000,"
    "0.0000003,0.003,USD",
    # Without a resource id the model comes from the usage type.
    "a5,2026-11-01T00:00:00Z,Usage,2026-11-03 00:00:00,2026-11-04 00:00:00,AmazonBedrock,"
    "EUC1-Llama3-3-70B-input-tokens,InvokeModelInference,,1000,0.00000072,0.00072,USD",
    # Excluded: credits, tax, refunds; skipped: other services and non-token usage.
    "a6,2026-11-01T00:00:00Z,Credit,2026-11-03T00:00:00Z,2026-11-04T00:00:00Z,AmazonBedrock,"
    f"USE1-Claude3Haiku-input-tokens,InvokeModelInference,{ARN},0,,-0.05,USD",
    "a7,2026-11-01T00:00:00Z,Tax,2026-11-03T00:00:00Z,2026-11-04T00:00:00Z,AmazonBedrock,"
    ",,,0,,0.01,USD",
    "a8,2026-11-01T00:00:00Z,Refund,2026-11-03T00:00:00Z,2026-11-04T00:00:00Z,AmazonBedrock,"
    f"USE1-Claude3Haiku-output-tokens,InvokeModelInference,{ARN},0,,-0.01,USD",
    "a9,2026-11-01T00:00:00Z,Usage,2026-11-03T00:00:00Z,2026-11-04T00:00:00Z,AmazonS3,"
    "USE1-TimedStorage-ByteHrs,StandardStorage,arn:aws:s3:::bucket,12.5,0.023,0.2875,USD",
]


def _cur(rows: list[str]) -> bytes:
    return ("\n".join([CUR_HEADER, *rows]) + "\n").encode()


def test_bedrock_cur_one_line_per_token_type_with_cache_lines() -> None:
    f = parse_bytes("bedrock", _cur(CUR_ROWS), "cur.csv")
    assert f.format == "bedrock_cur"
    lines = by_type(f.lines)
    m = "anthropic.claude-3-haiku-20240307-v1:0"
    assert lines[(m, "input_uncached")] == (D(200_000), D("0.05"))
    assert lines[(m, "output")] == (D(40_000), D("0.05"))
    # Ignoring these two is the usual cause of CUR mismatches.
    assert lines[(m, "input_cached")] == (D(80_000), D("0.0024"))
    assert lines[(m, "cache_write")] == (D(10_000), D("0.003"))
    assert lines[("Llama3-3-70B", "input_uncached")] == (D(1000), D("0.00072"))
    assert len(f.lines) == 5
    assert f.skipped == 4
    assert any("3 credit/tax/refund" in n for n in f.notes)


def test_bedrock_cur_malformed_names_csv_line_and_column() -> None:
    rows = list(CUR_ROWS)
    rows[1] = rows[1].replace(",40000,", ",4O000,")
    with pytest.raises(InvoiceFormatError) as err:
        parse_bytes("bedrock", _cur(rows), "cur.csv")
    assert (err.value.file, err.value.row, err.value.column) == (
        "cur.csv",
        3,  # CSV line 3: the header is line 1
        "line_item_usage_amount",
    )
    header = CUR_HEADER.replace("line_item_unblended_cost", "line_item_blended_cost")
    with pytest.raises(InvoiceFormatError, match="row 1, column line_item_unblended_cost"):
        parse_bytes("bedrock", ("\n".join([header, *CUR_ROWS])).encode(), "cur.csv")
    with pytest.raises(InvoiceFormatError, match="row 2: 12 fields where the header has 13"):
        parse_bytes("bedrock", _cur([CUR_ROWS[0].rsplit(",", 1)[0]]), "cur.csv")


# --- Fireworks billing metrics ----------------------------------------------------------

FIREWORKS = (
    "start_time,end_time,usage_type,base_model_name,prompt_tokens,completion_tokens\n"
    "2026-11-03 00:00:00 UTC,2026-11-04 00:00:00 UTC,TEXT_COMPLETION_INFERENCE_USAGE,"
    "accounts/fireworks/models/deepseek-v3,120000,30000\n"
    "2026-11-04T00:00:00Z,2026-11-05T00:00:00Z,TEXT_COMPLETION_INFERENCE_USAGE,"
    "accounts/fireworks/models/deepseek-v3,90000,21000\n"
)


def test_fireworks_metrics_have_undivided_input_and_no_dollars() -> None:
    f = parse_bytes("fireworks", FIREWORKS.encode(), "fw.csv")
    assert f.format == "fireworks"
    assert [
        (line.day.isoformat(), line.token_type, line.tokens, line.amount_usd) for line in f.lines
    ] == [
        ("2026-11-03", "input", D(120_000), None),
        ("2026-11-03", "output", D(30_000), None),
        ("2026-11-04", "input", D(90_000), None),
        ("2026-11-04", "output", D(21_000), None),
    ]


def test_fireworks_malformed() -> None:
    bad = FIREWORKS.replace("90000", "-1")
    with pytest.raises(InvoiceFormatError, match="row 3, column prompt_tokens: a token count"):
        parse_bytes("fireworks", bad.encode(), "fw.csv")
    bad = FIREWORKS.replace("2026-11-04T00:00:00Z,2026-11-05", "soon,2026-11-05")
    with pytest.raises(InvoiceFormatError, match="row 3, column start_time"):
        parse_bytes("fireworks", bad.encode(), "fw.csv")


# --- generic CSV ------------------------------------------------------------------------

GENERIC = (
    "provider,date,model,token_type,tokens,amount_usd\n"
    "together,2026-11-03,meta-llama/Llama-3.3-70B-Instruct-Turbo,input_uncached,1000000,0.88\n"
    "together,2026-11-03,meta-llama/Llama-3.3-70B-Instruct-Turbo,input_cached,0,0\n"
    "together,2026-11-03,meta-llama/Llama-3.3-70B-Instruct-Turbo,output,250000,0.22\n"
    "together,2026-11-04,Qwen/Qwen2.5-72B-Instruct-Turbo,output,1000,\n"
    "\n"
    "together,2026-11-01,h100-dedicated,gpu_hours,720,2872.80\n"
)


def test_generic_csv() -> None:
    f = parse_bytes("together", GENERIC.encode(), "together.csv")
    assert f.format == "generic"
    lines = by_type(f.lines)
    assert lines[("meta-llama/Llama-3.3-70B-Instruct-Turbo", "input_uncached")] == (
        D(1_000_000),
        D("0.88"),
    )
    assert lines[("Qwen/Qwen2.5-72B-Instruct-Turbo", "output")] == (D(1000), None)  # no $
    assert lines[("h100-dedicated", "gpu_hours")] == (D(720), D("2872.80"))
    assert all(line.period_end - line.period_start == NOV4 - NOV3 for line in f.lines)


@pytest.mark.parametrize(
    ("bad", "good", "where"),
    [
        ("2026-11-03,meta", "2026-13-03,meta", "row 2, column date: expected YYYY-MM-DD"),
        (",input_cached,0,0", ",cached,0,0", "row 3, column token_type: 'cached' is not one"),
        (",output,250000,0.22", ",output,250000,0.2.2", "row 4, column amount_usd"),
        (",output,1000,", ",output,,", "row 5, column tokens: value is missing"),
        ("together,2026-11-01", "fireworks,2026-11-01", "row 7, column provider: 'fireworks'"),
    ],
)
def test_generic_csv_malformed(bad: str, good: str, where: str) -> None:
    assert bad in GENERIC
    with pytest.raises(InvoiceFormatError) as err:
        parse_bytes("together", GENERIC.replace(bad, good, 1).encode(), "together.csv")
    assert str(err.value).startswith(f"together.csv: {where}")


# --- detection, files, idempotence --------------------------------------------------------


def test_detection_and_unknown_files(tmp_path: Path) -> None:
    assert detect_format(json.dumps(OPENAI_USAGE).encode(), "x") == "openai_usage"
    assert detect_format(json.dumps(OPENAI_COSTS).encode(), "x") == "openai_costs"
    assert detect_format(json.dumps(ANTHROPIC_USAGE).encode(), "x") == "anthropic_usage"
    assert detect_format(json.dumps(ANTHROPIC_COST).encode(), "x") == "anthropic_cost"
    assert detect_format(_cur(CUR_ROWS), "x") == "bedrock_cur"
    assert detect_format(FIREWORKS.encode(), "x") == "fireworks"
    assert detect_format(GENERIC.encode(), "x") == "generic"
    with pytest.raises(InvoiceFormatError, match=r"x\.csv: row 1: unrecognized CSV header"):
        detect_format(b"date,what,cost\n2026-11-01,a,1\n", "x.csv")
    with pytest.raises(InvoiceFormatError, match=r"x\.json: invalid JSON"):
        detect_format(b'{"data": [', "x.json")
    with pytest.raises(InvoiceFormatError, match=r"x\.json: row top level, column data"):
        parse_bytes("p", b'{"object": "page"}', "x.json", "openai_usage")
    with pytest.raises(InvoiceFormatError, match="no invoice lines"):
        parse_bytes("p", b"provider,date,model,token_type,tokens,amount_usd\n", "e.csv")
    with pytest.raises(InvoiceFormatError, match="not UTF-8"):
        parse_bytes("p", b"provider,date\n\xff\xfe", "bin.csv", "generic")
    missing = tmp_path / "nope.json"
    with pytest.raises(InvoiceFormatError, match=f"{missing}: cannot read"):
        import_file("p", missing)


def test_import_id_is_a_content_hash(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(GENERIC)
    first, again = import_file("together", path), import_file("together", path)
    assert first.import_id == again.import_id and first.lines == again.lines
    path.write_text(GENERIC.replace("250000", "250001"))
    assert import_file("together", path).import_id != first.import_id
