"""`farebox keys create|list|show|update|revoke|rotate|audit`: virtual keys from the shell.

Talks to the key database directly (FAREBOX_DATABASE_URL), writes the same audit rows as the
admin API (actor `cli:<user>`), and when FAREBOX_REDIS_URL is set announces each change so
every replica drops it from its cache at once; without Redis they notice within about a
second by polling. Secrets are printed once, on create and rotate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer

from gateway.cli.common import (
    DatabaseOption,
    JsonOption,
    client,
    database_url,
    fail,
    run_database,
    shown_url,
    user,
)

if TYPE_CHECKING:
    from gateway.keys.admin import KeyAdmin, VirtualKey

keys_app = typer.Typer(no_args_is_help=True, help="Manage virtual API keys.")

_T = TypeVar("_T")

TeamOption = Annotated[str | None, typer.Option(help="Team the key's spend is reported under.")]
RouteOption = Annotated[
    list[str] | None,
    typer.Option("--route", help="A route this key may call (repeat; default: every route)."),
]
RpmOption = Annotated[int | None, typer.Option(help="Requests per minute.")]
TpmOption = Annotated[int | None, typer.Option(help="Tokens per minute.")]
ConcurrencyOption = Annotated[int | None, typer.Option(help="Requests in flight at once.")]
BudgetOption = Annotated[str | None, typer.Option(help="Monthly budget in USD, e.g. 250.")]
SoftOption = Annotated[
    float | None, typer.Option(help="Share of the budget that triggers an alert, e.g. 0.8.")
]
ExpiresOption = Annotated[
    str | None,
    typer.Option(help="Expiry: an ISO 8601 time (UTC if no offset) or a duration: 12h, 30d."),
]
TagOption = Annotated[
    list[str] | None,
    typer.Option("--tag", help="KEY=VALUE metadata for the ledger, e.g. segment=enterprise."),
]

_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _expiry(value: str) -> datetime:
    unit, amount = value[-1:], value[:-1]
    if unit in _UNITS and amount.replace(".", "", 1).isdigit() and float(amount) > 0:
        return datetime.now(UTC) + timedelta(seconds=float(amount) * _UNITS[unit])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"--expires {value!r}: use an ISO 8601 time or a duration (12h, 30d)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _tags(values: Sequence[str]) -> dict[str, str]:
    tags = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise fail(f"--tag {item!r}: use KEY=VALUE")
        tags[name] = value
    return tags


def _validated(model_name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The admin API's own request models, so both front doors accept exactly the same."""
    from pydantic import ValidationError

    from gateway.keys import models as key_models

    model = getattr(key_models, model_name)
    try:
        parsed = model.model_validate(fields)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in error["loc"])
            typer.echo(f"error: {where.replace('_', '-')}: {error['msg']}", err=True)
        raise typer.Exit(1) from None
    return {name: getattr(parsed, name) for name in parsed.model_fields_set}


class _CliNotifier:
    """Announces changes through Redis when FAREBOX_REDIS_URL is set; never fails the
    command over it (the change is committed, and the replicas' poll will see it)."""

    def __init__(self, redis_url: str | None) -> None:
        from gateway.keys.sync import Publisher

        self._publisher = Publisher(redis_url) if redis_url else None

    async def connect(self) -> None:
        if self._publisher is not None:
            await self._publisher.connect()

    async def key_changed(self, key_id: str, hashes: Sequence[str]) -> None:
        if self._publisher is None:
            return
        from gateway.runtime.redis_health import REDIS_ERRORS

        try:
            await self._publisher.key_changed(key_id, hashes)
        except REDIS_ERRORS:  # Redis away or too slow: say what happens instead
            typer.echo(
                "warning: Redis unreachable; replicas pick the change up within ~1 s by "
                "polling the database",
                err=True,
            )

    async def close(self) -> None:
        if self._publisher is not None:
            await self._publisher.close()


def _run(
    given: str | None,
    work: Callable[[KeyAdmin], Awaitable[_T]],
    *,
    changes: bool = False,
) -> _T:
    """Run `work` with a KeyAdmin on the key database; `changes`: announce them on Redis."""
    from gateway.keys.admin import KeyAdmin, KeyDatabaseError, KeyNotFound, KeyRevoked
    from gateway.ledger.keys_repository import KeysRepository
    from gateway.settings import Settings

    settings = Settings()
    url = database_url(given)

    async def api_keys_table(repository: KeysRepository) -> str | None:
        return None if await repository.ready() else "api_keys table"

    async def with_admin(repository: KeysRepository) -> _T:
        notifier = _CliNotifier(settings.redis_url if changes else None)
        try:
            await notifier.connect()
            return await work(KeyAdmin(repository, notifier, actor=f"cli:{user()}"))
        except KeyNotFound as exc:
            raise fail(f"no API key with id {exc}") from None
        except KeyRevoked as exc:
            raise fail(f"API key {exc} is revoked") from None
        except KeyDatabaseError as exc:
            raise fail(f"key database {shown_url(url)}: {exc}") from None
        finally:
            await notifier.close()

    # Other errors in `work` propagate, as before: KeyAdmin wraps the database's own.
    return run_database(
        url,
        "key database",
        KeysRepository.connect,
        api_keys_table,
        with_admin,
        database_error=lambda exc: False,
    )


