"""Everything a worker needs to serve requests, built once per loaded config."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import orjson

from gateway.batch.store import BatchStore
from gateway.cache.response import ResponseCache
from gateway.config.schema import GatewayConfig
from gateway.conversations.store import ResponseStore
from gateway.core.breakers import Breakers
from gateway.core.live_routing import LiveRouting, Scorer
from gateway.core.metering import Ledger, Meter, NullLedger
from gateway.core.passthrough import Passthrough
from gateway.core.quality_live import QualityLive
from gateway.core.service import Service
from gateway.drills.board import DrillBoard
from gateway.drills.schedule import DrillScheduler
from gateway.extras import require
from gateway.files.storage import FileStorage, LocalDirectory
from gateway.files.store import FileStore
from gateway.keys.admin import KeyAdmin
from gateway.keys.auth import KeyStore, Principal
from gateway.keys.sync import KeySync, virtual_keys_on
from gateway.ledger.db_errors import database_errors
from gateway.ledger.partitions import PartitionKeeper
from gateway.ledger.pg import is_postgres
from gateway.ledger.pg_sink import writer_sink
from gateway.ledger.pricing import PriceBook, load_price_book
from gateway.ledger.recovery import open_journal
from gateway.ledger.retention import retain
from gateway.ledger.rollup_compactor import RollupCompactor
from gateway.ledger.serving_repositories import (
    open_batches,
    open_drills,
    open_files,
    open_ledger,
    open_responses,
)
from gateway.ledger.spool import Spool
from gateway.ledger.tokens import encoding_name_for, load_encoding
from gateway.ledger.writer import LedgerWriter
from gateway.limits.inflight_sync import InFlightSync
from gateway.limits.limiter import Limiter
from gateway.providers.base import Adapter
from gateway.providers.dispatch import ProtocolDispatch
from gateway.providers.openai_compat import OpenAICompatAdapter, ProviderEndpoint
from gateway.providers.responses_bridge import ResponsesBridge
from gateway.settings import Settings
from routing.breaker import BreakerPolicy
from routing.guard import Guards
from routing.model import RouteSpec
from routing.resolve import ModelIndex

if TYPE_CHECKING:
    from gateway.ledger.repository import LedgerRepository

log = logging.getLogger("farebox")

# Each part's close is bounded; the ledger writer's own flush has its own, longer timeout
# (settings.ledger_close_timeout_s) and is never cut short by this one.
CLOSE_TIMEOUT_S = 5.0


class _Closable(Protocol):
    async def close(self) -> None: ...


@dataclass
class GatewayState:
    config: GatewayConfig
    index: ModelIndex
    keys: KeyStore
    service: Service
    models_body: bytes
    writer: LedgerWriter | None = None
    repository: LedgerRepository | None = None
    # Keeps a Postgres ledger's day partitions created ahead; beside the writer, carried
    # over with it by a reload. None on SQLite.
    partitions: PartitionKeeper | None = None
    # Adds the Postgres writer's pending rows to the rollups every ledger_rollup_interval_s
    # (gateway/ledger/rollup_compactor.py); carried over like the writer. None on SQLite.
    rollups: RollupCompactor | None = None
    prices: PriceBook | None = None
    breakers: Breakers | None = None
    live: LiveRouting | None = None
    inflight_sync: InFlightSync | None = None
    # Virtual keys (only with a ledger database): cache invalidation and the admin operations.
    key_sync: KeySync | None = None
    key_admin: KeyAdmin | None = None
    quality: QualityLive | None = None
    limiter: Limiter | None = None
    drills: DrillBoard | None = None
    # Starts the YAML's scheduled drills (only with a ledger and a `drills:` list).
    drill_scheduler: DrillScheduler | None = None
    # The response cache (gateway/cache/response.py); None unless some route has `cache:`.
    cache: ResponseCache | None = None
    # Stored Responses (gateway/conversations/store.py), on the ledger's engine; None when the
    # gateway has no database (then nothing is stored and nothing can be chained).
    responses: ResponseStore | None = None
    # Uploaded files (gateway/files/store.py), on the ledger's engine; None without a database.
    files: FileStore | None = None
    # The pass-through endpoints (gateway/core/passthrough.py); always built by build_state.
    passthrough: Passthrough | None = None
    # Batches (gateway/batch/store.py), on the ledger's engine; None without a database.
    batches: BatchStore | None = None
    # Each route's guard checks (gateway/config/guard.py); routes without any are absent.
    guards: dict[str, Guards] = field(default_factory=dict)
    draining: bool = False
    # Requests running on this state (HotPath counts them): a state replaced by a reload is
    # closed once this reaches zero.
    inflight: int = 0
    started_at: float = field(default_factory=time.time)

    @property
    def max_body_bytes(self) -> int:
        return self.config.server.max_body_bytes

    async def close(self, keep: Iterable[GatewayState] = ()) -> None:
        """Stop upstream I/O, flush the ledger (to the database or the spool), disconnect.

        `keep`: the states still serving after a config reload replaced this one; the parts
        they carried over (ledger writer, breakers, …) are theirs now and stay open."""
        self.draining = True
        kept = {id(part) for state in keep for part in vars(state).values()}
        parts: tuple[_Closable | None, ...] = (
            self.service,
            self.inflight_sync,
            self.quality,
            self.breakers,
            self.limiter,
            self.drill_scheduler,
            self.drills,
            self.cache,
            self.responses,
            self.files,
            self.key_sync,
            self.partitions,
            self.rollups,
            self.writer,
            self.repository,
        )
        for part in parts:
            if part is not None and id(part) not in kept:
                # Bounded: a frozen database or Redis must not hold the process past its
                # grace period. The ledger writer bounds its own flush, then spools.
                bound = None if part is self.writer else CLOSE_TIMEOUT_S
                try:
                    await asyncio.wait_for(part.close(), bound)
                except TimeoutError:
                    log.warning("%s did not close within %ss", type(part).__name__, bound)


def build_keys(settings: Settings, config: GatewayConfig) -> KeyStore:
    keys: list[tuple[str | Principal, str]] = [(k.principal(), k.key) for k in config.api_keys()]
    if settings.master_key:
        keys.append(("master", settings.master_key))
    return KeyStore(keys, disabled=config.auth_disabled, ttl_s=config.auth.key_cache_ttl_s)


def build_native(config: GatewayConfig) -> OpenAICompatAdapter:
    """The OpenAI-protocol adapter: one aiohttp session for every native provider."""
    return OpenAICompatAdapter.create(
        {
            name: ProviderEndpoint(name, p.api_base, p.api_key, p.headers)
            for name, p in config.providers.items()
            if not p.via_litellm and p.api_base is not None
        }
    )


def build_adapter(config: GatewayConfig, native: OpenAICompatAdapter | None = None) -> Adapter:
    """The OpenAI adapter (`native`, else a new one), plus litellm's for other protocols
    when (only when) any is configured: importing litellm costs seconds and hundreds of MB."""
    if native is None:
        native = build_native(config)
    translated = {name: p for name, p in config.providers.items() if p.via_litellm}
    if not translated:
        return native
    from gateway.providers.litellm_adapter import LitellmAdapter, LitellmProvider

    litellm = LitellmAdapter(
        {
            name: LitellmProvider(name, p.protocol, p.api_base, p.api_key, p.headers, p.options)
            for name, p in translated.items()
        }
    )
    return ProtocolDispatch(native, dict.fromkeys(translated, litellm))


def build_scorers(config: GatewayConfig) -> dict[str, Scorer]:
    """The learned router of each `strategy: quality` route (the shipped model unless the
    route names its own); loaded once, here, so no request waits for a file."""
    routes = {n: r for n, r in config.routes.items() if r.strategy == "quality"}
    if not routes:
        return {}
    from gateway.router.scoring import load_scorer

    return {name: load_scorer(route.router_model) for name, route in routes.items()}


def quality_route_specs(config: GatewayConfig) -> dict[str, RouteSpec]:
    """The route specs, each `target_quality` turned into the strong share that gets it."""
    specs = config.route_specs()
    targets = {
        n: r.target_quality
        for n, r in config.routes.items()
        if r.strategy == "quality" and r.target_quality is not None
    }
    if not targets:
        return specs
    from gateway.router.scoring import with_target_shares

    return with_target_shares(specs, targets)


def build_files(settings: Settings, repository: LedgerRepository) -> FileStore:
    """The files store on the ledger's engine, its bytes in FAREBOX_FILES_DIR (default: a
    `files` directory beside the spool) or, with FAREBOX_FILES_BACKEND=s3, in a bucket."""
    storage: FileStorage
    if settings.files_backend == "s3":
        require("s3")  # before the import: a missing extra says what to install
        from gateway.files.storage_s3 import S3Storage

        if not settings.files_s3_bucket:
            raise ValueError("FAREBOX_FILES_BACKEND=s3 needs FAREBOX_FILES_S3_BUCKET")
        storage = S3Storage(
            settings.files_s3_bucket,
            prefix=settings.files_s3_prefix,
            endpoint_url=settings.files_s3_endpoint_url,
            region=settings.files_s3_region,
            part_bytes=settings.files_s3_part_bytes,
        )
    else:
        storage = LocalDirectory(
            settings.files_dir or str(Path(settings.spool_dir).parent / "files")
        )
    return FileStore(
        open_files(repository),
        storage,
        max_bytes=settings.files_max_bytes,
        max_lines=settings.files_max_lines,
        purge_interval_s=settings.files_purge_interval_s,
    )


def build_state(
    settings: Settings, config: GatewayConfig, previous: GatewayState | None = None
) -> GatewayState:
    """Must run inside the event loop: the upstream session and ledger task bind to it.

    On a config reload `previous` is the state being replaced: what does not depend on the
    YAML (or whose YAML is unchanged) is carried over rather than rebuilt, so queued ledger
    rows, open breakers, learned quality and in-process limit counters survive the reload.
    """
    index = config.model_index()
    writer: LedgerWriter | None = None
    repository: LedgerRepository | None = None
    partitions: PartitionKeeper | None = None
    rollups: RollupCompactor | None = None
    ledger: Ledger = NullLedger()
    prices = load_price_book(config, Path(settings.prices_file))
    if previous is not None and previous.writer is not None:
        # Settings (the database URL) do not change on reload, only the YAML does.
        writer, repository = previous.writer, previous.repository
        partitions, rollups = previous.partitions, previous.rollups
        ledger = writer
    elif settings.ledger_enabled:
        repository = open_ledger(settings.database_url)
        spool = Spool(settings.spool_dir)
        journal = None
        if settings.journal_enabled:
            # Before the writer starts: what a crashed process left is spooled for it.
            journal = open_journal(
                settings.journal_dir or Path(settings.spool_dir) / "journal",
                spool,
                prices,
                fsync_ms=settings.journal_fsync_ms,
            )
        sink, owns_sink = writer_sink(settings.database_url, repository)
        writer = LedgerWriter(
            sink,
            spool,
            batch_rows=settings.ledger_batch_rows,
            max_batch_rows=settings.ledger_max_batch_rows or None,
            max_delay_s=settings.ledger_max_delay_ms / 1000,
            max_queue_rows=settings.ledger_max_queue_rows,
            journal=journal,
            close_timeout_s=settings.ledger_close_timeout_s,
            owns_sink=owns_sink,
        )
        writer.start()
        ledger = writer
        if is_postgres(settings.database_url):
            # Its first run is now, in the background: a database that is down is retried
            # later and never holds up start-up or serving.
            partitions = PartitionKeeper(
                settings.database_url,
                retention_days=settings.ledger_retention_days,
                retain=retain,
            )
            partitions.start()
            # Every worker runs one; the compactor's advisory lock lets one work at a time.
            rollups = RollupCompactor(
                settings.database_url, interval_s=settings.ledger_rollup_interval_s
            )
            rollups.start()
    meter = Meter(prices, ledger, writer.journal if writer is not None else None)
    b = config.server.breaker
    policy = BreakerPolicy(
        consecutive_failures=b.consecutive_failures,
        error_rate=b.error_rate,
        min_requests=b.min_requests,
        window_s=b.window_s,
        cooldown_s=b.cooldown_s,
        max_cooldown_s=b.max_cooldown_s,
    )
    if previous is not None and previous.breakers is not None:
        breakers = previous.breakers  # open breakers stay open; the new policy applies next
        breakers.policy = policy
    else:
        breakers = Breakers(policy, settings.redis_url)
    created = int(time.time())
    models = {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "farebox"}
            for name in index.routable_names()
        ],
    }
    specs = config.deployment_specs()
    quality = (
        previous.quality
        if previous is not None and previous.quality is not None
        else QualityLive(repository)
    )
    live = LiveRouting(
        specs,
        quality_route_specs(config),
        prices,
        breakers.open_map,
        quality=quality,
        scorers=build_scorers(config),
    )
    limited = [
        d.id
        for d in specs.values()
        if d.max_concurrency is not None or d.rpm is not None or d.tpm is not None
    ]
    inflight_sync = (
        InFlightSync(settings.redis_url, live.loads, limited)
        if settings.redis_url and limited
        else None
    )
    limits = config.limits
    if previous is not None and previous.limiter is not None and previous.config.limits == limits:
        limiter = previous.limiter  # its in-process counters (used while Redis is down) carry on
    else:
        limiter = Limiter(
            settings.redis_url,
            policies={str(k): str(v) for k, v in limits.on_redis_failure.items()},
            spend_source=repository.key_spend_since if repository is not None else None,
            probe_interval_s=limits.probe_interval_ms / 1000,
            timeout_s=limits.redis_timeout_ms / 1000,
            reservation_ttl_s=limits.reservation_ttl_s,
            reconcile_interval_s=limits.reconcile_interval_s,
            **limits.lease_settings(),
        )
    keys = build_keys(settings, config)
    key_sync, key_admin = virtual_keys_on(keys, repository, settings.redis_url)
    drill_board = None
    drill_scheduler = None
    if settings.ledger_enabled:
        primaries = {
            name: route.targets[0] for name, route in config.routes.items() if route.targets
        }
        drill_board = DrillBoard(
            open_drills(settings.database_url, repository),
            settings.redis_url,
            specs,
            primaries,
            breaker_open=breakers.open_map,
        )
        meter.drills = drill_board
        if config.drills and drill_board.repository is not None:
            drill_scheduler = DrillScheduler(
                config.drills,
                drill_board.repository,
                settings.redis_url,
                drill_board.announce,
                interval_s=settings.drill_schedule_interval_s,
                lock_ttl_s=max(60.0, 2 * settings.drill_schedule_interval_s),
            )
    native = build_native(config)
    service = Service(ResponsesBridge(build_adapter(config, native)), meter, breakers, live)
    # Moderations, images, audio, rerank: the same session, meter, breakers and tracker
    # (closed with the service's adapter).
    passthrough = Passthrough(native, meter, breakers, live)
    service.quality = quality
    cache = ResponseCache.build(
        config, settings.redis_url, previous.cache if previous is not None else None
    )
    # Rebuilt on every reload (its settings are the YAML's), on the engine the ledger
    # repository owns and carries over: a reload opens no engine.
    responses = (
        ResponseStore(open_responses(repository), config.responses)
        if repository is not None
        else None
    )
    # Carried over by a reload (its settings are the process's, not the YAML's): the purge
    # and the storage backend's connections run on.
    files = previous.files if previous is not None and previous.files is not None else None
    if files is None and repository is not None:
        files = build_files(settings, repository)
    batches = (
        BatchStore(open_batches(repository), files)
        if repository is not None and files is not None
        else None
    )
    return GatewayState(
        batches=batches,
        cache=cache,
        responses=responses,
        files=files,
        config=config,
        index=index,
        keys=keys,
        key_sync=key_sync,
        key_admin=key_admin,
        service=service,
        passthrough=passthrough,
        quality=quality,
        live=live,
        inflight_sync=inflight_sync,
        breakers=breakers,
        limiter=limiter,
        drills=drill_board,
        drill_scheduler=drill_scheduler,
        models_body=orjson.dumps(models),
        guards=config.guard_checks(),
        writer=writer,
        repository=repository,
        partitions=partitions,
        rollups=rollups,
        prices=prices,
    )


async def check_ledger(state: GatewayState, settings: Settings) -> None:
    """Say loudly at start-up if the ledger cannot be written, instead of at the first batch."""
    if state.repository is None:
        return
    try:
        missing = await state.repository.missing_tables()
    except database_errors() as exc:  # unreachable at start-up: spool for now, say so
        log.error(
            "ledger database unreachable (%s); rows go to the spool in %s until it is back",
            type(exc).__name__,
            settings.spool_dir,
        )
        return
    if missing:
        log.error(
            "ledger tables %s missing: run `farebox migrate`; rows spool to %s until then",
            ", ".join(missing),
            settings.spool_dir,
        )


def warm_up(state: GatewayState) -> None:
    """Load price maps and tokenizers off the event loop, so the first metered failure
    does not stall every request behind a one-second vocabulary load."""
    specs = state.config.deployment_specs().values()
    if state.prices is not None:
        # Each deployment's price, so litellm's map (≈6 MB) is loaded only when one needs it.
        now = datetime.now(UTC)
        for spec in specs:
            state.prices.price_for(spec.id, spec.upstream_model, spec.provider_kind, now)
    names = {encoding_name_for(d.upstream_model) for d in specs}
    for name in sorted(n for n in names if n is not None):
        load_encoding(name)
    trim_heap()


def trim_heap() -> None:
    """Hand the heap that start-up parsing (YAML, JSON maps, vocabularies) freed back to
    the OS: glibc keeps it otherwise, and it counts in every worker's resident memory."""
    with contextlib.suppress(AttributeError, OSError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)
