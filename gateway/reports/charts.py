"""The reconciliation report's inline SVG charts: daily metered vs invoiced tokens per
provider, and token variance per model against the threshold."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import date
from decimal import Decimal

from gateway.reports.formatting import pct, tokens
from routing.reconcile_rules import ModelVerdict

# Chart colours; tests count them in a screenshot, so nothing else on the page uses them
# (the status badges are darker shades) except the two small legend swatches.
METERED = "#2563eb"
INVOICED = "#f59e0b"
WITHIN = "#16a34a"
FLAGGED = "#dc2626"
_ZERO = Decimal(0)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def daily_chart(provider: str, series: Sequence[tuple[date, Decimal, Decimal | None]]) -> str:
    """Grouped bars per day: metered next to invoiced tokens."""
    width, height, pad_l, pad_b, pad_t = 760, 230, 70, 34, 14
    n = max(len(series), 1)
    peak = max([m for _, m, _ in series] + [i or _ZERO for _, _, i in series] + [Decimal(1)])
    plot_w, plot_h = width - pad_l - 10, height - pad_b - pad_t
    slot = plot_w / n
    bar = max(min(slot * 0.38, 26), 2)
    parts = [
        f'<svg class="chart daily" data-provider="{_esc(provider)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" '
        f'role="img" aria-label="daily metered vs invoiced tokens, {_esc(provider)}">',
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 10}" y2="{pad_t + plot_h}" '
        'stroke="#999"/>',
    ]
    for k in range(5):
        tick = peak * k / 4
        y = pad_t + plot_h - plot_h * k / 4
        parts.append(
            f'<text x="{pad_l - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end" '
            f'fill="#555">{_short(tick)}</text>'
            f'<line x1="{pad_l}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#eee"/>'
        )
    for idx, (day, metered, invoiced) in enumerate(series):
        x = pad_l + slot * idx + slot / 2
        for offset, value, colour, side in (
            (-bar, metered, METERED, "metered"),
            (0.0, invoiced, INVOICED, "invoiced"),
        ):
            if value is None:
                continue
            h = float(value / peak) * plot_h
            parts.append(
                f'<rect class="bar {side}" x="{x + offset:.1f}" y="{pad_t + plot_h - h:.1f}" '
                f'width="{bar:.1f}" height="{max(h, 0.5):.1f}" fill="{colour}">'
                f"<title>{day} {side}: {tokens(value)}</title></rect>"
            )
        if n <= 16 or idx % max(n // 12, 1) == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{height - 14}" font-size="10" text-anchor="middle" '
                f'fill="#555">{day:%m-%d}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def variance_chart(verdicts: Sequence[ModelVerdict], limit: Decimal) -> str:
    """Horizontal bars of token variance per model around zero, threshold lines dashed."""
    rows = [v for v in verdicts if v.token_variance_pct is not None]
    width, row_h, pad_l, pad_t = 760, 26, 300, 24
    height = pad_t + row_h * max(len(rows), 1) + 24
    span = max([abs(v.token_variance_pct or _ZERO) for v in rows] + [limit * 2, Decimal(1)])
    plot_w = width - pad_l - 20
    zero = pad_l + plot_w / 2

    def x_of(value: Decimal) -> float:
        return zero + float(value / span) * plot_w / 2

    parts = [
        f'<svg class="chart variance" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" role="img" '
        'aria-label="token variance by model">',
        f'<line x1="{zero:.1f}" y1="{pad_t - 8}" x2="{zero:.1f}" y2="{height - 20}" '
        'stroke="#333"/>',
    ]
    for sign in (-1, 1):
        x = x_of(limit * sign)
        parts.append(
            f'<line x1="{x:.1f}" y1="{pad_t - 8}" x2="{x:.1f}" y2="{height - 20}" '
            'stroke="#999" stroke-dasharray="4 3"/>'
            f'<text x="{x:.1f}" y="{pad_t - 12}" font-size="10" text-anchor="middle" '
            f'fill="#555">{limit * sign:+.0f} %</text>'
        )
    for idx, v in enumerate(rows):
        value = v.token_variance_pct or _ZERO
        y = pad_t + idx * row_h
        x0, x1 = sorted((zero, x_of(value)))
        colour = FLAGGED if v.flagged else WITHIN
        parts.append(
            f'<text x="{pad_l - 8}" y="{y + row_h / 2 + 4:.1f}" font-size="11" '
            f'text-anchor="end">{_esc(v.provider)} · {_esc(_clip(v.model, 34))}</text>'
            f'<rect class="bar {"flagged" if v.flagged else "within"}" x="{x0:.1f}" '
            f'y="{y + 4}" width="{max(x1 - x0, 2):.1f}" height="{row_h - 8}" fill="{colour}">'
            f"<title>{_esc(v.model)}: {pct(value)}</title></rect>"
            f'<text x="{max(x1, zero) + 4:.1f}" y="{y + row_h / 2 + 4:.1f}" font-size="10" '
            f'fill="#333">{pct(value)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _short(value: Decimal) -> str:
    v = float(value)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.1f}{unit}"
    return f"{v:.0f}"
