"""`farebox serve`, `farebox demo` and `farebox mock-upstream`: the commands that run
servers (registered on the app in cli/main.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import ConfigOption, load_config_or_exit, shown_url
from gateway.config.schema import GatewayConfig
from gateway.settings import Settings


def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Serve the OpenAI-compatible API."""
    settings = Settings()
    path = config or Path(settings.config)
    loaded = load_config_or_exit(path)
    if not loaded.auth_disabled and not loaded.api_keys() and not settings.master_key:
        typer.echo(
            "error: no API keys configured: set FAREBOX_MASTER_KEY, list keys under auth.keys, "
            "or write `auth: none` to serve without authentication",
            err=True,
        )
        raise typer.Exit(2)
    _serve(
        settings,
        loaded,
        path,
        host or settings.host,
        port or settings.port,
        workers or settings.workers,
    )


def serve_only(args: list[str]) -> None:
    """`farebox serve ARGS` as the only command (gateway/cli/main.py: the other commands'
    modules are not loaded in a serving process)."""
    app = typer.Typer(add_completion=False)
    app.command()(serve)
    app(args=args, prog_name="farebox serve")


def _serve(
    settings: Settings, config: GatewayConfig, path: Path, host: str, port: int, workers: int
) -> None:
    import uvicorn

    from gateway.serving.protocol import LeanHttpProtocol

    server = config.server
    options: dict[str, object] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        # httptools with a bounded, timed request head (httptools itself bounds neither), and
        # Farebox's own request cycle for the paths HotPath answers (gateway/serving/protocol.py).
        "http": LeanHttpProtocol,
        # The head's byte cap at the protocol: above the front door's exact 431 limit (which
        # counts names and values only), with room for a long request line.
        "h11_max_incomplete_event_size": server.max_header_bytes + 16 * 1024,
        "access_log": False,
        "server_header": False,
        # X-Forwarded-* rewriting costs per request and matters only behind a proxy.
        "proxy_headers": False,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
        # Idle keep-alive connections, and (LeanHttpProtocol) heads still arriving.
        "timeout_keep_alive": 30,
        "backlog": 4096,
    }
    metrics_sockets = _metrics_listener(settings, host, port)
    if workers > 1:
        from gateway.serving.reload import serve_workers

        # Each worker process rebuilds its state from the file, so pass the path along.
        os.environ["FAREBOX_CONFIG"] = str(path.resolve())
        # Workers are processes: prometheus_client keeps their values in files here, and
        # /metrics on any worker merges them all.
        metrics_dir = _fresh_metrics_dir()
        try:
            # uvicorn's supervisor, except that SIGHUP reloads each worker's config in place.
            factory = "gateway.app:asgi_from_env"
            serve_workers(
                uvicorn.Config(factory, factory=True, workers=workers, **options),  # type: ignore[arg-type]
                metrics_sockets,
            )
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return
    from gateway.app import create_asgi
    from gateway.serving.server import GatewayServer

    # The path too: SIGHUP re-reads it.
    uv_config = uvicorn.Config(create_asgi(settings, config, path), **options)  # type: ignore[arg-type]
    gateway_server = GatewayServer(uv_config)
    try:
        gateway_server.run(sockets=[uv_config.bind_socket(), *metrics_sockets])
    finally:
        for sock in metrics_sockets:
            sock.close()
    if not gateway_server.started:
        raise typer.Exit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run exits


def _metrics_listener(settings: Settings, host: str, port: int) -> list[socket.socket]:
    """The metrics port's listening socket (none when FAREBOX_METRICS_PORT=0); every
    worker serves it, and any worker's answer merges all workers' values."""
    if not settings.metrics_port:
        return []
    if settings.metrics_port == port:
        typer.echo(
            f"error: FAREBOX_METRICS_PORT ({port}) is the API port; pick another (0: none)",
            err=True,
        )
        raise typer.Exit(2)
    from gateway.serving.server import bind_socket

    metrics_host = settings.metrics_host or host
    try:
        return [bind_socket(metrics_host, settings.metrics_port)]
    except OSError as exc:
        typer.echo(
            f"error: cannot listen for /metrics on {metrics_host}:{settings.metrics_port} "
            f"({exc.strerror or exc}); set FAREBOX_METRICS_PORT (0: no metrics listener)",
            err=True,
        )
        raise typer.Exit(2) from None


def _fresh_metrics_dir() -> str:
    """A new, empty PROMETHEUS_MULTIPROC_DIR for this run's workers (under the operator's
    directory when one is set): files left by an earlier run would be summed in."""
    parent = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
    if parent is not None:
        os.makedirs(parent, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="farebox-metrics-", dir=parent)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


def mock_upstream(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 9100,
    require_key: Annotated[
        str | None, typer.Option(help="Reject requests that do not carry this key.")
    ] = None,
) -> None:
    """Run the provider simulator (OpenAI, Anthropic, Azure, Gemini/Vertex AI and Bedrock
    wire formats, faults on demand)."""
    from simulator import run

    run(host=host, port=port, require_key=require_key)


def demo(
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8080,
    sim_port: Annotated[int, typer.Option(help="Simulator port.")] = 9100,
    config: Annotated[Path, typer.Option(help="Demo config.")] = Path("config/demo.yaml"),
) -> None:
    """Start the simulator and serve the demo config against it (no keys, no databases)."""
    os.environ["FAREBOX_SIM_PORT"] = str(sim_port)
    settings = Settings()
    loaded = load_config_or_exit(config)
    from gateway.ledger.migrate import upgrade

    upgrade(settings.database_url)
    simulator = subprocess.Popen(
        [sys.executable, "-m", "gateway", "mock-upstream", "--port", str(sim_port)]
    )
    try:
        _wait_for_port(sim_port, simulator)
        keys = loaded.api_keys()
        dev_key = keys[0].key if keys else (settings.master_key or "<auth disabled>")
        base = f"http://127.0.0.1:{port}/v1"
        first_route = next(iter(loaded.routes), "chat")
        typer.echo(
            f"""
Farebox demo
  base URL : {base}
  dev key  : {dev_key}
  routes   : {", ".join(loaded.routes)}
  simulator: http://127.0.0.1:{sim_port} (stats at /_stats)
  ledger   : {shown_url(settings.database_url)} (see `farebox usage`)

  from openai import OpenAI
  client = OpenAI(base_url="{base}", api_key="{dev_key}")
  reply = client.chat.completions.create(
      model="{first_route}", messages=[{{"role": "user", "content": "Hello!"}}])
  print(reply.choices[0].message.content)
"""
        )
        _serve(settings, loaded, config, "127.0.0.1", port, 1)
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            typer.echo(f"error: the simulator exited with code {process.returncode}", err=True)
            raise typer.Exit(1)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    typer.echo(f"error: the simulator did not open port {port} in {timeout:.0f} s", err=True)
    raise typer.Exit(1)
