"""`farebox reconcile`: the ledger against provider invoices for a month (exit 3 when
flagged; see cli/reports.py for the other exit codes)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.cli.common import ConfigOption, PricesOption, fail
from gateway.cli.common import database_url as database_url_of
from gateway.cli.reports import DatabaseOption, config_and_prices, month_of, pct, run_ledger

EXIT_FLAGGED = 3


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

    month = month_of(month)
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
    loaded, book = config_and_prices(config, prices)
    unknown = sorted({p for p, _ in pairs if p not in loaded.providers})
    if unknown:
        raise fail(
            f"provider(s) {', '.join(unknown)} not in the config; known: "
            + ", ".join(sorted(loaded.providers))
        )
    url = database_url_of(database_url)
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
                raise fail(str(exc)) from None
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

        result = run_ledger(url, work)
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
        f"Reconciliation {result.month}: {status} · tokens {pct(result.token_variance_pct)} · "
        f"cost {pct(result.cost_variance_pct)} · metered ${result.metered_usd:,.4f} · "
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
            pct(v.token_variance_pct),
            pct(v.cost_variance_pct),
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
