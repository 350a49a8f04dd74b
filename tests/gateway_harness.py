"""Run a real Farebox (uvicorn + uvloop + LeanHttpProtocol) in a background thread for tests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn

from gateway.app import HotPath, create_asgi
from gateway.config.loading import parse_config
from gateway.config.schema import GatewayConfig
from gateway.serving.protocol import LeanHttpProtocol
from gateway.settings import Settings
from gateway.state import GatewayState


@dataclass
class RunningGateway:
    base_url: str  # ends in /v1
    root: str
    config: GatewayConfig = field(repr=False)
    app: HotPath | None = field(default=None, repr=False)

    @property
    def state(self) -> GatewayState:
        assert self.app is not None
        state: GatewayState = self.app.app.state.holder.require()
        return state


def config_from_yaml(text: str, env: Mapping[str, str]) -> GatewayConfig:
    return parse_config(text, "test.yaml", env)


@contextmanager
def running_gateway(
    config: GatewayConfig, settings: Settings | None = None
) -> Iterator[RunningGateway]:
    app = create_asgi(settings or Settings(master_key=None), config)
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP
    # (an accepted socket inherits the listener's 0 otherwise), and without it every answer
    # waits ~40 ms for the client's delayed ACK (Nagle) before its body leaves.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="uvloop",
            # `farebox serve`'s protocol: /v1/* on the lean request cycle.
            http=LeanHttpProtocol,
            access_log=False,
            proxy_headers=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    # As long as a `farebox serve` process gets (tests/gateway_process.py): a start-up that
    # imports litellm takes several seconds alone, and more beside other test workers.
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.01)  # poll: a condition wait
    root = f"http://127.0.0.1:{port}"
    try:
        yield RunningGateway(base_url=f"{root}/v1", root=root, config=config, app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
