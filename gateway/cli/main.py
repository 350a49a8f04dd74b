"""The `farebox` command."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.drills import drill_app
from gateway.cli.keys import keys_app
from gateway.cli.reports import lcpr_app, reconcile_command
from gateway.cli.router import router_app
from gateway.config.schema import GatewayConfig, load_config
from gateway.config.yaml_loader import ConfigError
from gateway.settings import Settings
from routing.resolve import describe_plan

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Farebox AI gateway.")
config_app = typer.Typer(no_args_is_help=True, help="Work with routing config files.")
app.add_typer(config_app, name="config")
route_app = typer.Typer(no_args_is_help=True, help="Inspect how routes plan requests.")
app.add_typer(route_app, name="route")
app.add_typer(router_app, name="router")
app.command("reconcile")(reconcile_command)
app.add_typer(lcpr_app, name="lcpr")
app.add_typer(keys_app, name="keys")
app.add_typer(drill_app, name="drill")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Routing YAML (default: $FAREBOX_CONFIG)."),
]


def _load_or_exit(path: Path) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            typer.echo(f"error: {issue}", err=True)
        raise typer.Exit(1) from None


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="YAML file to validate.")]) -> None:
    """Validate FILE and print each route's resolved plan (exit 1 on errors)."""
    config = _load_or_exit(file)
    index = config.model_index()
    typer.echo(
        f"{file}: OK — {len(config.providers)} providers, {len(config.deployments)} deployments, "
        f"{len(config.routes)} routes"
    )
    for name in config.routes:
        plan = index.plan(name)
        assert plan is not None
        typer.echo(f"\nroute {name}")
        for line in describe_plan(plan):
            typer.echo(f"  {line}")
        if config.routes[name].log_payloads:
            typer.echo("  payloads: logged (farebox.payloads, PII and secrets redacted)")
    direct = [d for d in config.deployments]
    if direct:
        typer.echo("\nalso routable by deployment id: " + ", ".join(direct))
    for upstream, owners in index.ambiguous_upstream.items():
        typer.echo(
            f"note: upstream model {upstream!r} is served by {', '.join(owners)}; "
            "clients must name a deployment id or a route for it"
        )
    if config.auth_disabled:
        typer.echo(
            "warning: auth is disabled (auth: none); anyone who can reach the port can spend"
        )


