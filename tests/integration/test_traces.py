"""OpenTelemetry traces: span names, GenAI attributes, parent/child structure, propagation.

A request whose primary deployment fails (HTTP 500) and whose fallback answers gives one
server span (continuing the client's traceparent) with two client spans under it, and each
upstream call carried a traceparent naming its own client span. Spans go to the SDK's
in-memory exporter. Without OTEL_EXPORTER_OTLP_ENDPOINT nothing from opentelemetry is even
imported by Farebox (checked in a fresh interpreter, against what FastAPI and redis-py load
on their own).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.observability import telemetry
from gateway.settings import Settings
from tests.gateway_harness import config_from_yaml, running_gateway

ROOT = Path(__file__).resolve().parents[2]
CLIENT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN = 0x00F067AA0BA902B7

CONFIG = """
auth: none
providers:
  up: {kind: serverless, protocol: openai, api_base: "%(url)s/v1"}
deployments:
  first@up: {provider: up, model: fails-500, price: {input: 1, output: 1}}
  second@up: {provider: up, model: answers, price: {input: 1, output: 2}}
routes:
  rescued: {targets: [first@up], fallbacks: [second@up], retry: {attempts: 1}}
"""


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A minimal OpenAI upstream that records each call's model and traceparent."""
    seen: list[tuple[str, str | None]] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((body["model"], request.headers.get("traceparent")))
        if body["model"] == "fails-500":
            return web.json_response({"error": {"message": "boom", "type": "server"}}, status=500)
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
            }
        )

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        holder["runner"] = runner
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop)
    assert ready.wait(10)
    try:
        yield holder["url"], seen
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    telemetry.configure(None, exporter=spans)
    try:
        yield spans
    finally:
        telemetry.shutdown()


