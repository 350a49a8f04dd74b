"""The LCPR report as files (`farebox lcpr --out DIR`): Markdown, self-contained HTML and CSV
of the segments, dedicated GPUs, the batch tier (batch-eligible share per workload and
dedicated utilization before/after batch fill), consensus routes, guardrail hits and red
flags."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from gateway.ledger.success import DEFINITION
from gateway.reports import batch_share, consensus, guard_hits
from gateway.reports.lcpr import LcprReport, report_dict
from gateway.reports.render import _CSS, _flags_html, _table

_SEGMENT_HEADER = (
    "segment",
    "requests",
    "successful",
    "tokens $",
    "dedicated $",
    "repair $",
    "engineering $",
    "LCPR $",
    "overhead",
    "retry",
    "gate pass",
    "fallback",
)
_DEDICATED_HEADER = ("dedicated", "paid hours", "hours from", "hourly $", "paid $", "utilization")


def _rate(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _usd(value: Decimal | None, places: int = 4) -> str:
    return "n/a" if value is None else f"${value:,.{places}f}"


def _segment_rows(r: LcprReport) -> list[list[str]]:
    return [
        [
            s.segment,
            f"{s.requests:,}",
            f"{s.successful:,}",
            _usd(s.token_cost_usd),
            _usd(s.dedicated_cost_usd),
            _usd(s.repair_cost_usd),
            _usd(s.engineering_cost_usd),
            _usd(s.lcpr, 6),
            "n/a" if s.overhead_ratio is None else f"{s.overhead_ratio:.2f}×",
            _rate(s.retry_rate),
            _rate(s.gate_pass_rate),
            _rate(s.fallback_share),
        ]
        for s in r.segments
    ]


def _dedicated_rows(r: LcprReport) -> list[list[str]]:
    return [
        [
            d.provider,
            f"{d.paid_hours:,.1f}",
            d.hours_from,
            _usd(d.hourly_usd),
            _usd(d.cost_usd, 2),
            _rate(d.utilization),
        ]
        for d in r.dedicated
    ]


def _headline(r: LcprReport) -> str:
    total = r.total_lcpr
    return (
        f"LCPR {'n/a (no successful requests)' if total is None else _usd(total, 6)} · loaded "
        f"{_usd(r.total_loaded_usd)} over {r.total_successful:,} successful requests "
        f"({r.total_requests:,} requests) · by {r.by}"
    )


def _batch_tables(r: LcprReport) -> list[tuple[str, Sequence[str], list[list[str]]]]:
    """(title, header, rows) of the batch tier's two tables (none when it has no rows)."""
    b = r.batch
    if b is None:
        return []
    out: list[tuple[str, Sequence[str], list[list[str]]]] = []
    if b.workloads:
        rows = [batch_share.workload_cells(x) for x in [*b.workloads, b.total]]
        out.append(("Batch-eligible share", batch_share.WORKLOAD_HEADER, rows))
    if b.dedicated:
        rows = [batch_share.fill_cells(f) for f in b.dedicated]
        out.append(("Dedicated utilization before/after batch fill", batch_share.FILL_HEADER, rows))
    return out


# --- Markdown ----------------------------------------------------------------------------


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    align = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    return ["| " + " | ".join(header) + " |", align] + ["| " + " | ".join(x) + " |" for x in rows]


def markdown(r: LcprReport) -> str:
    out = [f"# Loaded cost per successful request — {r.month}", "", f"**{_headline(r)}**", ""]
    out += ["## Segments", "", *_md_table(_SEGMENT_HEADER, _segment_rows(r)), "", DEFINITION]
    if r.dedicated:
        out += ["", "## Dedicated GPUs", "", *_md_table(_DEDICATED_HEADER, _dedicated_rows(r))]
    tables = _batch_tables(r)
    if tables and r.batch is not None:
        out += ["", "## Batch tier", "", batch_share.DEFINITION, ""]
        out += [f"Batch rate: {r.batch.batch_rate}."]
        for title, header, rows in tables:
            out += ["", f"### {title}", "", *_md_table(header, rows)]
    if r.consensus:
        out += ["", consensus.markdown_section(r.consensus).rstrip("\n")]
    if r.guard:
        out += ["", guard_hits.markdown_section(r.guard).rstrip("\n")]
    out += ["", "## Red flags", ""]
    out += [f"- `{f.code}` {f.subject}: {f.message}" for f in r.red_flags] or ["None."]
    if r.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    out += ["", f"Computed in {r.elapsed_s:.2f} s", ""]
    return "\n".join(out)


