"""Graceful shutdown: what a request sees when its process is told to stop (SIGTERM).

The timeline, from the signal (G = FAREBOX_GRACEFUL_SHUTDOWN_S; the server side is
gateway/serving/server.py):

- at once: every listener closes, so a new connection is refused and the client (or its
  load balancer) goes to another replica. `/readyz` answers 503 `draining`. A request that
  arrives on a connection already open — an idle keep-alive connection in a client's or a
  proxy's pool — is answered 503 with `retry-after` and `connection: close`, in its wire
  format, instead of the connection being reset under it (a POST cut that way is not
  safely retryable; a 503 is).
- requests in flight run on, streams included, until G minus a margin;
- then what is still running is *cut*: its task is cancelled and marked, and every place
  that turns a cancellation into a ledger row asks `cancel_outcome()`: the attempt is
  recorded with error class `shutdown` (billed as a client hang-up is: estimated input,
  the output seen so far), a stream ends with an error event (then `[DONE]`; Anthropic
  clients get `event: error`) and a call still waiting for its upstream gets a JSON 503;
- then the application's shutdown: GatewayState.close() flushes the ledger, so those
  rows are written too.

With nothing in flight the process goes straight to the last step.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from gateway.errors import ShuttingDown

log = logging.getLogger("farebox")

SHUTDOWN = "shutdown"
# A stream cut by shutdown has sent its 200 already; a call that had not answered gets this.
STATUS_SHUTDOWN = 503
CLIENT_CANCELLED = "client_cancelled"
# nginx's "client closed request": the request row's status when the client left first.
STATUS_CLIENT_CLOSED = 499
# Seconds a client is told to wait before retrying: by then it reaches another replica
# (this one's listener is closed; its load balancer has dropped it or is about to).
RETRY_AFTER_S = 1

# Request tasks cancelled by the shutdown cut (weak: a finished task just drops out).
_cut: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def cut(task: asyncio.Task[Any]) -> None:
    """Cancel a request's task because the process is stopping (not because its client left)."""
    _cut.add(task)
    task.cancel()


def was_cut() -> bool:
    """Whether the current task was cancelled by the shutdown cut. Only asked on the rare
    cancellation path, never per request."""
    task = asyncio.current_task()
    return task is not None and task in _cut


def cancel_outcome() -> tuple[int, str]:
    """(request status, error class) for a request whose task was cancelled: the process
    stopping (`shutdown`, 503) or its client hanging up (`client_cancelled`, 499)."""
    if was_cut():
        return STATUS_SHUTDOWN, SHUTDOWN
    return STATUS_CLIENT_CLOSED, CLIENT_CANCELLED


def shutting_down(*, cut_off: bool = False) -> ShuttingDown:
    """The 503 for work this process will not (or no longer) do; any replica can retry it."""
    message = (
        "The gateway stopped before this request finished (it is shutting down); retry it."
        if cut_off
        else "This gateway replica is shutting down and takes no new requests; retry it."
    )
    return ShuttingDown(
        message,
        headers=[(b"retry-after", str(RETRY_AFTER_S).encode()), (b"connection", b"close")],
    )


class Drain:
    """One app's view of the process stopping: `active` from the signal on."""

    __slots__ = ("active", "since")

    def __init__(self) -> None:
        self.active = False
        self.since: float | None = None

    def begin(self) -> None:
        if not self.active:
            self.active = True
            self.since = time.monotonic()


# The drains of the apps this process serves (one, except in tests that run several).
_drains: list[Drain] = []


def register(drain: Drain) -> None:
    _drains.append(drain)


def unregister(drain: Drain) -> None:
    if drain in _drains:
        _drains.remove(drain)


def begin() -> None:
    """The process is stopping: every registered app drains from now on. Safe to call from
    a signal handler (it only sets attributes) and more than once."""
    for drain in _drains:
        drain.begin()
