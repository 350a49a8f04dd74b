"""Response cache: a repeated request is answered from a stored answer, without upstream.

Per route (`cache:` in the YAML, off by default). A request on a cached route is looked up
once (one awaited GET) before the attempt loop; a hit is metered as a request with one
attempt of role `cache_hit` (cost 0, the saving recorded), a miss runs as usual and its
answer is stored in the background — unless it failed the route's quality gate, or its
stream was cut or ended in an error. `x-farebox-cache: HIT|MISS|BYPASS` says which.

Keys (routing/cache_key.py) are scoped per key by default, so tenants never share answers
unless the route says `scope: team|route`, and live under a namespace hashed from the
route's configuration: editing a route retires its entries at once. Routes without `cache:`
pay one attribute check in the handler (`state.cache is None`, or a dict miss here).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import Counter

from gateway.cache.store import LocalStore, RedisStore, Unavailable
from gateway.config.schema import CacheConfig, GatewayConfig
from gateway.core.metering import CallContext
from gateway.core.ports import Completion, StreamingCompletion
from gateway.core.service import DONE, Service
from gateway.ledger_rows import AttemptRow
from gateway.runtime.asgi_types import Headers, Scope, header
from routing import cache_key
from routing.cost import Usage
from routing.model import DeploymentSpec, Plan, PlannedAttempt

if TYPE_CHECKING:  # imported for real only when a route has mode: semantic (numpy, wordllama)
    from gateway.cache.semantic import Neighbour, SemanticIndex

log = logging.getLogger("farebox.cache")

HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"
CACHE_HIT = "cache_hit"

REQUESTS = Counter(
    "farebox_cache_requests_total",
    "Requests on cached routes, by cache result (hit, miss, bypass)",
    ["route", "result"],
)
SAVED = Counter(
    "farebox_cache_saved_usd_total",
    "What cache hits would have cost upstream (today's price of the cached answer's tokens)",
    ["route"],
)

_JSON, _SSE = "json", "sse"
_GENERATION = frozenset({"chat/completions", "completions", "responses"})


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored answer: a JSON body, or the SSE chunks exactly as the client got them."""

    kind: str
    deployment: str
    usage: Usage
    body: bytes
    lengths: tuple[int, ...] = ()

    def encode(self) -> bytes:
        # Metadata line, then the raw bytes: no base64 or JSON-in-JSON for the answer.
        u = self.usage
        tokens = (u.input_uncached, u.cached_read, u.cache_write, u.output, u.reasoning)
        meta = {"k": self.kind, "d": self.deployment, "u": tokens, "l": self.lengths}
        return orjson.dumps(meta) + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        head, sep, body = raw.partition(b"\n")
        if not sep:
            return None
        try:
            meta = orjson.loads(head)
            return cls(meta["k"], meta["d"], Usage(*meta["u"]), body, tuple(meta["l"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None  # written by another version: a miss, overwritten on store

    def chunks(self) -> list[bytes]:
        out, at = [], 0
        for n in self.lengths:
            out.append(self.body[at : at + n])
            at += n
        return out


class RouteCache:
    def __init__(
        self,
        name: str,
        config: CacheConfig,
        namespace: str,
        store: LocalStore | RedisStore,
        index: SemanticIndex | None,
    ) -> None:
        self.name = name
        self.config = config
        self.namespace = namespace
        self.store = store
        self.index = index
        self.policy = cache_key.KeyPolicy(config.sampled, config.multiple_choices)
        # Counter children resolved once: .labels() is a lock and a dict walk per call.
        self.counted = {r: REQUESTS.labels(name, r.lower()) for r in (HIT, MISS, BYPASS)}
        self.saved = SAVED.labels(name)


class ResponseCache:
    """The cached routes of one config; None on GatewayState when no route has `cache:`."""

    def __init__(
        self,
        config: GatewayConfig,
        redis_url: str | None,
        previous: ResponseCache | None = None,
    ) -> None:
        self._redis = RedisStore(redis_url) if redis_url else None
        self.specs: dict[str, DeploymentSpec] = config.deployment_specs()
        self.routes: dict[str, RouteCache] = {}
        kept = {r.namespace: r for r in previous.routes.values()} if previous else {}
        for name, route in config.routes.items():
            if route.cache is None:
                continue
            used = [*route.targets, *route.fallbacks]
            ns = cache_key.namespace(
                name,
                {
                    "route": route.model_dump(mode="json"),
                    "deployments": {
                        d: config.deployments[d].model_dump(mode="json")
                        for d in used
                        if d in config.deployments
                    },
                },
            )
            old = kept.get(ns)
            if old is not None and self._redis is None:
                # A reload that left this route alone keeps its in-process entries.
                self.routes[name] = RouteCache(name, route.cache, ns, old.store, old.index)
                continue
            store: LocalStore | RedisStore = self._redis or LocalStore(
                route.cache.max_entries, route.cache.max_bytes
            )
            index = None
            if route.cache.mode == "semantic":
                from gateway.cache.semantic import SemanticIndex

                c = route.cache
                index = (
                    old.index if old is not None else SemanticIndex(c.index_entries, c.threshold)
                )
            self.routes[name] = RouteCache(name, route.cache, ns, store, index)

    @classmethod
    def build(
        cls, config: GatewayConfig, redis_url: str | None, previous: ResponseCache | None = None
    ) -> ResponseCache | None:
        if not any(r.cache is not None for r in config.routes.values()):
            return None
        return cls(config, redis_url, previous)

    async def flush(self) -> None:
        if self._redis is not None:
            await self._redis.flush()

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()

    async def lookup(
        self, plan: Plan, ctx: CallContext, scope: Scope, headers: Headers
    ) -> Lookup | None:
        """What the cache does for this request (None: the route is not cached)."""
        route = self.routes.get(plan.route)
        if route is None:
            return None
        payload = ctx.payload
        read, write = True, True
        control = header(scope, b"cache-control")
        if control is not None:
            text = control.decode("latin-1").lower()
            directives = {d.strip().split("=")[0] for d in text.split(",")}
            # no-store: neither served from nor written to the cache; no-cache: a fresh
            # answer (which may replace the stored one).
            if "no-store" in directives:
                read = write = False
            elif "no-cache" in directives:
                read = False
        if ctx.drill_id is not None:
            read = write = False  # drill traffic exists to exercise the drill's target
        elif ctx.endpoint in _GENERATION and cache_key.refusal(payload, route.policy):
            read = write = False
        if not (read or write):
            return self._result(route, headers, BYPASS, None)
        principal = ctx.principal
        scope_id = cache_key.scope_id(
            route.config.scope, ctx.key_id, principal.team if principal is not None else None
        )
        keyed = payload
        if ctx.stream and scope["path"].endswith("/messages"):
            # The Anthropic handler always asks the service for the usage chunk (its
            # message_delta needs it): key its streams as the OpenAI streams that carry one.
            keyed = {**payload, "stream_options": {"include_usage": True}}
        key = cache_key.exact_key(route.namespace, scope_id, keyed)
        lookup = Lookup(self, route, key, scope_id)
        if read:
            try:
                lookup.entry = await self._find(route, lookup, keyed)
            except Unavailable:
                return self._result(route, headers, BYPASS, None)
            except Exception:  # an optional component's edge: whatever breaks, serve uncached
                log.exception("response cache lookup failed on route %s; bypassing", route.name)
                return self._result(route, headers, BYPASS, None)
        if lookup.entry is not None:
            near = lookup.semantic
            if near is not None and near.key is not None:
                similarity = f"{near.similarity:.4f}".encode()
                headers.append((b"x-farebox-cache-similarity", similarity))
            return self._result(route, headers, HIT, lookup)
        if not write:
            lookup.key = None
        return self._result(route, headers, MISS if read else BYPASS, lookup)

    async def _find(
        self, route: RouteCache, lookup: Lookup, payload: dict[str, Any]
    ) -> Entry | None:
        raw = await route.store.get(lookup.key or "")
        if raw is None and route.index is not None:
            near = route.index.nearest(route.namespace, lookup.scope_id, payload)
            lookup.semantic = near
            if near.key is not None:
                raw = await route.store.get(near.key)
        return Entry.decode(raw) if raw is not None else None

    @staticmethod
    def _result(
        route: RouteCache, headers: Headers, result: str, lookup: Lookup | None
    ) -> Lookup | None:
        headers.append((b"x-farebox-cache", result.encode()))
        route.counted[result].inc()
        return lookup


class Lookup:
    """One request on a cached route: serves the hit, or stores the miss's answer."""

    __slots__ = ("cache", "entry", "key", "route", "scope_id", "semantic")

    def __init__(self, cache: ResponseCache, route: RouteCache, key: str, scope_id: str) -> None:
        self.cache = cache
        self.route = route
        # Where the answer is stored; None when it must not be (no-store is a BYPASS).
        self.key: str | None = key
        self.scope_id = scope_id
        self.entry: Entry | None = None
        # Semantic routes: the query's embedding, to index this request's answer under.
        self.semantic: Neighbour | None = None

    # -- non-stream ---------------------------------------------------------------------

    async def complete(self, service: Service, ctx: CallContext, plan: Plan) -> Completion:
        entry = self.entry
        if entry is not None and entry.kind == _JSON:
            self._meter_hit(service, ctx, plan, entry)
            return Completion(entry.body, entry.deployment, 0, Decimal(0))
        done = await service.complete(ctx, plan)
        if self.key is not None and _passed(done.gate):
            row = _answer_row(ctx, done.deployment)
            if row is not None:
                self._store(Entry(_JSON, done.deployment, _usage(row), done.body))
        return done

    # -- stream -------------------------------------------------------------------------

    async def stream(
        self, service: Service, ctx: CallContext, plan: Plan, wants_usage: bool
    ) -> StreamingCompletion:
        entry = self.entry
        if entry is not None and entry.kind == _SSE:
            self._meter_hit(service, ctx, plan, entry)
            return StreamingCompletion(entry.deployment, 0, _replay(entry.chunks()))
        streaming = await service.stream(ctx, plan, wants_usage)
        # A gated route's stream is stored only if the gate saw it (`buffer_streams`):
        # relayed streams pass through unchecked.
        checked = plan.gate is None or streaming.gate is not None
        if self.key is not None and checked and _passed(streaming.gate):
            # The relay is passed in now: by the time the tap runs, `streaming.chunks` is it.
            streaming.chunks = self._tap(ctx, streaming.chunks, streaming.deployment)
        return streaming

    async def _tap(
        self, ctx: CallContext, chunks: AsyncIterator[bytes], deployment: str
    ) -> AsyncIterator[bytes]:
        """Relay the chunks untouched; store them once the stream ended with [DONE] (a cut
        or failed stream never does: it ends with an error event, or just stops)."""
        kept: list[bytes] = []
        size, limit = 0, self.route.config.max_entry_bytes
        complete = False
        try:
            async for chunk in chunks:
                if size <= limit:
                    kept.append(chunk)
                    size += len(chunk)
                if chunk.endswith(DONE):
                    complete = True
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
            row = _answer_row(ctx, deployment) if complete else None
            if row is not None and size <= limit:
                kept = [_zero_cost(c) for c in kept]
                body = b"".join(kept)
                lengths = tuple(len(c) for c in kept)
                self._store(Entry(_SSE, deployment, _usage(row), body, lengths))

    # -- both ---------------------------------------------------------------------------

    def _store(self, entry: Entry) -> None:
        if self.key is None:
            return
        value = entry.encode()
        if len(value) > self.route.config.max_entry_bytes:
            return
        ttl = self.route.config.ttl_s
        self.route.store.put(self.key, value, ttl)
        near = self.semantic
        if self.route.index is not None and near is not None:
            self.route.index.add(near, self.key, ttl)

    def _meter_hit(self, service: Service, ctx: CallContext, plan: Plan, entry: Entry) -> None:
        spec = self.cache.specs.get(entry.deployment) or plan.attempts[0].deployment
        started = time.perf_counter()
        ctx.ttft_ms = (started - ctx.t0) * 1000
        row = service.meter.cache_hit(ctx, PlannedAttempt(spec, CACHE_HIT), entry.usage, started)
        if row.saved_usd:
            self.route.saved.inc(float(row.saved_usd))
        service.meter.finish(ctx, plan, 200, None, entry.deployment)


def _passed(gate: str | None) -> bool:
    """Ungated, or the gate's verdict was a pass (see gateway.strategies.gating:
    "pass…" / "fail; …")."""
    return gate is None or gate.startswith("pass")


def _answer_row(ctx: CallContext, deployment: str) -> AttemptRow | None:
    """The metered attempt that produced the answer (its tokens are the entry's usage)."""
    for row in reversed(ctx.attempts):
        if row.deployment == deployment and row.error_class is None:
            return row
    return None


def _usage(row: AttemptRow) -> Usage:
    return Usage(
        row.input_uncached_tokens,
        row.cached_read_tokens,
        row.cache_write_tokens,
        row.output_tokens,
        row.reasoning_tokens,
    )


def _zero_cost(chunk: bytes) -> bytes:
    """The usage chunk carries the miss's `cost_usd`; a replay costs nothing."""
    if b'"cost_usd"' not in chunk:
        return chunk
    out = []
    for event in chunk.split(b"\n\n"):
        if event.startswith(b"data: {") and b'"cost_usd"' in event:
            try:
                data = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                out.append(event)
                continue
            usage = data.get("usage") if isinstance(data, dict) else None
            if isinstance(usage, dict) and "cost_usd" in usage:
                usage["cost_usd"] = 0.0
                event = b"data: " + orjson.dumps(data)
        out.append(event)
    return b"\n\n".join(out)


async def _replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
