"""How report figures are written: percentages, dollars and token counts."""

from __future__ import annotations

from decimal import Decimal


def pct(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} %"


def usd(value: Decimal | None) -> str:
    return "n/a" if value is None else f"${value:,.4f}"


def tokens(value: Decimal | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value == value.to_integral_value() else f"{value:,.2f}"
