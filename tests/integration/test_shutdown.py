"""Issue 21, item 7: what clients and the ledger see when `farebox serve` gets SIGTERM.

A real gateway subprocess (Postgres ledger) with a 3 s grace period serves streams that
last 20 s (the simulator's `tps`) through the OpenAI and the Anthropic SDKs, and a call
whose upstream never answers (`hang`). Then SIGTERM:

- during the drain a new connection is refused (the listener is closed at once), and a
  request on a connection opened before gets 503 + retry-after + connection: close, in
  its wire format, with an x-request-id;
- at the end of the grace period every stream ends with an error event (the SDKs raise
  their API error, not a connection error) and the hung call gets a JSON 503;
- every one of those attempts and requests is in the ledger with error class `shutdown`,
  billed with estimated input tokens and the output seen so far.

Also: an idle gateway exits at once, whatever the grace period.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests import waiting
from tests.gateway_process import GatewayProcess, gateway_process
from tests.ledger_reads import sql_rows
from tests.simulator import start_simulator

GRACE_S = 3.0
CONFIG = """
auth: none
providers:
  sim: {kind: serverless, protocol: openai, api_base: "%(sim)s/v1"}
deployments:
  slow@sim: {provider: sim, model: "sim-slow::tokens=400,tps=20", price: {input: 1, output: 2}}
  hung@sim: {provider: sim, model: "sim-hung::hang", price: {input: 1, output: 2}}
  quick@sim: {provider: sim, model: "sim-quick", price: {input: 1, output: 2}}
routes:
  slow: {targets: [slow@sim], retry: {attempts: 1}}
  hung: {targets: [hung@sim], retry: {attempts: 1}, timeouts: {ttft_ms: 60000, total_ms: 60000}}
  quick: {targets: [quick@sim]}
