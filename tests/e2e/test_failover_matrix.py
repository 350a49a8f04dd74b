"""The failover fault matrix: every upstream fault, stream and non-stream, through the real
OpenAI SDK, with the ledger's attempt rows and the breaker state checked afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, sql_rows, wait_for_rows

KEY = "sk-failover-tests-1"
HELLO = [{"role": "user", "content": "Which way to the fallback?"}]
OK = None  # error class of a successful attempt


@dataclass(frozen=True)
class Fault:
    name: str
    directive: str  # the simulator directive behind the primary ("" = see provider)
    attempts: tuple[tuple[str, str | None], ...]  # (role, error_class) in order
    breaker: str  # primary's breaker state afterwards
    provider: str = "sim"
    stream_attempts: tuple[tuple[str, str | None], ...] | None = None
    stream_error: bool = False  # the stream fails after its first byte: no fallback
    stream_breaker: str | None = None  # when it differs from `breaker`


RETRIED_THEN_FALLBACK = lambda cls: (("primary", cls), ("retry", cls), ("fallback", OK))  # noqa: E731

FAULTS = [
    Fault("http500", "status=500", RETRIED_THEN_FALLBACK("http_500"), "open"),
    Fault("http503", "status=503", RETRIED_THEN_FALLBACK("http_503"), "open"),
    Fault("http529", "status=529", RETRIED_THEN_FALLBACK("http_529"), "open"),
    # retry-after (5 s) is beyond the backoff cap: skip straight to the fallback.
    Fault(
        "http429", "status=429,retry_after=5", (("primary", "http_429"), ("fallback", OK)), "closed"
    ),
    Fault("refused", "", RETRIED_THEN_FALLBACK("connect"), "open", provider="refused"),
    Fault("hang-before-headers", "hang", RETRIED_THEN_FALLBACK("timeout"), "open"),
    Fault("hang-after-headers", "ttft=3000", RETRIED_THEN_FALLBACK("timeout"), "open"),
    Fault("cut-before-data", "cut_after=0", RETRIED_THEN_FALLBACK("cut"), "open"),
    Fault(
        "cut-mid-stream",
        "cut_after=3,tokens=12",
        RETRIED_THEN_FALLBACK("cut"),
        stream_attempts=(("primary", "cut"),),
        stream_error=True,
        breaker="open",
        stream_breaker="closed",
    ),
    Fault("malformed", "malformed", RETRIED_THEN_FALLBACK("malformed"), "open"),
    Fault(
        "context-length",
        "context_length",
        (("primary", "context_length"), ("fallback", OK)),
        "closed",
    ),
    Fault(
        "unauthorized", "", (("primary", "http_401"), ("fallback", OK)), "open", provider="badkey"
    ),
]


def build_config(sim_url: str) -> str:
    deployments = [
        "  good@sim: {provider: sim, model: sim-good, context_window: 200000}",
        '  slow@sim: {provider: sim, model: "sim-slow::latency=3000"}',
        '  slow-stream@sim: {provider: sim, model: "sim-slow-stream::tps=5,tokens=50"}',
        '  done-cut@sim: {provider: sim, model: "sim-done-cut::cut_before_done,tokens=6"}',
        "  roomy@sim: {provider: sim, model: sim-roomy, context_window: 200000}",
    ]
    routes = [
        "  slow: {targets: [slow@sim]}",
        "  slow-stream: {targets: [slow-stream@sim]}",
        "  done-cut: {targets: [done-cut@sim]}",
    ]
    for fault in FAULTS:
        for mode in ("json", "stream"):
            dep = f"{fault.name}-{mode}@{fault.provider}"
            model = f"sim-{fault.name}::{fault.directive}" if fault.directive else "sim-plain"
            deployments.append(
                f'  {dep}: {{provider: {fault.provider}, model: "{model}", context_window: 1000}}'
            )
            fallback = "roomy@sim" if fault.name == "context-length" else "good@sim"
            routes.append(
                f"  {fault.name}-{mode}:\n"
                f"    strategy: failover\n    targets: [{dep}]\n    fallbacks: [{fallback}]"
            )
    return f"""
