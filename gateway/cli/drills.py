"""`farebox drill start|status|stop|report`: failover drills from the shell.

Talks to the drills table directly (FAREBOX_DATABASE_URL) and, when FAREBOX_REDIS_URL is set,
publishes `changed` on `farebox:drills` after a start or stop so every replica re-reads the
drills at once; without Redis (or if the publish fails) the replicas' one-second poll of the
table picks the change up. The verdict is never computed here: the gateway replicas write it
when a drill ends (its time is up, it is stopped, or it aborts itself), which is why
`stop --wait` and `report` need a gateway running against the same database.

Exit codes: 0 ok (and PASS), 1 bad input, unknown drill, no verdict yet or database
unreachable, 3 FAIL (`report`, `stop --wait`), like `farebox reconcile`'s flagged exit.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer

if TYPE_CHECKING:
    from gateway.config.schema import GatewayConfig
    from gateway.config.yaml_loader import ConfigIssue
    from gateway.drills.config import DrillSchedule
    from gateway.ledger.drills_repository import DrillRow, DrillsRepository

drill_app = typer.Typer(
    no_args_is_help=True,
    help="Failover drills: send a share of a route's live traffic to a fallback and judge it.",
)

EXIT_FAIL = 3
_T = TypeVar("_T")

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DatabaseOption = Annotated[
    str | None, typer.Option("--database-url", help="Default: $FAREBOX_DATABASE_URL.")
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Routing YAML (default: $FAREBOX_CONFIG)."),
]
DrillId = Annotated[str, typer.Argument(help="The drill's id (drill_…).", metavar="ID")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers): still say who, roughly
        return "unknown"


_UNSET_VAR = re.compile(r"environment variable (\w+) is not set")
# Stands in for provider secrets the operator's shell does not have: a drill is checked
# against route and deployment names, never against keys or endpoints.
_PLACEHOLDER = "http://unset.invalid"


def _config_or_issues(file: Path) -> GatewayConfig | list[ConfigIssue]:
    from gateway.config.schema import load_config
    from gateway.config.yaml_loader import ConfigError

    try:
        return load_config(file)
    except ConfigError as exc:
        issues = exc.issues
    missing = [_UNSET_VAR.search(i.message) for i in issues]
    if all(missing):
        env = {**os.environ, **{m.group(1): _PLACEHOLDER for m in missing if m is not None}}
        try:
            return load_config(file, env)
        except ConfigError as exc:
            # Something besides the missing variables (which are reported first, as
            # interpolation stops the loader before validation): report those problems.
            return exc.issues
    return issues


def _load_config(path: Path | None) -> GatewayConfig:
    from gateway.settings import Settings

    loaded = _config_or_issues(path or Path(Settings().config))
    if not isinstance(loaded, list):
        return loaded
    for issue in loaded:
        typer.echo(f"error: {issue}", err=True)
    raise typer.Exit(1)


def _run(
    database_url: str | None,
    work: Callable[[DrillsRepository], Awaitable[_T]],
) -> _T:
    """Run `work` against the drills table, turning every database problem into one clear
    line and exit 1 (never a traceback)."""
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from gateway.ledger.drills_repository import DrillsRepository
    from gateway.settings import Settings

    url = database_url or Settings().database_url
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise _fail("the database URL is not a valid SQLAlchemy URL") from None

    def has_table(sync_conn: Any) -> bool:
        return bool(inspect(sync_conn).has_table("drills"))

    async def ready(repository: DrillsRepository) -> bool:
        async with repository.engine.connect() as conn:
            return await conn.run_sync(has_table)

    async def main() -> _T:
        try:
            repository = DrillsRepository.create(url)
        except Exception as exc:  # unknown driver, bad URL options
            raise _fail(f"cannot use the database {shown}: {_reason(exc)}") from None
        try:
            try:
                found = await asyncio.wait_for(ready(repository), 10)
            except Exception as exc:  # any driver or network error: say which database
                raise _fail(f"cannot reach the drill database {shown}: {_reason(exc)}") from None
            if not found:
                raise _fail(f"{shown} has no drills table: run `farebox migrate` first")
            try:
                return await work(repository)
            except typer.Exit:
                raise
            except Exception as exc:  # the database went away mid-command
                raise _fail(f"drill database {shown}: {_reason(exc)}") from None
        finally:
            await repository.close()

    return asyncio.run(main())


async def _announce(redis_url: str | None) -> None:
    """Tell every replica to re-read the drills now; never fails the command over it (the
    change is committed, and the replicas' poll sees it within about a second)."""
    if not redis_url:
        return
    from redis.asyncio import Redis

    from gateway.drills.board import CHANNEL

    client = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        await client.publish(CHANNEL, b"changed")
    except Exception:  # any Redis failure: say what happens instead
        typer.echo(
            "warning: Redis unreachable; replicas pick the change up within ~1 s by "
            "polling the database",
            err=True,
        )
    finally:
        await client.aclose()


async def _audit(repository: DrillsRepository, action: str, row: DrillRow) -> None:
    from gateway.drills.admin import audit
    from gateway.ledger.keys_repository import KeysRepository

    # The same admin_audit rows as the admin API, on the drill repository's engine.
    keys = KeysRepository(repository.engine)
    await audit(keys, action, row, actor=f"cli:{_user()}", client=socket.gethostname())


def _dump(data: Any) -> None:
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: Any, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


def _errors(errors: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted((errors or {}).items())) or "none"


@drill_app.command("start")
def start(
    route: Annotated[str, typer.Argument(help="The route to drill.", metavar="ROUTE")],
    to: Annotated[
        str, typer.Option("--to", metavar="DEPLOYMENT", help="The deployment to send it to.")
    ],
    percent: Annotated[float, typer.Option(help="Share of the route's requests, (0, 100].")] = 5.0,
    minutes: Annotated[float, typer.Option(help="How long the drill runs.")] = 15.0,
    simulate_outage: Annotated[
        bool,
        typer.Option(
            "--simulate-outage", help="Treat the route's primary as down for the drill's cohort."
        ),
    ] = False,
    abort_after_errors: Annotated[
        int, typer.Option(help="Abort once the target has failed this many times…")
    ] = 10,
    abort_error_rate: Annotated[
        float, typer.Option(help="…at this error rate or worse (0-1].")
    ] = 0.5,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """Start a drill on ROUTE: --percent of its requests go to DEPLOYMENT first."""
    from pydantic import ValidationError

    from gateway.drills.admin import problems
    from gateway.drills.config import DrillStart
    from gateway.settings import Settings

    try:
        request = DrillStart(
            route=route,
            to=to,
            percent=percent,
            minutes=minutes,
            simulate_outage=simulate_outage,
            abort_after_errors=abort_after_errors,
            abort_error_rate=abort_error_rate,
        )
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in error["loc"]).replace("_", "-")
            typer.echo(f"error: --{where}: {error['msg']}", err=True)
        raise typer.Exit(1) from None
    loaded = _load_config(config)
    found = problems(loaded, request)
    for _field, message in found:
        typer.echo(f"error: {message}", err=True)
    if found:
        raise typer.Exit(1)

    async def work(repository: DrillsRepository) -> DrillRow:
        try:
            row = await repository.start(
                request.route,
                request.to,
                request.percent,
                request.minutes,
                simulate_outage=request.simulate_outage,
                abort_after_errors=request.abort_after_errors,
                abort_error_rate=request.abort_error_rate,
                created_by=f"cli:{_user()}",
            )
        except ValueError as exc:  # the route already has a drill running
            raise _fail(f"{exc}: stop it first (`farebox drill stop ID`)") from None
        await _announce(Settings().redis_url)
        await _audit(repository, "drill.start", row)
        return row

    row = _run(database_url, work)
    if as_json:
        _dump(row.as_dict())
        return
    outage = ", with the primary treated as down" if row.simulate_outage else ""
    typer.echo(
        f"started {row.id}: {row.percent:g} % of route {row.route} to {row.target}{outage}, "
        f"for {request.minutes:g} min (until {_when(row.ends_at)})\n"
        f"  watch: farebox drill status {row.id}\n"
        f"  end it early: farebox drill stop {row.id}"
    )


@drill_app.command("status")
def status(
    drill_id: Annotated[
        str | None, typer.Argument(help="One drill (default: all recent).", metavar="[ID]")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many recent drills.")] = 20,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """Running drills with their live progress, the last verdict per route, and the YAML's
    schedules; or one drill in detail."""
    from gateway.drills import admin as drill_admin

    if drill_id is not None:

        async def one(repository: DrillsRepository) -> dict[str, Any]:
            row = await repository.get(drill_id)
            if row is None:
                raise _fail(f"no drill with id {drill_id}")
            return await drill_admin.view_with_progress(repository, row)

        data = _run(database_url, one)
        if as_json:
            _dump(data)
        else:
            _print_drill(data)
        return

    schedules = _schedules(config)

    async def overview(repository: DrillsRepository) -> dict[str, Any]:
        data = await drill_admin.overview(repository, limit)
        data["schedules"] = [
            {
                "name": s.schedule_name,
                "route": s.route,
                "to": s.to,
                "percent": s.percent,
                "minutes": s.minutes,
                "every": s.every,
                "last_started": _iso(await repository.last_started(s.schedule_name)),
            }
            for s in schedules
        ]
        return data

    data = _run(database_url, overview)
    if as_json:
        _dump(data)
        return
    _print_overview(data)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _schedules(path: Path | None) -> list[DrillSchedule]:
    """The YAML's drill schedules, if the config loads; status still works without it."""
    from gateway.settings import Settings

    file = path or Path(Settings().config)
    if path is None and not file.is_file():
        return []
    loaded = _config_or_issues(file)
    if isinstance(loaded, list):
        typer.echo(f"warning: schedules not shown: {loaded[0]}", err=True)
        return []
    return list(loaded.drills)


def _print_overview(data: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    unfinished = [d for d in data["data"] if "progress" in d]
    if unfinished:
        table = Table(
            "id",
            "route",
            "to",
            "%",
            "status",
            "ends",
            "attempts",
            "success",
            "errors",
            "by",
            title="Running drills",
        )
        for d in unfinished:
            p = d["progress"]
            table.add_row(
                d["id"],
                d["route"],
                d["target"] + (" (outage)" if d["simulate_outage"] else ""),
                f"{d['percent']:g}",
                d["status"],
                _short_time(d["ends_at"]),
                str(p["attempts"]),
                _pct(p["success_rate"]),
                _errors(p["errors"]),
                d["created_by"] or "-",
            )
        console.print(table)
    else:
        typer.echo("no drill running")
    verdicts = data["last_verdicts"]
    if verdicts:
        table = Table("route", "result", "drill", "to", "finished", "why", title="Last verdicts")
        for route, v in sorted(verdicts.items()):
            table.add_row(
                route,
                v["result"] + ("" if v["status"] == "completed" else f" ({v['status']})"),
                v["drill_id"],
                v["target"],
                _short_time(v["finished_at"]),
                "; ".join(v["reasons"]) or "-",
            )
        console.print(table)
    else:
        typer.echo("no finished drill yet")
    if data.get("schedules"):
        table = Table(
            "schedule", "route", "to", "%", "minutes", "every", "last started", title="Schedules"
        )
        for s in data["schedules"]:
            table.add_row(
                s["name"],
                s["route"],
                s["to"],
                f"{s['percent']:g}",
                f"{s['minutes']:g}",
                s["every"],
                _short_time(s["last_started"]) if s["last_started"] else "never",
            )
        console.print(table)


def _short_time(iso: str | None) -> str:
    if not iso:
        return "-"
    return _when(datetime.fromisoformat(iso))


def _print_drill(data: Mapping[str, Any]) -> None:
    outage = " (primary treated as down)" if data["simulate_outage"] else ""
    lines = [
        ("drill", data["id"]),
        ("route", data["route"]),
        ("to", data["target"] + outage),
        ("percent", f"{data['percent']:g}"),
        ("status", data["status"] + (f" — {data['result']}" if data["result"] else "")),
        ("started", _short_time(data["started_at"])),
        ("ends", _short_time(data["ends_at"])),
        ("finished", _short_time(data["finished_at"])),
        ("by", data["created_by"] or "-"),
        ("schedule", data["schedule"] or "-"),
        (
            "aborts after",
            f"{data['abort_after_errors']} errors at >= {data['abort_error_rate']:.0%}",
        ),
    ]
    progress = data.get("progress")
    if progress is not None:
        lines += [
            ("attempts", str(progress["attempts"])),
            ("success", _pct(progress["success_rate"])),
            ("p95 ms", _num(progress["p95_ms"])),
            ("errors", _errors(progress["errors"])),
        ]
    width = max(len(k) for k, _ in lines)
    for name, value in lines:
        typer.echo(f"{name:<{width}}  {value}")
    if data.get("verdict"):
        typer.echo("")
        _print_verdict(data["verdict"])


def _print_verdict(verdict: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    d = verdict.get("drill_side") or {}
    p = verdict.get("primary_side") or {}
    table = Table(
        "",
        f"drill target {verdict.get('target', '')}",
        f"primary {verdict.get('primary') or ''}",
        title=f"Drill {verdict.get('drill_id', '')}: {verdict.get('result', '?')}",
    )

    def rate(side: Mapping[str, Any], part: str, whole: str) -> str:
        return f"{side[part] / side[whole]:.1%}" if side.get(whole) else "-"

    table.add_row("attempts", str(d.get("attempts", 0)), str(p.get("attempts", 0)))
    table.add_row(
        "success rate", rate(d, "successes", "attempts"), rate(p, "successes", "attempts")
    )
    table.add_row("latency p50 ms", _num(d.get("p50_ms")), _num(p.get("p50_ms")))
    table.add_row("latency p95 ms", _num(d.get("p95_ms")), _num(p.get("p95_ms")))
    table.add_row(
        "cost per success USD",
        _num(d.get("cost_per_success"), "{:.6f}"),
        _num(p.get("cost_per_success"), "{:.6f}"),
    )
    table.add_row(
        "gate pass rate",
        rate(d, "gate_passed", "gate_checked"),
        rate(p, "gate_passed", "gate_checked"),
    )
    table.add_row("errors", _errors(d.get("errors")), _errors(p.get("errors")))
    Console(width=160).print(table)
    typer.echo(
        f"schema conformance: {_pct(verdict.get('conformance'))} of "
        f"{verdict.get('conformance_checked', 0)} answers checked; "
        f"p95 latency ratio: {_num(verdict.get('latency_ratio_p95'), '{:.2f}')}; "
        f"cost delta per request: {_num(verdict.get('cost_delta_per_request'), '{:+.6f}')} USD"
    )
    reasons = verdict.get("reasons") or []
    if reasons:
        typer.echo("why it failed:")
        for reason in reasons:
            typer.echo(f"  - {reason}")


def _verdict_exit(row: DrillRow) -> typer.Exit:
    return typer.Exit(0 if row.result == "PASS" else EXIT_FAIL)


@drill_app.command("stop")
def stop(
    drill_id: DrillId,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the verdict and print it (exit 3 on FAIL).")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds --wait waits for the verdict.")
    ] = 120.0,
    as_json: JsonOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """End a running drill now; the gateway replicas then write its verdict."""
    from gateway.ledger.drills_repository import FINAL, RUNNING, STOPPING
    from gateway.settings import Settings

    async def work(repository: DrillsRepository) -> DrillRow:
        row = await repository.get(drill_id)
        if row is None:
            raise _fail(f"no drill with id {drill_id}")
        if row.status == RUNNING and await repository.move(row.id, (RUNNING,), STOPPING):
            await _announce(Settings().redis_url)
            row = await repository.get(row.id) or row
            await _audit(repository, "drill.stop", row)
            if not as_json:
                typer.echo(f"stopping {row.id}: the gateway replicas write its verdict shortly")
        else:
            row = await repository.get(row.id) or row
            if row.status in FINAL:
                shown = f" ({row.result})" if row.result else ""
                raise _fail(
                    f"{row.id} has already finished: {row.status}{shown}; "
                    f"see `farebox drill report {row.id}`"
                )
            if not wait:
                raise _fail(f"{row.id} is already {row.status}; its verdict is being written")
        if not wait:
            return row
        deadline = time.monotonic() + timeout
        while row.status not in FINAL:
            if time.monotonic() > deadline:
                raise _fail(
                    f"no verdict for {row.id} after {timeout:g} s: verdicts are written by a "
                    "running gateway; is one serving against this database?"
                )
            await asyncio.sleep(0.5)
            row = await repository.get(row.id) or row
        return row

    row = _run(database_url, work)
    if as_json:
        _dump(row.as_dict())
    if not wait:
        if not as_json:
            typer.echo(f"  then: farebox drill report {row.id}")
        return
    if row.verdict is None:
        raise _fail(f"{row.id} ended ({row.status}) without a verdict: see the gateway's log")
    if not as_json:
        _print_verdict(row.verdict)
    raise _verdict_exit(row)


@drill_app.command("report")
def report(
    drill_id: DrillId,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", metavar="FILE.md", help="Write the Markdown.")
    ] = None,
    as_json: JsonOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """A finished drill's verdict as a table (exit 0 PASS, 3 FAIL); --out writes the
    stored Markdown report."""

    async def work(repository: DrillsRepository) -> DrillRow:
        row = await repository.get(drill_id)
        if row is None:
            raise _fail(f"no drill with id {drill_id}")
        return row

    row = _run(database_url, work)
    if row.verdict is None or row.report is None:
        from gateway.drills.admin import UNFINISHED

        if row.status in UNFINISHED:
            raise _fail(f"{row.id} has no verdict yet (status {row.status})")
        raise _fail(f"{row.id} ended ({row.status}) without a verdict: see the gateway's log")
    if as_json:
        _dump(row.verdict)
    else:
        _print_verdict(row.verdict)
    if out is not None:
        try:
            out.write_text(row.report, encoding="utf-8")
        except OSError as exc:
            raise _fail(f"cannot write {out}: {exc.strerror or exc}") from None
        if not as_json:
            typer.echo(f"wrote {out}")
    raise _verdict_exit(row)
