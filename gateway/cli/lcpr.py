"""`farebox lcpr [estimate]`: loaded cost per successful request from the ledger, or as
a what-if."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from gateway.cli.common import ConfigOption, PricesOption, fail
from gateway.cli.common import database_url as database_url_of
from gateway.cli.guard_views import print_guard_hits
from gateway.cli.reports import DatabaseOption, config_and_prices, month_of, run_ledger

lcpr_app = typer.Typer(
    help="Loaded cost per successful request: from the ledger, or as a what-if (`estimate`).",
)


@lcpr_app.callback(invoke_without_command=True)
def lcpr_command(
    ctx: typer.Context,
    month: Annotated[
        str | None, typer.Option(help="Month, YYYY-MM (UTC; default: this month).")
    ] = None,
    by: Annotated[str, typer.Option(help="model | route | workload | key | workflow")] = "model",
    workflows_by: Annotated[
        str,
        typer.Option(
            help="With --by workflow: group workflows by the route or the workload of "
            "their first call (route | workload)."
        ),
    ] = "route",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Also write lcpr.md, lcpr.html, lcpr.csv (and batch_share.csv, "
            "consensus.csv when they have rows) to this directory."
        ),
    ] = None,
    config: ConfigOption = None,
    prices: PricesOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """LCPR per segment for a month from the ledger, with red flags.

    `--by workflow` reports agent workflows instead (requests sharing a workflow id):
    calls per workflow, workflow success rate, cost per successful workflow, retry
    cascades and per-call success, flagging groups whose workflows fail more often than
    their per-call failures compound to."""
    if ctx.invoked_subcommand is not None:
        return
    if by == "workflow":
        _workflows(month, workflows_by, as_json, database_url)
        return
    from gateway.ledger.success import DEFINITION as SUCCESS_DEFINITION
    from gateway.reports.lcpr import lcpr_report, report_dict
    from gateway.reports.store import SEGMENTS

    if by not in SEGMENTS:
        raise typer.BadParameter(f"--by must be one of {', '.join((*SEGMENTS, 'workflow'))}")
    month = month_of(month)
    loaded, book = config_and_prices(config, prices)
    url = database_url_of(database_url)

    async def work(store: Any) -> Any:
        return await lcpr_report(store, month, by, loaded, book)

    report = run_ledger(url, work)
    if out is not None:
        from gateway.reports.render_lcpr import write_reports

        written = write_reports(report, out)
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
    print_guard_hits(console, report.guard)
    if report.batch is not None:
        _print_batch(console, report.batch)
    for f in report.red_flags:
        console.print(f"[red]red flag[/] {f.code} {f.subject}: {f.message}")
    if not report.red_flags:
        console.print("no red flags")
    for note in report.notes:
        console.print(f"note: {note}")
    if out is not None:
        console.print("wrote " + ", ".join(str(p) for p in written))


def _workflows(month: str | None, group_by: str, as_json: bool, database_url: str | None) -> None:
    from gateway.ledger.success import DEFINITION as SUCCESS_DEFINITION
    from gateway.reports.store_workflows import WORKFLOW_GROUPS
    from gateway.reports.workflows import DEFINITION, line_dict, report_dict, workflow_report

    if group_by not in WORKFLOW_GROUPS:
        raise typer.BadParameter(f"--workflows-by must be one of {', '.join(WORKFLOW_GROUPS)}")
    month = month_of(month)
    url = database_url_of(database_url)

    async def work(store: Any) -> Any:
        return await workflow_report(store, month, group_by)

    report = run_ledger(url, work)
    if as_json:
        typer.echo(orjson.dumps(report_dict(report), option=orjson.OPT_INDENT_2).decode())
        return
    console = Console(width=170)
    total = report.total
    if total is None:
        console.print(f"Workflows {month}: none (no request carried a workflow id)")
        return
    per = total.cost_per_success
    console.print(
        f"Workflows {month} by {group_by} of the first call: {total.workflows:,} workflows, "
        f"{total.calls:,} calls, success {total.success_rate * 100:.1f} %, "
        + ("no successful workflow" if per is None else f"${per:.6f} per successful workflow")
        + f" ({report.elapsed_s:.2f} s)"
    )
    table = Table()
    columns = (
        group_by,
        "workflows",
        "calls mean",
        "p50",
        "max",
        "success",
        "$ / successful",
        "retries / wf",
        "wf with retries",
        "call success",
        "compounded fail",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == group_by else "right")
    for line in [*report.lines, total]:
        d = line_dict(line)
        calls = d["calls_per_workflow"]
        table.add_row(
            line.group,
            f"{line.workflows:,}",
            f"{line.calls_mean:.2f}",
            str(calls["p50"]),
            str(calls["max"]),
            f"{line.success_rate * 100:.1f} %",
            _usd(line.cost_per_success),
            f"{line.retries_mean:.2f}",
            f"{line.retry_share * 100:.1f} %",
            f"{line.call_success_rate * 100:.1f} %",
            f"{line.compounded_failure_rate * 100:.1f} %",
        )
    console.print(table)
    console.print(DEFINITION)
    console.print(SUCCESS_DEFINITION)
    for f in report.red_flags:
        console.print(f"[red]red flag[/] {f.code} {f.subject}: {f.message}")
    if not report.red_flags:
        console.print("no red flags")


def _usd(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:,.6f}"


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


def _print_batch(console: Console, batch: Any) -> None:
    """The batch tier: batch-eligible share per workload, dedicated utilization before and
    after batch fill (nothing when no workload is deferrable and nothing ran as a batch)."""
    from gateway.reports.batch_share import (
        DEFINITION,
        FILL_HEADER,
        WORKLOAD_HEADER,
        fill_cells,
        workload_cells,
    )

    if not batch.workloads and not batch.dedicated:
        return
    if batch.workloads:
        table = Table(title=f"batch-eligible share (batch rate: {batch.batch_rate})")
        for column in WORKLOAD_HEADER:
            table.add_column(column, justify="left" if column == "workload" else "right")
        for line in [*batch.workloads, batch.total]:
            table.add_row(*workload_cells(line))
        console.print(table)
    if batch.dedicated:
        table = Table(title="dedicated utilization before/after batch fill")
        for column in FILL_HEADER:
            table.add_column(column, justify="left" if column == "dedicated" else "right")
        for fill in batch.dedicated:
            table.add_row(*fill_cells(fill))
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

    loaded, book = config_and_prices(config, prices)
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
        raise fail(
            f"unknown deployment {exc.args[0]!r}; known: " + ", ".join(loaded.deployments)
        ) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
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
