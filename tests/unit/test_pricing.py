"""Price lookup: precedence, effective dates, litellm's bundled map, strict prices.yaml."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.config.loading import load_config, parse_config
from gateway.ledger.pricing import (
    LitellmPriceMap,
    PriceBook,
    litellm_prefix,
    load_price_book,
    load_prices,
    parse_prices,
)
from gateway.runtime.yaml_loader import ConfigError

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)

CONFIG = """\
providers:
  together: {kind: serverless, api_base: https://api.together.xyz/v1, api_key: k}
  openai: {kind: closed_api, api_base: https://api.openai.com/v1, api_key: k}
  private: {kind: serverless, api_base: http://10.0.0.5:8000/v1}
  gpu: {kind: dedicated, api_base: http://vllm.internal:8000/v1, hourly_usd: 2.5}
  gpu2: {kind: dedicated, api_base: http://vllm2.internal:8000/v1}
deployments:
  pinned@together: {provider: together, model: deepseek-ai/DeepSeek-V3,
                    price: {input: 9, output: 9, cached_input: 1}}
  ds@together: {provider: together, model: deepseek-ai/DeepSeek-V3}
  ds-alt@together: {provider: together, model: deepseek-ai/DeepSeek-V3}
  llama@together: {provider: together, model: meta-llama/Llama-3.3-70B-Instruct-Turbo}
  mini@openai: {provider: openai, model: gpt-4o-mini}
  four@openai: {provider: openai, model: gpt-4o}
  ds@private: {provider: private, model: deepseek-ai/DeepSeek-V3}
  odd@together: {provider: together, model: acme/not-a-real-model-xyz}
  llama@gpu: {provider: gpu, model: meta-llama/Llama-3.3-70B-Instruct}
  llama@gpu2: {provider: gpu2, model: meta-llama/Llama-3.3-70B-Instruct}
"""

PRICES = """\
models:
  pinned@together:
    - {effective_from: 2020-01-01, input: 7, output: 7}
  ds@together:
    - {effective_from: 2025-01-01, input: 2, output: 3}
  deepseek-ai/DeepSeek-V3:
    - {effective_from: 2025-01-01, input: 1.25, output: 1.25}
  gpt-4o:
    - {effective_from: 2024-05-13, input: 5.00, output: 15.00, cached_input: 2.50}
    - {effective_from: 2024-08-06, input: 2.50, output: 10.00, cached_input: 1.25}
  llama@gpu2:
    - {effective_from: 2025-01-01, input: 0, output: 0, hourly_usd: 1.75}
"""


def book(prices: str = PRICES, litellm: LitellmPriceMap | None = None) -> PriceBook:
    config = parse_config(CONFIG, "gw.yaml", {})
    return PriceBook.from_config(config, parse_prices(prices, "prices.yaml"), litellm)


def lookup(b: PriceBook, dep: str, at: datetime = NOW) -> tuple[str, Decimal, Decimal] | None:
    config = parse_config(CONFIG, "gw.yaml", {})
    d = config.deployments[dep]
    price = b.price_for(dep, d.model, config.providers[d.provider].kind, at)
    return None if price is None else (price.version, price.input, price.output)


def test_deployment_override_beats_prices_yaml() -> None:
    assert lookup(book(), "pinned@together") == (
        "deployment-override:pinned@together",
        Decimal(9),
        Decimal(9),
    )


def test_prices_yaml_by_deployment_id_beats_by_model() -> None:
    b = book()
    assert lookup(b, "ds@together") == ("prices.yaml:ds@together:2025-01-01", 2, 3)
    assert lookup(b, "ds-alt@together") == (
        "prices.yaml:deepseek-ai/DeepSeek-V3:2025-01-01",
        Decimal("1.25"),
        Decimal("1.25"),
    )


def test_prices_yaml_beats_litellm_and_litellm_fills_the_gaps() -> None:
    b = book()
    four = b.price_for("four@openai", "gpt-4o", "closed_api", NOW)
    assert four is not None and four.version == "prices.yaml:gpt-4o:2024-08-06"
    mini = b.price_for("mini@openai", "gpt-4o-mini", "closed_api", NOW)
    assert mini is not None and mini.version.startswith("litellm:1.106.2:")
    assert mini.version.endswith(":gpt-4o-mini")
    assert (mini.input, mini.output, mini.cached_input) == (
        Decimal("0.15"),
        Decimal("0.6"),
        Decimal("0.075"),
    )


def test_effective_dates_switch_at_utc_midnight() -> None:
    b = book()
    before = datetime(2024, 8, 5, 23, 59, 59, tzinfo=UTC)
    at = datetime(2024, 8, 6, tzinfo=UTC)
    assert lookup(b, "four@openai", before) == ("prices.yaml:gpt-4o:2024-05-13", 5, 15)
    assert lookup(b, "four@openai", at) == ("prices.yaml:gpt-4o:2024-08-06", Decimal("2.5"), 10)
    # 01:00 at UTC+2 is still the 5th in UTC.
    plus_two = datetime(2024, 8, 6, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert lookup(b, "four@openai", plus_two) == ("prices.yaml:gpt-4o:2024-05-13", 5, 15)
    # Naive datetimes are read as UTC.
    naive = lookup(b, "four@openai", datetime(2024, 8, 6))
    assert naive is not None and naive[0].endswith("2024-08-06")


def test_before_the_first_effective_date_the_next_source_answers() -> None:
    b = book()
    early = datetime(2024, 1, 1, tzinfo=UTC)
    version = lookup(b, "four@openai", early)
    assert version is not None and version[0].startswith("litellm:")
    # ds@together has no dated entry yet in 2024: by-model has none either → litellm's Together row
    assert lookup(b, "ds@together", early) == (
        "litellm:1.106.2:together_ai/deepseek-ai/DeepSeek-V3",
        Decimal("1.25"),
        Decimal("1.25"),
    )


def test_litellm_uses_the_host_prefix_and_never_borrows_another_hosts_price() -> None:
    b = book(prices="models: {}")
    assert lookup(b, "llama@together") == (
        "litellm:1.106.2:together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo",
        Decimal("1.04"),
        Decimal("1.04"),
    )
    assert lookup(b, "ds@private") is None
    assert lookup(b, "odd@together") is None


def test_litellm_name_variants() -> None:
    m = LitellmPriceMap()
    stripped = m.lookup("openai/gpt-4o-mini")
    assert stripped is not None and stripped.version.endswith(":gpt-4o-mini")
    upper = m.lookup("GPT-4o-MINI")
    assert upper is not None and upper.input == Decimal("0.15")
    sim = m.lookup("gpt-4o-mini::latency=20")
    assert sim is not None and sim.output == Decimal("0.6")
    # A cache-write rate is mapped when litellm has one (Anthropic's is 1.25× input).
    sonnet = m.lookup("claude-sonnet-4-5", "anthropic")
    assert sonnet is not None and sonnet.cache_write == Decimal("3.75")
    assert m.lookup("totally-unknown-model-123") is None


def test_litellm_map_rules_on_a_small_file(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(
        json.dumps(
            {
                "sample_spec": {"input_cost_per_token": 1, "output_cost_per_token": 1},
                "no-price": {"litellm_provider": "x", "mode": "chat"},
                "embed": {"input_cost_per_token": 2e-8, "mode": "embedding"},
                "chat-no-output": {"input_cost_per_token": 1e-6, "mode": "chat"},
                "acme/m": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
                "acme": {"litellm_provider": "acme"},
            }
        )
    )
    m = LitellmPriceMap(path)
    assert m.lookup("sample_spec") is None and m.lookup("no-price") is None
    assert m.lookup("chat-no-output") is None
    embed = m.lookup("embed")
    assert embed is not None and (embed.input, embed.output) == (Decimal("0.02"), 0)
    assert embed.cached_input == embed.input  # no cache discount known → input rate
    prefixed = m.lookup("m", "acme")
    assert prefixed is not None and prefixed.version.endswith(":acme/m")
    assert m.lookup("nothing", None) is None
    assert LitellmPriceMap(tmp_path / "missing.json").lookup("gpt-4o") is None


def test_provider_prefixes_from_host_name_or_protocol() -> None:
    assert litellm_prefix("t", "openai", "https://api.together.xyz/v1") == "together_ai"
    assert litellm_prefix("fw", "openai", "https://api.fireworks.ai/inference/v1") == (
        "fireworks_ai"
    )
    assert litellm_prefix("x", "openai", "https://my.openai.azure.com/v1") == "azure"
    assert litellm_prefix("groq", "openai", "http://10.1.1.1/v1") == "groq"
    assert litellm_prefix("claude", "anthropic", "https://api.anthropic.com") == "anthropic"
    assert litellm_prefix("mine", "openai", "http://10.1.1.1/v1") is None


def test_dedicated_deployments_cost_nothing_per_token_and_carry_hourly() -> None:
    b = book()
    gpu = b.price_for("llama@gpu", "meta-llama/Llama-3.3-70B-Instruct", "dedicated", NOW)
    assert gpu is not None and (gpu.input, gpu.output, gpu.cached_input) == (0, 0, 0)
    assert (gpu.hourly_usd, gpu.version) == (Decimal("2.5"), "dedicated:gpu")
    gpu2 = b.price_for("llama@gpu2", "meta-llama/Llama-3.3-70B-Instruct", "dedicated", NOW)
    assert gpu2 is not None and gpu2.hourly_usd == Decimal("1.75")
    assert gpu2.version == "prices.yaml:llama@gpu2:2025-01-01"


def test_memo_returns_the_same_answer_and_respects_days() -> None:
    b = book()
    first = b.price_for("four@openai", "gpt-4o", "closed_api", datetime(2024, 8, 5, 1, tzinfo=UTC))
    again = b.price_for("four@openai", "gpt-4o", "closed_api", datetime(2024, 8, 5, 9, tzinfo=UTC))
    later = b.price_for("four@openai", "gpt-4o", "closed_api", datetime(2024, 8, 6, 9, tzinfo=UTC))
    assert first is again
    assert first is not None and later is not None and first.input != later.input


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_prices(text, "prices.yaml")
    return [str(i) for i in info.value.issues]


def test_prices_yaml_errors_name_file_and_line() -> None:
    assert issues("models:\n  m:\n    - {effective_from: 2025-01-01, input: 1, outptu: 2}\n") == [
        "prices.yaml:3: models.m[0].output: required key is missing",
        "prices.yaml:3: models.m[0].outptu: unknown key 'outptu'",
    ]
    assert issues("models:\n  m:\n    - {effective_from: 2025-01-01, input: -1, output: 2}\n") == [
        "prices.yaml:3: models.m[0].input: Input should be greater than or equal to 0 (got -1)"
    ]
    assert issues("modles: {}\n") == ["prices.yaml:1: modles: unknown key 'modles'"]
    assert issues("- 1\n") == ["prices.yaml:1: the top level must be a mapping with `models:`"]
    assert issues("models: {m: [\n")[0].startswith("prices.yaml:2: invalid YAML")
    assert issues("models:\n  m: []\n") == [
        "prices.yaml:2: models.m: needs at least one dated entry"
    ]


def test_prices_yaml_rejects_duplicate_and_unordered_dates() -> None:
    text = """\
models:
  m:
    - {effective_from: 2025-01-01, input: 1, output: 1}
    - {effective_from: 2025-01-01, input: 2, output: 2}
  n:
    - {effective_from: 2025-03-01, input: 1, output: 1}
    - {effective_from: 2025-02-01, input: 2, output: 2}
"""
    assert issues(text) == [
        "prices.yaml:4: models.m[1].effective_from: duplicate: 2025-01-01 after 2025-01-01",
        "prices.yaml:7: models.n[1].effective_from: out of date order (oldest first): "
        "2025-02-01 after 2025-03-01",
    ]


def test_missing_prices_file_is_an_empty_table(tmp_path: Path) -> None:
    assert load_prices(tmp_path / "nope.yaml") == {}
    config = parse_config(CONFIG, "gw.yaml", {})
    b = load_price_book(config, tmp_path / "nope.yaml")
    assert lookup(b, "ds-alt@together") is not None  # litellm still answers


def test_shipped_prices_file_is_valid_and_prices_the_demo() -> None:
    table = load_prices(ROOT / "config" / "prices.yaml")
    assert {"deepseek-ai/DeepSeek-V3", "meta-llama/Llama-3.3-70B-Instruct"} <= table.keys()
    config = load_config(ROOT / "config" / "demo.yaml", {})
    b = load_price_book(config, ROOT / "config" / "prices.yaml")
    for dep_id, dep in config.deployments.items():
        kind = config.providers[dep.provider].kind
        price = b.price_for(dep_id, dep.model, kind, NOW)
        assert price is not None, dep_id
    embed = b.price_for("embed-small@sim-serverless", "text-embedding-3-small", "serverless", NOW)
    assert embed is not None and embed.version == "deployment-override:embed-small@sim-serverless"
    # The simulator's `::directives` suffix does not hide a prices.yaml entry.
    sim = b.price_for("other@sim", "deepseek-ai/DeepSeek-V3::latency=20", "serverless", NOW)
    assert sim is not None and sim.version == "prices.yaml:deepseek-ai/DeepSeek-V3:2025-01-01"
