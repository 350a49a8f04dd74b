"""The routing YAML: schema (pydantic, extra="forbid"), loader and cross-reference checks.

Every problem is reported with file, line and key path, and unknown names get a
"did you mean" suggestion, because a typo in a route is an outage.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway.config.fanout import ConsensusConfig, SpeculativeConfig, fanout_policy
from gateway.config.yaml_loader import ConfigError, ConfigIssue, load_yaml
from gateway.drills.config import DrillSchedule
from gateway.keys.auth import Principal
from routing.model import (
    DeploymentSpec,
    GatePolicy,
    Requirements,
    RetryPolicy,
    RouteSpec,
    Timeouts,
)
from routing.resolve import ModelIndex

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


class Price(_Strict):
    """USD per 1M tokens."""

    input: NonNegativeFloat
    output: NonNegativeFloat
    cached_input: NonNegativeFloat | None = None
    cache_write: NonNegativeFloat | None = None


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
    max_concurrency: PositiveInt | None = None
    # Where it processes data and whether it keeps none (for route `require:`).
    region: str | None = None
    zero_retention: bool = False
    # The account's limits, requests and tokens per minute (deployments may override).
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None

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
    # score quantiles); `router_model` overrides the model shipped with Farebox.
    threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    strong_share: Annotated[float, Field(ge=0, le=1)] | None = None
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


class ApiKey(_Strict):
    name: str = Field(min_length=1)
    key: str = Field(min_length=8)
    # Optional limits, as on virtual keys (`farebox keys create`).
    team: str | None = None
    routes: list[str] | None = None
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_concurrency: PositiveInt | None = None
    budget_usd: Annotated[float, Field(gt=0)] | None = None
    soft_budget_ratio: Annotated[float, Field(gt=0, le=1)] | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    def principal(self) -> Principal:
        return Principal(
            key_name=self.name,
            team=self.team,
            routes=frozenset(self.routes) if self.routes is not None else None,
            rpm=self.rpm,
            tpm=self.tpm,
            max_concurrency=self.max_concurrency,
            budget_usd=Decimal(str(self.budget_usd)) if self.budget_usd is not None else None,
            soft_budget_ratio=self.soft_budget_ratio,
            tags=dict(self.tags),
        )


class AuthConfig(_Strict):
    """`auth: none` in YAML becomes `disabled=True`; it must be written out to turn auth off."""

    disabled: bool = False
    keys: list[ApiKey] = Field(default_factory=list)
    # A virtual key is re-read from the database this long after it was cached; meanwhile
    # (and while that read is slow or failing) the cached entry keeps serving.
    key_cache_ttl_s: Annotated[float, Field(gt=0)] = 30.0


LimitCheck = Literal["default", "rpm", "tpm", "concurrency", "budget"]
FailurePolicy = Literal["fail_open", "fail_closed"]


def _fail_open() -> dict[LimitCheck, FailurePolicy]:
    return {"default": "fail_open"}


class LimitsConfig(_Strict):
    """Per-key limits (the limits themselves are on the keys): how they are enforced."""

    # While the shared store (Redis) is unreachable: `fail_open` serves and counts in each
    # replica, `fail_closed` answers 503. Per check, with a default.
    on_redis_failure: dict[LimitCheck, FailurePolicy] = Field(default_factory=_fail_open)
    # Output tokens a request reserves (TPM and budget) when it sets no max_tokens.
    reserve_output_tokens: PositiveInt = 4096
    # How often an unreachable Redis is asked again, and how long one check may wait on it.
    probe_interval_ms: PositiveInt = 500
    redis_timeout_ms: PositiveInt = 1000
    # How long a request's budget reservation and concurrency slot outlive it when it never
    # settles (a killed replica, a frozen Redis). Unset: the route's total timeout + 60 s;
    # set: this, but never below the route's total timeout + 1 s.
    reservation_ttl_s: Annotated[float, Field(gt=0)] | None = None
    # How often one replica sets each key's month spend in Redis back to the ledger's.
    reconcile_interval_s: Annotated[float, Field(gt=0)] = 60.0


class ServerConfig(_Strict):
    max_body_bytes: PositiveInt = 16 * 1024 * 1024
    # Structure of a JSON body: nesting levels, items per array, members per object (400).
    max_json_depth: Annotated[int, Field(ge=2, le=1000)] = 64
    max_array_items: PositiveInt = 10_000
    max_object_keys: PositiveInt = 10_000
    # Request head: header lines and their total bytes, names + values (431).
    max_header_count: PositiveInt = 100
    max_header_bytes: PositiveInt = 32 * 1024
    # A body still arriving after this long is cut with 408 (slow clients hold workers).
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)


class LcprConfig(_Strict):
    """Costs LCPR loads onto token spend (`farebox lcpr`): engineering time spent running the
    gateway and its providers each month, and the cost of repairing one failed answer."""

    engineering_hours_per_month: NonNegativeFloat = 0.0
    hourly_rate_usd: NonNegativeFloat = 0.0
    repair_cost_usd: NonNegativeFloat = 0.0


class GatewayConfig(_Strict):
    # Gate specs per route, built (normalization files read, schemas checked) by
    # parse_config, so a bad gate is a config error, not a failing request.
    _gates: dict[str, GatePolicy] = PrivateAttr(default_factory=dict)
    # strategy quality: router model files resolved against the config file's directory.
    _router_models: dict[str, str] = PrivateAttr(default_factory=dict)

    providers: dict[str, Provider] = Field(default_factory=dict)
    deployments: dict[str, Deployment] = Field(default_factory=dict)
    routes: dict[str, Route] = Field(default_factory=dict)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    lcpr: LcprConfig = Field(default_factory=LcprConfig)
    # Failover drills run on a schedule (gateway/drills/schedule.py).
    drills: list[DrillSchedule] = Field(default_factory=list)

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_none(cls, value: Any) -> Any:
        if value == "none":
            return {"disabled": True}
        if not isinstance(value, dict | AuthConfig):
            raise ValueError("must be `none` or a mapping with `keys:`")
        return value

    @property
    def auth_disabled(self) -> bool:
        return self.auth.disabled

    def api_keys(self) -> list[ApiKey]:
        return list(self.auth.keys)

    def deployment_specs(self) -> dict[str, DeploymentSpec]:
        specs = {}
        for dep_id, dep in self.deployments.items():
            provider = self.providers[dep.provider]
            specs[dep_id] = DeploymentSpec(
                id=dep_id,
                provider=dep.provider,
                provider_kind=provider.kind,
                protocol=provider.protocol,
                upstream_model=dep.model,
                context_window=dep.context_window,
                max_concurrency=dep.max_concurrency or provider.max_concurrency,
                capabilities=None if dep.capabilities is None else frozenset(dep.capabilities),
                region=provider.region,
                zero_retention=provider.zero_retention,
                rpm=dep.rpm or provider.rpm,
                tpm=dep.tpm or provider.tpm,
            )
        return specs

    def route_specs(self) -> dict[str, RouteSpec]:
        return {
            name: RouteSpec(
                name=name,
                strategy=route.strategy,
                targets=tuple(route.targets),
                timeouts=_timeouts(self._route_timeouts(route)),
                workload=route.workload,
                fallbacks=tuple(route.fallbacks),
                retry=_retry(_merged(self.server.retry, route.retry)),
                hedge_after_ms=route.hedge_after_ms,
                weights=tuple(route.weights.get(t, 1.0) for t in route.targets),
                sticky=route.sticky,
                require=_requirements(route.require),
                affinity=route.affinity,
                gate=self._gates.get(name),
                threshold=route.threshold,
                strong_share=route.strong_share,
                router_model=self._router_models.get(name, route.router_model),
                fanout=fanout_policy(route),
            )
            for name, route in self.routes.items()
        }

    def _route_timeouts(self, route: Route) -> TimeoutsConfig:
        if route.timeouts is None:
            return self.server.timeouts
        return self.server.timeouts.model_copy(update=route.timeouts.model_dump(exclude_unset=True))

    def model_index(self) -> ModelIndex:
        return ModelIndex(
            self.route_specs(), self.deployment_specs(), _timeouts(self.server.timeouts)
        )


M = TypeVar("M", bound=BaseModel)


def _merged(defaults: M, override: M | None) -> M:
    """Route-level settings: the fields a route sets, server defaults for the rest."""
    if override is None:
        return defaults
    return defaults.model_copy(update=override.model_dump(exclude_unset=True))


def _timeouts(t: TimeoutsConfig) -> Timeouts:
    return Timeouts(
        connect_ms=t.connect_ms,
        ttft_ms=t.ttft_ms,
        total_ms=t.total_ms,
        idle_ms=t.idle_ms,
        attempt_ms=t.attempt_ms,
    )


def _requirements(require: Require | None) -> Requirements | None:
    if require is None:
        return None
    return Requirements(
        regions=None if require.region is None else frozenset(require.region),
        zero_retention=require.zero_retention,
        kinds=None if require.kind is None else frozenset(require.kind),
    )


def _retry(r: RetryConfig) -> RetryPolicy:
    return RetryPolicy(
        attempts=r.attempts, backoff_ms=r.backoff_ms, max_backoff_ms=r.max_backoff_ms
    )


def load_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read, interpolate, validate and cross-check a config file; raise ConfigError."""
    file = str(path)
    try:
        text = FsPath(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(file, None, "", f"cannot read config: {exc}")]) from None
    return parse_config(text, file, os.environ if env is None else env)


def parse_config(text: str, file: str, env: Mapping[str, str]) -> GatewayConfig:
    # They need the models above.
    from gateway.config.checks import build_gates, cross_check, explain, resolve_router_models

    doc = load_yaml(text, file, env)
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.issue((), "the top level must be a mapping")])
    try:
        config = GatewayConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(explain(exc, doc)) from None
    issues = cross_check(config, doc)
    gates, gate_issues = build_gates(config, doc, FsPath(file).parent)
    issues += gate_issues
    models, model_issues = resolve_router_models(config, doc, FsPath(file).parent)
    issues += model_issues
    if issues:
        raise ConfigError(issues)
    config._gates.update(gates)
    config._router_models.update(models)
    return config


def _suggest(name: str, candidates: Any) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
