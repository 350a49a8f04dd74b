"""routing.planner.plan_cost_route (the request path's cost-route planner) gives exactly the
plan and reason `decide` gives, on random routes, live states and requests; it declines only
where `decide` must answer (a target skipped, or prompt-cache affinity in play)."""

from __future__ import annotations

import random
from collections.abc import Mapping

from routing.live import DeploymentLoad, RouteStats
from routing.model import DeploymentSpec, Requirements, RouteSpec, Timeouts
from routing.planner import LiveView, Rates, decide, plan_cost_route
from routing.shape import RequestShape

NOW = 1_000_000.0
KINDS = ("serverless", "dedicated", "closed_api")
MODELS = ("gpt-4o", "claude-x", "llama-3", "qwen-2")


def _deployment(rng: random.Random, index: int) -> DeploymentSpec:
    return DeploymentSpec(
        f"d{index}",
        "prov",
        rng.choice(KINDS),
        "openai",
        rng.choice(MODELS),
        context_window=rng.choice((None, None, 4_000, 200_000)),
        max_concurrency=rng.choice((None, None, 2, 50)),
        capabilities=rng.choice((None, None, frozenset({"tools"}), frozenset())),
        region=rng.choice((None, "eu", "us")),
        zero_retention=rng.random() < 0.5,
        rpm=rng.choice((None, None, 5, 10_000)),
        tpm=rng.choice((None, None, 3_000, 10_000_000)),
    )


def _rates(rng: random.Random) -> Rates | None:
    if rng.random() < 0.1:
        return None
    base = rng.choice((0.1, 0.12, 0.15, 0.5, 2.5))
    return (base, base / 2, base * rng.choice((2, 4, 0.5)))


def _load(rng: random.Random) -> DeploymentLoad:
    load = DeploymentLoad()
    load.in_flight = rng.choice((0, 0, 1, 3, 60))
    load.bytes_per_token = rng.choice((None, None, 3.3, 4.1))
    if rng.random() < 0.1:
        load.limited_until = NOW + 5
    for _ in range(rng.choice((0, 0, 3, 12))):
        load.requests.add(NOW)
        load.tokens.add(NOW, rng.randint(1, 2_000))
    return load


def _case(
    rng: random.Random,
) -> tuple[RouteSpec, dict[str, DeploymentSpec], RequestShape, LiveView]:
    deployments = {d.id: d for d in (_deployment(rng, i) for i in range(6))}
    names = list(deployments)
    rng.shuffle(names)
    targets = tuple(names[: rng.randint(1, 4)])
    fallbacks = tuple(names[len(targets) : len(targets) + rng.randint(0, 2)])
    require = rng.choice(
        (
            None,
            None,
            None,
            Requirements(regions=frozenset({"eu"})),
            Requirements(zero_retention=True),
        )
    )
    route = RouteSpec(
        "r",
        "cost",
        targets,
        Timeouts(1_000, 5_000, 30_000),
        fallbacks=fallbacks,
        require=require,
        affinity=rng.random() < 0.7,
    )
    prefix = rng.choice((None, "p:1", "k:user-7"))
    shape = RequestShape(
        request_id="req",
        text_bytes=rng.choice((10, 400, 12_000, 900_000)),
        messages=rng.randint(1, 6),
        images=rng.choice((0, 0, 1)),
        max_output_tokens=rng.choice((None, None, 16, 4_096)),
        needs=rng.choice((frozenset(), frozenset(), frozenset({"tools"}))),
        prefix_key=prefix,
        prefix_bytes=rng.choice((0, 9_000)),
        sticky_key=None,
    )
    affinity: Mapping[str, tuple[str, ...]] = (
        {prefix: (rng.choice(names),)} if prefix is not None and rng.random() < 0.5 else {}
    )
    stats = RouteStats()
    if rng.random() < 0.5:
        stats.observe_output(rng.randint(1, 900))
    live = LiveView(
        now=NOW,
        loads={d: _load(rng) for d in deployments if rng.random() < 0.8},
        rates={d: _rates(rng) for d in deployments},
        breaker_open={d: True for d in deployments if rng.random() < 0.1},
        affinity=affinity,
        route_stats=stats if rng.random() < 0.7 else None,
    )
    return route, deployments, shape, live


def test_the_quick_plan_is_decides_plan_whenever_it_answers() -> None:
    rng = random.Random(25)
    answered = declined = 0
    for _ in range(20_000):
        route, deployments, shape, live = _case(rng)
        quick = plan_cost_route(route, deployments, shape, live)
        decision = decide(route, deployments, shape, live)
        if quick is None:
            declined += 1
            # Declines only when decide sees a skipped target or a cached prefix.
            skipped = [c for c in decision.candidates if c.skipped is not None]
            cached = any(c.cached_tokens for c in decision.candidates)
            in_play = (
                route.affinity
                and shape.prefix_key is not None
                and shape.prefix_key in live.affinity
            )
            targets_skipped = any(
                c.skipped is not None
                for c in decision.candidates
                if c.deployment.id in route.targets
            )
            assert targets_skipped or cached or in_play, (skipped, route)
            continue
        answered += 1
        plan, reason = quick
        assert plan is decision.plan  # the same cached Plan object, so the same order
        assert reason == decision.reason
    # Both branches are exercised by the random cases.
    assert answered > 2_000 and declined > 2_000
