"""What the simulator actually served, for exact comparison with a gateway's own ledger.

Shape of :meth:`Stats.snapshot` (served as ``GET /_stats``)::

    {"requests": {"<base model>": {"total": 12, "by_status": {"200": 10, "500": 2},
                                    "stream": 4}},
     "tokens": {"<base model>": {"prompt": 0, "cached": 0, "cache_write": 0,
                                  "completion": 0, "reasoning": 0}},
     "endpoints": {"chat": 10, "completions": 0, "embeddings": 1, "messages": 1,
                   "azure_chat": 0, "gemini": 0, "vertex": 0, "converse": 0,
                   "responses": 0, "azure_responses": 0},
     "faults": {"hang": 0, "cut": 0, "midstream_error": 0, "malformed": 0,
                "invalid_json": 0}}

``by_status`` records the status line that was sent; a ``hang`` request never sends one
and is recorded under the key ``"hang"`` so that ``total == sum(by_status.values())``.
``stream`` counts requests that asked for a stream, whatever their outcome.  Tokens are
added only when usage reached the client (a non-stream success, the OpenAI usage chunk,
the Responses API's ``response.completed`` / ``response.incomplete`` event, or
Anthropic's ``message_delta``); for Anthropic and Bedrock ``prompt`` is the
OpenAI-equivalent total (input + cache creation + cache read); ``cached`` / ``cache_write``
are what the answer reported, whether from directives or the ``prompt_cache`` simulation.
A 429 from the ``rpm``/``tpm`` limiter shows under ``by_status``.  ``reasoning`` counts only
reasoning the answer reported separately (OpenAI ``reasoning_tokens``, Gemini
``thoughtsTokenCount``, Anthropic/Bedrock ``thinking_tokens`` when thinking was asked for);
hidden reasoning is still inside ``completion``.

``invalid_json`` counts answers the ``invalid_json_rate`` directive spoiled; it is counted
when the answer is built, so a spoiled answer that ``cut_after`` then breaks counts in both.

``endpoints`` is per wire: ``chat`` (``/v1/chat/completions``), ``azure_chat`` (Azure's
``/openai/deployments/{d}/chat/completions``), ``messages`` (Anthropic), ``gemini``
(AI Studio ``generateContent`` / ``streamGenerateContent``), ``vertex`` (the same on the
Vertex AI path), ``converse`` (Bedrock ``converse`` / ``converse-stream``), ``responses``
(``/v1/responses``) and ``azure_responses`` (Azure's ``/openai/v1/responses``).  Gemini
and Bedrock report usage in their final stream event, which is when tokens are added.

The same token counts are also kept per model and UTC *billing day* (:meth:`Stats.daily`),
from which ``GET /_invoice`` renders provider invoices (:mod:`.invoices`); the billing day is
the real date unless pinned with ``POST /_clock?day=YYYY-MM-DD`` (``day=`` unpins it).

``GET /_stats`` adds ``gpus`` (per base model: slots, utilization, peak in use, queue wait)
once a model with the ``slots=N`` directive served; those counters are :mod:`.gpu`'s.

Batch lines (:mod:`.batch_wire`) count like live requests in ``requests`` and ``tokens``,
under the endpoints ``batch_chat`` / ``batch_responses`` / ``batch_embeddings`` (present in
``endpoints`` only once a batch line ran), and per billing day apart from live traffic
(:meth:`Stats.batch_daily`) so that invoices bill them as separate, discounted line items.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, date, datetime
from typing import Any

__all__ = ["ENDPOINTS", "FAULTS", "UNKNOWN_MODEL", "Stats"]

ENDPOINTS = (
    "chat",
    "completions",
    "embeddings",
    "messages",
    "azure_chat",
    "gemini",
    "vertex",
    "converse",
    "responses",
    "azure_responses",
)
FAULTS = ("hang", "cut", "midstream_error", "malformed", "invalid_json")
#: Model key for requests whose body could not be read far enough to find a model.
UNKNOWN_MODEL = "(unknown)"


class _ModelRequests:
    __slots__ = ("by_status", "stream", "total")

    def __init__(self) -> None:
        self.total = 0
        self.stream = 0
        self.by_status: dict[str, int] = {}


class _ModelTokens:
    __slots__ = ("cache_write", "cached", "completion", "prompt", "reasoning")

    def __init__(self) -> None:
        self.prompt = 0
        self.cached = 0
        self.cache_write = 0
        self.completion = 0
        self.reasoning = 0


class Stats:
    """Counters mutated only from the event loop thread, so no locking is needed."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._requests: dict[str, _ModelRequests] = {}
        self._tokens: dict[str, _ModelTokens] = {}
        # Per (model, UTC billing day), for the invoices of :mod:`.invoices`. The billing day
        # is today's unless a test pins it (``POST /_clock?day=``) to simulate other days.
        self._daily_tokens: dict[tuple[str, date], _ModelTokens] = {}
        self._daily_requests: dict[tuple[str, date], int] = {}
        self._batch_tokens: dict[tuple[str, date], _ModelTokens] = {}
        self._batch_requests: dict[tuple[str, date], int] = {}
        self.billing_day: date | None = None
        self._endpoints = dict.fromkeys(ENDPOINTS, 0)
        self._faults = dict.fromkeys(FAULTS, 0)
        # The `x-client-request-id` of every request received (the gateway sends its attempt
        # id there), newest 200k: lets a crash test match the ledger to upstream calls by id.
        self.client_ids: deque[str] = deque(maxlen=200_000)

    def endpoint(self, name: str, client_id: str | None = None) -> None:
        # Batch endpoints appear on first use, so live-only snapshots keep their shape.
        self._endpoints[name] = self._endpoints.get(name, 0) + 1
        if client_id is not None:
            self.client_ids.append(client_id)

    def served(self, model: str, status: int | str, stream: bool, batch: bool = False) -> None:
        entry = self._requests.get(model)
        if entry is None:
            entry = self._requests[model] = _ModelRequests()
        entry.total += 1
        if stream:
            entry.stream += 1
        key = str(status)
        entry.by_status[key] = entry.by_status.get(key, 0) + 1
        if status == 200:
            slot = (model, self.today())
            daily = self._batch_requests if batch else self._daily_requests
            daily[slot] = daily.get(slot, 0) + 1

    def today(self) -> date:
        return self.billing_day or datetime.now(UTC).date()

    def fault(self, kind: str) -> None:
        self._faults[kind] += 1

    def fault_count(self, kind: str) -> int:
        return self._faults[kind]

    def usage(
        self,
        model: str,
        *,
        prompt: int,
        cached: int = 0,
        cache_write: int = 0,
        completion: int = 0,
        reasoning: int = 0,
        batch: bool = False,
    ) -> None:
        entry = self._tokens.get(model)
        if entry is None:
            entry = self._tokens[model] = _ModelTokens()
        entry.prompt += prompt
        entry.cached += cached
        entry.cache_write += cache_write
        entry.completion += completion
        entry.reasoning += reasoning
        slot = (model, self.today())
        days = self._batch_tokens if batch else self._daily_tokens
        day = days.get(slot)
        if day is None:
            day = days[slot] = _ModelTokens()
        day.prompt += prompt
        day.cached += cached
        day.cache_write += cache_write
        day.completion += completion
        day.reasoning += reasoning

    def daily(self) -> list[tuple[str, date, int, dict[str, int]]]:
        """(model, UTC day, 200s served, token counts as in :meth:`snapshot`) per model-day
        that reported usage, sorted; live traffic only (batch lines: :meth:`batch_daily`)."""
        return _days(self._daily_tokens, self._daily_requests)

    def batch_daily(self) -> list[tuple[str, date, int, dict[str, int]]]:
        """As :meth:`daily`, for batch lines only."""
        return _days(self._batch_tokens, self._batch_requests)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": {
                model: {"total": r.total, "by_status": dict(r.by_status), "stream": r.stream}
                for model, r in self._requests.items()
            },
            "tokens": {
                model: {
                    "prompt": t.prompt,
                    "cached": t.cached,
                    "cache_write": t.cache_write,
                    "completion": t.completion,
                    "reasoning": t.reasoning,
                }
                for model, t in self._tokens.items()
            },
            "endpoints": dict(self._endpoints),
            "faults": dict(self._faults),
        }


def _days(
    tokens: dict[tuple[str, date], _ModelTokens], requests: dict[tuple[str, date], int]
) -> list[tuple[str, date, int, dict[str, int]]]:
    return [
        (
            model,
            day,
            requests.get((model, day), 0),
            {
                "prompt": t.prompt,
                "cached": t.cached,
                "cache_write": t.cache_write,
                "completion": t.completion,
                "reasoning": t.reasoning,
            },
        )
        for (model, day), t in sorted(tokens.items())
    ]
