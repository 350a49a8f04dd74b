"""Batch rates in the price book: precedence (explicit > provider discount > litellm's map),
versions that tell a batch charge from a live one, strict config and prices.yaml."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.config.loading import parse_config
from gateway.ledger.pricing import LitellmPriceMap, PriceBook, parse_prices
from gateway.runtime.yaml_loader import ConfigError

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)

CONFIG = """\
providers:
  openai: {kind: closed_api, api_base: https://api.openai.com/v1, api_key: k}
  half: {kind: closed_api, api_base: https://api.openai.com/v1, api_key: k, batch_discount: 0.5}
  together: {kind: serverless, api_base: https://api.together.xyz/v1, batch_discount: 0.4}
  gpu: {kind: dedicated, api_base: http://vllm.internal:8000/v1, hourly_usd: 2.5}
deployments:
  explicit@half: {provider: half, model: gpt-4o,
                  price: {input: 2, output: 8, batch: {input: 0.9, output: 3.5}}}
  override-no-batch@half: {provider: half, model: gpt-4o, price: {input: 2, output: 8}}
  override-no-batch@openai: {provider: openai, model: gpt-4o, price: {input: 2, output: 8}}
  four@half: {provider: half, model: gpt-4o}
  four@openai: {provider: openai, model: gpt-4o}
  mini@openai: {provider: openai, model: gpt-4o-mini}
  dated@openai: {provider: openai, model: dated-model}
  ds@together: {provider: together, model: deepseek-ai/DeepSeek-V3}
  odd@openai: {provider: openai, model: acme/unknown-xyz}
  llama@gpu: {provider: gpu, model: meta-llama/Llama-3.3-70B-Instruct}
"""

PRICES = """\
models:
  gpt-4o:
    - {effective_from: 2024-08-06, input: 2.50, output: 10.00, cached_input: 1.25}
  dated-model:
    - {effective_from: 2025-01-01, input: 4, output: 4}
    - {effective_from: 2025-06-01, input: 3, output: 6, cached_input: 1,
       batch: {input: 1.5, output: 3, cached_input: 0.5}}
  deepseek-ai/DeepSeek-V3:
    - {effective_from: 2025-01-01, input: 1.25, output: 1.25}
"""


def book(prices: str = PRICES, litellm: LitellmPriceMap | None = None) -> PriceBook:
    config = parse_config(CONFIG, "gw.yaml", {})
    return PriceBook.from_config(config, parse_prices(prices, "prices.yaml"), litellm)


def batch(b: PriceBook, dep: str, at: datetime = NOW) -> tuple[str, Decimal, Decimal] | None:
    config = parse_config(CONFIG, "gw.yaml", {})
    d = config.deployments[dep]
    price = b.batch_price_for(dep, d.model, config.providers[d.provider].kind, at)
    return None if price is None else (price.version, price.input, price.output)


def test_explicit_deployment_batch_price_beats_the_provider_discount() -> None:
    b = book()
    assert batch(b, "explicit@half") == (
        "deployment-override:explicit@half+batch",
        Decimal("0.9"),
        Decimal("3.5"),
    )
    price = b.batch_price_for("explicit@half", "gpt-4o", "closed_api", NOW)
    assert price is not None and price.cached_input == Decimal("0.9")  # unset: batch input


def test_provider_discount_applies_to_whichever_live_price_applies() -> None:
    b = book()
    # Override without batch rates: the discount of the override (not prices.yaml's batch).
    assert batch(b, "override-no-batch@half") == (
        "deployment-override:override-no-batch@half+batch-50%",
        Decimal(1),
        Decimal(4),
    )
    # prices.yaml live price, half off, cached reads too.
    four = b.batch_price_for("four@half", "gpt-4o", "closed_api", NOW)
    assert four is not None
    assert four.version == "prices.yaml:gpt-4o:2024-08-06+batch-50%"
    assert (four.input, four.output, four.cached_input) == (
        Decimal("1.25"),
        Decimal(5),
        Decimal("0.625"),
    )
    assert batch(b, "ds@together") == (
        "prices.yaml:deepseek-ai/DeepSeek-V3:2025-01-01+batch-40%",
        Decimal("0.75"),
        Decimal("0.75"),
    )
    # The version always differs from the live one, so a ledger row shows the rate applied.
    live = b.price_for("four@half", "gpt-4o", "closed_api", NOW)
    assert live is not None and live.version != four.version and live.input == Decimal("2.5")


def test_explicit_prices_yaml_batch_rates_are_dated_with_their_entry() -> None:
    b = book()
    june = datetime(2025, 6, 1, tzinfo=UTC)
    assert batch(b, "dated@openai", june) == (
        "prices.yaml:dated-model:2025-06-01+batch",
        Decimal("1.5"),
        Decimal(3),
    )
    price = b.batch_price_for("dated@openai", "dated-model", "closed_api", june)
    assert price is not None and price.cached_input == Decimal("0.5")
    # The May entry states no batch rate, the provider has no discount and litellm does
    # not know the model: no batch rate (the caller charges the live price).
    assert batch(b, "dated@openai", datetime(2025, 5, 31, tzinfo=UTC)) is None


def test_litellm_batch_rates_come_last_and_only_from_the_live_entry() -> None:
    b = book()
    # No explicit rate, no discount on `openai`: litellm's gpt-4o-mini batch fields.
    mini = b.batch_price_for("mini@openai", "gpt-4o-mini", "closed_api", NOW)
    assert mini is not None
    assert mini.version.startswith("litellm:") and mini.version.endswith(":gpt-4o-mini+batch")
    assert (mini.input, mini.output) == (Decimal("0.075"), Decimal("0.3"))
    # gpt-4o's live price is pinned in prices.yaml (no batch: there); litellm's batch rates
    # for the same model still apply.
    four = b.batch_price_for("four@openai", "gpt-4o", "closed_api", NOW)
    assert four is not None and four.version.endswith(":gpt-4o+batch")
    assert (four.input, four.output) == (Decimal("1.25"), Decimal(5))
    assert batch(b, "odd@openai") is None


def test_litellm_batch_fields_on_a_small_file(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(
        json.dumps(
            {
                "both": {
                    "input_cost_per_token": 2e-6,
                    "output_cost_per_token": 8e-6,
                    "cache_read_input_token_cost": 1e-6,
                    "input_cost_per_token_batches": 1e-6,
                    "output_cost_per_token_batches": 4e-6,
                    "cache_read_input_token_cost_batches": 5e-7,
                },
                "live-only": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6},
                "p/live-only": {
                    "input_cost_per_token": 1e-6,
                    "output_cost_per_token": 1e-6,
                    "input_cost_per_token_batches": 5e-7,
                    "output_cost_per_token_batches": 5e-7,
                },
            }
        )
    )
    m = LitellmPriceMap(path)
    both = m.lookup_batch("both")
    assert both is not None
    assert (both.input, both.output, both.cached_input) == (Decimal(1), Decimal(4), Decimal("0.5"))
    assert both.cache_write == 1  # unstated: the batch input rate
    assert m.lookup_batch("live-only") is None
    # With a prefix, the prefixed entry is the one the live price comes from.
    prefixed = m.lookup_batch("live-only", "p")
    assert prefixed is not None and prefixed.input == Decimal("0.5")


def test_dedicated_deployments_have_no_batch_rate() -> None:
    b = book()
    assert b.batch_price_for(
        "llama@gpu", "meta-llama/Llama-3.3-70B-Instruct", "dedicated", NOW
    ) is (None)


def test_batch_memo_is_per_day_and_apart_from_live() -> None:
    b = book()
    first = b.batch_price_for("four@half", "gpt-4o", "closed_api", NOW)
    assert b.batch_price_for("four@half", "gpt-4o", "closed_api", NOW) is first
    live = b.price_for("four@half", "gpt-4o", "closed_api", NOW)
    assert live is not first


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("batch_discount: 1", "less than 1"),
        ("batch_discount: -0.1", "greater than or equal to 0"),
        ("batch_discount: half", "valid number"),
    ],
)
def test_provider_batch_discount_is_validated(yaml_text: str, needle: str) -> None:
    text = CONFIG.replace("batch_discount: 0.4", yaml_text)
    with pytest.raises(ConfigError) as err:
        parse_config(text, "gw.yaml", {})
    assert needle in str(err.value) and "batch_discount" in str(err.value)


def test_deployment_batch_price_is_strict() -> None:
    text = CONFIG.replace("batch: {input: 0.9, output: 3.5}", "batch: {input: 0.9, outptu: 3.5}")
    with pytest.raises(ConfigError) as err:
        parse_config(text, "gw.yaml", {})
    message = str(err.value)
    assert "outptu" in message and "gw.yaml:" in message
    text = CONFIG.replace("batch: {input: 0.9, output: 3.5}", "batch: {input: -1, output: 3.5}")
    with pytest.raises(ConfigError):
        parse_config(text, "gw.yaml", {})


def test_prices_yaml_batch_entry_is_strict() -> None:
    bad = PRICES.replace("batch: {input: 1.5,", "batch: {inptu: 1.5,")
    with pytest.raises(ConfigError) as err:
        parse_prices(bad, "prices.yaml")
    assert "inptu" in str(err.value) and "prices.yaml:" in str(err.value)


def test_batch_versions_fit_the_ledger_column_and_keep_their_suffix() -> None:
    # attempts.price_version is 64 characters; a long litellm key must not overflow it.
    config = parse_config(
        CONFIG + "  long@together: {provider: together, model: " + "x" * 80 + "}\n",
        "gw.yaml",
        {},
    )
    prices = "models: {" + "x" * 80 + ": [{effective_from: 2025-01-01, input: 1, output: 1}]}"
    b = PriceBook.from_config(config, parse_prices(prices, "prices.yaml"))
    price = b.batch_price_for("long@together", "x" * 80, "serverless", NOW)
    assert price is not None and len(price.version) == 64
    assert price.version.endswith("+batch-40%") and price.version.startswith("prices.yaml:xxx")
