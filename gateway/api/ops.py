"""Operational endpoints: liveness and readiness probes, and Prometheus metrics.

/metrics shows spend and traffic, so it is not on the API port: `farebox serve` opens a
second listener (FAREBOX_METRICS_PORT, default 9464) that serves only /metrics and /healthz
(`MetricsListener`, picked by HotPath from the port a request came in on). The API port
serves /metrics only if FAREBOX_METRICS_ON_API_PORT says so: `open` (HotPath answers it with
`MetricsListener`) or `admin` (master key: gateway/api/ops_routes.py, on the FastAPI app).
GET /healthz and /readyz are answered here (`Probes`), without FastAPI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.api.anthropic_translate import error_body as anthropic_error_body
from gateway.api.asgi import Receive, Scope, Send, new_request_id, send_error
from gateway.errors import NotFound
from gateway.observability import metrics as prometheus
from gateway.runtime.db_probe import DatabaseProbe
from gateway.runtime.shutdown import Drain, shutting_down
from gateway.state import GatewayState

# Answered by `Probes` on the hot path (GET only: other methods get FastAPI's 405).
PROBE_PATHS = frozenset(("/healthz", "/readyz"))


def readiness(
    current: GatewayState | None, drain: Drain | None, probe: DatabaseProbe | None
) -> tuple[int, dict[str, Any]]:
    """/readyz: (status, body)."""
    if current is None:
        return 503, {"status": "starting"}
    if current.draining or (drain is not None and drain.active):
        return 503, {"status": "draining"}
    body: dict[str, Any] = {
        "status": "ready",
        "routes": len(current.config.routes),
        "deployments": len(current.config.deployments),
    }
    writer = current.writer
    if writer is not None:
        # A database outage degrades the ledger to the disk spool; it does not make the
        # pod unready: every replica shares the database, so an unready verdict would
        # take the whole service down for an outage that loses no row and refuses no
        # request. It is reported as `degraded`, with what the last ping saw.
        ledger: dict[str, Any] = {
            "database": "down" if writer.db_down else "up",
            "writes_failing": writer.db_down,
            "queued_rows": writer.queued_rows,
            "rows_written": writer.rows_written,
            "rows_spooled": writer.rows_spooled,
        }
        if probe is not None:
            ledger.update(probe.report())
            if probe.up is False:
                ledger["database"] = "down"
            elif probe.up is None and not writer.db_down:
                ledger["database"] = "unknown"  # the first ping has not answered yet
        if ledger["database"] == "down":
            body["status"] = "degraded"
        body["ledger"] = ledger
    return 200, body


class Probes:
    """GET /healthz and /readyz, answered without FastAPI (an idle worker never loads it)."""

    def __init__(
        self,
        state: Callable[[], GatewayState | None],
        drain: Drain | None = None,
        probe: DatabaseProbe | None = None,
    ) -> None:
        self.state = state
        self.drain = drain
        self.probe = probe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/healthz":
            status, body = 200, b'{"status":"ok"}'
        else:
            code, data = readiness(self.state(), self.drain, self.probe)
            status, body = code, orjson.dumps(data)
        headers = [
            (b"x-request-id", new_request_id().encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class MetricsListener:
    """The metrics port: GET /metrics (every worker's values merged in multiprocess mode)
    and /healthz; nothing else, whatever the path."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        headers = [(b"x-request-id", new_request_id().encode())]
        if path == "/metrics" and method in ("GET", "HEAD"):
            body, content_type = prometheus.scrape()
            status = 200
            headers.append((b"content-type", content_type.encode()))
        elif path == "/healthz" and method in ("GET", "HEAD"):
            body, status = b'{"status":"ok"}', 200
            headers.append((b"content-type", b"application/json"))
        else:
            error = NotFound("This port serves /metrics only.")
            await send_error(send, error, headers)
            return
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def local_port(scope: Scope) -> int | None:
    server = scope.get("server")
    return server[1] if server is not None else None


async def refuse_draining(send: Send, *, anthropic: bool) -> None:
    """503 + retry-after + connection: close for a request that arrives while the process
    drains (on a connection opened before; new connections are refused)."""
    request_id = new_request_id().encode()
    headers = [(b"x-request-id", request_id)]
    error = shutting_down()
    if anthropic:
        headers.append((b"request-id", request_id))
        await send_error(send, error, headers, anthropic_error_body(error))
    else:
        await send_error(send, error, headers)
