"""Route options of the fan-out strategies, `consensus` and `speculative`, and their checks.

```yaml
routes:
  answer:
    strategy: consensus
    targets: [a, b, c]
    consensus: {n: 3, tie_break: first, on_disagree: fail, compare: auto}
    streaming: buffer            # buffer | refuse
  extract:
    strategy: speculative
    targets: [a, b, c]
    gate: {json_schema: request}
    speculative: {n: 2}
```

`n` defaults to every target. Everything is optional except speculative's `gate:`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from gateway.runtime.yaml_loader import ConfigIssue, LocatedDocument
from routing.model import FanoutPolicy

FANOUT_STRATEGIES = ("consensus", "speculative")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsensusConfig(_Strict):
    """Ask `n` targets at once and compare their answers (routing/consensus.py)."""

    n: Annotated[int, Field(ge=2)] | None = None
    # Which answer a tie returns: first (target order) | cheapest (this call's cost) |
    # strongest (highest output price; equal prices: the later target).
    tie_break: Literal["first", "cheapest", "strongest"] = "first"
    # No majority: `fail` answers 409 with every candidate, `pass` returns the tie-break's
    # pick with `x-farebox-consensus: disagree`.
    on_disagree: Literal["fail", "pass"] = "fail"
    compare: Literal["auto", "text", "json", "tool_calls"] = "auto"


class SpeculativeConfig(_Strict):
    """Start `n` targets at once; the first answer that passes the route's gate wins."""

    n: Annotated[int, Field(ge=2)] | None = None


class _Gate(Protocol):
    @property
    def on_fail(self) -> str: ...
    @property
    def buffer_streams(self) -> bool: ...


class Route(Protocol):
    """What these checks read of a route (gateway.config.routes.Route): the route model
    imports this module for its fan-out blocks, so this module must not import it back."""

    @property
    def strategy(self) -> str: ...
    @property
    def targets(self) -> Sequence[str]: ...
    @property
    def consensus(self) -> ConsensusConfig | None: ...
    @property
    def speculative(self) -> SpeculativeConfig | None: ...
    @property
    def streaming(self) -> Literal["buffer", "refuse"] | None: ...
    @property
    def hedge_after_ms(self) -> int | None: ...
    @property
    def gate(self) -> _Gate | None: ...


def fanout_policy(route: Route) -> FanoutPolicy | None:
    if route.strategy == "consensus":
        c = route.consensus or ConsensusConfig()
        return FanoutPolicy(
            kind="consensus",
            n=min(c.n or len(route.targets), len(route.targets)),
            tie_break=c.tie_break,
            on_disagree=c.on_disagree,
            compare=c.compare,
            streaming=route.streaming or "buffer",
        )
    if route.strategy == "speculative":
        s = route.speculative or SpeculativeConfig()
        return FanoutPolicy(
            kind="speculative",
            n=min(s.n or len(route.targets), len(route.targets)),
            streaming=route.streaming or "buffer",
        )
    return None


def fanout_issues(name: str, route: Route, doc: LocatedDocument) -> list[ConfigIssue]:
    """Fan-out options on the wrong strategy, too few targets, an `n` above the targets,
    and the combinations that mean nothing (a gate on consensus, hedging a fan-out)."""
    where = ("routes", name)
    issues: list[ConfigIssue] = []
    strategy = route.strategy
    if route.consensus is not None and strategy != "consensus":
        issues.append(doc.issue((*where, "consensus"), "this is for strategy consensus"))
    if route.speculative is not None and strategy != "speculative":
        issues.append(doc.issue((*where, "speculative"), "this is for strategy speculative"))
    if route.streaming is not None and strategy not in FANOUT_STRATEGIES:
        issues.append(
            doc.issue(
                (*where, "streaming"),
                "this is for strategies consensus and speculative "
                "(a gated route buffers streams with gate.buffer_streams)",
            )
        )
    if strategy not in FANOUT_STRATEGIES:
        return issues
    if len(route.targets) < 2:
        issues.append(
            doc.issue(
                (*where, "targets"),
                f"strategy {strategy} needs at least two targets, got {len(route.targets)}",
            )
        )
    block = route.consensus if strategy == "consensus" else route.speculative
    if block is not None and block.n is not None and block.n > len(route.targets):
        issues.append(
            doc.issue(
                (*where, strategy, "n"),
                f"n is {block.n} but the route has {len(route.targets)} targets",
            )
        )
    if route.hedge_after_ms is not None:
        issues.append(
            doc.issue(
                (*where, "hedge_after_ms"),
                f"strategy {strategy} already starts its targets at once; drop hedge_after_ms",
            )
        )
    if strategy == "consensus" and route.gate is not None:
        issues.append(
            doc.issue(
                (*where, "gate"),
                "strategy consensus compares answers rather than gating them; "
                "use strategy speculative (or cascade) for a gate",
            )
        )
    if strategy == "speculative":
        if route.gate is None:
            issues.append(
                doc.issue(
                    where,
                    "strategy speculative needs a `gate:`: the first answer that passes it wins",
                )
            )
        elif route.gate.on_fail == "repair":
            issues.append(
                doc.issue(
                    (*where, "gate", "on_fail"),
                    "strategy speculative does not repair: a failed answer makes way for the "
                    "next target (on_fail: escalate)",
                )
            )
        elif route.gate.buffer_streams:
            issues.append(
                doc.issue(
                    (*where, "gate", "buffer_streams"),
                    "speculative routes always buffer streams; use `streaming: buffer|refuse`",
                )
            )
    return issues
