"""Live per-deployment state the planner reads: load, limits, latency, calibration.

Plain data with update methods that take the time as an argument, so everything here is
deterministic under test. The gateway owns the instances and updates them as attempts
start and end; the planner only reads them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

# Weight of the newest sample in the moving averages: ~the last 20 samples matter.
EWMA_ALPHA = 0.1
# Bytes of message text per token before calibration, by model family (BPE vocabularies
# on English text); calibrated per deployment from the prompt_tokens providers report.
BYTES_PER_TOKEN = {"openai": 4.0, "claude": 3.6, "gemini": 4.0, "llama": 3.8, "default": 3.8}


@functools.cache
def family_of(upstream_model: str) -> str:
    """The model family (BPE vocabulary) of an upstream model name; memoized: the names
    are the config's few deployments, asked about on every routing decision."""
    name = upstream_model.lower()
    if name.startswith(("gpt-", "o1", "o3", "o4", "text-embedding", "chatgpt")):
        return "openai"
    if "claude" in name:
        return "claude"
    if "gemini" in name:
        return "gemini"
    if "llama" in name:
        return "llama"
    return "default"


class MinuteWindow:
    """Sum of what happened in the last 60 s, in one-second buckets."""

    __slots__ = ("_buckets", "_seconds", "_total")

    def __init__(self) -> None:
        self._buckets = [0] * 60
        self._seconds = [0] * 60
        self._total = 0

    def add(self, now: float, amount: int = 1) -> None:
        second = int(now)
        slot = second % 60
        if self._seconds[slot] != second:
            self._total -= self._buckets[slot]
            self._buckets[slot] = 0
            self._seconds[slot] = second
        self._buckets[slot] += amount
        self._total += amount

    def total(self, now: float) -> int:
        second = int(now)
        stale = 0
        for slot in range(60):
            if self._buckets[slot] and second - self._seconds[slot] >= 60:
                stale += self._buckets[slot]
                self._buckets[slot] = 0
        self._total -= stale
        return self._total


@dataclass(slots=True)
class DeploymentLoad:
    """What is known about one deployment right now."""

    in_flight: int = 0
    # Other replicas' in-flight requests, and their requests and input tokens in the last
    # minute (shared through Redis when configured), so provider limits hold fleet-wide.
    remote_in_flight: int = 0
    remote_requests: int = 0
    remote_tokens: int = 0
    # Learned limits: no new request before `limited_until` (from a 429's retry-after or a
    # remaining count of zero with its reset time).
    limited_until: float = 0.0
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    requests: MinuteWindow = field(default_factory=MinuteWindow)
    tokens: MinuteWindow = field(default_factory=MinuteWindow)
    ewma_ttft_ms: float | None = None
    # Calibrated bytes of message text per prompt token (None: use the family default).
    bytes_per_token: float | None = None

    def started(self, now: float, input_tokens: int) -> None:
        self.in_flight += 1
        self.requests.add(now)
        self.tokens.add(now, input_tokens)

    def ended(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def observe_ttft(self, ms: float) -> None:
        self.ewma_ttft_ms = ms if self.ewma_ttft_ms is None else _ewma(self.ewma_ttft_ms, ms)

    def observe_prompt(self, text_bytes: int, prompt_tokens: int) -> None:
        if text_bytes < 64 or prompt_tokens <= 0:
            return  # too short to say anything about the ratio
        # Clamped: no real vocabulary is outside 1–8 bytes per token, and one odd sample
        # (a provider counting something we did not send) must not make every later
        # estimate absurd enough to fail context-window checks.
        ratio = min(8.0, max(1.0, text_bytes / prompt_tokens))
        current = self.bytes_per_token
        self.bytes_per_token = ratio if current is None else _ewma(current, ratio)

    def observe_limits(
        self,
        now: float,
        remaining_requests: int | None,
        remaining_tokens: int | None,
        reset_s: float | None,
    ) -> None:
        self.remaining_requests = remaining_requests
        self.remaining_tokens = remaining_tokens
        if (remaining_requests == 0 or remaining_tokens == 0) and reset_s is not None:
            self.limited_until = max(self.limited_until, now + reset_s)

    def rate_limited(self, now: float, retry_after_s: float | None) -> None:
        """A 429: nothing more until its retry-after (1 s when it gave none)."""
        wait = retry_after_s if retry_after_s is not None and retry_after_s > 0 else 1.0
        self.limited_until = max(self.limited_until, now + wait)


@dataclass(slots=True)
class RouteStats:
    """Per route: the mean output tokens of recent answers."""

    ewma_output_tokens: float | None = None

    def observe_output(self, tokens: int) -> None:
        if tokens <= 0:
            return
        current = self.ewma_output_tokens
        self.ewma_output_tokens = tokens if current is None else _ewma(current, tokens)


def _ewma(current: float, sample: float) -> float:
    return current + EWMA_ALPHA * (sample - current)