auth: {{keys: [{{name: t, key: {KEY}}}]}}
server:
  retry: {{attempts: 2, backoff_ms: 10, max_backoff_ms: 200}}
  timeouts: {{connect_ms: 500, ttft_ms: 400, attempt_ms: 400, total_ms: 8000}}
  breaker: {{consecutive_failures: 2, cooldown_s: 60}}
providers:
  sim: {{kind: serverless, api_base: "{sim_url}/v1", api_key: "{SIM_KEY}"}}
  badkey: {{kind: serverless, api_base: "{sim_url}/v1", api_key: wrong}}
  refused: {{kind: serverless, api_base: "http://127.0.0.1:9/v1", api_key: x}}
deployments:
{chr(10).join(deployments)}
routes:
{chr(10).join(routes)}
"""


@pytest.fixture(scope="module")
def gw(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    directory = tmp_path_factory.mktemp("failover")
    config = config_from_yaml(build_config(simulator), {})
    with running_gateway(config, sqlite_settings(directory)) as running:
        yield running


def attempts_of(gw: RunningGateway, request_id: str) -> list[tuple[str, str | None]]:
    """The ledger's attempt rows for one request, waiting for the writer to flush them."""
    return [(r[0], r[1]) for r in ledger_rows(gw, request_id)[1]]


def ledger_rows(gw: RunningGateway, request_id: str) -> tuple[Any, list[Any]]:
    """(request row, attempt rows) once the writer has flushed them."""
    url = ledger_url(gw)
    params = {"id": request_id}
    found = wait_for_rows(
        url, "SELECT final_status, error_class, attempts FROM requests WHERE id = :id", params
    )
    if found:
        attempts = sql_rows(
            url,
            "SELECT role, error_class FROM attempts WHERE request_id = :id ORDER BY attempt_no",
            params,
        )
        return found[0], attempts
    raise AssertionError(f"request {request_id} never reached the ledger")


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
@pytest.mark.parametrize("mode", ["json", "stream"])
def test_fault_matrix(gw: RunningGateway, fault: Fault, mode: str) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=20)
    route = f"{fault.name}-{mode}"
    messages: Any = HELLO
    if fault.name == "context-length":
        messages = [{"role": "user", "content": "long " * 2000}]
    expected = (
        fault.stream_attempts if mode == "stream" and fault.stream_attempts else fault.attempts
    )
    if mode == "json":
        raw = client.chat.completions.with_raw_response.create(model=route, messages=messages)
        reply = raw.parse()
        assert reply.choices[0].message.content
        request_id = raw.headers["x-request-id"]
        assert raw.headers["x-farebox-deployment"] in ("good@sim", "roomy@sim")
        assert raw.headers["x-farebox-attempts"] == str(len(expected))
        assert f"{route}@{fault.provider}" in raw.headers["x-farebox-fallback-reason"]
    else:
        with client.chat.completions.with_streaming_response.create(
            model=route, messages=messages, stream=True
        ) as raw:
            request_id = raw.headers["x-request-id"]
            if fault.stream_error:
                with pytest.raises(openai.APIError):
                    for _ in raw.parse():
                        pass
            else:
                assert raw.headers["x-farebox-deployment"] in ("good@sim", "roomy@sim")
                chunks = list(raw.parse())
                assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert attempts_of(gw, request_id) == list(expected)
    view = gw.state.breakers.snapshot() if gw.state.breakers else {}
    primary = f"{route}@{fault.provider}"
    expected_breaker = fault.breaker
    if mode == "stream" and fault.stream_breaker is not None:
        expected_breaker = fault.stream_breaker
    # A deployment that never failed in a way that counts has no breaker entry: closed.
    assert (view[primary].state if primary in view else "closed") == expected_breaker


