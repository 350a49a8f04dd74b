"""Reconciliation and LCPR reports as Markdown, self-contained HTML (inline SVG charts, no
scripts, no external resources: it opens from a mail attachment) and CSV."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from gateway.ledger.success import DEFINITION
from gateway.reports import consensus
from gateway.reports.charts import FLAGGED as FLAGGED
from gateway.reports.charts import INVOICED as INVOICED
from gateway.reports.charts import METERED as METERED
from gateway.reports.charts import WITHIN as WITHIN
from gateway.reports.charts import daily_chart, variance_chart
from gateway.reports.formatting import pct, tokens, usd
from gateway.reports.reconcile import ReconcileResult
from routing.reconcile_rules import ModelVerdict
from routing.red_flags import RedFlag

_ZERO = Decimal(0)

CSV_COLUMNS = (
    "provider",
    "model",
    "day",
    "token_type",
    "metered_tokens",
    "invoiced_tokens",
    "token_variance_pct",
    "metered_usd",
    "invoiced_usd",
    "cost_variance_pct",
    "over_threshold",
    "model_flagged",
    "causes",
)


def _status(v: ModelVerdict) -> str:
    if not v.flagged:
        return "ok"
    parts = [p for p, on in (("tokens", v.token_flag), ("cost", v.cost_flag)) if on]
    return "FLAGGED" + (f" ({', '.join(parts)})" if parts else "")


# --- Markdown ----------------------------------------------------------------------------


def markdown(r: ReconcileResult) -> str:
    t = r.thresholds
    out = [
        f"# Metering reconciliation — {r.month}",
        "",
        f"**{'Within thresholds' if r.ok else 'FLAGGED'}** · token variance "
        f"{pct(r.token_variance_pct)} · cost variance {pct(r.cost_variance_pct)} · metered "
        f"{usd(r.metered_usd)} · invoiced {usd(r.invoiced_usd)}",
        "",
        *(
            [
                f"Dollars compare where the invoice has them; {usd(r.metered_unbilled_usd)} "
                "more was metered where the export carries no dollars (tokens still compared).",
                "",
            ]
            if r.metered_unbilled_usd
            else []
        ),
        f"Window {r.start:%Y-%m-%d} – {r.end:%Y-%m-%d} UTC (end exclusive). Flags: token "
        f"variance > {t.token_pct} %, cost variance > {t.cost_pct} %. Variance = (invoiced − "
        "metered) / metered.",
        "",
        "## By provider and model",
        "",
        "| provider | model | status | token variance | cost variance | metered $ | invoiced $ |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for v in r.verdicts:
        out.append(
            f"| {v.provider} | {v.model} | {_status(v)} | {pct(v.token_variance_pct)} | "
            f"{pct(v.cost_variance_pct)} | {usd(v.metered_usd)} | {usd(v.invoiced_usd)} |"
        )
    causes = [(v, c) for v in r.verdicts for c in v.causes]
    out += ["", "## Likely causes", ""]
    out += [f"- **{v.provider} {v.model}** — `{c.code}`: {c.message}" for v, c in causes] or [
        "None found."
    ]
    out += ["", "## Red flags", ""]
    out += [f"- `{f.code}` {f.subject}: {f.message}" for f in r.red_flags] or ["None."]
    out += ["", "## Requests", "", _requests_line(r), "", DEFINITION, ""]
    out += [
        "| answered by | requests | successful | success rate |",
        "|---|---:|---:|---:|",
    ]
    out += [f"| {' | '.join(row)} |" for row in _answered_rows(r)]
    out += ["", "## Token types", ""]
    out += [
        "| provider | model | token type | metered | invoiced | variance |",
        "|---|---|---|---:|---:|---:|",
    ]
    for v in r.verdicts:
        for tt, var in v.type_variance_pct.items():
            out.append(
                f"| {v.provider} | {v.model} | {tt} | {tokens(v.metered_tokens.get(tt))} | "
                f"{tokens(v.invoiced_tokens.get(tt))} | {pct(var)} |"
            )
    flagged = {(v.provider, v.model) for v in r.verdicts if v.flagged}
    if flagged:
        out += [
            "",
            "## Daily detail of flagged models",
            "",
            "| provider | model | day | token type | metered | invoiced | variance |",
            "|---|---|---|---|---:|---:|---:|",
        ]
        for c in r.cells:
            if (c.provider, c.model) in flagged:
                out.append(
                    f"| {c.provider} | {c.model} | {c.day} | {c.token_type} | "
                    f"{tokens(c.metered_tokens)} | {tokens(c.invoiced_tokens)} | "
                    f"{pct(c.token_variance_pct)} |"
                )
    if r.spend_by_role:
        out += [
            "",
            "## Metered spend by attempt role",
            "",
            "| provider | role | attempts | metered $ | share |",
            "|---|---|---:|---:|---:|",
        ]
        out += [
            f"| {p} | {role} | {n:,} | {usd(v)} | {share} |"
            for p, role, n, v, share in _role_rows(r)
        ]
    if r.consensus:
        out += ["", consensus.markdown_section(r.consensus).rstrip("\n")]
    if r.unreconciled:
        out += ["", "## Metered but not reconciled (no invoice given)", ""]
        out += [f"- {p}: {usd(v)}" for p, v in sorted(r.unreconciled.items())]
    if r.non_token_usd:
        out += ["", f"Non-token charges on the invoices (tools, storage): {usd(r.non_token_usd)}"]
    out += ["", "## Inputs", ""]
    out += [
        f"- {f.provider}: `{f.source_file}` ({f.format}, {len(f.lines):,} lines, import "
        f"{f.import_id[:12]})"
        for f in r.imports
    ]
    if r.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    out += ["", f"Run {r.run_id} · computed in {r.elapsed_s:.2f} s", ""]
    return "\n".join(out)


def _requests_line(r: ReconcileResult) -> str:
    return (
        f"{r.requests:,} requests received in {r.month} (all providers), "
        f"{r.successful:,} successful."
    )


def _answered_rows(r: ReconcileResult) -> list[list[str]]:
    """Requests per deployment whose answer the client got (none: every attempt failed or
    the request was refused before any)."""
    return [
        [
            a.deployment or "(none)",
            f"{a.requests:,}",
            f"{a.successful:,}",
            f"{a.successful / a.requests * 100:.1f} %" if a.requests else "-",
        ]
        for a in r.answered
    ]


def _role_rows(r: ReconcileResult) -> list[tuple[str, str, int, Decimal, str]]:
    """Spend by role with each role's share of its provider's metered dollars."""
    totals: dict[str, Decimal] = {}
    for p, _, _, v in r.spend_by_role:
        totals[p] = totals.get(p, _ZERO) + v
    return [
        (p, role, n, v, f"{v / totals[p] * 100:.1f} %" if totals[p] else "-")
        for p, role, n, v in r.spend_by_role
    ]


# --- CSV ---------------------------------------------------------------------------------


def csv_text(r: ReconcileResult) -> str:
    verdicts = {(v.provider, v.model): v for v in r.verdicts}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    t = r.thresholds
    for c in r.cells:
        v = verdicts.get((c.provider, c.model))
        tv, cv = c.token_variance_pct, c.cost_variance_pct
        over = (
            (tv is None and c.invoiced_tokens not in (None, _ZERO))
            or (tv is not None and abs(tv) > t.token_pct)
            or (cv is not None and abs(cv) > t.cost_pct)
        )
        writer.writerow(
            [
                c.provider,
                c.model,
                c.day.isoformat(),
                c.token_type,
                _plain(c.metered_tokens),
                _plain(c.invoiced_tokens),
                _plain(tv, 4),
                _plain(c.metered_usd, 10),
                _plain(c.invoiced_usd, 10),
                _plain(cv, 4),
                "yes" if over else "no",
                "yes" if v is not None and v.flagged else "no",
                ";".join(x.code for x in v.causes) if v is not None else "",
            ]
        )
    return buf.getvalue()


def _plain(value: Decimal | None, places: int | None = None) -> str:
    if value is None:
        return ""
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places))
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


# --- HTML --------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#111}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.ok{background:#15803d}.bad{background:#b91c1c}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:4px 8px}
th{background:#f4f4f5;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.flag td{background:#fef2f2}.muted{color:#666}svg{display:block;margin:6px 0 16px}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:-1px}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], flags: Sequence[bool]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row, flag in zip(rows, flags, strict=True):
        # Figures right-aligned, names left.
        cells = "".join(
            f'<td class="n">{_esc(c)}</td>'
            if c[:1] in "+-$0123456789" or c == "n/a"
            else f"<td>{_esc(c)}</td>"
            for c in row
        )
        body.append(f"<tr{' class=flag' if flag else ''}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _flags_html(flags: Sequence[RedFlag]) -> str:
    if not flags:
        return "<p>None.</p>"
    items = "".join(
        f"<li><code>{_esc(f.code)}</code> <b>{_esc(f.subject)}</b>: {_esc(f.message)}</li>"
        for f in flags
    )
    return f"<ul>{items}</ul>"


def html_report(r: ReconcileResult) -> str:
    status = (
        '<span class="badge ok">within thresholds</span>'
        if r.ok
        else ('<span class="badge bad">flagged</span>')
    )
    charts = "".join(f"<h3>{_esc(p)}</h3>{daily_chart(p, s)}" for p, s in r.daily().items())
    legend = (
        f'<p class="legend"><span style="background:{METERED}"></span>metered (ledger)'
        f'<span style="background:{INVOICED}"></span>invoiced</p>'
    )
    model_rows = [
        [
            v.provider,
            v.model,
            _status(v),
            pct(v.token_variance_pct),
            pct(v.cost_variance_pct),
            usd(v.metered_usd),
            usd(v.invoiced_usd),
        ]
        for v in r.verdicts
    ]
    causes = (
        "".join(
            f"<li><b>{_esc(v.provider)} {_esc(v.model)}</b> — <code>{_esc(c.code)}</code>: "
            f"{_esc(c.message)}</li>"
            for v in r.verdicts
            for c in v.causes
        )
        or "<li>None found.</li>"
    )
    files = "".join(
        f"<li>{_esc(f.provider)}: <code>{_esc(f.source_file)}</code> ({_esc(f.format)}, "
        f"{len(f.lines):,} lines)</li>"
        for f in r.imports
    )
    notes = "".join(f"<li>{_esc(n)}</li>" for n in r.notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Farebox reconciliation {_esc(r.month)}</title><style>{_CSS}</style></head>
<body>
<h1>Metering reconciliation — {_esc(r.month)} {status}</h1>
<p class="muted">Token variance <b>{pct(r.token_variance_pct)}</b> · cost variance
<b>{pct(r.cost_variance_pct)}</b> · metered {usd(r.metered_usd)} · invoiced
{usd(r.invoiced_usd)} · thresholds {r.thresholds.token_pct} % tokens,
{r.thresholds.cost_pct} % cost · variance = (invoiced − metered) / metered{
        f" · {usd(r.metered_unbilled_usd)} more metered where the export has no dollars"
        if r.metered_unbilled_usd
        else ""
    }</p>
<h2>Daily metered vs invoiced tokens</h2>{legend}{charts}
<h2>Token variance by model</h2>{variance_chart(r.verdicts, r.thresholds.token_pct)}
<h2>By provider and model</h2>
{
        _table(
            ["provider", "model", "status", "token var.", "cost var.", "metered", "invoiced"],
            model_rows,
            [v.flagged for v in r.verdicts],
        )
    }
<h2>Likely causes</h2><ul>{causes}</ul>
<h2>Metered spend by attempt role</h2>
{
        _table(
            ["provider", "role", "attempts", "metered", "share"],
            [[p, role, f"{n:,}", usd(v), share] for p, role, n, v, share in _role_rows(r)],
            [False] * len(r.spend_by_role),
        )
    }
{consensus.html_section(r.consensus)}
<h2>Red flags</h2>{_flags_html(r.red_flags)}
<h2>Requests</h2><p>{_esc(_requests_line(r))} {_esc(DEFINITION)}</p>
{
        _table(
            ["answered by", "requests", "successful", "success rate"],
            _answered_rows(r),
            [False] * len(r.answered),
        )
    }
<h2>Inputs</h2><ul>{files}</ul>{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<p class="muted">Run {_esc(r.run_id)} · computed in {r.elapsed_s:.2f} s</p>
</body></html>
"""


def write_reports(r: ReconcileResult, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "reconciliation.md", out / "reconciliation.html", out / "reconciliation.csv"]
    texts = [markdown(r), html_report(r), csv_text(r)]
    if r.consensus:  # only where consensus routes ran
        paths.append(out / "consensus.csv")
        texts.append(consensus.csv_text(r.consensus))
    for path, text in zip(paths, texts, strict=True):
        path.write_text(text, encoding="utf-8")
    return paths
