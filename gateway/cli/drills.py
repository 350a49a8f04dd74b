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
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from gateway.cli import drill_views
from gateway.cli.common import (
    ConfigOption,
    DatabaseOption,
    JsonOption,
    database_url,
    dump,
    exit_with_issues,
    fail,
    run_database,
    user,
)

if TYPE_CHECKING:
    from gateway.config.drills import DrillSchedule
    from gateway.config.schema import GatewayConfig
    from gateway.ledger.drills_repository import DrillRow, DrillsRepository
    from gateway.runtime.yaml_loader import ConfigIssue

drill_app = typer.Typer(
    no_args_is_help=True,
    help="Failover drills: send a share of a route's live traffic to a fallback and judge it.",
)

EXIT_FAIL = 3
_T = TypeVar("_T")

DrillId = Annotated[str, typer.Argument(help="The drill's id (drill_…).", metavar="ID")]


_UNSET_VAR = re.compile(r"environment variable (\w+) is not set")
# Stands in for provider secrets the operator's shell does not have: a drill is checked
# against route and deployment names, never against keys or endpoints.
_PLACEHOLDER = "http://unset.invalid"


def _config_or_issues(file: Path) -> GatewayConfig | list[ConfigIssue]:
    from gateway.config.loading import load_config
    from gateway.runtime.yaml_loader import ConfigError

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
    raise exit_with_issues(loaded)


def _run(given: str | None, work: Callable[[DrillsRepository], Awaitable[_T]]) -> _T:
    """Run `work` against the drills table; any error on the way (not only the driver's) is
    one line and exit 1, never a traceback."""
    from gateway.ledger.drills_repository import DrillsRepository

    return run_database(
        database_url(given),
        "drill database",
        DrillsRepository.create,
        _drills_table,
        work,
        database_error=lambda exc: True,
    )


async def _drills_table(repository: DrillsRepository) -> str | None:
    from sqlalchemy import inspect

    def has_table(sync_conn: Any) -> bool:
        return bool(inspect(sync_conn).has_table("drills"))

    async with repository.engine.connect() as conn:
        found = await conn.run_sync(has_table)
    return None if found else "drills table"


async def _announce(redis_url: str | None) -> None:
    """Tell every replica to re-read the drills now; never fails the command over it (the
    change is committed, and the replicas' poll sees it within about a second)."""
    if not redis_url:
        return
    from gateway.drills.board import CHANNEL
    from gateway.runtime.redis import publish, redis_client
    from gateway.runtime.redis_health import REDIS_ERRORS

    client = redis_client(redis_url)
    try:
        await publish(client, CHANNEL, b"changed")
    except REDIS_ERRORS:  # Redis away or too slow: say what happens instead
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
    await audit(keys, action, row, actor=f"cli:{user()}", client=socket.gethostname())


def _guard_file(path: Path | None) -> Any:
    """The --guard file's YAML (validated as DrillStart's `guard`)."""
    if path is None:
        return None
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise fail(f"--guard {path}: {exc}") from None


@drill_app.command("start")
def start(
    route: Annotated[str, typer.Argument(help="The route to drill.", metavar="ROUTE")],
    to: Annotated[
        str | None,
        typer.Option("--to", metavar="DEPLOYMENT", help="The deployment to send it to."),
    ] = None,
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
    guard: Annotated[
        Path | None,
        typer.Option(
            "--guard",
            metavar="FILE",
            help="Guard checks to try on the cohort in flag mode (a YAML list, as `guard:`).",
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """Start a drill on ROUTE: --percent of its requests go to DEPLOYMENT first, and/or are
    read by the --guard checks on trial (what they would have done is in the verdict)."""
    from pydantic import ValidationError

    from gateway.config.drills import DrillStart
    from gateway.drills.admin import problems
    from gateway.settings import Settings

    try:
        request = DrillStart(
            route=route,
            to=to,
            guard=_guard_file(guard),
            percent=percent,
            minutes=minutes,
            simulate_outage=simulate_outage,
            abort_after_errors=abort_after_errors,
            abort_error_rate=abort_error_rate,
        )
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in error["loc"]).replace("_", "-")
            message = error["msg"].removeprefix("Value error, ")
            if not where:  # the options together: say it in the CLI's words
                message = message.replace("`to`", "--to").replace("`guard`", "--guard")
            typer.echo(f"error: {f'--{where}: ' if where else ''}{message}", err=True)
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
                created_by=f"cli:{user()}",
                guard=request.stored_guard(),
            )
        except ValueError as exc:  # the route already has a drill running
            raise fail(f"{exc}: stop it first (`farebox drill stop ID`)") from None
        await _announce(Settings().redis_url)
        await _audit(repository, "drill.start", row)
        return row

    row = _run(database_url, work)
    if as_json:
        dump(row.as_dict())
        return
    outage = ", with the primary treated as down" if row.simulate_outage else ""
    what = f"to {row.target}{outage}" if row.target else "read by guard checks on trial"
    if row.target and row.guard:
        what += ", and read by guard checks on trial"
    typer.echo(
        f"started {row.id}: {row.percent:g} % of route {row.route} {what}, "
        f"for {request.minutes:g} min (until {drill_views.when(row.ends_at)})\n"
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
                raise fail(f"no drill with id {drill_id}")
            return await drill_admin.view_with_progress(repository, row)

        data = _run(database_url, one)
        if as_json:
            dump(data)
        else:
            drill_views.print_drill(data)
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
        dump(data)
        return
    drill_views.print_overview(data)


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
            raise fail(f"no drill with id {drill_id}")
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
                raise fail(
                    f"{row.id} has already finished: {row.status}{shown}; "
                    f"see `farebox drill report {row.id}`"
                )
            if not wait:
                raise fail(f"{row.id} is already {row.status}; its verdict is being written")
        if not wait:
            return row
        deadline = time.monotonic() + timeout
        while row.status not in FINAL:
            if time.monotonic() > deadline:
                raise fail(
                    f"no verdict for {row.id} after {timeout:g} s: verdicts are written by a "
                    "running gateway; is one serving against this database?"
                )
            await asyncio.sleep(0.5)
            row = await repository.get(row.id) or row
        return row

    row = _run(database_url, work)
    if as_json:
        dump(row.as_dict())
    if not wait:
        if not as_json:
            typer.echo(f"  then: farebox drill report {row.id}")
        return
    if row.verdict is None:
        raise fail(f"{row.id} ended ({row.status}) without a verdict: see the gateway's log")
    if not as_json:
        drill_views.print_verdict(row.verdict)
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
            raise fail(f"no drill with id {drill_id}")
        return row

    row = _run(database_url, work)
    if row.verdict is None or row.report is None:
        from gateway.drills.admin import UNFINISHED

        if row.status in UNFINISHED:
            raise fail(f"{row.id} has no verdict yet (status {row.status})")
        raise fail(f"{row.id} ended ({row.status}) without a verdict: see the gateway's log")
    if as_json:
        dump(row.verdict)
    else:
        drill_views.print_verdict(row.verdict)
    if out is not None:
        try:
            out.write_text(row.report, encoding="utf-8")
        except OSError as exc:
            raise fail(f"cannot write {out}: {exc.strerror or exc}") from None
        if not as_json:
            typer.echo(f"wrote {out}")
    raise _verdict_exit(row)
