"""Hardening against bad input, slow clients and leaks, through a real gateway over HTTP.

Limits (body size, JSON depth and width, header count and bytes, body timeout), zero
retention of prompts and answers by default, opt-in redacted payload logs, and upstream
credentials that never reach a client, a log line or a metric label, even when the
upstream echoes them back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
import uvicorn

from gateway.serving.protocol import LeanHttpProtocol
from tests.conftest import SIM_KEY
from tests.gateway_harness import RunningGateway
from tests.hardened_gateway import (
    BODY_TIMEOUT_S,
    CLIENT_KEY,
    MASTER_KEY,
    MAX_ARRAY_ITEMS,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    MAX_HEADER_COUNT,
    MAX_JSON_DEPTH,
    hardened,
    leaked,
    raw_exchange,
    request,
)

__all__ = ["hardened"]  # the fixture, imported for pytest

OPENAI_PATHS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "chat", "prompt": "hi"},
    "/v1/embeddings": {"model": "embeddings", "input": "hi"},
}
MESSAGES = {"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def nested(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def openai_error(status: int, raw: bytes, expected: int) -> dict[str, Any]:
    assert status == expected, raw
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", list(OPENAI_PATHS))
def test_deep_and_wide_bodies_are_400_with_param(hardened: RunningGateway, path: str) -> None:
    deep = {**OPENAI_PATHS[path], "metadata": nested(MAX_JSON_DEPTH)}
    status, _, raw = request(hardened, "POST", path, orjson.dumps(deep))
    error = openai_error(status, raw, 400)
    assert error["code"] == "json_too_deep" and error["param"] == "metadata"
    assert f"{MAX_JSON_DEPTH} levels" in error["message"]
    # Deeper than orjson itself parses: still a clear 400, not "invalid JSON".
    body = orjson.dumps(OPENAI_PATHS[path])[:-1] + b', "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    status, _, raw = request(hardened, "POST", path, body)
    assert openai_error(status, raw, 400)["code"] == "json_too_deep"
    wide = {**OPENAI_PATHS[path], "logit_bias": list(range(MAX_ARRAY_ITEMS + 1))}
    status, _, raw = request(hardened, "POST", path, orjson.dumps(wide))
    error = openai_error(status, raw, 400)
    assert error["code"] == "json_too_large" and error["param"] == "logit_bias"
    # Within the limits the same request is served.
    fine = {**OPENAI_PATHS[path], "metadata": nested(MAX_JSON_DEPTH - 2)}
    assert request(hardened, "POST", path, orjson.dumps(fine))[0] == 200


def test_anthropic_ingress_applies_the_same_limits(hardened: RunningGateway) -> None:
    deep = {**MESSAGES, "metadata": nested(MAX_JSON_DEPTH)}
    status, _, raw = request(hardened, "POST", "/v1/messages", orjson.dumps(deep))
    assert status == 400
    body = json.loads(raw)
    assert body["type"] == "error" and "nested too deeply" in body["error"]["message"]
    big = {**MESSAGES, "system": "x" * MAX_BODY_BYTES}
    status, _, raw = request(hardened, "POST", "/v1/messages", orjson.dumps(big))
    assert status == 413 and json.loads(raw)["type"] == "error"


@pytest.mark.parametrize("path", [*OPENAI_PATHS, "/v1/messages"])
def test_oversized_bodies_are_413(hardened: RunningGateway, path: str) -> None:
    body = b'{"model": "chat", "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    status, headers, raw = request(hardened, "POST", path, body)
    assert status == 413, raw
    assert headers.get("connection") == "close"


def test_too_many_or_too_large_headers_are_431(hardened: RunningGateway) -> None:
    body = orjson.dumps(OPENAI_PATHS["/v1/chat/completions"])
    many = {f"x-pad-{i}": "1" for i in range(MAX_HEADER_COUNT)}
    for path in ("/v1/chat/completions", "/admin/keys", "/healthz"):
        status, _, raw = request(hardened, "POST", path, body, headers=many)
        assert openai_error(status, raw, 431)["code"] == "request_header_fields_too_large"
    status, _, raw = request(
        hardened, "POST", "/v1/chat/completions", body, headers={"x-pad": "y" * MAX_HEADER_BYTES}
    )
    assert "larger than" in openai_error(status, raw, 431)["message"]
    # A normal SDK-sized head is fine.
    few = {f"x-pad-{i}": "1" for i in range(20)}
    assert request(hardened, "POST", "/v1/chat/completions", body, headers=few)[0] == 200


def _head(length: int) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.serial  # CPU timing: not beside another test worker
@pytest.mark.parametrize("sent", [b"", b'{"model": "chat", '])
def test_a_body_that_trickles_in_is_cut_with_408(hardened: RunningGateway, sent: bytes) -> None:
    started = time.monotonic()
    reply = raw_exchange(hardened, _head(500) + sent, wait_s=5)
    elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b'"code":"request_timeout"' in reply
    assert BODY_TIMEOUT_S * 0.9 <= elapsed < BODY_TIMEOUT_S * 4 + 1


def test_a_prompt_body_that_arrives_in_time_is_served(hardened: RunningGateway) -> None:
    body = orjson.dumps(OPENAI_PATHS["/v1/chat/completions"])
    reply = raw_exchange(hardened, _head(len(body)) + body + b"", wait_s=1)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


PROMPT_MARKER = "PROMPT-MARKER-7f3a9c"
ANSWER_MARKER = "ANSWER-MARKER-c41e0b"
JSON_ANSWER = {
    "type": "json_schema",
    "json_schema": {
        "name": "m",
        "schema": {
            "type": "object",
            "properties": {"v": {"type": "string", "enum": [ANSWER_MARKER]}},
            "required": ["v"],
        },
    },
}


def streamed_text(raw: bytes) -> str:
    """The content deltas of an OpenAI SSE body, joined."""
    text = []
    for line in raw.decode().splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                text.append(choice["delta"].get("content") or "")
    return "".join(text)


def _traffic(gateway: RunningGateway, route: str) -> list[bytes]:
    """Requests whose prompts carry PROMPT_MARKER and whose answers carry ANSWER_MARKER."""
    messages = [{"role": "user", "content": f"{PROMPT_MARKER} reach me at bob@example.com"}]
    chat = {"model": route, "messages": messages, "response_format": JSON_ANSWER}
    answers = []
    for body in (
        chat,
        {**chat, "stream": True},
        {"model": route, "prompt": PROMPT_MARKER},
        {"model": "embeddings", "input": PROMPT_MARKER},
        {"model": route, "messages": [{"role": "wizard", "content": PROMPT_MARKER}]},
        {"model": "nope", "messages": messages},
    ):
        path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        if "input" in body:
            path = "/v1/embeddings"
        answers.append(request(gateway, "POST", path, orjson.dumps(body))[2])
    anthropic = {**MESSAGES, "model": route, "messages": messages}
    answers.append(request(gateway, "POST", "/v1/messages", orjson.dumps(anthropic))[2])
    return answers


def test_no_prompt_or_answer_is_logged_by_default(
    hardened: RunningGateway, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = _traffic(hardened, "chat")
    assert ANSWER_MARKER in answers[0].decode()
    assert ANSWER_MARKER in streamed_text(answers[1])
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err):
        assert PROMPT_MARKER not in text
        assert ANSWER_MARKER not in text
    assert not [r for r in caplog.records if r.name == "farebox.payloads"]


def _payload_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 3
    while True:
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "farebox.payloads"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)  # poll: a condition wait


def test_opted_in_route_logs_one_redacted_line_per_request(
    hardened: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="farebox.payloads")
    content = (
        f"{PROMPT_MARKER} I am bob@example.com, card 4111 1111 1111 1111, "
        "phone +1 415 555 0132, key sk-proj-abcdefghijklmnop123456"
    )
    chat = {
        "model": "logged",
        "messages": [{"role": "user", "content": content}],
        "response_format": JSON_ANSWER,
    }
    for body in (chat, {**chat, "stream": True}):
        assert request(hardened, "POST", "/v1/chat/completions", orjson.dumps(body))[0] == 200
    anthropic = {**MESSAGES, "model": "logged", "messages": chat["messages"]}
    assert request(hardened, "POST", "/v1/messages", orjson.dumps(anthropic))[0] == 200
    lines = _payload_lines(caplog, 3)
    assert len(lines) == 3, lines
    plain, streamed, messages = lines
    assert plain["route"] == "logged" and plain["key"] == "hardening"
    assert plain["endpoint"] == "chat/completions" and messages["endpoint"] == "messages"
    logged = plain["request"]["messages"][0]["content"]
    assert PROMPT_MARKER in logged
    for token in ("[EMAIL]", "[CARD]", "[PHONE]", "[REDACTED]"):
        assert token in logged
    for secret in ("bob@example.com", "4111 1111", "415 555", "sk-proj-"):
        assert secret not in json.dumps(lines)
    assert ANSWER_MARKER in plain["answer"]["choices"][0]["content"]
    assert ANSWER_MARKER in streamed["answer"]["text"] and streamed["answer"]["complete"]
    assert messages["answer"]["choices"][0]["content"]
    # Other routes stay silent.
    before = len(lines)
    _traffic(hardened, "chat")
    assert len(_payload_lines(caplog, before + 1)) == before


def test_the_simulator_really_echoes_keys() -> None:
    """Guard for the tests below: without echo_key they would prove nothing."""
    from tests.simulator import start_simulator

    url, stop = start_simulator(require_key=SIM_KEY)
    try:
        req = urllib.request.Request(
            f"{url}/v1/chat/completions",
            data=orjson.dumps(
                {"model": "m::status=400,echo_key", "messages": [{"role": "user", "content": "x"}]}
            ),
            headers={"Authorization": f"Bearer {SIM_KEY}", "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert SIM_KEY in info.value.read().decode()
    finally:
        stop()


def test_upstream_keys_never_reach_sdk_clients_logs_or_metrics(
    hardened: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = openai.OpenAI(base_url=hardened.base_url, api_key=CLIENT_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": "hello"}]
    seen: list[str] = []
    expected = {
        "echo400": openai.BadRequestError,
        "echo429": openai.RateLimitError,
        "echo500": openai.InternalServerError,
        "rejected": openai.InternalServerError,
    }
    for route, error in expected.items():
        with pytest.raises(error) as info:
            client.chat.completions.create(model=route, messages=messages)
        exc = info.value
        seen += [str(exc), repr(exc.body), exc.response.text, repr(dict(exc.response.headers))]
    assert "[REDACTED]" in seen[0]  # the echoed key was there, and was scrubbed
    with pytest.raises(openai.APIError) as streamed:
        for _ in client.chat.completions.create(model="echomid", messages=messages, stream=True):
            pass
    seen.append(str(streamed.value))
    status, _, raw = request(
        hardened, "POST", "/v1/messages", orjson.dumps({**MESSAGES, "model": "echo400"})
    )
    assert status == 400
    seen.append(raw.decode())
    metrics = request(hardened, "GET", "/metrics", key=None)[2]
    assert not leaked(*seen, caplog.text, metrics), seen


def test_error_bodies_never_echo_the_callers_key(hardened: RunningGateway) -> None:
    for key in (CLIENT_KEY, MASTER_KEY, "sk-wrong-key-0123456789abcdef"):
        for path in ("/v1/chat/completions", "/v1/messages", "/admin/keys"):
            status, headers, raw = request(hardened, "POST", path, b"{bad", key=key)
            assert status < 500, raw
            assert not leaked(raw, repr(headers))
            assert "sk-wrong-key" not in raw.decode()


# ------------------------------------------------ the request head, at the HTTP protocol

HEAD_CAP = 16 * 1024
HEAD_TIMEOUT_S = 1


@pytest.fixture(scope="module")
def bounded_server() -> Iterator[tuple[str, int]]:
    """uvicorn with `farebox serve`'s protocol class, in front of a trivial app."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    # Every request on the lean cycle, as /v1/* is under `farebox serve`.
    app.serves_lean = lambda scope: True  # type: ignore[attr-defined]

    # IPPROTO_TCP: asyncio sets TCP_NODELAY only then (see tests/gateway_harness.py).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="uvloop",
            http=LeanHttpProtocol,
            h11_max_incomplete_event_size=HEAD_CAP,
            timeout_keep_alive=HEAD_TIMEOUT_S,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)  # poll: a condition wait
    try:
        yield sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _exchange(address: tuple[str, int], parts: list[bytes], pause_s: float = 0) -> bytes:
    with socket.create_connection(address, timeout=HEAD_TIMEOUT_S * 4) as s:
        for part in parts:
            try:
                s.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server has answered and closed: read what it said
            time.sleep(pause_s)  # the slow sender's pace between parts
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return received


