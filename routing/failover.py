"""Pure decisions behind the attempt loop: classify a failure, back off, pick the next target.

The loop itself (I/O, sleeping, cancellation) lives in `gateway/core/service.py`; everything here is
a plain function of its arguments so the fault matrix can be tested without a network, a clock or
a random generator. Times are passed in as seconds, random values as floats in [0, 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum

from routing.model import DeploymentSpec, PlannedAttempt
from routing.outcomes import (
    CONNECT,
    CUT,
    MALFORMED,
    OK,
    STATUS,
    STREAM_ERROR,
    TIMEOUT,
    OutcomeKind,
)

# Only the machine-readable code is trusted: matching provider message text ("prompt is too
# long", "maximum context length") is brittle across providers and languages, so adapters are
# expected to normalise such errors to this code before they reach routing.
CONTEXT_LENGTH_CODES = frozenset({"context_length_exceeded"})

# The deployment itself is wrong (key, permissions, model name): retrying it cannot help.
_MISCONFIGURED_STATUSES = frozenset({401, 403, 404})

# Non-status failures: (error_class, human label). All are the upstream's fault.
_KIND_LABELS: dict[str, str] = {
    CONNECT: "connect error",
    TIMEOUT: "timeout",
    MALFORMED: "malformed upstream body",
    CUT: "stream cut",
    STREAM_ERROR: "error event in stream",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt ended with, as seen by the attempt loop."""

    kind: OutcomeKind
    status: int | None = None
    code: str | None = None
    retry_after_s: float | None = None
    first_byte_sent: bool = False


class Action(StrEnum):  # str() gives "retry", not "Action.RETRY", in logs and ledger rows
    RETRY = "retry"
    NEXT = "next"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    error_class: str
    retryable: bool
    open_breaker: bool
    counts_as_failure: bool
    needs_larger_context: bool
    reason: str


def classify(
    outcome: Outcome, retries_left_on_target: int, *, deployment: DeploymentSpec | None = None
) -> Decision:
    """Decide what the attempt loop does after a failed attempt.

    `deployment`, when given, prefixes the reason with `id@provider` for the
    `x-farebox-fallback-reason` header. An "ok" outcome is a caller bug and raises ValueError:
    there is no decision to make about a success.
    """
    if outcome.kind == OK:
        raise ValueError("classify() is only for failed attempts")
    error_class, label, retryable, counts, open_breaker, larger = _judge(outcome)
    prefix = f"{deployment.id}@{deployment.provider}: " if deployment is not None else ""
    if outcome.first_byte_sent:
        # The client already holds part of an answer; splicing another deployment's output onto
        # it would be a silent corruption, so the stream ends with an error event instead.
        # The class stays the underlying one so the ledger still says *why* it broke.
        reason = f"{prefix}{label} after the first byte was sent"
        return Decision(Action.FAIL, error_class, False, open_breaker, counts, False, reason)
    if retryable:
        action = Action.RETRY if retries_left_on_target > 0 else Action.NEXT
    elif open_breaker or larger:
        action = Action.NEXT
    else:
        action = Action.FAIL
    return Decision(action, error_class, retryable, open_breaker, counts, larger, prefix + label)


