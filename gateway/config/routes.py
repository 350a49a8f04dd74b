"""The upstream half of the routing YAML: providers, deployments and routes (with their
retry, timeout, breaker, gate and cache settings). `GatewayConfig` in gateway/config/schema.py
puts them together with the gateway-wide sections and turns them into routing specs.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway.config.fanout import ConsensusConfig, SpeculativeConfig
from gateway.config.guard import GuardCheck, unique_names
from gateway.config.responses import RouteResponses
from gateway.ledger.unit_prices import UnitRateFields

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]

STRATEGIES = (
    "direct",
    "failover",
    "cost",
    "weighted",
    "latency",
    "cascade",
    "quality",
    "consensus",
    "speculative",
)
KINDS = ("serverless", "dedicated", "closed_api")
# `openai`: Farebox's own aiohttp client. The rest go through litellm (imported only when
# one is configured) and are normalized back to the OpenAI shape.
PROTOCOLS = ("openai", "anthropic", "gemini", "bedrock", "azure", "vertex_ai")
# Protocols whose endpoint litellm knows by default; the others need an api_base.
_DEFAULT_BASE = frozenset({"anthropic", "gemini", "bedrock", "vertex_ai"})
OptionValue = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchPrice(_Strict):
    """USD per 1M tokens through the provider's batch API (unset cache rates: `input`)."""

    input: NonNegativeFloat
    output: NonNegativeFloat
    cached_input: NonNegativeFloat | None = None
    cache_write: NonNegativeFloat | None = None


class Price(UnitRateFields, _Strict):
    """USD per 1M tokens, and per unit for the pass-through endpoints (per_image,
    per_audio_second, per_1k_characters, per_search_unit; gateway/ledger/unit_prices.py).
    With a per-unit rate, `input` and `output` may be left out (they are then 0)."""

    input: NonNegativeFloat
    output: NonNegativeFloat
    cached_input: NonNegativeFloat | None = None
    cache_write: NonNegativeFloat | None = None
    # Rates of the provider's batch API for this deployment (beats the provider's
    # batch_discount and litellm's batch rates; gateway/ledger/pricing.py).
    batch: BatchPrice | None = None


class Provider(_Strict):
    kind: Literal["serverless", "dedicated", "closed_api"]
    protocol: str = "openai"
    # Validated even when absent: only some protocols have a default endpoint.
    api_base: str | None = Field(default=None, validate_default=True)
    api_key: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    # Extra keyword arguments for litellm (api_version, aws_region_name, vertex_project…);
    # only for litellm protocols.
    options: dict[str, OptionValue] = Field(default_factory=dict)
    hourly_usd: NonNegativeFloat | None = None
    # Fraction off the live token price on the provider's batch API (0.5: half price), for
    # deployments without an explicit `price: {batch: …}`.
    batch_discount: Annotated[float, Field(ge=0, lt=1)] | None = None
    max_concurrency: PositiveInt | None = None
    # Where it processes data and whether it keeps none (for route `require:`).
    region: str | None = None
    zero_retention: bool = False
    # The account's limits, requests and tokens per minute (deployments may override).
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    # The upstream serves POST /v1/responses itself (OpenAI protocol only): Responses calls
    # are passed through natively; otherwise Farebox translates them to Chat Completions.
    responses_api: bool = False
    # Built-in Responses tools the native upstream runs (web_search, file_search…): a request
    # using one is only planned onto providers that list it.
    builtin_tools: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # The provider has OpenAI's Files + Batch API (`/files`, `/batches` under api_base): batch
    # jobs routed here can run as a provider batch, at its batch price (openai protocol only).
    batch_api: bool = False

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            if info.data.get("protocol", "openai") not in _DEFAULT_BASE:
                raise PydanticCustomError("missing", "required key is missing")
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        if value not in PROTOCOLS:
            hint = _suggest(value, PROTOCOLS)
            raise ValueError(f"unknown protocol {value!r}{hint}; available: {', '.join(PROTOCOLS)}")
        return value

    @model_validator(mode="after")
    def _protocol_fields(self) -> Provider:
        if self.options and self.protocol == "openai":
            raise ValueError("options are only for litellm protocols (not openai)")
        if self.responses_api and self.protocol != "openai":
            raise ValueError("responses_api is only for the openai protocol")
        if self.batch_api and self.protocol != "openai":
            # litellm 1.106 only reads Anthropic message batches (retrieve, results): it
            # cannot create one, so no other protocol can run a provider batch yet.
            raise ValueError("batch_api is only for the openai protocol")
        if self.builtin_tools and not self.responses_api:
            raise ValueError(
                "builtin_tools needs responses_api: true (only native upstreams run them)"
            )
        return self

    @property
    def via_litellm(self) -> bool:
        return self.protocol != "openai"


class Deployment(_Strict):
    provider: str
    model: str = Field(min_length=1)
    price: Price | None = None
    context_window: PositiveInt | None = None
    max_concurrency: PositiveInt | None = None
    # What it can do; unset means everything (listing them lets cost routing skip it for
    # requests that need something else).
    capabilities: list[Literal["tools", "json_schema", "vision", "audio"]] | None = None
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None


class TimeoutsConfig(_Strict):
    connect_ms: PositiveInt = 5_000
    ttft_ms: PositiveInt = 30_000
    idle_ms: PositiveInt = 30_000
    total_ms: PositiveInt = 600_000
    attempt_ms: PositiveInt | None = None


class RetryConfig(_Strict):
    attempts: Annotated[int, Field(ge=1, le=10)] = 2
    backoff_ms: Annotated[int, Field(ge=0)] = 100
    max_backoff_ms: Annotated[int, Field(ge=0)] = 2_000


