"""The live state the balancing strategies plan with, kept up to date as attempts run.

Per deployment: in-flight count, requests and tokens in the last minute, limits learned
from `x-ratelimit-*` headers and 429s, EWMA time to first token, and bytes-per-token
calibrated from the prompt_tokens providers report. Per route: the mean output tokens.
Per prompt prefix: the deployments that served it lately (prompt-cache affinity). Prices are
resolved once per UTC day from the PriceBook.

All updates are attribute writes on the event loop: nothing here awaits, so none of it
slows a request down.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.core.quality_live import QualityLive
from gateway.ledger.pricing import PriceBook
from gateway.ledger_rows import AttemptRow
from gateway.observability import metrics
from gateway.providers.base import UpstreamError
from routing.failover import parse_retry_after
from routing.live import DeploymentLoad, RouteStats
from routing.model import DYNAMIC_STRATEGIES, DeploymentSpec, Plan, RouteSpec
from routing.planner import Decision, LiveView, Rates, decide, input_tokens, plan_cost_route
from routing.quality_route import ScoreWindow, decide_quality
from routing.quality_stats import Posterior, failure_estimate
from routing.shape import PER_MESSAGE, RequestShape, request_shape

# strategy quality without threshold or strong_share: this share of calls goes strong.
DEFAULT_STRONG_SHARE = 0.3
# A router: the request body → how likely the cheap target fails (0–1).
Scorer = Callable[[Mapping[str, Any]], float]
# Prefixes remembered for affinity; an LRU so a flood of one-off prompts cannot grow it.
AFFINITY_ENTRIES = 100_000
# Deployments remembered per prefix: a prefix stays cached where it was served (routes
# may share deployments), so more than the last one can hold it.
HOLDERS_PER_PREFIX = 4
HeaderLookup = Callable[[str], str | None]


class LiveRouting:
    def __init__(
        self,
        deployments: Mapping[str, DeploymentSpec],
        routes: Mapping[str, RouteSpec],
        prices: PriceBook | None,
        breaker_open: Callable[[], Mapping[str, bool]],
        clock: Callable[[], float] = time.time,
        quality: QualityLive | None = None,
        scorers: Mapping[str, Scorer] | None = None,
    ) -> None:
        self._deployments = dict(deployments)
        self._routes = dict(routes)
        self._prices = prices
        self._breaker_open = breaker_open
        self._clock = clock
        self._quality = quality
        self._scorers = dict(scorers or {})
        self._windows: dict[str, ScoreWindow] = {}
        # Only deployments something reads the state of are tracked: those on balancing
        # routes, and those with limits or paid-for capacity. The rest (direct and
        # failover routes) skip all of this at the cost of one dict miss per attempt.
        balanced = {
            dep
            for route in routes.values()
            if route.strategy in DYNAMIC_STRATEGIES
            for dep in (*route.targets, *route.fallbacks)
        }
        self.loads = {
            dep.id: DeploymentLoad()
            for dep in deployments.values()
            if dep.id in balanced
            or dep.provider_kind == "dedicated"
            or dep.max_concurrency is not None
            or dep.rpm is not None
            or dep.tpm is not None
        }
        self.route_stats = {name: RouteStats() for name in routes}
        self.affinity: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._rates: dict[str, Rates | None] = {}
        self._rates_day: str | None = None
        self._rates_span = (0.0, 0.0)  # the UTC day (epoch seconds) _rates are for
        self._busy_since: dict[str, float] = {}
        for dep in deployments.values():
            if dep.provider_kind == "dedicated" and dep.max_concurrency:
                metrics.DEDICATED_CAPACITY.labels(dep.id).set(dep.max_concurrency)

    def route(self, name: str) -> RouteSpec | None:
        return self._routes.get(name)

    # -- planning ---------------------------------------------------------------------------

    def decide(
        self, route: RouteSpec, payload: Mapping[str, Any], request_id: str, header: HeaderLookup
    ) -> tuple[Decision, RequestShape]:
        sticky = route.sticky
        value = (
            header(sticky.removeprefix("header:")) if sticky and sticky[:7] == "header:" else None
        )
        shape = request_shape(payload, request_id, sticky, value)
        if route.strategy == "quality":
            return self._decide_quality(route, payload, shape), shape
        return decide(route, self._deployments, shape, self.view(route.name)), shape

    def plan(
        self, route: RouteSpec, payload: Mapping[str, Any], request_id: str, header: HeaderLookup
    ) -> tuple[Plan, str, RequestShape]:
        """The request path's (plan, reason, shape): `decide` without the candidates that
        only `route explain` shows (a cost route's common case skips building them)."""
        if route.strategy == "cost":
            sticky = route.sticky
            value = (
                header(sticky.removeprefix("header:"))
                if sticky and sticky[:7] == "header:"
                else None
            )
            shape = request_shape(payload, request_id, sticky, value)
            view = self.view(route.name)
            quick = plan_cost_route(route, self._deployments, shape, view)
            if quick is not None:
                return quick[0], quick[1], shape
            decision = decide(route, self._deployments, shape, view)
            return decision.plan, decision.reason, shape
        decision, shape = self.decide(route, payload, request_id, header)
        return decision.plan, decision.reason, shape

    def _decide_quality(
        self, route: RouteSpec, payload: Mapping[str, Any], shape: RequestShape
    ) -> Decision:
        view = self.view(route.name)
        scorer = self._scorers.get(route.name)
        score = scorer(payload) if scorer is not None else 0.5
        cheap = self._deployments[route.targets[0]]
        load = self.loads.get(cheap.id) or DeploymentLoad()
        record = (
            self._quality.posterior(route.name, cheap.id, input_tokens(shape, cheap, load))
            if self._quality is not None
            else Posterior(0.0, 0.0)
        )
        estimate = failure_estimate(score, record)
        window = self._windows.setdefault(route.name, ScoreWindow())
        if route.threshold is not None:
            threshold = route.threshold
        else:
            share = route.strong_share if route.strong_share is not None else DEFAULT_STRONG_SHARE
            threshold = window.threshold(share)
        window.add(estimate)
        return decide_quality(route, self._deployments, shape, view, estimate, threshold)

    def view(self, route: str | None = None) -> LiveView:
        now = self._clock()
        return LiveView(
            now=now,
            loads=self.loads,
            rates=self._rates_for(now),
            breaker_open=self._breaker_open(),
            affinity=self.affinity,
            route_stats=self.route_stats.get(route) if route else None,
        )

    def _rates_for(self, now: float) -> Mapping[str, Rates | None]:
        since, until = self._rates_span
        if since <= now < until:
            return self._rates  # the common case: no date arithmetic per request
        day = datetime.fromtimestamp(now, UTC)
        key = day.strftime("%Y-%m-%d")
        # The clock is epoch seconds: this UTC day is [midnight, next midnight).
        start = now // 86_400 * 86_400
        self._rates_span = (start, start + 86_400)
        if key != self._rates_day:
            # Prices change by effective date: resolve them once per UTC day.
            rates: dict[str, Rates | None] = {}
            for dep in self._deployments.values():
                price = (
                    self._prices.price_for(dep.id, dep.upstream_model, dep.provider_kind, day)
                    if self._prices is not None
                    else None
                )
                rates[dep.id] = (
                    None
                    if price is None
                    else (float(price.input), float(price.cached_input), float(price.output))
                )
            self._rates, self._rates_day = rates, key
        return self._rates

    # -- what attempts report ---------------------------------------------------------------

    def started(self, deployment: str, shape: RequestShape | None) -> None:
        load = self.loads.get(deployment)
        if load is None:
            return
        now = self._clock()
        self._account_busy(deployment, load, now)
        dep = self._deployments[deployment]
        # Tokens per minute only matter against a configured tpm; skip the estimate else.
        tokens = input_tokens(shape, dep, load) if shape is not None and dep.tpm else 0
        load.started(now, tokens)

    def ended(self, deployment: str) -> None:
        load = self.loads.get(deployment)
        if load is None:
            return
        self._account_busy(deployment, load, self._clock())
        load.ended()

    def _account_busy(self, deployment: str, load: DeploymentLoad, now: float) -> None:
        """Integrate in-flight × time, for the utilization of dedicated capacity."""
        dep = self._deployments[deployment]
        if dep.provider_kind != "dedicated":
            return
        since = self._busy_since.get(deployment, now)
        if load.in_flight:
            metrics.DEDICATED_SLOT_SECONDS.labels(deployment).inc(load.in_flight * (now - since))
            metrics.DEDICATED_BUSY_SECONDS.labels(deployment).inc(now - since)
        self._busy_since[deployment] = now
        metrics.IN_FLIGHT.labels(deployment).set(load.in_flight)

    def succeeded(
        self,
        plan: Plan,
        shape: RequestShape | None,
        row: AttemptRow,
        limits: Mapping[str, str] | None,
    ) -> None:
        load = self.loads.get(row.deployment)
        if load is None:
            return
        if row.ttft_ms is not None:
            load.observe_ttft(row.ttft_ms)
        if limits:
            self.observe_limits(row.deployment, limits)
        stats = self.route_stats.get(plan.route)
        if stats is not None and row.token_source == "provider":
            stats.observe_output(row.output_tokens)
        if shape is None or row.token_source != "provider":
            return
        if shape.images == 0:  # image tokens say nothing about bytes per text token
            prompt = row.input_uncached_tokens + row.cached_read_tokens + row.cache_write_tokens
            load.observe_prompt(shape.text_bytes, prompt - PER_MESSAGE * shape.messages)
        if shape.prefix_key is not None:
            key, dep = shape.prefix_key, row.deployment
            held = self.affinity.get(key, ())
            if not held or held[0] != dep:
                rest = tuple(d for d in held if d != dep)
                self.affinity[key] = (dep, *rest)[:HOLDERS_PER_PREFIX]
            self.affinity.move_to_end(key)
            if len(self.affinity) > AFFINITY_ENTRIES:
                self.affinity.popitem(last=False)

    def failed(self, deployment: str, error: UpstreamError) -> None:
        load = self.loads.get(deployment)
        if load is None:
            return
        now = self._clock()
        if error.status == 429:
            load.rate_limited(now, parse_retry_after(error.headers, now))
        elif error.headers:
            self.observe_limits(deployment, error.headers)

    def observe_limits(self, deployment: str, headers: Mapping[str, str]) -> None:
        load = self.loads.get(deployment)
        if load is None:
            return
        requests = _int(headers.get("x-ratelimit-remaining-requests"))
        tokens = _int(headers.get("x-ratelimit-remaining-tokens"))
        reset = _duration_s(
            headers.get("x-ratelimit-reset-requests")
            if requests == 0
            else headers.get("x-ratelimit-reset-tokens")
        )
        load.observe_limits(self._clock(), requests, tokens, reset)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _duration_s(value: str | None) -> float | None:
    """OpenAI's reset format: `1s`, `6m0s`, `20ms`, `1h2m3.5s`."""
    if not value:
        return None
    total, number = 0.0, ""
    i = 0
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            number += ch
        else:
            unit = "ms" if value.startswith("ms", i) else ch
            scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit)
            if scale is None or not number:
                return None
            try:
                total += float(number) * scale
            except ValueError:  # "1..2s": not a duration; ignore the header
                return None
            number = ""
            i += len(unit) - 1
        i += 1
    if number:  # a bare number: seconds
        try:
            total += float(number)
        except ValueError:
            return None
    return total
