"""Config reload without a restart: SIGHUP re-reads the routing YAML and swaps the state.

A reload builds a whole new GatewayState from the new file, carrying over what does not
depend on the YAML (the ledger writer and its queue, the breakers and their open trips,
learned quality stats, the limiter when `limits:` is unchanged; see `build_state`). Shared
state — breakers, limits, budgets, drills, key revocations — lives in Redis and Postgres, so
the new state reads the same picture the old one had. Then `holder.state` is replaced in one
assignment: requests already running keep the state they pinned at their start (HotPath),
new requests get the new one, and the old state is closed once its last request finished
(bounded by the longest route timeout, in case a request never returns).

A bad file (unreadable, invalid YAML, failed validation, a price or router model that will not
load) changes nothing: the old state keeps serving, every issue is logged with file:line, and
`farebox_config_reload_total{result="error"}` counts it.

With several uvicorn workers the master process gets the SIGHUP. uvicorn's own answer is a
rolling restart of every worker, which would drop each worker's queued ledger rows to the
spool, cold-start its caches and, with a broken file, leave workers failing to start;
`serve_workers` runs uvicorn's supervisor with SIGHUP forwarded to each worker instead, and
each worker reloads in place as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter, Gauge
from uvicorn import Config as UvicornConfig
from uvicorn.supervisors import Multiprocess, multiprocess

from gateway.config.loading import parse_config
from gateway.config.schema import GatewayConfig
from gateway.runtime.background import Background
from gateway.runtime.yaml_loader import ConfigError, ConfigIssue
from gateway.serving.server import GatewayProcess
from gateway.settings import Settings
from gateway.state import GatewayState, build_state, warm_up

log = logging.getLogger("farebox.reload")

RELOADS = Counter(
    "farebox_config_reload_total", "Config reloads (SIGHUP) by result: ok or error", ["result"]
)
# With several workers (multiprocess metrics) a digest shows 1 while any live worker serves
# it, and the load time is the oldest worker's: a worker that refused a reload stands out.
CONFIG_INFO = Gauge(
    "farebox_config_info",
    "1 for the sha256 (first 16 hex) of the routing config being served",
    ["sha256"],
    multiprocess_mode="livemax",
)
CONFIG_LOADED_AT = Gauge(
    "farebox_config_loaded_timestamp_seconds",
    "When the config now serving was loaded",
    multiprocess_mode="livemin",
)
# How often a retiring state is checked for its last in-flight request.
_RETIRE_POLL_S = 0.05
# Past the longest route timeout: the attempt loop's own cleanup (ledger row, settle).
_RETIRE_SLACK_S = 5.0


class Holder(Protocol):
    state: GatewayState | None


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_config(path: Path) -> tuple[GatewayConfig, str]:
    """The parsed file and the digest of exactly the text that was parsed; ConfigError."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(file, None, "", f"cannot read config: {exc}")]) from None
    return parse_config(text, file, os.environ), config_digest(text)


