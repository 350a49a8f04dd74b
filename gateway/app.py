"""The ASGI front door: create_asgi(settings, config) → HotPath, and the process's lifespan.

`HotPath` answers the OpenAI endpoints, the Anthropic Messages ingress, the Responses API,
the passthrough, the probes (/healthz, /readyz) and the metrics scrape itself, in pure ASGI:
no per-request telemetry checks, routing, dependency injection or response-model
validation. It also runs the application's lifespan (start-up and shutdown of the state, the
ledger, the reloader). Everything else — the admin API (/admin/*), the status page, files,
batches, /metrics on the API port behind the master key, unknown paths — goes to a FastAPI
app built on the first request that needs it, so a serving worker that only ever answers /v1
never imports FastAPI or Starlette.

`LeanHttpProtocol` (gateway/serving/protocol.py) asks `HotPath.serves_lean` which requests
skip uvicorn's ASGI request cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gateway.api.anthropic import AnthropicEndpoints
from gateway.api.asgi import (
    Receive,
    Scope,
    Send,
    headers_too_large,
    reseed_request_ids,
    send_edge_error,
)
from gateway.api.openai import OpenAIEndpoints
from gateway.api.ops import PROBE_PATHS, MetricsListener, Probes, local_port, refuse_draining
from gateway.api.passthrough import PassthroughEndpoints
from gateway.api.responses import ResponsesEndpoints
from gateway.batch.runner import BatchRunner
from gateway.config.loading import load_config
from gateway.config.schema import GatewayConfig
from gateway.observability import metrics, request_log, telemetry
from gateway.runtime import shutdown
from gateway.runtime.db_probe import DatabaseProbe
from gateway.serving.reload import (
    Reloader,
    ignore_sighup_until_ready,
    mark_file_loaded,
    start_components,
)
from gateway.settings import Settings
from gateway.state import GatewayState, build_state, check_ledger, warm_up

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("farebox")

GC_THRESHOLDS = (50_000, 20, 100)

# The state a request started with (set by HotPath for the request's task): a config reload
# swaps `StateHolder.state` under running requests, which must finish on the config they began.
_PINNED: ContextVar[GatewayState | None] = ContextVar("farebox_state", default=None)


class _Endpoint(Protocol):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class StateHolder:
    """The current GatewayState; replaced as a whole so requests never see half a config."""

    def __init__(self) -> None:
        self.state: GatewayState | None = None

    def get(self) -> GatewayState | None:
        pinned = _PINNED.get()
        return pinned if pinned is not None else self.state

    def require(self) -> GatewayState:
        state = self.get()
        if state is None:
            raise RuntimeError("gateway state used before start-up finished")
        return state


class HotPath:
    """Pure ASGI: answer /v1/* and the probes ourselves, run the lifespan, hand everything
    else to the FastAPI app (built on first use)."""

    def __init__(
        self, settings: Settings, config: GatewayConfig, config_path: Path | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self.config_path = config_path
        self.holder = StateHolder()
        # From SIGTERM on (gateway/serving/server.py), new /v1 work gets a 503.
        self.drain = shutdown.Drain()
        self.probe = DatabaseProbe(settings.db_ping_interval_s, settings.db_ping_timeout_s)
        self.endpoints = OpenAIEndpoints(self.holder.require)
        self.anthropic = AnthropicEndpoints(self.holder.require)
        self.responses = ResponsesEndpoints(self.holder.require)
        self.passthrough = PassthroughEndpoints(self.holder.require)
        # Path → (endpoint, whether its 503 while draining is Anthropic's): the exact paths
        # in one lookup. Later entries win, so a path two endpoints serve goes to the one
        # asked first in `_serve`'s chain (the chain still answers paths with ids in them).
        self.exact: dict[str, tuple[_Endpoint, bool]] = {}
        for endpoint, anthropic in (
            (self.passthrough, False),
            (self.responses, False),
            (self.anthropic, True),
            (self.endpoints, False),
        ):
            self.exact.update(dict.fromkeys(endpoint.paths, (endpoint, anthropic)))
        self.probes = Probes(self.holder.get, self.drain, self.probe)
        # Requests that came in on the metrics listener (see gateway/api/ops.py).
        self.metrics_port: int = settings.metrics_port
        self.metrics = MetricsListener()
        # FAREBOX_METRICS_ON_API_PORT=open: GET /metrics on the API port answered here too
        # (`admin` checks the master key on the FastAPI side).
        self.open_metrics = settings.metrics_on_api_port == "open"
        self._admin: FastAPI | None = None

    @property
    def app(self) -> FastAPI:
        """The FastAPI app for everything HotPath does not answer, built on first use."""
        if self._admin is None:
            self._admin = admin_app(self)
        return self._admin

    def serves_lean(self, scope: Scope) -> bool:
        """True for the requests HotPath answers itself (LeanHttpProtocol serves them
        without uvicorn's ASGI cycle)."""
        path = scope["path"]
        return (
            path in self.exact
            or self.endpoints.handles(path)
            or self.anthropic.handles(path)
            or self.responses.handles(path)
            or self.passthrough.handles(path)
            or (path in PROBE_PATHS and scope["method"] == "GET")
            or (path == "/metrics" and self.open_metrics and scope["method"] == "GET")
            or (bool(self.metrics_port) and local_port(scope) == self.metrics_port)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.holder.state
        if scope["type"] != "http" or state is None:
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
                return
            await self._serve(state, scope, receive, send)
            return
        # Counted so a reload closes the replaced state only after its last request.
        state.inflight += 1
        token = _PINNED.set(state)
        try:
            await self._serve(state, scope, receive, send)
        finally:
            _PINNED.reset(token)
            state.inflight -= 1

    async def _serve(
        self, state: GatewayState | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if scope["type"] == "http":
            if state is not None:
                server = state.config.server
                error = headers_too_large(scope, server.max_header_count, server.max_header_bytes)
                if error is not None:
                    await send_edge_error(scope, send, error)
                    return
            path = scope["path"]
            if self.metrics_port and local_port(scope) == self.metrics_port:
                await self.metrics(scope, receive, send)
                return
            exact = self.exact.get(path)
            if exact is not None:
                endpoint, anthropic = exact
                if self.drain.active:
                    await refuse_draining(send, anthropic=anthropic)
                    return
                await endpoint(scope, receive, send)
                return
            if self.endpoints.handles(path):
                if self.drain.active:
                    await refuse_draining(send, anthropic=False)
                    return
                await self.endpoints(scope, receive, send)
                return
            if self.anthropic.handles(path):
                if self.drain.active:
                    await refuse_draining(send, anthropic=True)
                    return
                await self.anthropic(scope, receive, send)
                return
            if self.responses.handles(path):
                if self.drain.active:
                    await refuse_draining(send, anthropic=False)
                    return
                await self.responses(scope, receive, send)
                return
            if self.passthrough.handles(path):  # after chat: no new work on its path
                if self.drain.active:
                    await refuse_draining(send, anthropic=False)
                    return
                await self.passthrough(scope, receive, send)
                return
            if scope["method"] == "GET":
                if path in PROBE_PATHS:
                    await self.probes(scope, receive, send)
                    return
                if path == "/metrics" and self.open_metrics:
                    await self.metrics(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol, as Starlette runs it (a failed start-up is reported
        as `lifespan.startup.failed`, which makes uvicorn exit)."""
        started = False
        await receive()  # lifespan.startup
        try:
            async with lifespan(self):
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
        except BaseException:
            text = traceback.format_exc()
            kind = "lifespan.shutdown.failed" if started else "lifespan.startup.failed"
            await send({"type": kind, "message": text})
            raise
        await send({"type": "lifespan.shutdown.complete"})


@asynccontextmanager
async def lifespan(hot: HotPath) -> AsyncIterator[None]:
    """The process's start-up and shutdown around serving."""
    settings, holder, drain, probe = hot.settings, hot.holder, hot.drain, hot.probe
    config_path = hot.config_path
    # Per process: each worker has its own request-log thread and span exporter.
    request_log.configure(settings.request_log)
    metrics.ENABLED = settings.metrics_enabled
    flusher = metrics.Flusher()
    telemetry.configure(settings.otel_endpoint, service_name=settings.otel_service_name)
    state = build_state(settings, hot.config)
    await start_components(state)
    holder.state = state
    shutdown.register(drain)
    runner = BatchRunner(holder.get) if settings.batch_runner else None
    if runner is not None:
        runner.start()
    if state.repository is not None:
        # The repository is carried over by reloads: one for the process's life.
        probe.start(state.repository.ping)
    reloader = None
    if config_path is not None:
        reloader = Reloader(settings, config_path, holder, drain_s=settings.graceful_shutdown_s)
        reloader.install_signal_handler()
        mark_file_loaded(config_path)
    # Start-up objects (config, price maps, modules) live for the whole process: keep
    # them out of every future collection, and collect young objects less often — the
    # hot path allocates many short-lived ones and rarely makes cycles.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    warming = asyncio.get_running_loop().run_in_executor(None, warm_up, state)
    # Awaited (bounded) so "startup complete" means the operator has been told.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(check_ledger(state, settings), 3)
    try:
        yield
    finally:
        # uvicorn runs this once every request has ended: gateway/serving/server.py cut those
        # that outlived the grace period, so their ledger rows are queued by now and
        # the close below flushes them.
        if runner is not None:
            # Lines in flight finish and are saved; the batch resumes on the next claim.
            await runner.close(settings.graceful_shutdown_s)
        await probe.close()
        await warming
        if reloader is not None:
            await reloader.close()
        # The latest state: reloads may have replaced the one built above.
        await holder.require().close()
        telemetry.shutdown()
        request_log.close()
        flusher.stop()
        metrics.worker_exited()
        shutdown.unregister(drain)


def admin_app(hot: HotPath) -> FastAPI:
    """The FastAPI app: ops' /metrics, the admin API, the status page, files, batches,
    and the error answers for unknown paths and wrong methods. Imported and built on the
    first request that needs it (the lifespan is HotPath's)."""
    from fastapi import FastAPI

    from gateway.api.admin import admin_router
    from gateway.api.admin_drills import admin_drills_router
    from gateway.api.admin_keys import admin_keys_router
    from gateway.api.app_errors import install_error_handlers
    from gateway.api.batches import batches_router
    from gateway.api.files import files_router
    from gateway.api.ops_routes import ops_router
    from gateway.api.status_page import status_router

    holder, settings = hot.holder, hot.settings
    app = FastAPI(
        title="Farebox",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # Farebox exports its own GenAI-aware telemetry; FastAPI's would only add
        # per-request work.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.include_router(ops_router(holder.get, settings, hot.drain, hot.probe))
    app.include_router(admin_router(holder.get, settings.master_key))
    app.include_router(admin_keys_router(holder.get, settings.master_key))
    app.include_router(admin_drills_router(holder.get, settings.master_key))
    app.include_router(status_router(holder.get, settings.master_key))
    app.include_router(files_router(holder.get, hot.drain))
    app.include_router(batches_router(holder.get, hot.drain))

    # 404 / 405 / validation / unhandled: the hot path's error shapes and x-request-id.
    install_error_handlers(app)

    app.state.holder = holder
    app.state.drain = hot.drain
    return app


def create_asgi(
    settings: Settings, config: GatewayConfig, config_path: Path | None = None
) -> HotPath:
    """What uvicorn serves. `config_path`: the file `config` came from; SIGHUP reloads it
    (without, no reload)."""
    return HotPath(settings, config, config_path)


def asgi_from_env() -> HotPath:
    """uvicorn factory for multi-worker serving: each worker reloads the config itself."""
    ignore_sighup_until_ready()
    reseed_request_ids()
    settings = Settings()
    return create_asgi(settings, load_config(settings.config), Path(settings.config))
