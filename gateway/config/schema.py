"""The routing YAML: the whole schema (pydantic, extra="forbid"; the provider, deployment and
route sections are in gateway/config/routes.py), the loader and the cross-reference checks.

Every problem is reported with file, line and key path, and unknown names get a
"did you mean" suggestion, because a typo in a route is an outage.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    field_validator,
)

from gateway.config.batch import BatchConfig
from gateway.config.drills import DrillSchedule
from gateway.config.fanout import fanout_policy
from gateway.config.guard import GuardCheck, to_checks, unique_names
from gateway.config.responses import ResponsesConfig
from gateway.config.routes import (
    _DEFAULT_BASE as _DEFAULT_BASE,
)
from gateway.config.routes import (
    KINDS as KINDS,
)
from gateway.config.routes import (
    PROTOCOLS as PROTOCOLS,
)
from gateway.config.routes import (
    STRATEGIES as STRATEGIES,
)
from gateway.config.routes import (
    BreakerConfig as BreakerConfig,
)
from gateway.config.routes import (
    CacheConfig as CacheConfig,
)
from gateway.config.routes import (
    Deployment as Deployment,
)
from gateway.config.routes import (
    GateConfig as GateConfig,
)
from gateway.config.routes import (
    NonNegativeFloat as NonNegativeFloat,
)
from gateway.config.routes import (
    OptionValue as OptionValue,
)
from gateway.config.routes import (
    PositiveInt as PositiveInt,
)
from gateway.config.routes import (
    Price as Price,
)
from gateway.config.routes import (
    Provider as Provider,
)
from gateway.config.routes import (
    Require as Require,
)
from gateway.config.routes import (
    RetryConfig as RetryConfig,
)
from gateway.config.routes import (
    Route as Route,
)
from gateway.config.routes import (
    TimeoutsConfig as TimeoutsConfig,
)
from gateway.config.routes import (
    _Strict as _Strict,
)
from gateway.config.routes import (
    _suggest as _suggest,
)
from gateway.keys.auth import Principal
from routing.guard import Guards
from routing.lease import Sizing
from routing.model import (
    DeploymentSpec,
    GatePolicy,
    Requirements,
    RetryPolicy,
    RouteSpec,
    Timeouts,
)
from routing.resolve import ModelIndex


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


LimitsMode = Literal["lease", "exact"]
Share = Annotated[float, Field(gt=0, le=1)]


class LeaseConfig(_Strict):
    """Lease mode's slices (docs/keys-and-limits.md): how large, how long they are kept."""

    # A slice aims to hold this many seconds of the replica's recent demand on the key.
    target_s: Annotated[float, Field(gt=0)] = 1.5
    # The most a slice holds of each of the key's limits (its RPM, TPM, concurrency, budget)
    # beyond the requests waiting for it: one request's ask always fits.
    max_share: Share = 0.1
    # A key unused this long on a replica (nothing in flight) has its slice returned.
    idle_return_s: Annotated[float, Field(gt=0)] = 5.0


class KeyLimitsMode(_Strict):
    """One key's (or team's) enforcement, overriding `limits.mode` / `limits.lease`."""

    # Unset: `limits.mode`.
    mode: LimitsMode | None = None
    # Unset: `limits.lease.max_share`.
    max_share: Share | None = None


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
    # `lease`: each replica admits in process against a slice of each key's limits taken
    # from Redis ahead of time (overspend bound: the slices outstanding); `exact`: one Redis
    # check per request (overspend bound: the reservations in flight).
    mode: LimitsMode = "lease"
    lease: LeaseConfig = Field(default_factory=LeaseConfig)
    # Per key name, virtual key id or team: mode and slice cap overrides.
    keys: dict[str, KeyLimitsMode] = Field(default_factory=dict)

    def lease_settings(self) -> dict[str, Any]:
        """`mode`, `lease` and the per-key overrides as the Limiter takes them."""
        base = Sizing(target_s=self.lease.target_s, max_share=self.lease.max_share)
        key_modes = {
            name: (over.mode or self.mode, Sizing(base.target_s, over.max_share or base.max_share))
            for name, over in self.keys.items()
        }
        return {
            "mode": self.mode,
            "lease_sizing": base,
            "lease_idle_s": self.lease.idle_return_s,
            "key_modes": key_modes,
        }


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
    # Workloads (a route's `workload:` or a key's `workload` tag) that could wait for the
    # Batch API: their requests that ran live are the report's batch-eligible share.
    deferrable_workloads: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)

    @field_validator("deferrable_workloads")
    @classmethod
    def _unique_workloads(cls, value: list[str]) -> list[str]:
        seen = [w for i, w in enumerate(value) if w in value[:i]]
        if seen:
            raise ValueError(f"workload {seen[0]!r} is listed twice")
        return value


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
    # Stored Responses: retention, purge and save bounds (gateway/conversations/store.py).
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    # Guard checks of every route without its own `guard:` (gateway/config/guard.py).
    guard: list[GuardCheck] = Field(default_factory=list)

    @field_validator("guard")
    @classmethod
    def _unique_checks(cls, value: list[GuardCheck]) -> list[GuardCheck]:
        unique_names(value)
        return value

    def guard_checks(self) -> dict[str, Guards]:
        """Each route's guard checks, compiled (routes without any are left out)."""
        default = to_checks(self.guard)
        out: dict[str, Guards] = {}
        for name, route in self.routes.items():
            checks = default if route.guard is None else to_checks(route.guard)
            if checks:
                out[name] = Guards.of(checks)
        return out

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
                responses_native=provider.responses_api,
                builtin_tools=frozenset(provider.builtin_tools),
                batch_api=provider.batch_api,
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
