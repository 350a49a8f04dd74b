"""Model-keyed routing: turn the client's `model` string into a plan.

A client may name a route, a deployment id, or an upstream model name served by exactly one
deployment. Routes win over deployment ids (the config loader forbids the two from colliding),
and deployment ids win over upstream names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from routing.model import (
    DYNAMIC_STRATEGIES,
    DeploymentSpec,
    Plan,
    PlannedAttempt,
    RouteSpec,
    Timeouts,
)


class ModelIndex:
    """Immutable lookup table built once per loaded config."""

    __slots__ = ("_by_upstream", "_deployments", "_plans", "_routes", "ambiguous_upstream")

    def __init__(
        self,
        routes: Mapping[str, RouteSpec],
        deployments: Mapping[str, DeploymentSpec],
        default_timeouts: Timeouts,
    ) -> None:
        self._routes = dict(routes)
        self._deployments = dict(deployments)
        owners: dict[str, list[str]] = {}
        for dep in deployments.values():
            owners.setdefault(dep.upstream_model, []).append(dep.id)
        self._by_upstream = {m: ids[0] for m, ids in owners.items() if len(ids) == 1}
        self.ambiguous_upstream = {m: tuple(ids) for m, ids in owners.items() if len(ids) > 1}
        # Plans are pure functions of the config for the direct strategy, so build them once
        # and keep the hot path to a dict lookup.
        self._plans: dict[str, Plan] = {}
        for route in routes.values():
            self._plans[route.name] = plan_for_route(route, deployments)
        for dep in deployments.values():
            direct = Plan(
                route=dep.id,
                strategy="direct",
                attempts=(PlannedAttempt(dep, "primary"),),
                timeouts=default_timeouts,
            )
            self._plans.setdefault(dep.id, direct)
        for upstream, dep_id in self._by_upstream.items():
            self._plans.setdefault(upstream, self._plans[dep_id])

    def plan(self, model: str) -> Plan | None:
        return self._plans.get(model)

    def deployment(self, deployment_id: str) -> DeploymentSpec | None:
        """A deployment by id, whatever routes it (a guard model's, gateway/guard/model.py)."""
        return self._deployments.get(deployment_id)

    def routable_names(self) -> list[str]:
        """Routes first, then deployment ids: what `/v1/models` lists."""
        return list(self._routes) + [d for d in self._deployments if d not in self._routes]

    def all_names(self) -> Iterable[str]:
        return self._plans.keys()


def plan_for_route(route: RouteSpec, deployments: Mapping[str, DeploymentSpec]) -> Plan:
    """Targets in order, then the route's fallbacks: primary first, fallback for the rest."""
    ordered = (*route.targets, *route.fallbacks)
    attempts = tuple(
        PlannedAttempt(deployments[target], "primary" if i == 0 else "fallback")
        for i, target in enumerate(ordered)
    )
    return Plan(
        route=route.name,
        strategy=route.strategy,
        attempts=attempts,
        timeouts=route.timeouts,
        workload=route.workload,
        retry=route.retry,
        hedge_after_ms=route.hedge_after_ms,
        gate=route.gate,
        fanout=route.fanout,
    )


def describe_plan(plan: Plan) -> list[str]:
    """Human-readable lines for `farebox config check`."""
    t = plan.timeouts
    r = plan.retry
    lines = [
        f"strategy {plan.strategy}"
        + (f", workload {plan.workload}" if plan.workload else "")
        + f", timeouts connect {t.connect_ms} ms / ttft {t.ttft_ms} ms / idle {t.idle_ms} ms"
        f" / total {t.total_ms} ms",
        f"{r.attempts} tries per target, backoff {r.backoff_ms}–{r.max_backoff_ms} ms"
        + (f", hedge after {plan.hedge_after_ms} ms" if plan.hedge_after_ms else ""),
    ]
    if plan.strategy in DYNAMIC_STRATEGIES:
        lines.append(
            "order decided per request from live state and prices "
            "(`farebox route explain` shows it); configured order:"
        )
    if plan.gate is not None:
        spec = plan.gate.spec
        checks = [
            name
            for name in ("tool_arguments", "reject_truncated", "non_empty", "not_refusal")
            if getattr(spec, name, False)
        ]
        if getattr(spec, "json_schema", None) is not None:
            schema = spec.json_schema
            checks.insert(0, f"json_schema({schema if isinstance(schema, str) else 'inline'})")
        if getattr(spec, "regex", None):
            checks.append("regex")
        checks += [f"normalize {field}" for field in getattr(spec, "normalize", {})]
        lines.append(
            f"gate: {', '.join(checks) or 'no checks'}; on failure: {plan.gate.on_fail}"
            + ("; streams buffered" if plan.gate.buffer_streams else "")
        )
    fanout = plan.fanout
    if fanout is not None:
        line = f"{fanout.kind}: {fanout.n} candidates at once"
        if fanout.kind == "consensus":
            line += (
                f", compare {fanout.compare}, tie-break {fanout.tie_break}, "
                f"on disagreement {fanout.on_disagree}"
            )
        else:
            line += ", first answer passing the gate wins, the rest cancelled"
        streams = "buffered" if fanout.streaming == "buffer" else "refused"
        lines.append(f"{line}; streams {streams}")
    for n, attempt in enumerate(plan.attempts, 1):
        dep = attempt.deployment
        role = attempt.role
        if fanout is not None:  # the first n start together; the rest replace failures
            role = "candidate" if n <= fanout.n else "fallback"
        lines.append(
            f"{n}. {role:<8} {dep.id} → {dep.provider} ({dep.provider_kind}, "
            f"{dep.protocol}) model {dep.upstream_model}"
        )
    lines.extend(plan.notes)
    return lines
