"""Micro-benchmark of the Responses ⇄ Chat translation alone: µs per call, no I/O.

    .venv/bin/python bench/responses_micro.py [--json] [--seconds 0.2]

What a translated Responses call adds to a chat call, function by function, so a gap in
`responses_bench.py`'s CPU per request can be traced: `chat_request` (a one-message request
like the load benchmark's, and an agent's second turn with instructions, two function tools
and a function call + its output), `response_from_chat` (+ the `orjson.dumps` the bridge
does on it), and `StreamTranslator` over a typical 50-chunk chat stream fed one upstream read
per chunk (per stream, and per chunk). References beside them: `SSEDecoder` alone over the
same stream (the framing any relay pays) and `orjson.loads` of every chunk (the parsing).
Run by `responses_bench.py` in its own process while the gateway is idle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.providers.responses_stream import StreamTranslator  # noqa: E402
from gateway.providers.responses_translate import (  # noqa: E402
    chat_request,
    response_from_chat,
)
from gateway.providers.sse import SSEDecoder  # noqa: E402

STREAM_CHUNKS = 50

SIMPLE = {
    "model": "resp-translated",
    "input": [{"role": "user", "content": "hello"}],
    "max_output_tokens": 16,
}
_WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
AGENT_TURN = {
    "model": "resp-translated",
    "instructions": "You are a helpful assistant. Use the tools when they help.",
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris","unit":"c"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c":21}'},
    ],
    "tools": [
        {"type": "function", "name": "get_weather", "parameters": _WEATHER, "strict": True},
        {"type": "function", "name": "get_time", "parameters": {"type": "object"}},
    ],
    "tool_choice": "auto",
    "max_output_tokens": 256,
    "temperature": 0.2,
    "metadata": {"workflow_id": "wf-1"},
}
_WORDS = " ".join(f"tok{i}" for i in range(50))
CHAT_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "sim-translated",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": _WORDS},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 50, "total_tokens": 62},
}


def chat_stream_blocks(chunks: int = STREAM_CHUNKS) -> list[bytes]:
    """A chat stream as an OpenAI-protocol upstream sends it, one SSE event per block: the
    role, chunks - 3 text deltas, the finish reason, the usage chunk, then `[DONE]`."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000}
    head["model"] = "sim-translated"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": f" tok{i}"}) for i in range(chunks - 3)]
    events.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 12, "completion_tokens": chunks - 3, "total_tokens": chunks + 9}
    events.append({**head, "choices": [], "usage": usage})
    blocks = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events]
    return [*blocks, b"data: [DONE]\n\n"]


def _translate_stream(blocks: list[bytes]) -> int:
    tr = StreamTranslator(SIMPLE, response_id="resp_1", created_at=1_700_000_000)
    n = sum(len(tr.feed(b)) for b in blocks) + len(tr.finish())
    assert tr.done, "the translator did not reach its terminal event"
    return n


def _decode_only(blocks: list[bytes]) -> int:
    dec = SSEDecoder()
    return sum(len(dec.feed(b)) for b in blocks)


def _parse_only(blocks: list[bytes]) -> int:
    dec = SSEDecoder()
    n = 0
    for b in blocks:
        for payload in dec.feed(b):
            if payload != b"[DONE]":
                n += len(orjson.loads(payload))
    return n


def cases() -> dict[str, tuple[Callable[[], Any], int]]:
    """name → (one call, how many chat chunks that call handles: per-chunk figures)."""
    blocks = chat_stream_blocks()

    def answer() -> dict[str, Any]:
        return response_from_chat(CHAT_ANSWER, SIMPLE, response_id="resp_1", created_at=1)

    return {
        "chat_request (one message)": (lambda: chat_request(SIMPLE), 0),
        "chat_request (agent turn: tools, call + output)": (lambda: chat_request(AGENT_TURN), 0),
        "response_from_chat (50-word answer)": (answer, 0),
        "response_from_chat + orjson.dumps": (lambda: orjson.dumps(answer()), 0),
        f"StreamTranslator, {STREAM_CHUNKS}-chunk stream": (lambda: _translate_stream(blocks), 50),
        f"reference: SSEDecoder alone, {STREAM_CHUNKS} chunks": (lambda: _decode_only(blocks), 50),
        f"reference: SSEDecoder + orjson.loads, {STREAM_CHUNKS} chunks": (
            lambda: _parse_only(blocks),
            50,
        ),
    }


def measure(seconds: float = 0.2, repeat: int = 5) -> list[dict[str, Any]]:
    """µs per call: the best of `repeat` timings of as many calls as fill `seconds`."""
    rows = []
    for name, (fn, chunks) in cases().items():
        fn()  # warm (and check it works)
        timer = timeit.Timer(fn)
        number, took = timer.autorange()
        number = max(1, int(number * seconds / max(took, 1e-9)))
        # The best of the repeats: interference from other processes only ever adds time.
        us = min(timer.repeat(repeat=repeat, number=number)) / number * 1e6
        rows.append(
            {
                "name": name,
                "us_per_call": round(us, 2),
                "us_per_chunk": round(us / chunks, 3) if chunks else None,
                "calls_timed": number * repeat,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the rows as JSON (for the harness)")
    p.add_argument("--seconds", type=float, default=0.2, help="time per repeat of each case")
    args = p.parse_args(argv)
    started = time.perf_counter()
    rows = measure(args.seconds)
    if args.json:
        print(json.dumps(rows))
    else:
        import responses_report  # here: the harness never needs it from this module

        print("\n".join(responses_report.micro_table(rows)))
        print(f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
