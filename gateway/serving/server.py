"""uvicorn's Server with Farebox's shutdown (see gateway/runtime/shutdown.py for what clients see).

uvicorn's own shutdown closes the listeners and idle connections, waits up to
`timeout_graceful_shutdown` for every request, then cancels what is left — a stream is cut
without an error event, a hung call gets a text/plain 500 and the ledger calls both
`client_cancelled` — and only then runs the application's shutdown. This one:

1. on the signal, marks every app draining (new work on open connections: 503);
2. closes the listeners, but leaves open connections open: a request on one is answered
   503 + `connection: close` rather than reset;
3. waits for the requests in flight until the grace period minus CUT_MARGIN_S;
4. cuts what is left (gateway.runtime.shutdown.cut): streams end with an error event, calls with a
   JSON 503, the ledger says `shutdown`; waits (bounded) for them to finish;
5. closes every connection, then runs the application's shutdown (the ledger flush).

With nothing in flight, 3 and 4 take no time: a rolling deploy does not wait for the grace
period on an idle replica.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from types import FrameType

from uvicorn import Config
from uvicorn import Server as UvicornServer
from uvicorn.supervisors.multiprocess import Process

from gateway.runtime import shutdown

log = logging.getLogger("farebox")

# Time the cut leaves before the grace period ends: for cut streams to send their error
# event and be metered. Cutting costs microseconds per request; a client that stopped
# reading is the only thing that can use this up.
CUT_MARGIN_S = 1.0
_POLL_S = 0.02


def cut_margin(grace_s: float) -> float:
    """A quarter of short grace periods (tests use 2 s), at most CUT_MARGIN_S."""
    return min(CUT_MARGIN_S, grace_s / 4)


class GatewayServer(UvicornServer):
    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._signalled_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled_at is None:
            self._signalled_at = time.monotonic()
            # At once, not at uvicorn's next 0.1 s tick: from here new work gets a 503.
            shutdown.begin()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started = self._signalled_at or time.monotonic()
        shutdown.begin()  # also when leaving for another reason (limit_max_requests)
        configured = self.config.timeout_graceful_shutdown
        grace = 30.0 if configured is None else float(configured)
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = self.server_state
        running = len(state.tasks)
        log.warning(
            "shutting down: listeners closed, %d request(s) in flight get up to %.1f s",
            running,
            grace,
        )
        await self._until(lambda: not state.tasks, started + grace - cut_margin(grace))
        if state.tasks and not self.force_exit:
            log.warning(
                "grace period over: ending %d request(s) still running (recorded as %s)",
                len(state.tasks),
                shutdown.SHUTDOWN,
            )
            for task in list(state.tasks):
                shutdown.cut(task)
            await self._until(lambda: not state.tasks, started + grace)
        # Idle connections close now; one still answering closes after its response.
        for connection in list(state.connections):
            connection.shutdown()
        settle = max(started + grace, time.monotonic() + 0.5)
        await self._until(lambda: not state.connections, settle)
        for task in list(state.tasks):
            # Still running after being cut (a client that stopped reading): as uvicorn does.
            task.cancel()
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _until(self, done: Callable[[], bool], deadline: float) -> None:
        while not done() and not self.force_exit and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL_S)


class GatewayProcess(Process):
    """A uvicorn worker process whose server is a GatewayServer (pickled to the spawned
    worker by reference, so the worker imports this module)."""

    @property
    def server(self) -> UvicornServer:
        if self._server is None:
            self._server = GatewayServer(config=self.config)
        return self._server


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket for uvicorn's `sockets=` (the metrics listener)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
