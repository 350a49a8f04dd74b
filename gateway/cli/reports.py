"""`farebox reconcile` and `farebox lcpr [estimate]`.

Exit codes: 0 within thresholds, 3 flagged (reconcile), 1 for a bad file / config / database
(with a message naming what and where, never a traceback), 2 for bad options.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.config.schema import GatewayConfig, load_config
from gateway.config.yaml_loader import ConfigError
from gateway.ledger.pricing import PriceBook, load_price_book
from gateway.settings import Settings

EXIT_FLAGGED = 3

lcpr_app = typer.Typer(
    help="Loaded cost per successful request: from the ledger, or as a what-if (`estimate`).",
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="Routing YAML (default: $FAREBOX_CONFIG).")
]
DatabaseOption = Annotated[
    str | None, typer.Option(help="Ledger database (default: $FAREBOX_DATABASE_URL).")
]
PricesOption = Annotated[
    Path | None, typer.Option("--prices", help="prices.yaml (default: $FAREBOX_PRICES_FILE).")
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _config_and_prices(config: Path | None, prices: Path | None) -> tuple[GatewayConfig, PriceBook]:
    settings = Settings()
    try:
        loaded = load_config(config or Path(settings.config))
        # Without --prices, a default path that is not there (run from another directory)
        # falls back to config/prices.yaml of the source tree, as the gateway does.
        path = prices or Path(settings.prices_file)
        book = load_price_book(loaded, path if prices or path.is_file() else None)
    except ConfigError as exc:
        for issue in exc.issues:
            typer.echo(f"error: {issue}", err=True)
        raise typer.Exit(1) from None
    return loaded, book


def _month(value: str | None) -> str:
    from gateway.reports.reconcile import month_window

    month = value or datetime.now(UTC).strftime("%Y-%m")
    try:
        month_window(month)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--month") from None
    return month


def _pct(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} %"


def _run_db(url: str, work: Any) -> Any:
    """Run `work(store)` against the database, turning connection errors into exit 1."""
    from gateway.reports.store import ReportStore

    async def main() -> Any:
        store = ReportStore.create(url)
        try:
            missing = await store.missing_tables()
            if missing:
                raise _fail(f"the database lacks {', '.join(missing)}: run `farebox migrate` first")
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except typer.Exit:
        raise
    except (OSError, ConnectionError) as exc:
        raise _fail(f"cannot reach the ledger database: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("sqlalchemy", "asyncpg")):
            raise _fail(f"ledger database error: {exc}") from None
        raise


def reconcile_command(
    month: Annotated[str, typer.Option(help="Month to reconcile, YYYY-MM (UTC).")],
    invoice: Annotated[
        list[str],
        typer.Option(
            "--invoice",
            "-i",
            metavar="PROVIDER=FILE",
            help="An invoice or usage export for a provider named in the config (repeat). "
            "Format detected from the content: OpenAI usage / costs JSON, Anthropic usage / "
            "cost report JSON, Bedrock CUR 2.0 CSV, Fireworks billing-metrics CSV, or the "
            "generic CSV provider,date,model,token_type,tokens,amount_usd.",
        ),
    ],
    out: Annotated[
        Path | None, typer.Option(help="Directory for reconciliation.md/.html/.csv.")
    ] = None,
    token_threshold: Annotated[
        float, typer.Option(help="Flag token variance above this many percent.")
    ] = 3.0,
    cost_threshold: Annotated[
        float, typer.Option(help="Flag cost variance above this many percent.")
    ] = 10.0,
    config: ConfigOption = None,
    prices: PricesOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Compare the ledger with provider invoices for a month (exit 3 when flagged)."""
    from gateway.reports.importers import ImportedFile, InvoiceFormatError, import_file
    from gateway.reports.reconcile import reconcile
    from gateway.reports.render import write_reports
    from routing.reconcile_rules import Thresholds

    month = _month(month)
    if token_threshold < 0 or cost_threshold < 0:
        raise typer.BadParameter("thresholds must not be negative")
    pairs: list[tuple[str, Path]] = []
    for value in invoice:
        provider, sep, file = value.partition("=")
        if not sep or not provider.strip() or not file.strip():
            raise typer.BadParameter(
                f"expected PROVIDER=FILE, got {value!r}", param_hint="--invoice"
            )
        pairs.append((provider.strip(), Path(file.strip())))
    loaded, book = _config_and_prices(config, prices)
    unknown = sorted({p for p, _ in pairs if p not in loaded.providers})
    if unknown:
        raise _fail(
            f"provider(s) {', '.join(unknown)} not in the config; known: "
            + ", ".join(sorted(loaded.providers))
        )
    url = database_url or Settings().database_url
    console = Console(stderr=True)
    files: list[ImportedFile] = []
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task("importing invoices", total=len(pairs) + 1)
        for provider, path in pairs:
            progress.update(task, description=f"parsing {path.name}")
            try:
                files.append(import_file(provider, path))
            except InvoiceFormatError as exc:
                progress.stop()
                raise _fail(str(exc)) from None
            progress.advance(task)
        progress.update(task, description="storing and reconciling")
        thresholds = Thresholds(Decimal(repr(token_threshold)), Decimal(repr(cost_threshold)))

        async def work(store: Any) -> Any:
            return await reconcile(
                store,
                month,
                files,
                loaded,
                book,
                thresholds,
                on_stored=lambda n: progress.update(task, description=f"stored {n:,} lines"),
            )

        result = _run_db(url, work)
        progress.update(task, description=f"imported {sum(len(f.lines) for f in files):,} lines")
        progress.advance(task)
    directory = out or Path(f"reconciliation-{month}")
    paths = write_reports(result, directory)
    _print_reconciliation(result, paths)
    if not result.ok:
        raise typer.Exit(EXIT_FLAGGED)


