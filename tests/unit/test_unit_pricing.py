"""Per-unit prices (images, audio seconds, characters, search units): where the price book finds
them, and how routing/units.py counts units and prices an attempt from them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.config.loading import parse_config
from gateway.ledger.pricing import LitellmPriceMap, PriceBook, parse_prices
from gateway.runtime.yaml_loader import ConfigError
from routing import units as u
from routing.cost import TokenPrice, UnitPrices, Usage

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ZERO = Decimal(0)


def _price(units: UnitPrices) -> TokenPrice:
    return TokenPrice.of(input=ZERO, output=ZERO, version="t", units=units)


def test_a_unit_rate_alone_is_a_whole_price_in_prices_yaml_and_routing_yaml() -> None:
    table = parse_prices(
        "models:\n"
        "  whisper-1: [{effective_from: 2024-01-01, per_audio_second: 0.0001}]\n"
        "  tts-1: [{effective_from: 2024-01-01, per_1k_characters: 0.015}]\n"
        "  dall-e-3:\n"
        "    - {effective_from: 2024-01-01, per_image: {default: 0.04, hd/1024x1792: 0.12}}\n",
        "prices.yaml",
    )
    whisper = table["whisper-1"][0].price
    assert (whisper.input, whisper.output) == (ZERO, ZERO)
    assert whisper.units == UnitPrices(audio_second=Decimal("0.0001"))
    tts = table["tts-1"][0].price.units
    assert tts is not None and tts.character == Decimal("0.000015")  # per 1k → per character
    image = table["dall-e-3"][0].price
    assert u.unit_rate(image, u.IMAGE, "hd/1024x1792") == Decimal("0.12")
    assert u.unit_rate(image, u.IMAGE, "standard/1024x1024") == Decimal("0.04")
    config = parse_config(
        "auth: none\n"
        "providers: {p: {kind: closed_api, api_base: 'http://x/v1'}}\n"
        "deployments: {r@p: {provider: p, model: rr, price: {per_search_unit: 0.002}}}\n"
        "routes: {r: {targets: [r@p]}}\n",
        "t.yaml",
        {},
    )
    book = PriceBook.from_config(config, {}, LitellmPriceMap(Path("/nonexistent")))
    found = book.price_for("r@p", "rr", "closed_api", NOW)
    assert found is not None and found.units == UnitPrices(search_unit=Decimal("0.002"))


def test_token_rates_stay_required_without_a_unit_rate() -> None:
    with pytest.raises(ConfigError, match="input"):
        parse_prices("models:\n  m: [{effective_from: 2024-01-01, output: 1}]\n", "p.yaml")


def test_litellm_unit_rates_only_for_their_modes(tmp_path: Path) -> None:
    entries = {
        "whisper-x": {"mode": "audio_transcription", "input_cost_per_second": 0.0001},
        "speak-x": {"mode": "audio_speech", "input_cost_per_character": 0.000015},
        "rank-x": {"mode": "rerank", "input_cost_per_token": 0.0, "input_cost_per_query": 0.002},
        # A chat model billed per compute second must stay unpriced, not become free.
        "chat-x": {"mode": "chat", "input_cost_per_second": 0.001},
    }
    path = tmp_path / "map.json"
    path.write_text(json.dumps(entries))
    prices = LitellmPriceMap(path)
    whisper = prices.lookup("whisper-x")
    assert whisper is not None and whisper.units == UnitPrices(audio_second=Decimal("0.0001"))
    speak = prices.lookup("speak-x")
    assert speak is not None and speak.units == UnitPrices(character=Decimal("0.000015"))
    rank = prices.lookup("rank-x")
    assert rank is not None and rank.units == UnitPrices(search_unit=Decimal("0.002"))
    assert prices.lookup("chat-x") is None


def test_cost_rules() -> None:
    per_image = _price(UnitPrices(image=Decimal("0.04")))
    # Units × rate, exact.
    assert u.unit_attempt_cost(Usage(), False, Decimal(3), u.IMAGE, per_image, False) == Decimal(
        "0.12"
    )
    # Units unknown with a unit rate: unknown cost, never $0.
    assert u.unit_attempt_cost(Usage(), False, None, u.IMAGE, per_image, False) is None
    # No price at all: None. Dedicated: 0 (its hours are charged in the reports).
    assert u.unit_attempt_cost(Usage(), False, Decimal(1), u.IMAGE, None, False) is None
    assert u.unit_attempt_cost(Usage(), False, Decimal(1), u.IMAGE, per_image, True) == ZERO
    # Reported tokens at a token rate win over units.
    tokens = TokenPrice.of(input=Decimal(5), output=Decimal(40), version="t", units=per_image.units)
    usage = Usage(input_uncached=10, output=100)
    assert u.unit_attempt_cost(usage, True, Decimal(1), u.IMAGE, tokens, False) == Decimal(
        "0.00405"
    )
    # Priced free (moderations): 0; token-priced with nothing reported: unknown.
    free = TokenPrice.of(input=ZERO, output=ZERO, version="t")
    assert u.unit_attempt_cost(Usage(), False, None, None, free, False) == ZERO
    paid = TokenPrice.of(input=Decimal(1), output=Decimal(1), version="t")
    assert u.unit_attempt_cost(Usage(), False, None, None, paid, False) is None


def test_counting_units() -> None:
    assert u.images_returned({"data": [{}, {}]}) == 2
    assert u.image_variant({"size": "1024x1792", "quality": "hd"}) == "hd/1024x1792"
    assert u.image_variant({"size": "512x512"}) == "512x512"
    assert u.audio_seconds({"usage": {"type": "duration", "seconds": 7}}) == 7
    assert u.audio_seconds({"duration": 2.5, "text": ""}) == Decimal("2.5")
    assert u.audio_seconds({"duration": "nan"}) is None
    assert u.audio_seconds({"duration": -1}) is None
    assert u.speech_characters({"input": "héllo"}) == 5
    docs = {"documents": ["d"] * 250}
    assert u.search_units(docs, {}) == 3
    assert u.search_units(docs, {"meta": {"billed_units": {"search_units": 1}}}) == 1
    assert u.rerank_usage({"usage": {"total_tokens": 9}}) == {"total_tokens": 9}
    billed = {"meta": {"billed_units": {"input_tokens": 4, "search_units": 1}}}
    assert u.rerank_usage(billed) == {"input_tokens": 4, "search_units": 1}
