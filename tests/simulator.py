"""Run the provider simulator in a background thread for tests.

    base_url, stop = start_simulator()
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test")
    ...
    stop()

``base_url`` is the server root (``http://127.0.0.1:PORT``, no ``/v1``) because the
simulator serves several protocols: OpenAI SDKs want ``base_url + "/v1"``; Anthropic
clients, litellm's ``azure/``, ``bedrock/`` (``api_base``) and ``vertex_ai/`` the root;
litellm's ``gemini/`` ``base_url + "/v1beta"`` (see
``tests/integration/test_mock_upstream_providers.py`` for each provider's kwargs).
``GET /_stats`` and ``POST /_reset`` live at the root too.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from simulator import create_app

__all__ = ["start_simulator"]


def start_simulator(
    require_key: str | None = None, *, seed: int = 0, host: str = "127.0.0.1"
) -> tuple[str, Callable[[], None]]:
    """Start the simulator on an ephemeral port in a daemon thread with its own loop.

    Returns ``(base_url, stop)``; ``stop()`` is idempotent and waits for the thread.
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stopped = threading.Event()
    state: dict[str, object] = {}

    async def serve() -> None:
        runner = web.AppRunner(
            create_app(require_key=require_key, seed=seed),
            access_log=None,
            handler_cancellation=True,
            # Hung requests whose clients are still connected must not hold up stop().
            shutdown_timeout=0.2,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        port = runner.addresses[0][1]
        state["url"] = f"http://{host}:{port}"
        state["stop"] = asyncio.Event()
        ready.set()
        stop_event = state["stop"]
        assert isinstance(stop_event, asyncio.Event)
        try:
            await stop_event.wait()
        finally:
            await runner.cleanup()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:
            state["error"] = exc
            ready.set()
        finally:
            loop.close()
            stopped.set()

    thread = threading.Thread(target=main, name="mock-upstream", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("simulator did not start within 10 s")
    error = state.get("error")
    if isinstance(error, BaseException):
        raise RuntimeError("simulator failed to start") from error

    def stop() -> None:
        if stopped.is_set():
            return
        event = state["stop"]
        assert isinstance(event, asyncio.Event)
        loop.call_soon_threadsafe(event.set)
        thread.join(10)

    return str(state["url"]), stop


def simulator_stats(base_url: str) -> dict[str, Any]:
    """The simulator's own count of what it served (`GET /_stats`)."""
    with urllib.request.urlopen(f"{base_url}/_stats") as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def reset_simulator(base_url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{base_url}/_reset", method="POST")).read()


@contextmanager
def running_simulator(*, seed: int = 0, require_key: str | None = None) -> Iterator[str]:
    url, stop = start_simulator(require_key, seed=seed)
    try:
        yield url
    finally:
        stop()


@contextmanager
def simulator_process(seed: int = 0) -> Iterator[str]:
    """The simulator in its own process, for load tests where sharing the test process's
    GIL with the gateway would distort timings."""
    import subprocess
    import sys
    import time

    from tests.services import free_port

    port = free_port()
    code = f"from simulator.server import run; run('127.0.0.1', {port})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                simulator_stats(url)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("simulator process did not start") from None
                time.sleep(0.05)  # poll: a condition wait
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