class BreakerConfig(_Strict):
    consecutive_failures: PositiveInt = 5
    error_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    min_requests: PositiveInt = 20
    window_s: Annotated[float, Field(gt=0)] = 30.0
    cooldown_s: Annotated[float, Field(gt=0)] = 5.0
    max_cooldown_s: Annotated[float, Field(gt=0)] = 300.0


class GateConfig(_Strict):
    """Deterministic checks an answer must pass before the client gets it."""

    # "request": the request's response_format json_schema; or an inline JSON Schema.
    json_schema: Literal["request"] | dict[str, Any] | None = None
    tool_arguments: bool = False  # tool-call arguments must match the tool's parameters
    reject_truncated: bool = True  # finish_reason "length" fails
    non_empty: bool = True
    not_refusal: bool = False
    regex: str | None = None  # the content must match (re.search)
    # field path → a YAML file of {canonical: [variants…]} (relative to the config file),
    # or that mapping inline; applied to the JSON answer before it is validated.
    normalize: dict[str, str | dict[str, list[str]]] = Field(default_factory=dict)
    on_fail: Literal["escalate", "repair"] = "escalate"
    buffer_streams: bool = False

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class CacheConfig(_Strict):
    """A route's response cache (gateway/cache/response.py): repeated requests are answered without
    an upstream call. Off unless a route has `cache:`."""

    mode: Literal["exact", "semantic"] = "exact"
    ttl_s: Annotated[int, Field(gt=0, le=30 * 24 * 3600)] = 3600
    # Who may be served an answer another request paid for: the same key (default), the
    # same team, or every caller of the route.
    scope: Literal["key", "team", "route"] = "key"
    # Sampled requests (temperature > 0, or unset: the API default is 1) and n > 1 ask for
    # varied answers; cache them only when the route says so.
    sampled: bool = False
    multiple_choices: bool = False
    # semantic: serve when the last user turn's embedding is at least this similar to a
    # cached one (cosine) and everything else in the request is identical.
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.95
    # semantic: recent entries per route and scope searched for a neighbour.
    index_entries: Annotated[int, Field(gt=0, le=100_000)] = 2_000
    # In-process store (no Redis): bounded by entries and bytes, least recently used first out.
    max_entries: Annotated[int, Field(gt=0)] = 10_000
    max_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    # Answers larger than this are not cached (in either store).
    max_entry_bytes: Annotated[int, Field(gt=0)] = 1024 * 1024


class Require(_Strict):
    region: list[str] | None = None
    zero_retention: bool = False
    kind: list[Literal["serverless", "dedicated", "closed_api"]] | None = None


class Route(_Strict):
    strategy: str = "direct"
    targets: list[str] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list)
    # weighted: share per target (targets left out weigh 1); sticky: user |
    # prompt_cache_key | header:<name> keeps a client on one target.
    weights: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    sticky: str | None = None
    require: Require | None = None
    # Prompt-cache affinity for cost, weighted and latency routes.
    affinity: bool = True
    gate: GateConfig | None = None
    # quality: send to the strong (last) target when the router's score is above
    # `threshold`, or hold `strong_share` of traffic there (the threshold follows live
    # score quantiles), or `target_quality`; `router_model` overrides the model shipped
    # with Farebox.
    threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    strong_share: Annotated[float, Field(ge=0, le=1)] | None = None
    # Or the share of the strong model's quality gain to keep (PGR, 0.8 = 80 %): the router
    # model's cross-validated curve turns it into the strong share that gets it.
    target_quality: Annotated[float, Field(gt=0, le=1)] | None = None
    router_model: str | None = None
    # Unset fields inherit server.timeouts.
    timeouts: TimeoutsConfig | None = None
    retry: RetryConfig | None = None
    hedge_after_ms: PositiveInt | None = None
    workload: str | None = None
    # Opt-in: one `farebox.payloads` log line per request with its messages and answer,
    # PII and secrets redacted. Off by default: Farebox retains no prompt or completion.
    log_payloads: bool = False
    # Opt-in response cache (exact or semantic); see CacheConfig.
    cache: CacheConfig | None = None
    # Fan-out strategies (gateway/config/fanout.py): their options, and what a streaming
    # request gets (`buffer`: the decided answer as a stream; `refuse`: 400).
    consensus: ConsensusConfig | None = None
    speculative: SpeculativeConfig | None = None
    streaming: Literal["buffer", "refuse"] | None = None
    # Stored Responses on this route (gateway/config/responses.py): `{store: false}` keeps
    # nothing, whatever the client sends.
    responses: RouteResponses | None = None
    # Guard checks on this route's requests (gateway/config/guard.py); unset: the
    # top-level `guard:`, `[]`: none.
    guard: list[GuardCheck] | None = None

    @field_validator("guard")
    @classmethod
    def _unique_checks(cls, value: list[GuardCheck] | None) -> list[GuardCheck] | None:
        return unique_names(value)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            hint = _suggest(value, STRATEGIES)
            raise ValueError(
                f"unknown strategy {value!r}{hint}; available: {', '.join(STRATEGIES)}"
            )
        return value

    @field_validator("sticky")
    @classmethod
    def _known_sticky(cls, value: str | None) -> str | None:
        if value is None or value in ("user", "prompt_cache_key"):
            return value
        if value.startswith("header:") and len(value) > len("header:"):
            return "header:" + value.removeprefix("header:").lower()
        raise ValueError("must be user, prompt_cache_key or header:<name>")


def _suggest(name: str, candidates: Any) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