def mark_file_loaded(path: Path) -> None:
    """The gauges for the file read at start-up (the digest of its text as it is now)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        mark_loaded(config_digest(path.read_text(encoding="utf-8")))


# The digest this process serves. A replaced one is set to 0, not removed: multiprocess
# metric files keep every label a process ever wrote.
_served: list[str] = []


def mark_loaded(digest: str) -> None:
    for old in _served:
        CONFIG_INFO.labels(old).set(0)
    _served[:] = [digest]
    CONFIG_INFO.labels(digest).set(1)
    CONFIG_LOADED_AT.set(time.time())


async def start_components(state: GatewayState, previous: GatewayState | None = None) -> None:
    """Start the background parts of `state` that are new (not carried over from
    `previous`, which are running already)."""

    def new(part: object) -> bool:
        if part is None:
            return False
        return previous is None or all(part is not p for p in vars(previous).values())

    if state.breakers is not None and new(state.breakers):
        await state.breakers.start()
    if state.inflight_sync is not None and new(state.inflight_sync):
        await state.inflight_sync.start()
    if state.drills is not None and new(state.drills):
        # Reads the running drills from the database before the swap: no drill pauses.
        await state.drills.start()
    if state.drill_scheduler is not None and new(state.drill_scheduler):
        await state.drill_scheduler.start()
    if state.key_sync is not None and new(state.key_sync):
        await state.key_sync.start()
    if state.responses is not None and new(state.responses):
        state.responses.start()  # the purge of expired stored responses
    if state.files is not None and new(state.files):
        state.files.start()  # the storage check and the purge of expired files
    if state.quality is not None and any(r.gate for r in state.config.routes.values()):
        await state.quality.start()  # idempotent: a carried-over refresher keeps running


class Reloader:
    """Owns SIGHUP for one worker: reload(), swap, retire the old state."""

    def __init__(self, settings: Settings, path: Path, holder: Holder, *, drain_s: float) -> None:
        self.settings, self.path, self.holder, self.drain_s = settings, path, holder, drain_s
        self._lock = asyncio.Lock()
        self._tasks = Background()
        # id → a replaced state whose requests are still finishing (states are unhashable).
        self._retiring: dict[int, GatewayState] = {}
        self._signal = False

    def install_signal_handler(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (ValueError, RuntimeError, NotImplementedError):
            # Not the main thread (an embedded server, the test harness): reload() only.
            log.debug("SIGHUP reload not installed: not in the main thread")
            return
        self._signal = True

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.path)
        self._spawn(self.reload())  # outcome logged and counted; nobody awaits it

    async def reload(self) -> bool:
        """Load the file again and serve it; False (nothing changed) when it is bad."""
        async with self._lock:
            started = time.monotonic()
            old = self.holder.state
            if old is None:
                return False
            try:
                config, digest = await asyncio.to_thread(read_config, self.path)
            except ConfigError as exc:
                return self._refused(exc.issues)
            try:
                new = build_state(self.settings, config, previous=old)
            except ConfigError as exc:
                return self._refused(exc.issues)
            except Exception as exc:  # a bad reload must leave the old config serving
                log.exception("config reload failed building the new state; keeping the old one")
                return self._refused([ConfigIssue(str(self.path), None, "", repr(exc))])
            try:
                await start_components(new, previous=old)
                await asyncio.get_running_loop().run_in_executor(None, warm_up, new)
            except Exception as exc:  # as above
                log.exception("config reload failed starting the new state; keeping the old one")
                await new.close(keep=[old])
                return self._refused([ConfigIssue(str(self.path), None, "", repr(exc))])
            self.holder.state = new
            mark_loaded(digest)
            RELOADS.labels("ok").inc()
            # Warning, not info: production often logs at warning, and a config change is
            # exactly what an operator reading the log is looking for.
            log.warning(
                "config reloaded from %s (sha256 %s, %d routes) in %.0f ms; "
                "%d request(s) finish on the old config",
                self.path,
                digest,
                len(config.routes),
                (time.monotonic() - started) * 1000,
                old.inflight,
            )
            self._retiring[id(old)] = old
            self._spawn(self._retire(old))
            return True

    def _refused(self, issues: list[ConfigIssue]) -> bool:
        RELOADS.labels("error").inc()
        for issue in issues:
            log.error("config reload refused, keeping the running config: %s", issue)
        return False

    def _longest_wait_s(self, old: GatewayState) -> float:
        """How long a request on `old` may still run: its routes' total timeouts (streams
        can legitimately last minutes), and at least the drain period."""
        totals = [spec.timeouts.total_ms / 1000 for spec in old.config.route_specs().values()]
        return max([self.drain_s, *totals]) + _RETIRE_SLACK_S

    async def _retire(self, old: GatewayState) -> None:
        # The count is exact, so this bound only matters if a request never returns.
        deadline = time.monotonic() + self._longest_wait_s(old)
        # Polled, not signalled: an Event would cost every request a check on its way out.
        while old.inflight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_RETIRE_POLL_S)
        if old.inflight > 0:
            log.warning("closing the old config with %d request(s) still running", old.inflight)
        await self._close_old(old)

    async def _close_old(self, old: GatewayState) -> None:
        if self._retiring.pop(id(old), None) is None:
            return
        # Parts it shares with the serving state, or with another state still finishing its
        # requests (two reloads in quick succession), stay open.
        keep = [s for s in (self.holder.state, *self._retiring.values()) if s is not None]
        try:
            await old.close(keep=keep)
        except Exception:  # best-effort close of the replaced state
            log.exception("closing the replaced config's state failed")

    async def close(self) -> None:
        """At shutdown (in-flight requests are done): close retiring states now."""
        if self._signal:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self._tasks.cancel()
        for old in list(self._retiring.values()):
            await self._close_old(old)

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        self._tasks.spawn(coro)


def ignore_sighup_until_ready() -> None:
    """In a worker process before its lifespan runs: SIGHUP's default action would kill it."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


class _ForwardingSupervisor(Multiprocess):
    def handle_term(self) -> None:
        self._stop_listening()
        super().handle_term()

    def handle_int(self) -> None:
        self._stop_listening()
        super().handle_int()

    def _stop_listening(self) -> None:
        """The supervisor's copy of each listening socket, closed before the workers are
        told to stop: each worker closes its own, and a socket still open here would keep
        accepting connections into a backlog nobody reads — clients would hang for the
        whole drain instead of being refused and going to another replica."""
        for sock in self.sockets:
            sock.close()

    def handle_hup(self) -> None:
        pids = [p.pid for p in self.processes if p.pid is not None and p.process.is_alive()]
        log.warning("SIGHUP: asking %d worker(s) to reload the config", len(pids))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)


def serve_workers(config: UvicornConfig, extra: list[socket.socket] | None = None) -> None:
    """uvicorn's multi-worker supervisor, with SIGHUP meaning "reload" in every worker and
    SIGTERM draining each (gateway/serving/server.py). `extra`: more listening sockets every worker
    serves (the metrics listener)."""
    sockets = [config.bind_socket(), *(extra or [])]
    # Every worker the supervisor starts (at first, and to replace one that died) must be
    # one whose server drains as gateway/serving/server.py says; uvicorn names its Process class at
    # each of those places, and this process runs nothing else.
    original = multiprocess.Process
    multiprocess.Process = GatewayProcess  # type: ignore[misc]
    try:
        _ForwardingSupervisor(config, sockets=sockets).run()
    except KeyboardInterrupt:
        pass
    finally:
        multiprocess.Process = original  # type: ignore[misc]
        for sock in sockets:
            sock.close()