def test_open_breaker_sends_traffic_straight_to_the_fallback(gw: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    for _ in range(2):  # trips (consecutive_failures=2) if the matrix has not already
        client.chat.completions.create(model="http500-json", messages=HELLO)  # type: ignore[arg-type]
    raw = client.chat.completions.with_raw_response.create(model="http500-json", messages=HELLO)  # type: ignore[arg-type]
    assert raw.headers["x-farebox-attempts"] == "1"
    assert raw.headers["x-farebox-deployment"] == "good@sim"
    assert attempts_of(gw, raw.headers["x-request-id"]) == [("fallback", None)]


def test_context_length_without_a_larger_target_is_the_clients_error(gw: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    # roomy@sim serves only as a fallback; asking it directly with a prompt that fits works,
    # while the primary's error with no larger target left goes back as a 400.
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="context-length-json@sim", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "context_length_exceeded"


@pytest.mark.parametrize(("route", "stream"), [("slow", False), ("slow-stream", True)])
def test_client_disconnect_cancels_the_upstream_call(
    gw: RunningGateway, route: str, stream: bool
) -> None:
    async def hang_up() -> str:
        body: dict[str, Any] = {"model": route, "messages": HELLO, "stream": stream}
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                f"{gw.base_url}/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {KEY}"},
            )
            if stream:  # a few chunks in, then leave
                await resp.content.readany()
            request_id = resp.headers.get("x-request-id", "")
            resp.close()
            return request_id

    async def hang_up_before_headers() -> None:
        body = {"model": route, "messages": HELLO}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
            with pytest.raises(TimeoutError):
                await session.post(
                    f"{gw.base_url}/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {KEY}"},
                )

    started = time.monotonic()
    if stream:
        request_id = asyncio.run(hang_up())
        request, attempts = ledger_rows(gw, request_id)
        assert tuple(request) == (499, "client_cancelled", 1)
        assert attempts[0][1] == "client_cancelled"
    else:
        before = _cancelled_requests(gw)
        asyncio.run(hang_up_before_headers())
        deadline = time.monotonic() + 10
        while _cancelled_requests(gw) == before:
            assert time.monotonic() < deadline, "the cancelled request never reached the ledger"
            time.sleep(0.05)  # poll: a condition wait
    # The upstream would have taken 3 s (or 10 s for the stream): the gateway let go early.
    assert time.monotonic() - started < 2.5


def _cancelled_requests(gw: RunningGateway) -> int:
    rows = sql_rows(
        ledger_url(gw),
        "SELECT count(*) FROM requests WHERE final_status = 499 "
        "AND error_class = 'client_cancelled' AND route = 'slow'",
    )
    return int(rows[0][0] or 0)


def test_stream_cut_after_its_usage_is_metered_and_failed(gw: RunningGateway) -> None:
    """The upstream sends the whole answer and its usage chunk, then drops the connection
    where `[DONE]` belongs: the attempt keeps its usage and cost but is a `cut`, the client
    gets an error event rather than a silent end, and the request is not a success."""
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=20)
    text = ""
    with client.chat.completions.with_streaming_response.create(
        model="done-cut", messages=HELLO, stream=True
    ) as raw:
        request_id = raw.headers["x-request-id"]
        with pytest.raises(openai.APIError):
            for chunk in raw.parse():
                text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text  # the answer arrived before the cut
    request, attempts = ledger_rows(gw, request_id)
    assert tuple(request) == (200, "cut", 1)
    assert attempts == [("primary", "cut")]
    metered = sql_rows(
        ledger_url(gw),
        "SELECT output_tokens, input_uncached_tokens, token_source FROM attempts "
        "WHERE request_id = :id",
        {"id": request_id},
    )
    # The usage chunk arrived: the attempt is metered as the provider reported it.
    assert metered[0][0] == 6 and metered[0][1] > 0 and metered[0][2] == "provider"