@route_app.command("explain")
def route_explain(
    route: Annotated[str, typer.Argument(help="Route name.", metavar="ROUTE")],
    request: Annotated[
        str,
        typer.Option(
            "--request", "-r", metavar="FILE", help="Chat request body (JSON file, or - for stdin)."
        ),
    ],
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    request_id: Annotated[
        str | None,
        typer.Option(
            metavar="ID", help="Request id to plan with (weighted and latency routes hash it)."
        ),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(
            "--header", "-H", metavar="'NAME: VALUE'", help="Request header (for sticky header:)."
        ),
    ] = None,
) -> None:
    """Show the plan ROUTE would make for a request, from an idle snapshot of the config
    (no traffic, all breakers closed): order, expected costs, tokens and skip reasons."""
    import orjson

    from gateway.api.asgi import new_request_id
    from gateway.config.explain import (
        explain_route,
        parse_chat_request,
        print_explanation,
        unknown_route_message,
    )
    from gateway.core.live_routing import LiveRouting
    from gateway.errors import GatewayError
    from gateway.ledger.pricing import load_price_book

    settings = Settings()
    loaded = _load_or_exit(config or Path(settings.config))
    routes = loaded.route_specs()
    spec = routes.get(route)
    if spec is None:
        typer.echo(f"error: {unknown_route_message(route, routes, loaded.deployments)}", err=True)
        raise typer.Exit(2)
    source = "stdin" if request == "-" else request
    try:
        body = sys.stdin.buffer.read() if request == "-" else Path(request).read_bytes()
        payload = parse_chat_request(body, route)
    except OSError as exc:
        typer.echo(f"error: cannot read {source}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    except GatewayError as exc:
        typer.echo(f"error: {source}: {exc.message}", err=True)
        raise typer.Exit(2) from None
    headers = _parse_headers(header or [])
    try:
        prices = load_price_book(loaded, Path(settings.prices_file))
    except ConfigError as exc:
        for issue in exc.issues:
            typer.echo(f"error: {issue}", err=True)
        raise typer.Exit(1) from None
    # Nothing has run, so the snapshot is idle: no load, no learned limits, no affinity,
    # and every breaker closed.
    live = LiveRouting(loaded.deployment_specs(), routes, prices, dict)
    data = explain_route(
        live, spec, payload, request_id or new_request_id(), headers.get, snapshot="idle"
    )
    if as_json:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print_explanation(data)


def _parse_headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, rest = value.partition(":")
        if not sep or not name.strip():
            raise typer.BadParameter(
                f"expected 'Name: value', got {value!r}", param_hint="--header"
            )
        # Lower-case, as the sticky setting is normalized and ASGI header names are.
        headers[name.strip().lower()] = rest.strip()
    return headers


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Serve the OpenAI-compatible API."""
    settings = Settings()
    path = config or Path(settings.config)
    loaded = _load_or_exit(path)
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


def _serve(
    settings: Settings, config: GatewayConfig, path: Path, host: str, port: int, workers: int
) -> None:
    import uvicorn

    from gateway.api.http_protocol import BoundedHttpToolsProtocol

    server = config.server
    options: dict[str, object] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        # httptools with a bounded, timed request head (httptools itself bounds neither).
        "http": BoundedHttpToolsProtocol,
        # The head's byte cap at the protocol: above the front door's exact 431 limit (which
        # counts names and values only), with room for a long request line.
        "h11_max_incomplete_event_size": server.max_header_bytes + 16 * 1024,
        "access_log": False,
        "server_header": False,
        # X-Forwarded-* rewriting costs per request and matters only behind a proxy.
        "proxy_headers": False,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
        # Idle keep-alive connections, and (BoundedHttpToolsProtocol) heads still arriving.
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


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    database_url: Annotated[
        str | None, typer.Option(help="Default: $FAREBOX_DATABASE_URL, else the SQLite file.")
    ] = None,
) -> None:
    """Upgrade the ledger database schema (Postgres or SQLite)."""
    from gateway.ledger.migrate import upgrade

    url = database_url or Settings().database_url
    upgrade(url, revision)
    typer.echo(f"ledger schema at {revision}: {_redact(url)}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


_SINCE_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _parse_since(value: str) -> float:
    unit = value[-1:]
    try:
        amount = float(value[:-1])
    except ValueError:
        amount = -1
    if unit not in _SINCE_UNITS or amount <= 0:
        raise typer.BadParameter("use a duration like 30m, 24h, 7d or 2w")
    return amount * _SINCE_UNITS[unit]


@app.command()
def usage(
    since: Annotated[str, typer.Option(help="How far back: 30m, 24h, 7d, 2w.")] = "24h",
    by: Annotated[str, typer.Option(help="route | deployment | key")] = "route",
    database_url: Annotated[
        str | None, typer.Option(help="Default: $FAREBOX_DATABASE_URL.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Requests, attempts, tokens by type, cost and successful requests from the ledger.

    By deployment, attempts, tokens and cost are each deployment's own; requests and
    successes go to the deployment that answered, so every grouping has the same totals."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from rich.console import Console
    from rich.table import Table

    from gateway.ledger.repository import LedgerRepository

    if by not in ("route", "deployment", "key"):
        raise typer.BadParameter("--by must be route, deployment or key")
    start = datetime.now(UTC) - timedelta(seconds=_parse_since(since))
    url = database_url or Settings().database_url

    async def read() -> list[Any]:
        repo = LedgerRepository.create(url)
        try:
            return list(await repo.usage(start, by))
        finally:
            await repo.close()

    try:
        lines = asyncio.run(read())
    except Exception as exc:
        typer.echo(f"error: cannot read the ledger at {_redact(url)}: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        import dataclasses

        import orjson

        rows = [{**dataclasses.asdict(line), "cost_usd": str(line.cost_usd)} for line in lines]
        typer.echo(
            orjson.dumps(
                {"since": start.isoformat(), "by": by, "lines": rows},
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return
    table = Table(title=f"Usage since {start:%Y-%m-%d %H:%M} UTC, by {by}")
    for column in (
        by,
        "requests",
        "attempts",
        "input",
        "cached read",
        "cache write",
        "output",
        "reasoning",
        "cost USD",
        "unpriced",
        "successful",
        "cost/success",
    ):
        table.add_column(column, justify="left" if column == by else "right")
    for line in lines:
        table.add_row(
            line.group or "-",
            f"{line.requests:,}",
            f"{line.attempts:,}",
            f"{line.input_uncached_tokens:,}",
            f"{line.cached_read_tokens:,}",
            f"{line.cache_write_tokens:,}",
            f"{line.output_tokens:,}",
            f"{line.reasoning_tokens:,}",
            f"{line.cost_usd:.6f}",
            f"{line.unpriced_attempts:,}",
            f"{line.successful:,}",
            "-" if line.cost_per_success is None else f"{line.cost_per_success:.8f}",
        )
    Console(width=160).print(table)
    if not lines:
        typer.echo("no traffic in that window")
    else:
        from gateway.ledger.success import DEFINITION

        typer.echo(DEFINITION)


@app.command("mock-upstream")
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


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8080,
    sim_port: Annotated[int, typer.Option(help="Simulator port.")] = 9100,
    config: Annotated[Path, typer.Option(help="Demo config.")] = Path("config/demo.yaml"),
) -> None:
    """Start the simulator and serve the demo config against it (no keys, no databases)."""
    os.environ["FAREBOX_SIM_PORT"] = str(sim_port)
    settings = Settings()
    loaded = _load_or_exit(config)
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
  ledger   : {_redact(settings.database_url)} (see `farebox usage`)

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


def main() -> None:
    app()
