"""Plumbing shared by the `farebox` command groups: the error line and its exit code, the
common options, config loading, and the database runner that turns every connection or
schema problem into one clear line instead of a traceback."""

from __future__ import annotations

import asyncio
import getpass
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

import orjson
import typer

if TYPE_CHECKING:
    from gateway.config.schema import GatewayConfig
    from gateway.runtime.yaml_loader import ConfigIssue

_T = TypeVar("_T")

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DatabaseOption = Annotated[
    str | None, typer.Option("--database-url", help="Default: $FAREBOX_DATABASE_URL.")
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Routing YAML (default: $FAREBOX_CONFIG)."),
]
PricesOption = Annotated[
    Path | None, typer.Option("--prices", help="prices.yaml (default: $FAREBOX_PRICES_FILE).")
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` and return the Exit to raise (exit 1 unless told)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def reason(exc: BaseException) -> str:
    """The exception's class and first line: enough to act on, without a traceback."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def user() -> str:
    """Who runs the command, for audit rows (`cli:<user>`)."""
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers): still say who, roughly
        return "unknown"


def client() -> str:
    return socket.gethostname()


def dump(data: Any) -> None:
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def exit_with_issues(issues: Sequence[ConfigIssue]) -> typer.Exit:
    for issue in issues:
        typer.echo(f"error: {issue}", err=True)
    return typer.Exit(1)


def load_config_or_exit(path: Path) -> GatewayConfig:
    """The config at `path`, or each of its problems on stderr and exit 1."""
    from gateway.config.loading import load_config
    from gateway.runtime.yaml_loader import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        raise exit_with_issues(exc.issues) from None


def database_url(given: str | None) -> str:
    from gateway.settings import Settings

    return given or Settings().database_url


def shown_url(url: str) -> str:
    """The URL without its password, for messages; exit 1 if it is not a URL at all."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise fail("the database URL is not a valid SQLAlchemy URL") from None


def from_driver(exc: BaseException) -> bool:
    """Whether `exc` came from the database or the network under it."""
    if isinstance(exc, OSError | ConnectionError):
        return True
    return type(exc).__module__.startswith(("sqlalchemy", "asyncpg", "aiosqlite", "sqlite3"))


class Closeable(Protocol):
    async def close(self) -> None: ...


_R = TypeVar("_R", bound=Closeable)


def run_database(
    url: str,
    what: str,
    connect: Callable[[str], _R],
    lacking: Callable[[_R], Awaitable[str | None]],
    work: Callable[[_R], Awaitable[_T]],
    *,
    database_error: Callable[[BaseException], bool] = from_driver,
) -> _T:
    """Open `connect(url)`, check its schema, run `work` on it and close it.

    `what` names the database in messages ("drill database"); `lacking` returns what a
    migration would add (e.g. "drills table"), or None when the schema is there. Errors in
    `work` for which `database_error` holds become `error: <what> <url>: <reason>`, exit 1.
    """
    shown = shown_url(url)

    async def main() -> _T:
        try:
            db = connect(url)
        except Exception as exc:  # unknown driver, bad URL options
            raise fail(f"cannot use the database {shown}: {reason(exc)}") from None
        try:
            try:
                missing = await asyncio.wait_for(lacking(db), 10)
            except Exception as exc:  # any driver or network error: say which database
                raise fail(f"cannot reach the {what} {shown}: {reason(exc)}") from None
            if missing:
                raise fail(f"{shown} has no {missing}: run `farebox migrate` first")
            try:
                return await work(db)
            except typer.Exit:
                raise
            except Exception as exc:  # re-raised unless database_error() says so
                if not database_error(exc):
                    raise
                raise fail(f"{what} {shown}: {reason(exc)}") from None  # went away mid-command
        finally:
            await db.close()

    return asyncio.run(main())
