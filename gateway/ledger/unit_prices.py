"""Per-unit rates in the price book: the fields a price entry may add, and their reading.

A deployment's `price:` (gateway.config.routes.Price) and a prices.yaml entry take, beside
the token rates:

    per_image: 0.04                      # USD per image; or by variant:
    per_image: {"1024x1024": 0.04, "hd/1024x1792": 0.12, default: 0.04}
    per_audio_second: 0.0001             # USD per second of transcribed audio
    per_1k_characters: 0.015             # USD per 1,000 characters of speech input
    per_search_unit: 0.002               # USD per rerank search unit

An entry that states a unit rate may leave out `input` and `output` (they are then 0). From
litellm's map, by the entry's mode: `input_cost_per_image` (image_generation),
`input_cost_per_second` (audio_transcription), `input_cost_per_character` (audio_speech),
`input_cost_per_query` (rerank). The arithmetic is routing/units.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, Field, model_validator

from routing.cost import UnitPrices

Rate = Annotated[float, Field(ge=0, allow_inf_nan=False)]
UNIT_FIELDS = ("per_image", "per_audio_second", "per_1k_characters", "per_search_unit")
_THOUSAND = Decimal(1000)
# litellm entry mode → (its per-unit field, the UnitPrices field); litellm states every rate
# per single unit. Only these modes: a chat entry priced per compute second (some hosted
# endpoints) must stay unpriced for tokens, not become free.
_LITELLM = {
    "image_generation": ("input_cost_per_image", "image"),
    "audio_transcription": ("input_cost_per_second", "audio_second"),
    "audio_speech": ("input_cost_per_character", "character"),
    "rerank": ("input_cost_per_query", "search_unit"),
}


class UnitRateFields(BaseModel):
    """Mixed into a price entry's schema (before its strict base, which forbids extras)."""

    per_image: Rate | dict[str, Rate] | None = Field(
        default=None,
        description="USD per generated image; or a map by `quality/size` or `size` "
        "(e.g. `hd/1024x1792`) with an optional `default`.",
    )
    per_audio_second: Rate | None = Field(
        default=None, description="USD per second of audio transcribed."
    )
    per_1k_characters: Rate | None = Field(
        default=None, description="USD per 1,000 characters of speech input."
    )
    per_search_unit: Rate | None = Field(
        default=None,
        description="USD per rerank search unit (one query over up to 100 documents).",
    )

    @model_validator(mode="before")
    @classmethod
    def _tokens_default_to_zero(cls, data: Any) -> Any:
        # `{per_image: 0.04}` is a whole price: an image model has no token rates to state.
        if isinstance(data, Mapping) and any(data.get(f) is not None for f in UNIT_FIELDS):
            data = {"input": 0, "output": 0, **data}
        return data


def _dec(value: float) -> Decimal:
    return Decimal(repr(value))


def unit_prices(row: object) -> UnitPrices | None:
    """The unit rates of a price entry (any object with the UnitRateFields names; entries
    without them, such as batch rates, have none)."""
    image = getattr(row, "per_image", None)
    second = getattr(row, "per_audio_second", None)
    per_1k = getattr(row, "per_1k_characters", None)
    search = getattr(row, "per_search_unit", None)
    if image is None and second is None and per_1k is None and search is None:
        return None
    variants: tuple[tuple[str, Decimal], ...] = ()
    if isinstance(image, dict):
        variants = tuple((k, _dec(v)) for k, v in image.items() if k != "default")
        image = image.get("default")
    return UnitPrices(
        image=None if image is None else _dec(image),
        audio_second=None if second is None else _dec(second),
        character=None if per_1k is None else _dec(per_1k) / _THOUSAND,
        search_unit=None if search is None else _dec(search),
        image_variants=variants,
    )


def litellm_unit_prices(entry: Mapping[str, Any]) -> UnitPrices | None:
    """The unit rates of one litellm price-map entry, or None when it states none."""
    mode = entry.get("mode")
    if not isinstance(mode, str) or mode not in _LITELLM:
        return None
    field, unit = _LITELLM[mode]
    value = entry.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    rate = Decimal(repr(value))
    if unit == "image":
        return UnitPrices(image=rate)
    if unit == "audio_second":
        return UnitPrices(audio_second=rate)
    if unit == "character":
        return UnitPrices(character=rate)
    return UnitPrices(search_unit=rate)