GET = b"GET / HTTP/1.1\r\nHost: x\r\n"


def test_protocol_serves_normal_and_keep_alive_requests(bounded_server: tuple[str, int]) -> None:
    reply = _exchange(bounded_server, [GET + b"\r\n", GET + b"Connection: close\r\n\r\n"])
    assert reply.count(b"HTTP/1.1 200") == 2


def test_protocol_caps_head_bytes_before_the_head_completes(
    bounded_server: tuple[str, int],
) -> None:
    pad = b"x-pad: " + b"y" * 4000 + b"\r\n"
    reply = _exchange(bounded_server, [GET] + [pad] * 8, pause_s=0.02)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    assert b"request_header_fields_too_large" in reply


def test_protocol_times_out_slow_and_silent_heads(bounded_server: tuple[str, int]) -> None:
    started = time.monotonic()
    reply = _exchange(bounded_server, [GET, b"x-a: 1\r\n"], pause_s=0.1)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
    assert HEAD_TIMEOUT_S * 0.9 <= time.monotonic() - started < HEAD_TIMEOUT_S * 3
    # A connection that sends nothing is closed, without an answer.
    assert _exchange(bounded_server, []) == b""
    # After a served request, a slow second head on the same connection is timed too.
    reply = _exchange(bounded_server, [GET + b"\r\n", GET], pause_s=0.05)
    assert reply.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in reply


def test_protocol_closes_idle_keep_alive_connections(bounded_server: tuple[str, int]) -> None:
    """The keep-alive timeout (a per-loop sweeper, not a timer per response) closes an idle
    connection after its timeout, and spares one that keeps sending requests."""

    def answer(s: socket.socket) -> bytes:
        received = b""
        while not received.endswith(b"0\r\n\r\n"):  # the app's answers are chunked
            chunk = s.recv(65536)
            assert chunk, f"closed mid-answer: {received!r}"
            received += chunk
        return received

    with socket.create_connection(bounded_server, timeout=HEAD_TIMEOUT_S * 4) as s:
        for _ in range(3):  # each request within the timeout of the last answer
            s.sendall(GET + b"\r\n")
            assert answer(s).startswith(b"HTTP/1.1 200")
            time.sleep(HEAD_TIMEOUT_S * 0.6)
        s.sendall(GET + b"\r\n")
        assert answer(s).startswith(b"HTTP/1.1 200")
        idle_from = time.monotonic()
        assert s.recv(65536) == b""  # closed by the server
        idle_s = time.monotonic() - idle_from
    assert HEAD_TIMEOUT_S * 0.9 <= idle_s < HEAD_TIMEOUT_S * 3, idle_s
