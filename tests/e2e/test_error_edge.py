"""Errors at the HTTP edge, against a real `farebox serve` (its uvicorn options and protocol).

Malformed HTTP framing, FastAPI's 404 / 405 / validation answers, the hot path's 405 / 413 /
431 / 400, and echoes of client strings — over raw sockets and through the real OpenAI and
Anthropic SDKs. Every error is JSON in the wire format of its path (Anthropic's on
/v1/messages*, OpenAI's elsewhere) and carries an `x-request-id`.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.conftest import SIM_KEY
from tests.gateway_process import GatewayProcess, gateway_process

KEY = "sk-edge-client-0123456789"
MASTER = "fbx-master-edge-0123456789"
MAX_BODY = 1_100_000  # room for a 1 MB model name
MAX_DEPTH = 8
MAX_HEADERS = 40
CONFIG = f"""
auth:
  keys:
    - {{name: edge, key: "{KEY}"}}
server:
  max_body_bytes: {MAX_BODY}
  max_json_depth: {MAX_DEPTH}
  max_header_count: {MAX_HEADERS}
  max_header_bytes: 8192
providers:
  sim: {{kind: serverless, protocol: openai, api_base: "${{SIM_URL}}/v1", api_key: "${{SIM_KEY}}"}}
deployments:
  small@sim: {{provider: sim, model: sim-small}}
routes:
  chat: {{targets: [small@sim]}}