def _post(base_url: str, traceparent: str) -> int:
    request = urllib.request.Request(
        base_url + "/chat/completions",
        data=json.dumps(
            {"model": "rescued", "messages": [{"role": "user", "content": "hi"}]}
        ).encode(),
        headers={"Content-Type": "application/json", "traceparent": traceparent},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
        return int(response.status)


def test_one_failed_and_one_successful_attempt(
    upstream: tuple[str, list[tuple[str, str | None]]], exporter: InMemorySpanExporter
) -> None:
    url, seen = upstream
    config = config_from_yaml(CONFIG % {"url": url}, {})
    with running_gateway(config, Settings(master_key=None, ledger_enabled=False)) as gw:
        status = _post(gw.base_url, f"00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01")
    assert status == 200
    spans: list[ReadableSpan] = list(exporter.get_finished_spans())
    assert len(spans) == 3, [s.name for s in spans]
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    clients = sorted(
        (s for s in spans if s.kind is SpanKind.CLIENT),
        key=lambda s: int(str((s.attributes or {}).get("farebox.attempt_no", 0))),
    )
    assert server.context is not None and server.parent is not None

    # The server span continues the client's trace, under the client's span.
    assert server.name == "chat rescued"
    assert server.context.trace_id == CLIENT_TRACE
    assert server.parent.span_id == CLIENT_SPAN
    attrs = dict(server.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "rescued"
    assert attrs["http.response.status_code"] == 200
    assert attrs["farebox.route"] == "rescued"
    assert attrs["farebox.deployment"] == "second@up"
    assert attrs["farebox.attempts"] == 2
    assert attrs["gen_ai.usage.output_tokens"] == 2
    assert "error.type" not in attrs
    assert server.status.status_code is StatusCode.UNSET

    # Two client spans, children of the server span, in attempt order, inside its time.
    failed, answered = clients
    for span in clients:
        assert span.context is not None and span.parent is not None
        assert span.context.trace_id == CLIENT_TRACE
        assert span.parent.span_id == server.context.span_id
        assert server.start_time is not None and server.end_time is not None
        assert span.start_time is not None and span.end_time is not None
        assert server.start_time <= span.start_time <= span.end_time <= server.end_time
    assert failed.name == "chat fails-500"
    failed_attrs = dict(failed.attributes or {})
    assert failed_attrs["gen_ai.operation.name"] == "chat"
    assert failed_attrs["gen_ai.provider.name"] == "up"
    assert failed_attrs["gen_ai.request.model"] == "fails-500"
    assert failed_attrs["error.type"] == "http_500"
    assert failed_attrs["http.response.status_code"] == 500
    assert failed_attrs["farebox.role"] == "primary"
    assert failed.status.status_code is StatusCode.ERROR

    assert answered.name == "chat answers"
    ok_attrs = dict(answered.attributes or {})
    assert ok_attrs["gen_ai.request.model"] == "answers"
    assert ok_attrs["gen_ai.usage.input_tokens"] == 7
    assert ok_attrs["gen_ai.usage.output_tokens"] == 2
    assert ok_attrs["gen_ai.usage.cache_read.input_tokens"] == 0
    assert ok_attrs["farebox.role"] == "fallback"
    assert ok_attrs["farebox.deployment"] == "second@up"
    assert "error.type" not in ok_attrs
    assert answered.status.status_code is not StatusCode.ERROR

    # Each upstream call carried the traceparent of its own client span.
    assert seen == [
        (
            "fails-500",
            f"00-{CLIENT_TRACE:032x}-{failed.context.span_id:016x}-01",
        ),
        (
            "answers",
            f"00-{CLIENT_TRACE:032x}-{answered.context.span_id:016x}-01",
        ),
    ]


def test_a_request_without_traceparent_starts_a_trace(
    upstream: tuple[str, list[tuple[str, str | None]]], exporter: InMemorySpanExporter
) -> None:
    url, seen = upstream
    config = config_from_yaml(CONFIG % {"url": url}, {})
    with running_gateway(config, Settings(master_key=None, ledger_enabled=False)) as gw:
        assert _post(gw.base_url, "garbage") == 200
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert server.parent is None and server.context is not None
    assert all(
        s.context is not None and s.context.trace_id == server.context.trace_id for s in spans
    )
    assert all(tp is not None and f"{server.context.trace_id:032x}" in tp for _, tp in seen)


LAZY = r"""
import json, sys, urllib.request

def otel():
    return {m for m in sys.modules if m.split(".")[0] == "opentelemetry"}

# Two dependencies load parts of OpenTelemetry themselves at import: FastAPI (the API, for
# its own telemetry) and redis-py 8 (the metrics SDK, for redis.observability).
import fastapi, redis.asyncio
baseline = otel()
from tests.simulator import start_simulator
from tests.gateway_harness import running_gateway, config_from_yaml
from gateway.settings import Settings

base, stop = start_simulator()
yaml = f'''
auth: none
providers:
  sim: {{kind: serverless, protocol: openai, api_base: "{base}/v1"}}
deployments:
  small@sim: {{provider: sim, model: sim-small}}
routes:
  chat: {{targets: [small@sim]}}
'''
settings = Settings(master_key=None, ledger_enabled=False)
with running_gateway(config_from_yaml(yaml, {}), settings) as gw:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    parent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    request = urllib.request.Request(
        gw.base_url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "traceparent": parent},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    added = sorted(otel() - baseline)
    tracing = ("opentelemetry.sdk.trace", "opentelemetry.exporter")
    sdk = sorted(m for m in otel() if m.startswith(tracing))
stop()
print(json.dumps({"added": added, "sdk": sdk}))
"""


def test_without_an_endpoint_opentelemetry_is_never_imported() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_OTLP")}
    out = subprocess.run(
        [sys.executable, "-c", LAZY],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Farebox imports nothing of OpenTelemetry: not the tracing SDK, not the exporter, and not
    # one module beyond those its dependencies load on their own.
    assert result == {"added": [], "sdk": []}
