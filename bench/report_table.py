"""The metrics x targets table of RESULTS.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LABEL = {
    "direct": "direct (no gateway)",
    "passthrough": "bare passthrough",
    "farebox-off": "Farebox (ledger off)",
    "farebox-pg": "Farebox (ledger → Postgres)",
    "farebox-sqlite": "Farebox (ledger → SQLite)",
    "farebox-prod": "Farebox production, 1 worker",
    "farebox-prod-2w": "Farebox production, 2 workers",
    "farebox-prod-exact": "Farebox production, 1 worker, exact limits",
    "litellm": "LiteLLM proxy",
}


def fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


def table(res: dict[str, Any], names: list[str]) -> list[str]:
    """The metrics x targets table, for the targets in `names` (in that order)."""
    targets, cfg = res["targets"], res["meta"]["config"]
    names = [n for n in names if n in targets]

    def cell(name: str, key: str, field: str, spec: str, direct: str | None = None) -> str:
        t = targets[name]
        if name == "direct" and direct is not None:
            return direct
        if not t["available"] and not t["scenarios"].get(key):
            return "unavailable"
        return fmt(t["scenarios"].get(key, {}).get("summary", {}).get(field), spec)

    def attr(name: str, field: str, spec: str) -> str:
        if name == "direct":
            return "n/a"
        if not targets[name]["available"] and targets[name][field] is None:
            return "unavailable"
        return fmt(targets[name][field], spec)

    def abs_latency(name: str) -> str:
        p50, p99 = cell(name, "latency", "p50_ms", ".2f"), cell(name, "latency", "p99_ms", ".2f")
        return p50 if p50 == "unavailable" else f"{p50} / {p99}"

    def both(field: str) -> Callable[[str], str]:
        def fn(name: str) -> str:
            if name == "direct" or not any(
                s["summary"].get(field) is not None for s in targets[name]["scenarios"].values()
            ):
                return "n/a"
            ns, st = cell(name, "rps", field, ",.0f"), cell(name, "rps_stream", field, ",.0f")
            return ns if ns == "unavailable" else f"{ns} / {st}"

        return fn

    def per_worker(name: str) -> str:
        t = targets[name]
        if name == "direct" or t["idle_rss_mib"] is None:
            return attr(name, "idle_rss_mib", ".1f")
        workers = t.get("workers") or 1
        return f"{t['idle_rss_mib'] / workers:.1f}" + (
            f" ({workers} workers)" if workers > 1 else ""
        )

    def errors(name: str) -> str:
        return str(sum(s["summary"]["errors"] for s in targets[name]["scenarios"].values()))

    c, lc = cfg["connections"], cfg["latency_connections"]
    base = "0 (baseline)"
    rows: list[tuple[str, Callable[[str], str]]] = [
        (f"requests/s, c{c}, non-stream", lambda n: cell(n, "rps", "ok_rps", ",.0f")),
        (f"requests/s, c{c}, stream (SSE)", lambda n: cell(n, "rps_stream", "ok_rps", ",.0f")),
        (f"added latency p50, c{lc}, 50 ms upstream (ms)",
         lambda n: cell(n, "latency", "added_p50_ms", "+.2f", base)),
        (f"added latency p99, c{lc}, 50 ms upstream (ms)",
         lambda n: cell(n, "latency", "added_p99_ms", "+.2f", base)),
        ("absolute latency p50 / p99 (ms)", abs_latency),
        (f"added latency p50, c{lc}, 45–55 ms upstream (ms)",
         lambda n: cell(n, "latency_jitter", "added_p50_ms", "+.2f", base)),
        (f"added latency p99, c{lc}, 45–55 ms upstream (ms)",
         lambda n: cell(n, "latency_jitter", "added_p99_ms", "+.2f", base)),
        ("gateway CPU µs/request, non-stream",
         lambda n: cell(n, "rps", "cpu_us_per_req", ",.0f", "n/a")),
        ("gateway CPU µs/request, stream",
         lambda n: cell(n, "rps_stream", "cpu_us_per_req", ",.0f", "n/a")),
        ("ledger Postgres CPU µs/request, non-stream / stream", both("db_cpu_us_per_req")),
        ("Redis CPU µs/request, non-stream / stream", both("redis_cpu_us_per_req")),
        ("simulator CPU µs/request, non-stream",
         lambda n: cell(n, "rps", "sim_cpu_us_per_req", ",.0f")),
        ("idle RSS (MiB)", lambda n: attr(n, "idle_rss_mib", ".1f")),
        ("idle RSS per worker (MiB; tree ÷ workers)", per_worker),
        ("loaded RSS, after load (MiB)", lambda n: attr(n, "loaded_rss_mib", ".1f")),
        ("startup, spawn → first 200 on health (s)", lambda n: attr(n, "startup_s", ".2f")),
        ("failed requests (non-2xx + socket errors)", errors),
    ]  # fmt: skip
    if not any(targets[n].get("redis") or (targets[n].get("workers") or 1) > 1 for n in names):
        rows = [r for r in rows if not r[0].startswith(("Redis", "idle RSS per"))]
    lines = ["| metric | " + " | ".join(LABEL[n] for n in names) + " |"]
    lines.append("|" + "---|" * (len(names) + 1))
    lines += ["| " + label + " | " + " | ".join(fn(n) for n in names) + " |" for label, fn in rows]
    return lines