def _print_reconciliation(result: Any, paths: list[Path]) -> None:
    console = Console(width=140)
    status = "[green]within thresholds[/]" if result.ok else "[bold red]FLAGGED[/]"
    console.print(
        f"Reconciliation {result.month}: {status} · tokens {_pct(result.token_variance_pct)} · "
        f"cost {_pct(result.cost_variance_pct)} · metered ${result.metered_usd:,.4f} · "
        + (
            "invoiced n/a"
            if result.invoiced_usd is None
            else f"invoiced ${result.invoiced_usd:,.4f}"
        )
    )
    table = Table()
    for column in (
        "provider",
        "model",
        "status",
        "token var.",
        "cost var.",
        "metered $",
        "invoiced $",
    ):
        table.add_column(
            column, justify="left" if column in ("provider", "model", "status") else "right"
        )
    for v in result.verdicts:
        flag = "[bold red]flagged[/]" if v.flagged else "[green]ok[/]"
        table.add_row(
            v.provider,
            v.model,
            flag,
            _pct(v.token_variance_pct),
            _pct(v.cost_variance_pct),
            f"{v.metered_usd:,.4f}",
            "n/a" if v.invoiced_usd is None else f"{v.invoiced_usd:,.4f}",
        )
    console.print(table)
    for v in result.verdicts:
        for c in v.causes:
            console.print(f"[yellow]cause[/] {v.provider} {v.model} [bold]{c.code}[/]: {c.message}")
    for f in result.red_flags:
        console.print(f"[red]red flag[/] {f.code} {f.subject}: {f.message}")
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(
        f"requests: {result.requests:,} received in {result.month}, "
        f"{result.successful:,} successful"
    )
    console.print(
        f"reports: {', '.join(str(p) for p in paths)} (run {result.run_id}, "
        f"{result.elapsed_s:.2f} s)"
    )


