"""Plumbing shared by `farebox reconcile` (cli/reconcile.py) and `farebox lcpr`
(cli/lcpr.py): the config with its price book, the month option, and the ledger runner.

Exit codes: 0 within thresholds, 3 flagged (reconcile), 1 for a bad file / config / database
(with a message naming what and where, never a traceback), 2 for bad options.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from gateway.cli.common import exit_with_issues, run_database

if TYPE_CHECKING:
    from gateway.config.schema import GatewayConfig
    from gateway.ledger.pricing import PriceBook
    from gateway.reports.store import ReportStore

_T = TypeVar("_T")

DatabaseOption = Annotated[
    str | None, typer.Option(help="Ledger database (default: $FAREBOX_DATABASE_URL).")
]


def config_and_prices(config: Path | None, prices: Path | None) -> tuple[GatewayConfig, PriceBook]:
    from gateway.config.loading import load_config
    from gateway.ledger.pricing import load_price_book
    from gateway.runtime.yaml_loader import ConfigError
    from gateway.settings import Settings

    settings = Settings()
    try:
        loaded = load_config(config or Path(settings.config))
        # Without --prices, a default path that is not there (run from another directory)
        # falls back to config/prices.yaml of the source tree, as the gateway does.
        path = prices or Path(settings.prices_file)
        book = load_price_book(loaded, path if prices or path.is_file() else None)
    except ConfigError as exc:
        raise exit_with_issues(exc.issues) from None
    return loaded, book


def month_of(value: str | None) -> str:
    """--month checked (YYYY-MM), this month (UTC) by default."""
    from gateway.reports.reconcile import month_window

    month = value or datetime.now(UTC).strftime("%Y-%m")
    try:
        month_window(month)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--month") from None
    return month


def pct(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} %"


def run_ledger(url: str, work: Callable[[ReportStore], Awaitable[_T]]) -> _T:
    """Run `work(store)` against the ledger; database problems are one line and exit 1."""
    from gateway.reports.store import ReportStore

    async def ledger_tables(store: ReportStore) -> str | None:
        missing = await store.missing_tables()
        return f"table(s) {', '.join(missing)}" if missing else None

    return run_database(url, "ledger database", ReportStore.create, ledger_tables, work)