def _judge(outcome: Outcome) -> tuple[str, str, bool, bool, bool, bool]:
    """(error_class, label, retryable, counts_as_failure, open_breaker, needs_larger_context)."""
    status = outcome.status
    if outcome.kind in (STATUS, STREAM_ERROR) and outcome.code in CONTEXT_LENGTH_CODES:
        # The deployment is healthy, the prompt is just too big for it: not a breaker failure.
        shown = f" (HTTP {status})" if status is not None else ""
        return "context_length", f"context length exceeded{shown}", False, False, False, True
    if outcome.kind != STATUS:
        # Unknown kinds are treated as upstream trouble rather than crashing the loop: a new
        # adapter failure mode should degrade to failover, not to a 500 from the gateway.
        label = _KIND_LABELS.get(outcome.kind, f"upstream failure ({outcome.kind})")
        error_class = outcome.kind if outcome.kind in _KIND_LABELS else "unknown"
        return error_class, label, True, True, False, False
    if status is None:
        return "http_unknown", "HTTP error without a status", True, True, False, False
    label = f"HTTP {status}"
    if status in _MISCONFIGURED_STATUSES:
        return f"http_{status}", label, False, True, True, False
    if status == 408 or status == 429:
        # 429 counts towards the breaker: sustained throttling means the deployment cannot take
        # our traffic right now, and shedding it to fallbacks beats spending every request's
        # retry budget on it. Only a run of them trips a breaker whose threshold is above one.
        return f"http_{status}", label, True, True, False, False
    if 400 <= status < 500:
        # 400/413/422 and unknown 4xx alike: the request is at fault, not the deployment.
        # Another provider would reject it too, so it is neither retried elsewhere nor held
        # against the breaker.
        return f"http_{status}", label, False, False, False, False
    # 5xx, 529 and anything non-4xx that still arrived as a status failure (e.g. a redirect from
    # a mis-set api_base) are the upstream's problem.
    return f"http_{status}", label, True, True, False, False


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before retrying the same target, or that it is not worth waiting."""

    delay_s: float
    skip_target: bool


_MAX_SHIFT = 62  # beyond this the exponential is far past any sane cap; avoids giant ints


def backoff_s(
    retry_number: int, base_ms: int, cap_ms: int, retry_after_s: float | None, rand: float
) -> Backoff:
    """Full-jitter exponential backoff for retry `retry_number` (1 = first retry).

    With a retry-after the wait is at least what the upstream asked for, capped at `cap_ms`;
    when the upstream asks for more than the cap, waiting would burn the request's deadline on one
    target, so the caller is told to move on (`skip_target`) with no delay.
    """
    if retry_number < 1:
        raise ValueError(f"retry_number starts at 1, got {retry_number}")
    if base_ms < 0 or cap_ms < 0:
        raise ValueError("base_ms and cap_ms must be non-negative")
    if not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand}")
    cap_s = cap_ms / 1000.0
    ceiling_ms = min(cap_ms, base_ms << min(retry_number - 1, _MAX_SHIFT))
    jittered = rand * ceiling_ms / 1000.0
    if retry_after_s is None or math.isnan(retry_after_s):
        return Backoff(jittered, False)
    if retry_after_s > cap_s:
        return Backoff(0.0, True)
    return Backoff(max(jittered, retry_after_s, 0.0), False)


def fits_deadline(now_s: float, deadline_s: float, delay_s: float, min_attempt_s: float) -> bool:
    """Whether waiting `delay_s` still leaves a useful attempt before the total deadline."""
    return now_s + delay_s + min_attempt_s <= deadline_s


def parse_retry_after(headers: Mapping[str, str], now_epoch_s: float) -> float | None:
    """Seconds the upstream asked us to wait, from `retry-after-ms` or `retry-after`.

    `retry-after-ms` wins because it is the more precise of the two when a provider sends both.
    `retry-after` may be delay-seconds or an HTTP-date (a past date means 0). Unparseable,
    negative or non-finite values are ignored rather than guessed at.
    """
    ms = _number(_header(headers, "retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 5322 "-0000" parses as naive; HTTP-dates are always GMT.
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_epoch_s)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Callers may pass a plain dict with any casing, not only a case-insensitive multidict.
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def order_targets(
    attempts: Sequence[PlannedAttempt],
    breaker_open: Mapping[str, bool],
    last_failure_at: Mapping[str, float],
) -> list[PlannedAttempt]:
    """Plan order minus open breakers; if all are open, only the least-recently-failed one.

    Failing a request without a single attempt is worse than one probe at the deployment most
    likely to have recovered. A deployment with no recorded failure counts as longest ago; ties
    keep plan order.
    """
    closed = [a for a in attempts if not breaker_open.get(a.deployment.id, False)]
    if closed or not attempts:
        return closed
    best = min(attempts, key=lambda a: last_failure_at.get(a.deployment.id, -math.inf))
    return [best]


def next_with_larger_context(
    remaining: Sequence[PlannedAttempt], current: DeploymentSpec
) -> int | None:
    """Index in `remaining` of the first target with a larger context window than `current`.

    A candidate with an unknown window is never assumed larger. If the current window is unknown,
    the first candidate with any declared window is returned: all we know is that this prompt did
    not fit here, and a declared window is worth one fast-failing try. None means nothing can
    take the prompt, so the caller returns the context-length error to the client.
    """
    for index, attempt in enumerate(remaining):
        window = attempt.deployment.context_window
        if window is None:
            continue
        if current.context_window is None or window > current.context_window:
            return index
    return None