"""
REQUEST_ID = re.compile(r"req_[0-9a-f]+")
HELLO = [{"role": "user", "content": "hi"}]
MESSAGE = {"model": "chat", "max_tokens": 5, "messages": HELLO}
# The most an error body may be once client strings are clipped (256 chars each).
SMALL = 2048


@pytest.fixture(scope="module")
def edge(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("edge")
    env = {
        "SIM_URL": simulator,
        "SIM_KEY": SIM_KEY,
        "FAREBOX_MASTER_KEY": MASTER,
        "FAREBOX_DATABASE_URL": f"sqlite+aiosqlite:///{home / 'ledger.db'}",
        "FAREBOX_SPOOL_DIR": str(home / "spool"),
        "FAREBOX_LEDGER_ENABLED": "false",
    }
    with gateway_process(CONFIG, Path(home), env) as gw:
        yield gw


# ------------------------------------------------------------------ raw HTTP helpers


def exchange(gw: GatewayProcess, *parts: bytes, wait_s: float = 5.0) -> tuple[bytes, bool]:
    """Send `parts` (after the first, each once an answer has begun arriving), then read
    until the server closes. Returns (bytes received, whether the server closed)."""
    deadline = time.monotonic() + wait_s
    with socket.create_connection(("127.0.0.1", gw.port), timeout=wait_s) as s:
        received = b""
        for i, part in enumerate(parts):
            if i:
                while b"\r\n\r\n" not in received and time.monotonic() < deadline:
                    received += s.recv(65536)
            try:
                s.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # answered and closed already: read what was said
        try:
            while chunk := s.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            pass
        return received, True


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1.1 responses in `raw` (each with a Content-Length)."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw[:300]
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        size = int(headers.get("content-length", "0"))
        out.append((int(status_line.split()[1]), headers, rest[:size]))
        raw = rest[size:]
    return out


def openai_error(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers.get("content-type", "").startswith("application/json"), (headers, body)
    assert REQUEST_ID.fullmatch(headers.get("x-request-id", "")), headers
    parsed = json.loads(body)
    assert set(parsed) == {"error"} and set(parsed["error"]) == {"message", "type", "param", "code"}
    assert isinstance(parsed["error"]["message"], str) and parsed["error"]["message"]
    return parsed["error"]  # type: ignore[no-any-return]


def anthropic_error(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers.get("content-type", "").startswith("application/json"), (headers, body)
    assert REQUEST_ID.fullmatch(headers.get("x-request-id", "")), headers
    assert headers.get("request-id") == headers["x-request-id"]  # what the Anthropic SDKs read
    parsed = json.loads(body)
    assert parsed["type"] == "error" and set(parsed["error"]) == {"type", "message"}, parsed
    assert isinstance(parsed["error"]["message"], str) and parsed["error"]["message"]
    return parsed["error"]  # type: ignore[no-any-return]


def head(method: str, path: str, *lines: str, close: bool = True) -> bytes:
    """A request head without its final blank line; `close` asks for the connection to be
    closed after the answer, so a reader knows when it has everything."""
    sent = (*lines, "Connection: close") if close else lines
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{h}\r\n" for h in sent)).encode()


AUTH = f"Authorization: Bearer {KEY}"
CHUNKED = "Transfer-Encoding: chunked"

# ---------------------------------------------------------- malformed HTTP framing

FRAMING = {
    "bad request line": head("GET", "/v1/models HTTP/1.1 trailing") + b"\r\n",
    "tls on the plain port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,
    "http/2 prior knowledge": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "space in a header name": head("GET", "/v1/models", AUTH, "Bad Name: 1") + b"\r\n",
    "control char in a value": head("GET", "/v1/models", AUTH, "X-A: a\x01b") + b"\r\n",
    "non-numeric content-length": head("POST", "/v1/chat/completions", AUTH, "Content-Length: 1x")
    + b"\r\n{}",
    "duplicate content-length": head(
        "POST", "/v1/chat/completions", AUTH, "Content-Length: 2", "Content-Length: 3"
    )
    + b"\r\n{}",
    "content-length and chunked": head(
        "POST", "/v1/chat/completions", AUTH, "Content-Length: 2", CHUNKED
    )
    + b"\r\n{}",
    # The handler is already reading the body when the bad chunk size arrives.
    "bad chunk size": head("POST", "/v1/chat/completions", AUTH, CHUNKED)
    + b"\r\nzz\r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(FRAMING.values()), ids=list(FRAMING))
def test_malformed_http_is_a_json_400_with_request_id(edge: GatewayProcess, raw: bytes) -> None:
    received, closed = exchange(edge, raw)
    assert closed, received[:300]
    [(status, headers, body)] = responses(received)
    assert status == 400
    assert headers["connection"] == "close"
    error = openai_error(headers, body)
    assert error["code"] == "malformed_http_request" and error["type"] == "invalid_request_error"


def test_malformed_http_on_messages_is_anthropic_shaped(edge: GatewayProcess) -> None:
    raw = head("POST", "/v1/messages", f"x-api-key: {KEY}", CHUNKED) + b"\r\nzz\r\n"
    received, closed = exchange(edge, raw)
    assert closed
    [(status, headers, body)] = responses(received)
    assert status == 400 and anthropic_error(headers, body)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "shape"), [("/v1/chat/completions", openai_error), ("/v1/messages", anthropic_error)]
)
def test_a_head_too_large_for_the_protocol_is_json_with_request_id(
    edge: GatewayProcess, path: str, shape: Any
) -> None:
    # Never completed: cut by the protocol's byte cap, before the app sees anything.
    received, closed = exchange(edge, head("POST", path, "x-pad: " + "y" * 40_000))
    assert closed
    [(status, headers, body)] = responses(received)
    assert status == 431
    shape(headers, body)


def test_a_bad_chunk_after_an_early_answer_adds_no_second_response(edge: GatewayProcess) -> None:
    """The key is checked before the body is read: the 401 is the answer, and garbage in
    the rest of that body must not append a second status line to the connection."""
    first = head("POST", "/v1/chat/completions", CHUNKED, close=False) + b"\r\n"
    received, closed = exchange(edge, first, b"zz\r\n")
    assert closed
    [(status, headers, body)] = responses(received)
    assert status == 401 and openai_error(headers, body)["code"] == "invalid_api_key"


# ------------------------------------------------- every error status, both shapes

BIG = b"x" * (MAX_BODY + 1000)
JSON = "Content-Type: application/json"
MANY = [f"x-h{i}: v" for i in range(MAX_HEADERS + 5)]
CASES: list[tuple[str, bytes, int, Any, str | None]] = [
    # (name, request, status, shape, `allow` header expected)
    ("unknown /v1 path", head("GET", "/v1/nothing-here", AUTH), 404, openai_error, None),
    ("unknown root path", head("POST", "/nothing", "Content-Length: 0"), 404, openai_error, None),
    ("count_tokens, no key", head("POST", "/v1/messages/count_tokens"), 401, anthropic_error, None),
    ("message batches", head("GET", "/v1/messages/batches"), 404, anthropic_error, None),
    ("bare messages sub-path", head("GET", "/messages/x"), 404, anthropic_error, None),
    ("wrong method, ops", head("DELETE", "/healthz"), 405, openai_error, "GET"),
    ("wrong method, chat", head("GET", "/v1/chat/completions", AUTH), 405, openai_error, "POST"),
    ("wrong method, models", head("POST", "/v1/models", AUTH), 405, openai_error, "GET"),
    ("wrong method, messages", head("GET", "/v1/messages", AUTH), 405, anthropic_error, "POST"),
    (
        "form body, chat",
        head("POST", "/v1/chat/completions", AUTH, "Content-Type: text/plain", "Content-Length: 5")
        + b"\r\nhello",
        400,
        openai_error,
        None,
    ),
    (
        "form body, messages",
        head(
            "POST",
            "/v1/messages",
            AUTH,
            "Content-Type: application/x-www-form-urlencoded",
            "Content-Length: 7",
        )
        + b"\r\nmodel=x",
        400,
        anthropic_error,
        None,
    ),
    (
        "huge body, chat",
        head("POST", "/v1/chat/completions", AUTH, JSON, f"Content-Length: {len(BIG)}")
        + b"\r\n"
        + BIG,
        413,
        openai_error,
        None,
    ),
    (
        "huge body, messages",
        head("POST", "/v1/messages", AUTH, JSON, f"Content-Length: {len(BIG)}") + b"\r\n" + BIG,
        413,
        anthropic_error,
        None,
    ),
    (
        "huge body, admin",
        head(
            "POST",
            "/admin/routes/chat/explain",
            f"Authorization: Bearer {MASTER}",
            f"Content-Length: {len(BIG)}",
        )
        + b"\r\n"
        + BIG,
        413,
        openai_error,
        None,
    ),
    (
        "no key, messages",
        head("POST", "/v1/messages", "Content-Length: 0"),
        401,
        anthropic_error,
        None,
    ),
    ("many headers, chat", head("POST", "/v1/chat/completions", *MANY), 431, openai_error, None),
    ("many headers, messages", head("POST", "/v1/messages", *MANY), 431, anthropic_error, None),
    ("admin query type", head("GET", "/admin/audit?limit=lots"), 400, openai_error, None),
]


def test_every_error_status_has_its_paths_shape_and_a_request_id(edge: GatewayProcess) -> None:
    for name, request, status, shape, allow in CASES:
        if b"\r\n\r\n" not in request:
            request += b"\r\n"
        received, _ = exchange(edge, request)
        got, headers, body = responses(received)[0]
        assert got == status, (name, received[:400])
        shape(headers, body)
        if allow is not None:
            assert headers.get("allow") == allow, (name, headers)


# ------------------------------------------------------------------- the SDKs


def test_openai_sdk_unknown_path_and_echoes(edge: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=edge.base_url, api_key=KEY, max_retries=0, timeout=30)
    with pytest.raises(openai.NotFoundError) as info:
        client.get("/no-such-endpoint", cast_to=object)
    assert info.value.code == "not_found" and info.value.request_id is not None
    assert "/v1/no-such-endpoint" in info.value.message
    # A 1 MB model name does not come back as a 1 MB error.
    model = "m" * 1_000_000
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=model, messages=HELLO)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found" and info.value.request_id is not None
    assert len(info.value.response.content) < SMALL
    assert "m" * 256 + "…" in info.value.message and "chat" in info.value.message


def test_anthropic_sdk_unknown_sub_paths_are_not_found_errors(edge: GatewayProcess) -> None:
    client = anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{edge.port}", api_key=KEY, max_retries=0, timeout=30
    )
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.batches.list()
    assert info.value.type == "not_found_error" and info.value.request_id is not None
    with pytest.raises(anthropic.NotFoundError) as info:
        client.post("/v1/messages/no-such-thing", cast_to=object, body={})
    assert info.value.type == "not_found_error" and info.value.request_id is not None


def test_anthropic_sdk_header_limit_and_echoes(edge: GatewayProcess) -> None:
    client = anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{edge.port}", api_key=KEY, max_retries=0, timeout=30
    )
    many = {f"x-extra-{i}": "v" for i in range(MAX_HEADERS)}
    with pytest.raises(anthropic.RequestHeaderFieldsTooLargeError) as too_many:
        client.messages.create(
            model="chat",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers=many,
        )
    assert too_many.value.type == "invalid_request_error"
    assert too_many.value.request_id is not None
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(
            model="c" * 1_000_000, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert unknown.value.type == "not_found_error"
    assert len(unknown.value.response.content) < SMALL
    assert "c" * 256 + "…" in str(unknown.value.api_message)


# ------------------------------------------------------- client strings in errors


def post_json(
    gw: GatewayProcess, path: str, payload: Any, key: str = AUTH
) -> tuple[int, dict[str, str], bytes]:
    body = orjson.dumps(payload)
    request = head("POST", path, key, JSON, f"Content-Length: {len(body)}") + b"\r\n" + body
    received, _ = exchange(gw, request)
    return responses(received)[0]


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_client_strings_echoed_in_errors_are_clipped(edge: GatewayProcess) -> None:
    long_key = "k" * 100_000
    chat = {"model": "chat", "messages": HELLO, long_key: nested(MAX_DEPTH + 2)}
    status, headers, body = post_json(edge, "/v1/chat/completions", chat)
    error = openai_error(headers, body)
    assert status == 400 and error["code"] == "json_too_deep"
    assert error["param"] == "k" * 256 + "…" and len(body) < SMALL

    block = {**MESSAGE, "messages": [{"role": "user", "content": [{"type": "t" * 100_000}]}]}
    status, headers, body = post_json(edge, "/v1/messages", block)
    assert status == 400 and "t" * 256 + "…" in anthropic_error(headers, body)["message"]
    assert len(body) < SMALL

    tool = {**MESSAGE, "tools": [{"type": "u" * 100_000, "name": "x"}]}
    status, headers, body = post_json(edge, "/v1/messages", tool)
    assert status == 400 and len(body) < SMALL

    received, _ = exchange(edge, head("GET", "/v1/" + "p" * 20_000) + b"\r\n")
    status, headers, body = responses(received)[0]
    assert status == 404 and len(body) < SMALL and "…" in openai_error(headers, body)["message"]


def test_an_unhashable_block_type_is_a_400_not_a_500(edge: GatewayProcess) -> None:
    for bad in ({"type": {"x": 1}}, {"type": [1]}):
        payload = {**MESSAGE, "messages": [{"role": "user", "content": [bad]}]}
        status, headers, body = post_json(edge, "/v1/messages", payload)
        assert status == 400, body
        anthropic_error(headers, body)
    payload = {**MESSAGE, "tool_choice": {"type": {"x": 1}}}
    status, headers, body = post_json(edge, "/v1/messages", payload)
    assert status == 400, body


# ------------------------------------------------------------- admin validation


@pytest.mark.parametrize(
    ("query", "param", "fragment"),
    [
        ("/admin/audit?limit=lots", "query.limit", "valid integer"),
        ("/admin/drills?limit=0", "query.limit", "greater than or equal to 1"),
        ("/admin/keys?include_revoked=maybe", "query.include_revoked", "valid boolean"),
    ],
)
def test_admin_validation_errors_are_readable_and_name_the_field(
    edge: GatewayProcess, query: str, param: str, fragment: str
) -> None:
    received, _ = exchange(edge, head("GET", query, f"Authorization: Bearer {MASTER}") + b"\r\n")
    status, headers, body = responses(received)[0]
    error = openai_error(headers, body)
    assert status == 400 and error["param"] == param
    assert error["message"].startswith(f"{param}: ") and fragment in error["message"]
    assert "{" not in error["message"] and "'loc'" not in error["message"]
