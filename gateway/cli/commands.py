"""The `farebox` command and every subcommand (gateway/cli/main.py runs `farebox serve`
without loading them)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli import serve as serving
from gateway.cli.common import ConfigOption, load_config_or_exit, shown_url
from gateway.cli.drills import drill_app
from gateway.cli.keys import keys_app
from gateway.cli.lcpr import lcpr_app
from gateway.cli.ledger import ledger_app
from gateway.cli.ledger_rollups import rollup_command as _registers_ledger_rollup  # noqa: F401
from gateway.cli.reconcile import reconcile_command
from gateway.cli.router import router_app
from gateway.runtime.yaml_loader import ConfigError
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
app.add_typer(ledger_app, name="ledger")
app.command()(serving.serve)


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="YAML file to validate.")]) -> None:
    """Validate FILE and print each route's resolved plan (exit 1 on errors)."""
    config = load_config_or_exit(file)
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
    from gateway.api.explain import (
        explain_route,
        parse_chat_request,
        print_explanation,
        unknown_route_message,
    )
    from gateway.core.live_routing import LiveRouting
    from gateway.errors import GatewayError
    from gateway.ledger.pricing import load_price_book

    settings = Settings()
    loaded = load_config_or_exit(config or Path(settings.config))
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
    typer.echo(f"ledger schema at {revision}: {shown_url(url)}")


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
    """Requests, attempts, tokens by type, cost and successful requests from the ledger,
    and per route the requests a guard check fired on.

    By deployment, attempts, tokens and cost are each deployment's own; requests and
    successes go to the deployment that answered, so every grouping has the same totals."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from rich.console import Console
    from rich.table import Table

    from gateway.cli.guard_views import print_guard_hits
    from gateway.ledger.repository import LedgerRepository
    from gateway.reports.guard_hits import guard_hits, hits_dict

    if by not in ("route", "deployment", "key"):
        raise typer.BadParameter("--by must be route, deployment or key")
    start = datetime.now(UTC) - timedelta(seconds=_parse_since(since))
    url = database_url or Settings().database_url

    async def read() -> tuple[list[Any], list[Any]]:
        repo = LedgerRepository.create(url)
        try:
            return list(await repo.usage(start, by)), await guard_hits(repo.engine, start)
        finally:
            await repo.close()

    try:
        lines, guarded = asyncio.run(read())
    except Exception as exc:  # a CLI edge: any driver error is one message
        typer.echo(f"error: cannot read the ledger at {shown_url(url)}: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        import dataclasses

        import orjson

        rows = [{**dataclasses.asdict(line), "cost_usd": str(line.cost_usd)} for line in lines]
        typer.echo(
            orjson.dumps(
                {
                    "since": start.isoformat(),
                    "by": by,
                    "lines": rows,
                    "guard_hits": [hits_dict(hits) for hits in guarded],
                },
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
    console = Console(width=160)
    console.print(table)
    print_guard_hits(console, guarded)
    if not lines:
        typer.echo("no traffic in that window")
    else:
        from gateway.ledger.success import DEFINITION

        typer.echo(DEFINITION)


# After usage, where they were defined before moving to cli/serve.py: `--help` order.
app.command("mock-upstream")(serving.mock_upstream)
app.command()(serving.demo)


def main() -> None:
    app()
