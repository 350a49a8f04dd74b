"""Token usage and attempt cost arithmetic: pure, exact (Decimal) and forgiving of bad input.

Usage arrives from many providers in the OpenAI shape after normalization; a malformed field
must never turn a served answer into a 500 or lose a ledger row, so parsing here never raises
and counts anything it cannot read as 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

MILLION = Decimal(1_000_000)
# Ten decimal places is below a millionth of a cent, so summing 50M attempts a month
# stays exact to well under a cent.
COST_QUANTUM = Decimal("1e-10")
# A count above this is not a real token count (10^12 tokens is ~$millions per call); treating
# it as garbage keeps one bogus provider field from swamping a month's report.
MAX_TOKENS = 10**12

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class UnitPrices:
    """USD per unit for endpoints billed per unit rather than per token (routing/units.py):
    an image (optionally per `quality/size` or `size` variant), a second of transcribed
    audio, a character of speech input, a rerank search unit."""

    image: Decimal | None = None
    audio_second: Decimal | None = None
    character: Decimal | None = None
    search_unit: Decimal | None = None
    # ("hd/1024x1792", rate), ("1024x1024", rate): tried before `image`.
    image_variants: tuple[tuple[str, Decimal], ...] = ()


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """USD per 1M tokens for one deployment at one point in time.

    `cached_input` and `cache_write` are always set: when a price source does not state
    them, build the price with :meth:`of`, which charges cached reads and cache writes at the
    plain input rate. That over-charges a provider that does discount cache hits, which is the
    safe direction for budgets and shows up as a reconciliation variance rather than hiding one.
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    version: str
    hourly_usd: Decimal | None = None
    # Per-unit rates (images, audio seconds, characters, search units); None for most models.
    units: UnitPrices | None = None

    @classmethod
    def of(
        cls,
        *,
        input: Decimal,
        output: Decimal,
        version: str,
        cached_input: Decimal | None = None,
        cache_write: Decimal | None = None,
        hourly_usd: Decimal | None = None,
        units: UnitPrices | None = None,
    ) -> TokenPrice:
        return cls(
            input=input,
            output=output,
            cached_input=input if cached_input is None else cached_input,
            cache_write=input if cache_write is None else cache_write,
            version=version,
            hourly_usd=hourly_usd,
            units=units,
        )


class Usage(NamedTuple):
    """One attempt's tokens, split the way they are billed.

    `output` includes `reasoning` (as OpenAI's completion_tokens does); `reasoning` is kept
    for reporting only and is never priced on its own. (A named tuple: one is built per
    attempt, and a frozen dataclass pays an `object.__setattr__` per field.)
    """

    input_uncached: int = 0
    cached_read: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0

    @property
    def input_total(self) -> int:
        return self.input_uncached + self.cached_read + self.cache_write


def _count(value: Any) -> int:
    """A token count from a JSON value, or 0 when it is not a plausible one."""
    if type(value) is int:  # the common case, first: this runs for every attempt
        return value if 0 <= value <= MAX_TOKENS else 0
    if isinstance(value, bool):  # bool is an int subclass; `true` is not a count
        return 0
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return 0
        number = int(value)
    elif isinstance(value, str) and value.isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        return 0
    return number if 0 <= number <= MAX_TOKENS else 0


def _details(usage: Mapping[str, Any], *names: str) -> Mapping[str, Any]:
    for name in names:
        value = usage.get(name)
        if value is None:  # the usual miss: no ABC isinstance check (~0.5 µs a request)
            continue
        if type(value) is dict or isinstance(value, Mapping):
            return value
    return _NO_DETAILS


_NO_DETAILS: Mapping[str, Any] = MappingProxyType({})


def usage_from_openai(usage: object) -> Usage:
    """Split normalized OpenAI usage (chat, completions, embeddings) into billable parts.

    OpenAI counts cached reads (and cache writes, when a provider reports
    `prompt_tokens_details.cache_write_tokens`) inside `prompt_tokens`, so the uncached
    input is what remains: `prompt − cached − cache_write`, floored at 0 when a provider's
    numbers do not add up. Reasoning is inside `completion_tokens`; if a provider reports
    more reasoning than completion tokens, reasoning is capped so the ledger's invariant
    (reasoning ⊆ output) holds and nothing is billed twice. Responses-API names
    (`input_tokens`, `output_tokens`, `*_tokens_details`) are accepted too. Anthropic usage,
    whose `input_tokens` excludes cache, must be normalized before it gets here.
    """
    # `type is dict` first: the JSON-decoded case, without an ABC isinstance check.
    if not (type(usage) is dict or isinstance(usage, Mapping)):
        return Usage()
    try:
        prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
        completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
        if prompt == 0 and completion == 0:
            # Some embedding servers send only total_tokens; all of it is input.
            prompt = _count(usage.get("total_tokens"))
        prompt_details = _details(usage, "prompt_tokens_details", "input_tokens_details")
        completion_details = _details(usage, "completion_tokens_details", "output_tokens_details")
        cached = _count(prompt_details.get("cached_tokens"))
        cache_write = _count(prompt_details.get("cache_write_tokens"))
        reasoning = min(_count(completion_details.get("reasoning_tokens")), completion)
    except Exception:  # a hostile Mapping implementation must not break metering
        return Usage()
    return Usage(
        input_uncached=max(0, prompt - cached - cache_write),
        cached_read=cached,
        cache_write=cache_write,
        output=completion,
        reasoning=reasoning,
    )


def attempt_cost(usage: Usage, price: TokenPrice | None, dedicated: bool) -> Decimal | None:
    """USD for one attempt, quantized to 10 decimal places.

    Dedicated deployments cost 0 per attempt because their GPU hours are charged in the
    reports whether or not they were used. An unknown price gives None, never 0, so a
    missing price cannot masquerade as a free request.
    """
    if dedicated:
        return _ZERO.quantize(COST_QUANTUM)
    if price is None:
        return None
    # The default 28-digit context holds MAX_TOKENS × any sane price exactly, so no local
    # context is needed (it costs more than the arithmetic on this hot path).
    micro_usd = (
        max(0, usage.input_uncached) * price.input
        + max(0, usage.cached_read) * price.cached_input
        + max(0, usage.cache_write) * price.cache_write
        + max(0, usage.output) * price.output
    )
    return (micro_usd / MILLION).quantize(COST_QUANTUM)
