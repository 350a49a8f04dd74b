"""Micro-benchmark: what a route's guard checks add to one request (issue 27: ≤ 40 µs CPU
per typical chat request with the default detectors).

Times `gateway.guard.apply.guard_request` — reading the body's texts, every built-in
personal-data kind as a `mask` check plus the injection heuristic as a `flag` check, the
verdict, and for a request with findings the masking of its body — on four bodies: a
typical support chat (system prompt and one user message, nothing found), the same with an
email and a card number in it (masked), a 2 KB prompt with nothing in it, and a Responses
agent turn (instructions, a function call and its output). Each call's user words end in a
tag of their own, as real questions differ (a route reads a long text it has seen before,
such as the system prompt, from its memo). The timing is process CPU time
(`time.process_time`), best of 7 runs of 2,000 calls each, beside a run of the same bodies
with no checks at all. `bench/guard_load.py` measures the same under load, in the server.

Answer checks (`reads: [answer]`, every built-in kind masked) are timed on a typical
answer of about 600 characters: whole (`check_reply` on the chat JSON) and streamed in
chunks of about 6 characters (`check_stream` over the chunk events), each beside the same
work without checks.

    .venv/bin/python bench/guard.py           # prints the table and writes bench/GUARD.md
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import platform
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.core.call_context import CallContext  # noqa: E402
from gateway.guard.apply import guard_request  # noqa: E402
from gateway.providers.answer_checks import check_reply, check_stream  # noqa: E402
from gateway.providers.base import UpstreamReply  # noqa: E402
from routing.answer_guard import AnswerGuard  # noqa: E402
from routing.guard import FLAG, MASK, Check, Guards  # noqa: E402
from routing.model import DeploymentSpec, Plan, PlannedAttempt, Timeouts  # noqa: E402

CALLS = 2_000
RUNS = 7
BUDGET_US = 40.0
SYSTEM = "You are a helpful support assistant for Acme Corp. Answer briefly and politely."
QUESTION = (
    "Hi, my order from last week has not arrived yet. Can you check the status and tell me "
    "when it will be delivered? Thanks a lot for your help!"
)
BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "typical chat, nothing found": (
        "chat/completions",
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": QUESTION},
            ]
        },
    ),
    "chat with an email and a card (masked)": (
        "chat/completions",
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {
                    "role": "user",
                    "content": QUESTION + " I'm jane.doe@example.com, card 4111 1111 1111 1111.",
                },
            ]
        },
    ),
    "2 KB prompt, nothing found": (
        "chat/completions",
        {"messages": [{"role": "user", "content": (QUESTION + " ") * 14}]},
    ),
    "Responses agent turn": (
        "responses",
        {
            "instructions": SYSTEM,
            "input": [
                {"role": "user", "content": "What's the weather in Paris tomorrow?"},
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "weather",
                    "arguments": '{"city": "Paris", "day": "tomorrow"}',
                },
                {"type": "function_call_output", "call_id": "c1", "output": '{"temp_c": 14}'},
            ],
        },
    ),
}
DEFAULT_CHECKS = Guards.of((Check("pii", MASK), Check.injection("injection", FLAG)))


def _plan() -> Plan:
    dep = DeploymentSpec("m@p", "p", "serverless", "openai", "m")
    return Plan("chat", "direct", (PlannedAttempt(dep, "primary"),), Timeouts(1000, 1000, 1000))


def _tag(n: int) -> str:
    letters = ""
    while True:
        n, r = divmod(n, 26)
        letters += "abcdefghijklmnopqrstuvwxyz"[r]
        if not n:
            return letters


def _varied(body: dict[str, Any], n: int) -> dict[str, Any]:
    """`body` with its user's words ending in a tag of their own ("Ref bqd"), as real
    questions differ: a route reads a long text it saw before from its memo, so the same
    body over and over would time the memo. System prompts and instructions stay."""
    out = copy.deepcopy(body)
    items = out.get("messages") or out.get("input") or []
    for item in reversed(items):
        if item.get("role") == "user" and isinstance(item.get("content"), str):
            item["content"] += f" Ref {_tag(n)}."
            break
    return out


def _time(endpoint: str, body: dict[str, Any], checks: Guards | None) -> float:
    plan = _plan()
    best = float("inf")
    for run in range(RUNS):
        contexts = [
            CallContext("r", None, endpoint, "m", False, _varied(body, run * CALLS + i))
            for i in range(CALLS)
        ]
        start = time.process_time()
        for ctx in contexts:
            if checks:
                guard_request(checks, plan, ctx, [])
        best = min(best, (time.process_time() - start) / CALLS * 1e6)
    return best


ANSWER = (
    "Thanks for reaching out! I checked your order and it left our warehouse on Monday. "
    "The carrier's tracking shows it is in transit and should arrive within two to three "
    "business days. If it has not arrived by Friday, reply to this message and we will send "
    "a replacement at no cost. You can also follow the parcel on the carrier's site with "
    "the tracking number in your confirmation email. Is there anything else I can help you "
    "with today? We appreciate your patience and are sorry for the delay in delivery. "
)
ANSWER_CHECKS = (Check("leaks", MASK, on_request=False, on_answer=True),)


def _chat_answer() -> bytes:
    return orjson.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 40, "completion_tokens": 120, "total_tokens": 160},
        }
    )


def _stream_blocks() -> list[bytes]:
    pieces = [ANSWER[i : i + 6] for i in range(0, len(ANSWER), 6)]
    head = b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    blocks = [head + b'[{"index":0,"delta":{"role":"assistant","content":""}}]}']
    for piece in pieces:
        blocks.append(head + orjson.dumps([{"index": 0, "delta": {"content": piece}}]) + b"}")
    blocks.append(head + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}')
    return [b"data: " + b + b"\n\n" for b in blocks] + [b"data: [DONE]\n\n"]


def _time_answer(streamed: bool, checked: bool) -> float:
    raw, blocks = _chat_answer(), _stream_blocks()

    async def relay(guard: AnswerGuard | None) -> None:
        async def upstream() -> AsyncIterator[bytes]:
            for block in blocks:
                yield block

        source = upstream()
        out = source if guard is None else check_stream(guard, "chat/completions", source, _noop)
        async for _block in out:
            pass

    async def run() -> float:
        best = float("inf")
        for _ in range(RUNS):
            start = time.process_time()
            for _ in range(CALLS // 4):
                guard = AnswerGuard(ANSWER_CHECKS) if checked else None
                if streamed:
                    await relay(guard)
                else:
                    reply = UpstreamReply(200, raw, None, None)
                    if guard is not None:
                        check_reply(guard, "chat/completions", reply)
            best = min(best, (time.process_time() - start) / (CALLS // 4) * 1e6)
        return best

    return asyncio.run(run())


def _noop() -> None:
    return None


def main() -> int:
    rows = []
    for name, (endpoint, body) in BODIES.items():
        guarded = _time(endpoint, body, DEFAULT_CHECKS)
        bare = _time(endpoint, body, None)
        rows.append((name, guarded - bare))
        print(f"{name}: +{guarded - bare:.1f} µs", flush=True)
    answers = []
    for name, streamed in (("a 600-character answer, whole", False), ("the same, streamed", True)):
        extra = _time_answer(streamed, True) - _time_answer(streamed, False)
        answers.append((name, extra))
        print(f"answer checks, {name}: +{extra:.1f} µs", flush=True)
    typical = rows[0][1]
    verdict = "PASS" if typical <= BUDGET_US else "MISS"
    lines = [
        "# Guardrails: CPU per request (issue 27)",
        "",
        f"- **Date:** {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        "`.venv/bin/python bench/guard.py`",
        f"- **Machine:** {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}",
        "- **Checks:** every built-in personal-data kind as one `mask` check, the injection "
        "heuristic as one `flag` check (`gateway.guard.apply.guard_request`: the body's texts, "
        "the verdict, the masking). Each call's question ends in its own tag (a route reads a "
        "long text it has seen before, such as the system prompt, from its memo). Process CPU "
        "time, best of 7 runs of 2,000 calls, minus the same calls' set-up without checks. "
        "Under load in the server: [GUARD_LOAD.md](GUARD_LOAD.md).",
        "",
        "| request | guard CPU µs per request |",
        "|---|---:|",
        *(f"| {name} | {us:.1f} |" for name, us in rows),
        "",
        f"**{verdict}**: a typical chat request with the default detectors, {typical:.1f} µs; "
        f"budget ≤ {BUDGET_US:.0f} µs.",
        "",
        "Answer checks (every built-in kind masked, nothing found; the streamed answer in "
        "about 100 chunks of 6 characters, each chunk's event decoded and written again):",
        "",
        "| answer | answer-check CPU µs per answer |",
        "|---|---:|",
        *(f"| {name} | {us:.1f} |" for name, us in answers),
        "",
    ]
    (ROOT / "bench" / "GUARD.md").write_text("\n".join(lines))
    print(
        f"{verdict}: typical chat {typical:.1f} µs (budget {BUDGET_US:.0f}); wrote bench/GUARD.md"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
