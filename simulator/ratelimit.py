"""The ``rpm=N`` / ``tpm=N`` directives: provider-like rate limits, deterministic.

One sliding 60-second window per *full* requested model name (``::`` suffix included,
like the prompt cache: each deployment is its own quota).  A request is admitted when the
window holds fewer than ``rpm`` admitted requests and its prompt tokens fit in what
``tpm`` leaves (``tpm`` counts prompt/input tokens at admission, like Anthropic's
input-tokens-per-minute limit; output is unknown when the decision is taken).  Rejected
requests consume no quota, so waiting ``retry-after`` is always enough to get through
(unless the prompt alone exceeds ``tpm``: that request can never pass and is told to wait
a whole window).  Admission happens on arrival, after ``hang`` (a hung request is never
counted) and before ``latency`` and the injected faults (an admitted request that then
fails with ``status=``/``fail_first`` has used its slot, as upstream).

Headers, computed at admission (``reset`` = when the oldest admitted request in the
window ages out, i.e. when ``remaining`` next grows — the same instant a 429's
``retry-after`` names):

* OpenAI / Azure: ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests``,
  ``x-ratelimit-reset-requests`` (a duration such as ``850ms``, ``1.2s``, ``1m0s``) and,
  with ``tpm``, the same ``-tokens`` trio;
* Anthropic: ``anthropic-ratelimit-requests-limit/-remaining/-reset`` (an RFC 3339 UTC
  time, rounded up to the second) and, with ``tpm``, ``anthropic-ratelimit-input-tokens-*``
  and ``anthropic-ratelimit-tokens-*``;
* Gemini, Vertex AI and Bedrock send none (their real services do not either).

Over the limit: 429 in the wire's error format with ``retry-after`` (whole seconds,
rounded up) and ``retry-after-ms``, plus the headers above with ``remaining`` 0.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = ["WINDOW_S", "Admission", "RateLimits", "openai_duration", "rfc3339"]

WINDOW_S = 60.0


def openai_duration(seconds: float) -> str:
    """OpenAI's reset format: ``"850ms"``, ``"1.2s"``, ``"1m0s"`` (rounded up to the ms)."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def rfc3339(epoch: float) -> str:
    """``2024-09-18T21:39:52Z``: Anthropic's reset format, rounded up to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(epoch)))


@dataclass(slots=True)
class Admission:
    """The limiter's answer for one request."""

    #: Seconds until the request could be admitted; ``0`` when it was admitted.
    wait: float
    #: ``"requests"`` or ``"tokens"`` when rejected; ``None`` when admitted.
    exceeded: str | None
    message: str
    #: Rate-limit headers for the request's wire (empty for wires without any).
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def admitted(self) -> bool:
        return self.exceeded is None


class _Window:
    __slots__ = ("log", "tokens")

    def __init__(self) -> None:
        #: ``(admitted at, prompt tokens)``, oldest first.
        self.log: deque[tuple[float, int]] = deque()
        self.tokens = 0

    def expire(self, now: float) -> None:
        horizon = now - WINDOW_S
        log = self.log
        while log and log[0][0] <= horizon:
            self.tokens -= log.popleft()[1]

    def request_wait(self, rpm: int, now: float) -> float:
        """Seconds until one more request fits (``0`` if it does now)."""
        used = len(self.log)
        if used < rpm:
            return 0.0
        # used - rpm + 1 entries must age out; the last of them is at index used - rpm.
        return self.log[used - rpm][0] + WINDOW_S - now

    def token_wait(self, tpm: int, tokens: int, now: float) -> float:
        excess = self.tokens + tokens - tpm
        if excess <= 0:
            return 0.0
        if tokens > tpm:
            return WINDOW_S
        freed = 0
        for admitted, spent in self.log:
            freed += spent
            if freed >= excess:
                return admitted + WINDOW_S - now
        return WINDOW_S  # unreachable: freeing the whole log always suffices

    def reset(self, now: float) -> float:
        return self.log[0][0] + WINDOW_S - now if self.log else 0.0


class RateLimits:
    """Sliding windows per model; mutated only from the event loop, so no locking."""

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def clear(self) -> None:
        self._windows.clear()

    def admit(
        self,
        model: str,
        flavor: str,
        rpm: int | None,
        tpm: int | None,
        tokens: int,
        *,
        now: float | None = None,
        wall: float | None = None,
    ) -> Admission:
        """Admit (and record) or reject one request of ``tokens`` prompt tokens."""
        if now is None:
            now = time.monotonic()
        if wall is None:
            wall = time.time()
        window = self._windows.get(model)
        if window is None:
            window = self._windows[model] = _Window()
        window.expire(now)
        request_wait = window.request_wait(rpm, now) if rpm is not None else 0.0
        token_wait = window.token_wait(tpm, tokens, now) if tpm is not None else 0.0
        if request_wait > 0 and rpm is not None:
            exceeded: str | None = "requests"
            message = (
                f"Rate limit reached for {model} on requests per min (RPM): "
                f"Limit {rpm}, Used {len(window.log)}, Requested 1."
            )
        elif token_wait > 0 and tpm is not None:
            exceeded = "tokens"
            message = (
                f"Rate limit reached for {model} on tokens per min (TPM): "
                f"Limit {tpm}, Used {window.tokens}, Requested {tokens}."
            )
        else:
            exceeded = None
            message = ""
            window.log.append((now, tokens))
            window.tokens += tokens
        wait = max(request_wait, token_wait)
        if exceeded is not None:
            message += f" Please try again in {openai_duration(wait)}."
        headers: dict[str, str] = {}
        reset = window.reset(now)
        if rpm is not None:
            remaining = max(0, rpm - len(window.log))
            _add(headers, flavor, "requests", rpm, remaining, request_wait or reset, wall)
        if tpm is not None:
            remaining = max(0, tpm - window.tokens)
            _add(headers, flavor, "tokens", tpm, remaining, token_wait or reset, wall)
        return Admission(wait, exceeded, message, headers)


def _add(
    headers: dict[str, str],
    flavor: str,
    kind: str,
    limit: int,
    remaining: int,
    reset: float,
    wall: float,
) -> None:
    if flavor in ("openai", "azure"):
        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
        headers[f"x-ratelimit-reset-{kind}"] = openai_duration(reset)
    elif flavor == "anthropic":
        at = rfc3339(wall + reset)
        # tpm counts input tokens, which Anthropic reports both as its own input-token
        # limit and folded into the combined tokens limit.
        for name in ("requests",) if kind == "requests" else ("input-tokens", "tokens"):
            headers[f"anthropic-ratelimit-{name}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{name}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{name}-reset"] = at