def _print_key(key: VirtualKey, as_json: bool, secret: str | None = None) -> None:
    from gateway.keys.admin import key_view

    view = key_view(key)
    if secret is not None:
        view["secret"] = secret
    if as_json:
        typer.echo(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
        return
    width = max(len(k) for k in view)
    for name, value in view.items():
        if name in ("object", "secret"):
            continue
        shown = ", ".join(value) if isinstance(value, list) else value
        if isinstance(value, dict):
            shown = ", ".join(f"{k}={v}" for k, v in value.items())
        typer.echo(f"{name:<{width}}  {'-' if shown in (None, '') else shown}")
    if secret is not None:
        typer.echo(f"\nsecret: {secret}\nStore it now: it is not shown again.")


def _fields(
    team: str | None,
    route: list[str] | None,
    rpm: int | None,
    tpm: int | None,
    max_concurrency: int | None,
    budget_usd: str | None,
    soft_budget_ratio: float | None,
    expires: str | None,
    tag: list[str] | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "team": team,
        "routes": route or None,
        "rpm": rpm,
        "tpm": tpm,
        "max_concurrency": max_concurrency,
        "budget_usd": budget_usd,
        "soft_budget_ratio": soft_budget_ratio,
        "expires_at": _expiry(expires) if expires is not None else None,
        "tags": _tags(tag) if tag else None,
    }
    return {k: v for k, v in fields.items() if v is not None}


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A label for people (need not be unique).")],
    team: TeamOption = None,
    route: RouteOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrency: ConcurrencyOption = None,
    budget_usd: BudgetOption = None,
    soft_budget_ratio: SoftOption = None,
    expires: ExpiresOption = None,
    tag: TagOption = None,
    as_json: JsonOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """Create a key and print its secret (once)."""
    fields = _fields(
        team, route, rpm, tpm, max_concurrency, budget_usd, soft_budget_ratio, expires, tag
    )
    fields = _validated("KeyCreate", {"name": name, **fields})
    expires_at = fields.get("expires_at")
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise fail("--expires is in the past")
    key, secret = _run(database_url, lambda admin: admin.create(fields, client()), changes=True)
    _print_key(key, as_json, secret)


@keys_app.command("list")
def list_keys(
    active: Annotated[bool, typer.Option(help="Only keys that are not revoked.")] = False,
    as_json: JsonOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """Every key: id, name, team, prefix, status and limits (never a secret)."""
    from gateway.keys.admin import key_view

    keys = _run(database_url, lambda admin: admin.all(include_revoked=not active))
    views = [key_view(k) for k in keys]
    if as_json:
        typer.echo(orjson.dumps(views, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "team", "prefix", "status", "routes", "rpm", "tpm", "budget $")
    for v in views:
        table.add_row(
            v["id"],
            v["name"],
            v["team"] or "-",
            v["key_prefix"] + "…",
            v["status"],
            ", ".join(v["routes"]) if v["routes"] is not None else "all",
            _cell(v["rpm"]),
            _cell(v["tpm"]),
            _cell(v["budget_usd"]),
        )
    Console(width=160).print(table)
    if not views:
        typer.echo("no keys yet: `farebox keys create NAME`")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


@keys_app.command("show")
def show(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    as_json: JsonOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """One key's settings."""
    _print_key(_run(database_url, lambda admin: admin.get(key_id)), as_json)


@keys_app.command("update")
def update(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    name: Annotated[str | None, typer.Option(help="New label.")] = None,
    team: TeamOption = None,
    route: RouteOption = None,
    all_routes: Annotated[bool, typer.Option(help="Allow every route again.")] = False,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrency: ConcurrencyOption = None,
    budget_usd: BudgetOption = None,
    soft_budget_ratio: SoftOption = None,
    expires: ExpiresOption = None,
    no_expiry: Annotated[bool, typer.Option(help="Remove the expiry.")] = False,
    tag: TagOption = None,
    as_json: JsonOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """Change a key's limits, budget, routes, tags or expiry (every replica within ~1 s)."""
    changes = _fields(
        team, route, rpm, tpm, max_concurrency, budget_usd, soft_budget_ratio, expires, tag
    )
    if name is not None:
        changes["name"] = name
    if all_routes:
        changes["routes"] = None
    if no_expiry:
        changes["expires_at"] = None
    if not changes:
        raise fail("nothing to change: give at least one option")
    changes = _validated("KeyUpdate", changes)
    key = _run(database_url, lambda admin: admin.update(key_id, changes, client()), changes=True)
    _print_key(key, as_json)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    as_json: JsonOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """Revoke a key: every replica refuses it within about a second. Cannot be undone."""
    key = _run(database_url, lambda admin: admin.revoke(key_id, client()), changes=True)
    if as_json:
        _print_key(key, True)
    else:
        typer.echo(f"revoked {key.id} ({key.name})")


@keys_app.command("rotate")
def rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    as_json: JsonOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """New secret, same key (limits and budget kept); the old secret stops working at once."""
    key, secret = _run(database_url, lambda admin: admin.rotate(key_id, client()), changes=True)
    _print_key(key, as_json, secret)


@keys_app.command("audit")
def audit(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many rows.")] = 50,
    as_json: JsonOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """Recent admin actions (API and CLI), newest first."""
    from gateway.keys.admin import audit_view

    rows = [audit_view(e) for e in _run(database_url, lambda admin: admin.recent_audit(limit))]
    if as_json:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    for row in rows:
        typer.echo(
            f"{row['at']}  {row['actor']:<20} {row['action']:<12} {row['target'] or '-'}"
            f"  {row['client'] or '-'}"
        )
