"""Per-unit billing arithmetic for the pass-through endpoints (pure, exact, never raises).

Images, transcription, speech and rerank are billed per unit by most providers: an image, a
second of audio, a character of speech input, a search unit (one query over up to 100
documents, Cohere's definition). This module counts those units from request and response
bodies and prices an attempt from them; the I/O side is gateway/core/passthrough.py.

Which figure prices an attempt, first that applies:

1. the provider reported token usage and the price has a token rate: the tokens (models
   billed per token, e.g. gpt-image-1, gpt-4o-transcribe, token-priced rerankers);
2. the price has a rate for the attempt's unit: units × that rate (None when the units
   could not be counted: an unknown figure is never billed as $0);
3. the price has no token rate either (moderations: free on OpenAI): 0;
4. otherwise None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from routing.cost import COST_QUANTUM, TokenPrice, Usage, attempt_cost

IMAGE = "image"
AUDIO_SECOND = "audio_second"
CHARACTER = "character"
SEARCH_UNIT = "search_unit"
UNITS = (IMAGE, AUDIO_SECOND, CHARACTER, SEARCH_UNIT)
# Cohere bills one search unit per query over up to this many documents.
DOCUMENTS_PER_SEARCH_UNIT = 100
# More than this is not a real count (a day of audio is 86,400 s): a garbage field must
# not turn into a huge bill.
MAX_UNITS = Decimal(10**9)

_ZERO = Decimal(0)


def unit_rate(price: TokenPrice, unit: str | None, variant: str | None = None) -> Decimal | None:
    """USD per `unit` in `price`; images try the `variant` (`quality/size`, then `size`)."""
    rates = price.units
    if rates is None:
        return None
    if unit == IMAGE:
        if variant and rates.image_variants:
            variants = dict(rates.image_variants)
            for key in (variant, variant.rpartition("/")[2]):
                if key in variants:
                    return variants[key]
        return rates.image
    if unit == AUDIO_SECOND:
        return rates.audio_second
    if unit == CHARACTER:
        return rates.character
    if unit == SEARCH_UNIT:
        return rates.search_unit
    return None


def unit_attempt_cost(
    usage: Usage,
    provider_tokens: bool,
    units: Decimal | None,
    unit: str | None,
    price: TokenPrice | None,
    dedicated: bool,
    variant: str | None = None,
) -> Decimal | None:
    """USD for one attempt of a per-unit endpoint (the rules in the module docstring)."""
    if dedicated:
        return attempt_cost(usage, price, True)
    if price is None:
        return None
    token_priced = bool(price.input or price.output)
    has_tokens = usage.input_total > 0 or usage.output > 0
    if provider_tokens and has_tokens and token_priced:
        return attempt_cost(usage, price, False)
    rate = unit_rate(price, unit, variant)
    if rate is not None:
        return None if units is None else (units * rate).quantize(COST_QUANTUM)
    if not token_priced:
        return _ZERO.quantize(COST_QUANTUM)
    return None


def _number(value: Any) -> Decimal | None:
    """A non-negative finite count from a JSON value, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        number = Decimal(str(value).strip()) if isinstance(value, str) else Decimal(repr(value))
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite() or number < 0 or number > MAX_UNITS:
        return None
    return number


def images_returned(response: Mapping[str, Any]) -> Decimal | None:
    """Images in an images/generations answer: the length of its `data`."""
    data = response.get("data")
    return Decimal(len(data)) if isinstance(data, list) else None


def image_variant(request: Mapping[str, Any]) -> str | None:
    """`quality/size` of an image request (either part may be absent), for variant rates."""
    size = request.get("size")
    quality = request.get("quality")
    size = size if isinstance(size, str) else ""
    quality = quality if isinstance(quality, str) else ""
    if not size and not quality:
        return None
    return f"{quality}/{size}" if quality else size


def audio_seconds(response: Mapping[str, Any]) -> Decimal | None:
    """Seconds of audio a transcription billed: `usage.seconds` (usage type `duration`),
    else the verbose answer's `duration`; None when the answer says neither."""
    usage = response.get("usage")
    if isinstance(usage, Mapping) and "seconds" in usage:
        found = _number(usage.get("seconds"))
        if found is not None:
            return found
    return _number(response.get("duration"))


def speech_characters(request: Mapping[str, Any]) -> Decimal | None:
    """Characters of a speech request's `input` (code points, as OpenAI counts them)."""
    text = request.get("input")
    return Decimal(len(text)) if isinstance(text, str) else None


def search_units(request: Mapping[str, Any], response: Mapping[str, Any]) -> Decimal | None:
    """Search units of a rerank call: what the provider billed (Cohere's
    `meta.billed_units.search_units`), else one per query per 100 documents sent."""
    meta = response.get("meta")
    if isinstance(meta, Mapping):
        billed = meta.get("billed_units")
        if isinstance(billed, Mapping) and "search_units" in billed:
            found = _number(billed.get("search_units"))
            if found is not None:
                return found
    documents = request.get("documents")
    if not isinstance(documents, list):
        return None
    return Decimal(max(1, math.ceil(len(documents) / DOCUMENTS_PER_SEARCH_UNIT)))


def rerank_usage(response: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Token usage a rerank answer reports, in the OpenAI shape usage_from_openai reads:
    `usage` (Jina: total_tokens) or Cohere's `meta.billed_units.input_tokens`."""
    usage = response.get("usage")
    if isinstance(usage, Mapping):
        return usage
    meta = response.get("meta")
    if isinstance(meta, Mapping):
        billed = meta.get("billed_units")
        if isinstance(billed, Mapping) and ("input_tokens" in billed or "output_tokens" in billed):
            return billed
    return None