@lcpr_app.callback(invoke_without_command=True)
def lcpr_command(
    ctx: typer.Context,
    month: Annotated[
        str | None, typer.Option(help="Month, YYYY-MM (UTC; default: this month).")
    ] = None,
    by: Annotated[str, typer.Option(help="model | route | workload | key")] = "model",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
    prices: PricesOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """LCPR per segment for a month from the ledger, with red flags."""
    if ctx.invoked_subcommand is not None:
        return
    from gateway.ledger.success import DEFINITION as SUCCESS_DEFINITION
    from gateway.reports.lcpr import lcpr_report, report_dict
    from gateway.reports.store import SEGMENTS

    if by not in SEGMENTS:
        raise typer.BadParameter(f"--by must be one of {', '.join(SEGMENTS)}")
    month = _month(month)
    loaded, book = _config_and_prices(config, prices)
    url = database_url or Settings().database_url

    async def work(store: Any) -> Any:
        return await lcpr_report(store, month, by, loaded, book)

    report = _run_db(url, work)
    if as_json:
        typer.echo(orjson.dumps(report_dict(report), option=orjson.OPT_INDENT_2).decode())
        return
    console = Console(width=170)
    total = report.total_lcpr
    console.print(
        f"LCPR {month} by {by}: "
        + ("n/a (no successful requests)" if total is None else f"${total:.6f}")
        + f" · loaded ${report.total_loaded_usd:,.4f} over {report.total_successful:,} "
        f"successful requests ({report.elapsed_s:.2f} s)"
    )
    table = Table()
    columns = (
        "segment",
        "requests",
        "successful",
        "tokens $",
        "dedicated $",
        "repair $",
        "engineering $",
        "LCPR $",
        "clean attempt $",
        "overhead",
        "retry",
        "gate pass",
        "fallback",
        "cache hit",
        "resp. cache",
        "saved $",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "segment" else "right")

    def rate(value: Decimal | None) -> str:
        return "-" if value is None else f"{value * 100:.1f} %"

    def money(value: Decimal | None, places: int = 4) -> str:
        return "-" if value is None else f"{value:,.{places}f}"

    for s in report.segments:
        table.add_row(
            s.segment,
            f"{s.requests:,}",
            f"{s.successful:,}",
            money(s.token_cost_usd),
            money(s.dedicated_cost_usd),
            money(s.repair_cost_usd),
            money(s.engineering_cost_usd),
            money(s.lcpr, 6),
            money(s.clean_attempt_usd, 6),
            "-" if s.overhead_ratio is None else f"{s.overhead_ratio:.2f}×",
            rate(s.retry_rate),
            rate(s.gate_pass_rate),
            rate(s.fallback_share),
            rate(s.cache_hit_rate),
            rate(s.response_cache_rate),
            money(s.saved_usd),
        )
    console.print(table)
    console.print(SUCCESS_DEFINITION)
    for d in report.dedicated:
        console.print(
            f"dedicated {d.provider}: {d.paid_hours:,.1f} h ({d.hours_from}) × "
            f"{money(d.hourly_usd)} = ${d.cost_usd:,.2f}, utilization {rate(d.utilization)}"
        )
    if report.consensus:
        _print_consensus(console, report.consensus)
    for f in report.red_flags:
        console.print(f"[red]red flag[/] {f.code} {f.subject}: {f.message}")
    if not report.red_flags:
        console.print("no red flags")
    for note in report.notes:
        console.print(f"note: {note}")


def _print_consensus(console: Console, lines: Any) -> None:
    from gateway.reports.consensus import DEFINITION, line_dict

    table = Table(title="consensus routes")
    columns = ("route", "requests", "agree", "majority", "disagree", "attempts/req", "multiple")
    for column in columns:
        table.add_column(column, justify="left" if column == "route" else "right")

    def share(value: str | None) -> str:
        return "-" if value is None else f"{Decimal(value) * 100:.1f} %"

    for line in lines:
        d = line_dict(line)
        table.add_row(
            d["route"],
            f"{d['requests']:,}",
            share(d["agree_rate"]),
            share(d["majority_rate"]),
            share(d["disagree_rate"]),
            d["attempts_per_request"] or "-",
            "-" if d["cost_multiple"] is None else f"{Decimal(d['cost_multiple']):.2f}×",
        )
    console.print(table)
    console.print(DEFINITION)


def _dec(value: float) -> Decimal:
    return Decimal(repr(value))


@lcpr_app.command("estimate")
def lcpr_estimate(
    deployment: Annotated[
        list[str],
        typer.Option("--deployment", "-d", help="Deployment id from the config (repeat)."),
    ],
    requests: Annotated[float, typer.Option(help="Requests per month.")],
    input_tokens: Annotated[float, typer.Option(help="Input tokens per request.")],
    output_tokens: Annotated[float, typer.Option(help="Output tokens per request.")],
    retry_rate: Annotated[
        float, typer.Option(help="Extra attempts per request (0.1 = one in ten retried once).")
    ] = 0.0,
    gate_pass_rate: Annotated[
        float, typer.Option(help="Share of answers that pass the quality gate (0–1].")
    ] = 1.0,
    cache_hit_rate: Annotated[
        float, typer.Option(help="Share of input tokens read from the prompt cache.")
    ] = 0.0,
    engineering_hours: Annotated[
        float | None, typer.Option(help="Engineering hours per month (default: config lcpr:).")
    ] = None,
    hourly_rate: Annotated[
        float | None, typer.Option(help="USD per engineering hour (default: config lcpr:).")
    ] = None,
    repair_cost: Annotated[
        float | None, typer.Option(help="USD per failed answer (default: config lcpr:).")
    ] = None,
    gpu_hours: Annotated[
        float, typer.Option(help="Paid hours per month for dedicated deployments.")
    ] = 730.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
    prices: PricesOption = None,
) -> None:
    """What-if: raw $/request, LCPR, monthly cost and overhead ratio per deployment."""
    from gateway.reports.lcpr import deployment_costs, estimate_dict, estimates
    from routing.lcpr import Workload

    loaded, book = _config_and_prices(config, prices)
    lc = loaded.lcpr
    try:
        workload = Workload(
            requests=_dec(requests),
            input_tokens=_dec(input_tokens),
            output_tokens=_dec(output_tokens),
            retry_rate=_dec(retry_rate),
            gate_pass_rate=_dec(gate_pass_rate),
            cache_hit_rate=_dec(cache_hit_rate),
            engineering_hours=_dec(
                lc.engineering_hours_per_month if engineering_hours is None else engineering_hours
            ),
            hourly_rate_usd=_dec(lc.hourly_rate_usd if hourly_rate is None else hourly_rate),
            repair_cost_usd=_dec(lc.repair_cost_usd if repair_cost is None else repair_cost),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        costs = deployment_costs(
            loaded, book, deployment, datetime.now(UTC), gpu_hours=_dec(gpu_hours)
        )
    except KeyError as exc:
        raise _fail(
            f"unknown deployment {exc.args[0]!r}; known: " + ", ".join(loaded.deployments)
        ) from None
    except ValueError as exc:
        raise _fail(str(exc)) from None
    results = estimates(workload, costs)
    if as_json:
        typer.echo(
            orjson.dumps([estimate_dict(e) for e in results], option=orjson.OPT_INDENT_2).decode()
        )
        return
    table = Table(
        title=f"LCPR what-if: {workload.requests:,.0f} requests/month, "
        f"{workload.input_tokens:,.0f} in / {workload.output_tokens:,.0f} out tokens, retry "
        f"{workload.retry_rate:.2f}, gate pass {workload.gate_pass_rate:.2f}"
    )
    for column in ("deployment", "kind", "raw $/request", "LCPR $", "monthly $", "overhead"):
        table.add_column(column, justify="left" if column in ("deployment", "kind") else "right")
    for e in results:
        table.add_row(
            e.deployment,
            e.kind,
            f"{e.raw_per_request:.8f}",
            f"{e.lcpr:.8f}",
            f"{e.monthly_cost:,.2f}",
            f"{e.overhead_ratio:.3f}×",
        )
    Console(width=140).print(table)