"""
OPENAI_STREAMS = 3
ANTHROPIC_STREAMS = 2
MESSAGES = [{"role": "user", "content": "tell me a long story"}]


@pytest.fixture(scope="module")
def simulator() -> Iterator[str]:
    url, stop = start_simulator()
    try:
        yield url
    finally:
        stop()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    waiting.wait_until(condition, what, within_s=timeout)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


class RawConnection:
    """One keep-alive HTTP/1.1 connection, opened before the drain."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def request(
        self, method: str, path: str, body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._read()
        raw_head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = raw_head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self.buffer += self._read()
        payload, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, payload

    def _read(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the gateway")
        return chunk

    def closed_by_peer(self) -> bool:
        self.sock.settimeout(5)
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True


def sim_requests(sim: str, model: str) -> int:
    stats = httpx.get(f"{sim}/_stats", timeout=5).json()
    return int(stats["requests"].get(model, {}).get("total", 0))


class Clients:
    """The SDK streams and the hung call, each in a thread, with what each saw."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.started = threading.Semaphore(0)
        self.outcomes: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(OPENAI_STREAMS):
            self._spawn(f"openai-{n}", self._openai_stream)
        for n in range(ANTHROPIC_STREAMS):
            self._spawn(f"anthropic-{n}", self._anthropic_stream)
        self._spawn("hung", self._hung_call)

    def _spawn(self, name: str, work: Callable[[str], None]) -> None:
        thread = threading.Thread(target=work, args=(name,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive()

    def _openai_stream(self, name: str) -> None:
        client = openai.OpenAI(base_url=self.gw.base_url, api_key="none", max_retries=0)
        chunks = 0
        try:
            for _chunk in client.chat.completions.create(
                model="slow",
                messages=MESSAGES,
                stream=True,  # type: ignore[arg-type]
            ):
                chunks += 1
                if chunks == 2:
                    self.started.release()
            self.outcomes[name] = ("finished", chunks)
        except Exception as exc:
            self.outcomes[name] = (exc, chunks)

    def _anthropic_stream(self, name: str) -> None:
        client = anthropic.Anthropic(base_url=self.gw.base_url[:-3], api_key="none", max_retries=0)
        events = 0
        try:
            with client.messages.stream(
                model="slow",
                max_tokens=1000,
                messages=MESSAGES,  # type: ignore[arg-type]
            ) as stream:
                for _ in stream:
                    events += 1
                    if events == 3:
                        self.started.release()
            self.outcomes[name] = ("finished", events)
        except Exception as exc:
            self.outcomes[name] = (exc, events)

    def _hung_call(self, name: str) -> None:
        body = {"model": "hung", "messages": MESSAGES}
        try:
            response = httpx.post(self.gw.base_url + "/chat/completions", json=body, timeout=60)
            self.outcomes[name] = response
        except Exception as exc:
            self.outcomes[name] = exc


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_ends_long_streams_and_hung_calls_with_errors_and_meters_them(
    simulator: str, pg_url: str, tmp_path: Path, workers: int
) -> None:
    """With 2 workers the supervisor gets the signal and forwards it to each worker."""
    env = {"FAREBOX_DATABASE_URL": pg_url, "FAREBOX_GRACEFUL_SHUTDOWN_S": str(GRACE_S)}
    with gateway_process(CONFIG % {"sim": simulator}, tmp_path, env, workers) as gw:
        # Connections a client (or a proxy) holds open in its pool before the drain.
        pooled = [RawConnection(gw.port) for _ in range(3)]
        for conn in pooled:
            assert conn.request("GET", "/healthz")[0] == 200
        clients = Clients(gw)
        hung_before = sim_requests(simulator, "sim-hung")
        clients.start()
        for _ in range(OPENAI_STREAMS + ANTHROPIC_STREAMS):
            assert clients.started.acquire(timeout=20), "every stream is under way"
        wait_for(
            lambda: sim_requests(simulator, "sim-hung") > hung_before, "the hung call upstream"
        )

        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        # New connections are refused: the listener closes at once.
        wait_for(lambda: refused(gw.port), "the listener to close", timeout=GRACE_S / 2)
        # A request on a connection opened before gets a 503 it can retry elsewhere.
        body = json.dumps({"model": "quick", "messages": MESSAGES}).encode()
        status, headers, raw = pooled[0].request("POST", "/v1/chat/completions", body)
        assert status == 503, raw
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        assert headers["content-type"] == "application/json" and headers["x-request-id"]
        error = json.loads(raw)["error"]
        assert error["code"] == "gateway_shutting_down" and error["type"] == "server_error"
        assert pooled[0].closed_by_peer()
        messages = json.dumps({"model": "quick", "max_tokens": 5, "messages": MESSAGES})
        status, headers, raw = pooled[1].request("POST", "/v1/messages", messages.encode())
        assert status == 503 and headers["retry-after"] == "1", raw
        assert headers["request-id"] == headers["x-request-id"]
        answer = json.loads(raw)
        assert answer["type"] == "error" and answer["error"]["type"] == "overloaded_error"
        status, _, raw = pooled[2].request("GET", "/readyz")
        assert status == 503 and json.loads(raw)["status"] == "draining"
        drained_checks_at = time.monotonic() - signalled
        assert drained_checks_at < GRACE_S - 0.75, "the drain checks ran before the cut"

        clients.join()
        exit_code = gw.proc.wait(30)
        exited_after = time.monotonic() - signalled
        log = gw.output()
    print(f"\nexit {exit_code} {exited_after:.2f} s after SIGTERM (grace {GRACE_S} s)")
    assert exited_after < GRACE_S + 5, log

    # Every stream ended with an error event the SDK raised as an API error (never a
    # connection error from a cut, never a clean end), after some content.
    for n in range(OPENAI_STREAMS):
        exc, chunks = clients.outcomes[f"openai-{n}"]
        assert isinstance(exc, openai.APIError), (exc, log)
        assert not isinstance(exc, openai.APIConnectionError), exc
        assert "shutting down" in str(exc) and chunks >= 2
    for n in range(ANTHROPIC_STREAMS):
        exc, events = clients.outcomes[f"anthropic-{n}"]
        assert isinstance(exc, anthropic.APIStatusError), (exc, log)
        assert "shutting down" in str(exc) and events >= 3
    # The hung non-stream call: a JSON 503, not uvicorn's text/plain 500.
    hung = clients.outcomes["hung"]
    assert isinstance(hung, httpx.Response), hung
    assert hung.status_code == 503 and hung.headers["content-type"] == "application/json"
    assert hung.headers["retry-after"] == "1" and hung.headers["x-request-id"]
    assert hung.json()["error"]["code"] == "gateway_shutting_down"

    # The ledger (flushed after the cut): one `shutdown` attempt per call, billed.
    rows = sql_rows(
        pg_url,
        "SELECT r.route, r.final_status, r.error_class, a.error_class, a.token_source, "
        "a.input_uncached_tokens, a.output_tokens, a.cost_usd "
        "FROM requests r JOIN attempts a ON a.request_id = r.id ORDER BY r.route",
        {},
    )
    by_route: dict[str, list[Any]] = {}
    for row in rows:
        by_route.setdefault(row[0], []).append(row)
    assert len(by_route.get("slow", [])) == OPENAI_STREAMS + ANTHROPIC_STREAMS, rows
    for route, status, request_error, attempt_error, source, uncached, output, cost in rows:
        assert request_error == attempt_error == "shutdown", rows
        assert uncached > 0 and source == "estimated" and cost is not None and cost > 0
        if route == "slow":
            assert status == 200 and output > 0  # its 200 was out; the output seen is billed
        else:
            assert route == "hung" and status == 503 and output == 0
    assert len(by_route.get("hung", [])) == 1
    assert "quick" not in by_route, "the drain's 503s never reached an upstream"


def test_an_idle_gateway_exits_at_once(simulator: str, tmp_path: Path) -> None:
    """Nothing in flight, idle keep-alive connections open, a 60 s grace period: SIGTERM
    must not wait for the grace period (a rolling deploy would wait that long per pod)."""
    env = {
        "FAREBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}",
        "FAREBOX_GRACEFUL_SHUTDOWN_S": "60",
    }
    with (
        gateway_process(CONFIG % {"sim": simulator}, tmp_path, env, workers=2) as gw,
        httpx.Client(base_url=gw.base_url, timeout=10) as client,
    ):
        for _ in range(4):  # leaves keep-alive connections in the pool
            body = {"model": "quick", "messages": MESSAGES}
            assert client.post("/chat/completions", json=body).status_code == 200
        idle = RawConnection(gw.port)
        assert idle.request("GET", "/healthz")[0] == 200
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(60)
        exited_after = time.monotonic() - signalled
    print(f"\nidle gateway (2 workers) exited {exited_after:.2f} s after SIGTERM")
    assert exited_after < 5, gw.output()
