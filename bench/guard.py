"""Micro-benchmark: what a route's guard checks add to one request (issue 27: ≤ 40 µs CPU
per typical chat request with the default detectors).

Times `gateway.guard.apply.guard_request` — reading the body's texts, every built-in
personal-data kind as a `mask` check plus the injection heuristic as a `flag` check, the
verdict, and for a request with findings the masking of its body — on four bodies: a
typical support chat (system prompt and one user message, nothing found), the same with an
email and a card number in it (masked), a 2 KB prompt with nothing in it, and a Responses
agent turn (instructions, a function call and its output). The timing is process CPU time
(`time.process_time`), best of 7 runs of 2,000 calls each, beside a run of the same bodies
with no checks at all.

    .venv/bin/python bench/guard.py           # prints the table and writes bench/GUARD.md
"""

from __future__ import annotations

import copy
import datetime
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.core.call_context import CallContext  # noqa: E402
from gateway.guard.apply import guard_request  # noqa: E402
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


def _time(endpoint: str, body: dict[str, Any], checks: Guards | None) -> float:
    plan = _plan()
    best = float("inf")
    for _ in range(RUNS):
        contexts = [
            CallContext("r", None, endpoint, "m", False, copy.deepcopy(body)) for _ in range(CALLS)
        ]
        start = time.process_time()
        for ctx in contexts:
            if checks:
                guard_request(checks, plan, ctx, [])
        best = min(best, (time.process_time() - start) / CALLS * 1e6)
    return best


def main() -> int:
    rows = []
    for name, (endpoint, body) in BODIES.items():
        guarded = _time(endpoint, body, DEFAULT_CHECKS)
        bare = _time(endpoint, body, None)
        rows.append((name, guarded - bare))
        print(f"{name}: +{guarded - bare:.1f} µs", flush=True)
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
        "the verdict, the masking). Process CPU time, best of 7 runs of 2,000 calls, minus the "
        "same calls' set-up without checks.",
        "",
        "| request | guard CPU µs per request |",
        "|---|---:|",
        *(f"| {name} | {us:.1f} |" for name, us in rows),
        "",
        f"**{verdict}**: a typical chat request with the default detectors, {typical:.1f} µs; "
        f"budget ≤ {BUDGET_US:.0f} µs.",
        "",
    ]
    (ROOT / "bench" / "GUARD.md").write_text("\n".join(lines))
    print(
        f"{verdict}: typical chat {typical:.1f} µs (budget {BUDGET_US:.0f}); wrote bench/GUARD.md"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
