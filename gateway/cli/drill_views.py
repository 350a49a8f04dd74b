"""How `farebox drill status|stop|report` print drills, their progress and verdicts."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import typer


def when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def num(value: Any, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


def errors(errors: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted((errors or {}).items())) or "none"


def print_overview(data: Mapping[str, Any]) -> None:
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
                short_time(d["ends_at"]),
                str(p["attempts"]),
                pct(p["success_rate"]),
                errors(p["errors"]),
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
                short_time(v["finished_at"]),
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
                short_time(s["last_started"]) if s["last_started"] else "never",
            )
        console.print(table)


def short_time(iso: str | None) -> str:
    if not iso:
        return "-"
    return when(datetime.fromisoformat(iso))


def print_drill(data: Mapping[str, Any]) -> None:
    outage = " (primary treated as down)" if data["simulate_outage"] else ""
    lines = [
        ("drill", data["id"]),
        ("route", data["route"]),
        ("to", data["target"] + outage),
        ("percent", f"{data['percent']:g}"),
        ("status", data["status"] + (f" — {data['result']}" if data["result"] else "")),
        ("started", short_time(data["started_at"])),
        ("ends", short_time(data["ends_at"])),
        ("finished", short_time(data["finished_at"])),
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
            ("success", pct(progress["success_rate"])),
            ("p95 ms", num(progress["p95_ms"])),
            ("errors", errors(progress["errors"])),
        ]
    width = max(len(k) for k, _ in lines)
    for name, value in lines:
        typer.echo(f"{name:<{width}}  {value}")
    if data.get("verdict"):
        typer.echo("")
        print_verdict(data["verdict"])


def print_verdict(verdict: Mapping[str, Any]) -> None:
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
    table.add_row("latency p50 ms", num(d.get("p50_ms")), num(p.get("p50_ms")))
    table.add_row("latency p95 ms", num(d.get("p95_ms")), num(p.get("p95_ms")))
    table.add_row(
        "cost per success USD",
        num(d.get("cost_per_success"), "{:.6f}"),
        num(p.get("cost_per_success"), "{:.6f}"),
    )
    table.add_row(
        "gate pass rate",
        rate(d, "gate_passed", "gate_checked"),
        rate(p, "gate_passed", "gate_checked"),
    )
    table.add_row("errors", errors(d.get("errors")), errors(p.get("errors")))
    Console(width=160).print(table)
    typer.echo(
        f"schema conformance: {pct(verdict.get('conformance'))} of "
        f"{verdict.get('conformance_checked', 0)} answers checked; "
        f"p95 latency ratio: {num(verdict.get('latency_ratio_p95'), '{:.2f}')}; "
        f"cost delta per request: {num(verdict.get('cost_delta_per_request'), '{:+.6f}')} USD"
    )
    reasons = verdict.get("reasons") or []
    if reasons:
        typer.echo("why it failed:")
        for reason in reasons:
            typer.echo(f"  - {reason}")