# --- HTML --------------------------------------------------------------------------------


def html_report(r: LcprReport) -> str:
    def esc(value: object) -> str:
        return html.escape(str(value), quote=True)

    def table(header: Sequence[str], rows: list[list[str]]) -> str:
        return _table(header, rows, [False] * len(rows))

    parts = [
        f"<h1>Loaded cost per successful request — {esc(r.month)}</h1>",
        f'<p class="muted">{esc(_headline(r))}</p>',
        "<h2>Segments</h2>",
        table(_SEGMENT_HEADER, _segment_rows(r)),
        f'<p class="muted">{esc(DEFINITION)}</p>',
    ]
    if r.dedicated:
        parts += ["<h2>Dedicated GPUs</h2>", table(_DEDICATED_HEADER, _dedicated_rows(r))]
    tables = _batch_tables(r)
    if tables and r.batch is not None:
        parts += [
            "<h2>Batch tier</h2>",
            f'<p class="muted">{esc(batch_share.DEFINITION)} Batch rate: '
            f"{esc(r.batch.batch_rate)}.</p>",
        ]
        for title, header, rows in tables:
            parts += [f"<h3>{esc(title)}</h3>", table(header, rows)]
    parts += [consensus.html_section(r.consensus), guard_hits.html_section(r.guard)]
    parts += ["<h2>Red flags</h2>", _flags_html(r.red_flags)]
    if r.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in r.notes))
        parts.append("</ul>")
    body = "\n".join(parts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Farebox LCPR {esc(r.month)}</title><style>{_CSS}</style></head>
<body>
{body}
<p class="muted">Computed in {r.elapsed_s:.2f} s</p>
</body></html>
"""


# --- CSV ---------------------------------------------------------------------------------


def _csv(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return buf.getvalue()


def csv_text(r: LcprReport) -> str:
    """One row per segment, plain numbers (the --json figures)."""
    segments = report_dict(r)["segments"]
    header = list(segments[0]) if segments else ["segment"]
    return _csv(header, [[s[k] for k in header] for s in segments])


def batch_csv(r: LcprReport) -> str:
    """The batch tier, one row per workload (kind `workload`, the `(all)` total last) and
    per dedicated provider (kind `dedicated_fill`)."""
    b = r.batch
    if b is None:
        return ""
    d = batch_share.report_dict(b)
    w_cols = list(d["total"])
    f_cols = list(d["dedicated_fill"][0]) if d["dedicated_fill"] else []
    header = ["kind", *w_cols, *f_cols]
    rows: list[list[object]] = [
        ["workload", *(w[c] for c in w_cols), *([None] * len(f_cols))]
        for w in [*d["workloads"], d["total"]]
    ]
    rows += [
        ["dedicated_fill", *([None] * len(w_cols)), *(f[c] for c in f_cols)]
        for f in d["dedicated_fill"]
    ]
    return _csv(header, rows)


def write_reports(r: LcprReport, out: Path) -> list[Path]:
    """lcpr.md, lcpr.html, lcpr.csv (segments) and, when the batch tier has rows,
    batch_share.csv; consensus.csv where consensus routes ran."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"lcpr.md": markdown(r), "lcpr.html": html_report(r), "lcpr.csv": csv_text(r)}
    if r.batch is not None and (r.batch.workloads or r.batch.dedicated):
        files["batch_share.csv"] = batch_csv(r)
    if r.consensus:
        files["consensus.csv"] = consensus.csv_text(r.consensus)
    paths = []
    for name, text in files.items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
