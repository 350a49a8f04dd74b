"""An upstream failure as the router sees it (Outcome) and as the client sees it."""

from __future__ import annotations

import time
from typing import Any

from gateway.errors import (
    GatewayError,
    RateLimited,
    StreamCut,
    UpstreamRejected,
    UpstreamUnreachable,
    upstream_failed,
    upstream_timeout,
)
from gateway.observability.redact import scrub
from gateway.providers.base import CONNECT, CUT, STATUS, STREAM_ERROR, TIMEOUT, UpstreamError
from routing.failover import Outcome, parse_retry_after


def outcome_of(exc: UpstreamError) -> Outcome:
    code = None
    if isinstance(exc.body, dict) and isinstance(exc.body.get("error"), dict):
        raw = exc.body["error"].get("code")
        code = raw if isinstance(raw, str) else None
    return Outcome(
        kind=exc.kind,
        status=exc.status,
        code=code,
        retry_after_s=parse_retry_after(exc.headers, time.time()) if exc.headers else None,
    )


def client_error(exc: UpstreamError, deployment: str) -> GatewayError:
    """Translate an upstream failure into what the client should see."""
    if exc.kind == TIMEOUT:
        return upstream_timeout(f"Upstream {deployment} timed out.")
    if exc.kind == CONNECT:
        return UpstreamUnreachable(f"Upstream {deployment} is unreachable.")
    detail = _error_field(exc.body, "message")
    if detail is not None:
        # Adapters scrub at the source; this is the last stop before a client sees it.
        detail = scrub(detail)
    if exc.kind == STATUS and exc.status is not None:
        status = exc.status
        if status == 429:
            retry = [
                (k.encode(), v.encode())
                for k, v in exc.headers.items()
                if k.startswith("retry-after")
            ]
            return RateLimited(
                detail or f"Upstream {deployment} is rate limiting requests.",
                error_type="rate_limit_error",
                code=_error_field(exc.body, "code") or "rate_limit_exceeded",
                headers=retry,
            )
        if status in (400, 413, 422):
            return UpstreamRejected(
                status,
                detail or f"Upstream {deployment} rejected the request (HTTP {status}).",
                code=_error_field(exc.body, "code"),
                param=_error_field(exc.body, "param"),
            )
        if status in (401, 403, 404):
            return upstream_failed(
                f"Upstream {deployment} refused Farebox's request (HTTP {status}); "
                "the deployment's provider key or model name is misconfigured.",
                code="upstream_misconfigured",
            )
        return upstream_failed(f"Upstream {deployment} failed (HTTP {status}).")
    if exc.kind == STREAM_ERROR:
        return upstream_failed(f"Upstream {deployment} reported an error: {detail or 'unknown'}")
    if exc.kind == CUT:
        return StreamCut(f"Upstream {deployment} sent an unusable response ({exc.kind}).")
    return upstream_failed(f"Upstream {deployment} sent an unusable response ({exc.kind}).")


def _error_field(body: Any, name: str) -> str | None:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            value = err.get(name)
            return value if isinstance(value, str) and value else None
    return None
