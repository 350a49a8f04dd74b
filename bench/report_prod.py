"""The production-profile section of RESULTS.md: its table, the ratios issue 13 asks for,
one PASS/MISS line per budget, the burst and the ledger-vs-simulator checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import production
from report_table import LABEL, fmt, table

BENCH = Path(__file__).resolve().parent
PROD = ["direct", "passthrough", "farebox-prod", "farebox-prod-2w", "farebox-prod-exact", "litellm"]
ONE, TWO, EXACT = "farebox-prod", "farebox-prod-2w", "farebox-prod-exact"
MB_PER_MIB = 1024 * 1024 / 1e6


def present(targets: dict[str, Any]) -> bool:
    return ONE in targets or TWO in targets


def _summary(targets: dict[str, Any], name: str, key: str, field: str) -> float | None:
    t = targets.get(name)
    if not t or key not in t["scenarios"]:
        return None
    value: float | None = t["scenarios"][key]["summary"].get(field)
    return value


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(targets: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("rps", "rps_stream"):
        one, two = _summary(targets, ONE, key, "ok_rps"), _summary(targets, TWO, key, "ok_rps")
        for other in ("passthrough", "litellm"):
            o = _summary(targets, other, key, "ok_rps")
            out[f"{ONE}_vs_{other}_{key}"] = _div(one, o)
            out[f"{TWO}_vs_{other}_{key}"] = _div(two, o)
        out[f"{TWO}_vs_{ONE}_{key}"] = _div(two, one)
    return out


def _soak() -> dict[str, Any] | None:
    """The last full soak (`bench/soak.py` writes bench/soak.json), if there is one."""
    try:
        data: dict[str, Any] = json.loads((BENCH / "soak.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def _procs(t: dict[str, Any]) -> str:
    """The tree's processes when there are several (supervisor, workers, helpers)."""
    procs = t.get("idle_rss_by_process_mib") or []
    if len(procs) < 2:
        return ""

    def role(i: int, cmd: str) -> str:
        if i == 0:
            return "supervisor"
        if "resource_tracker" in cmd:
            return "resource tracker"
        return "worker" if "spawn_main" in cmd else cmd[:40]

    parts = [f"{role(i, cmd)} {mib:.1f}" for i, (_, cmd, mib) in enumerate(procs)]
    return "; by process, MiB: " + ", ".join(parts)


def lean_budgets(res: dict[str, Any]) -> list[tuple[bool | None, str]]:
    """(passed, text) per budget of issue 25, with exact mode's latency reported beside."""
    targets, r = res["targets"], res["ratios"]
    out: list[tuple[bool | None, str]] = []

    def check(value: float | None, ok: bool, text: str) -> None:
        out.append((None if value is None else ok, text))

    one = _summary(targets, ONE, "rps", "ok_rps")
    v = r.get(f"{ONE}_vs_passthrough_rps")
    check(
        None if one is None or v is None else one,
        (one or 0) >= 3000 and (v or 0) >= 0.60,
        f"non-stream, c64: {fmt(one, ',.0f')} requests/s, {fmt(v, '.2f')}× the bare passthrough "
        "(budget ≥ 3,000 and ≥ 0.60×)",
    )
    v = r.get(f"{ONE}_vs_litellm_rps")
    check(v, (v or 0) >= 40, f"vs the LiteLLM proxy, non-stream: {fmt(v, '.1f')}× (budget ≥ 40×)")
    v = r.get(f"{ONE}_vs_passthrough_rps_stream")
    check(
        v,
        (v or 0) >= 0.55,
        f"streams: {fmt(v, '.2f')}× the bare passthrough's streams/s (budget ≥ 0.55×)",
    )
    # Judged on the 45-55 ms upstream (mean 50 ms); the fixed 50 ms one is reported beside it:
    # there wrk's ten connections stay in lockstep and p50 measures ten requests' serial work
    # at each hop (the bare passthrough adds more than 1 ms there, ~0.5 ms with the jitter).
    p50 = _summary(targets, ONE, "latency_jitter", "added_p50_ms")
    p99 = _summary(targets, ONE, "latency_jitter", "added_p99_ms")
    e50 = _summary(targets, EXACT, "latency_jitter", "added_p50_ms")
    e99 = _summary(targets, EXACT, "latency_jitter", "added_p99_ms")
    f50 = _summary(targets, ONE, "latency", "added_p50_ms")
    f99 = _summary(targets, ONE, "latency", "added_p99_ms")
    pt50 = _summary(targets, "passthrough", "latency", "added_p50_ms")
    pj50 = _summary(targets, "passthrough", "latency_jitter", "added_p50_ms")
    beside = (
        f"; exact mode beside it: p50 {fmt(e50, '+.2f')} ms, p99 {fmt(e99, '+.2f')} ms; "
        f"with a fixed 50 ms upstream (lockstep): p50 {fmt(f50, '+.2f')} ms, p99 "
        f"{fmt(f99, '+.2f')} ms; the bare passthrough p50 {fmt(pj50, '+.2f')} ms "
        f"(fixed: {fmt(pt50, '+.2f')} ms)"
    )
    check(
        None if p50 is None or p99 is None else p50,
        (p50 or 0) <= 1.0 and (p99 or 0) <= 3.0,
        f"added latency, c10, 45–55 ms upstream (mean 50): p50 {fmt(p50, '+.2f')} ms, p99 "
        f"{fmt(p99, '+.2f')} ms (budget p50 ≤ 1.0, p99 ≤ 3 ms){beside}",
    )
    t = targets.get(ONE) or {}
    rss = t.get("idle_rss_mib")
    mb = None if rss is None else rss * MB_PER_MIB
    check(
        mb,
        (mb or 0) <= 80,
        f"idle RSS: {fmt(mb, '.1f')} MB = {fmt(rss, '.1f')} MiB (budget ≤ 80 MB)",
    )
    s = t.get("startup_s")
    check(
        s,
        (s or 0) <= 1.0,
        f"start-up, spawn → first 200 on /healthz: {fmt(s, '.2f')} s (budget ≤ 1.0 s)",
    )
    return out


def budgets(res: dict[str, Any]) -> list[tuple[bool | None, str]]:
    """(passed, text) per budget of issue 13; passed is None when not measured."""
    targets, r = res["targets"], res["ratios"]
    out: list[tuple[bool | None, str]] = []

    def check(value: float | None, ok: bool, text: str) -> None:
        out.append((None if value is None else ok, text))

    def rps(name: str, key: str = "rps") -> float | None:
        return _summary(targets, name, key, "ok_rps")

    one = rps(ONE)
    check(
        one,
        (one or 0) >= 2500,
        f"1 worker, non-stream, c64: {fmt(one, ',.0f')} requests/s (budget ≥ 2,500)",
    )
    v = r.get(f"{ONE}_vs_passthrough_rps")
    check(
        v,
        (v or 0) >= 0.60,
        f"1 worker vs the bare passthrough (same run), non-stream: {fmt(v, '.0%')} (budget ≥ 60 %)",
    )
    v = r.get(f"{ONE}_vs_litellm_rps")
    check(
        v,
        (v or 0) >= 40,
        f"1 worker vs the LiteLLM proxy, non-stream: {fmt(v, '.1f')}× (budget ≥ 40×)",
    )
    for name, workers in ((ONE, 1), (TWO, 2)):
        st = rps(name, "rps_stream")
        per = None if st is None else st / workers
        check(
            per,
            (per or 0) >= 2000,
            f"streaming, {LABEL[name]}: {fmt(per, ',.0f')} streams/s per worker (budget ≥ 2,000)",
        )
    p50 = _summary(targets, ONE, "latency", "added_p50_ms")
    p99 = _summary(targets, ONE, "latency", "added_p99_ms")
    check(
        p50,
        (p50 or 0) <= 1.0,
        f"added latency p50, c10, 50 ms upstream, 1 worker: {fmt(p50, '+.2f')} ms (budget ≤ 1 ms)",
    )
    check(
        p99,
        (p99 or 0) <= 3.0,
        f"added latency p99, c10, 50 ms upstream, 1 worker: {fmt(p99, '+.2f')} ms (budget ≤ 3 ms)",
    )
    for name in (ONE, TWO):
        t = targets.get(name) or {}
        workers = t.get("workers") or 1
        rss = t.get("idle_rss_mib")
        mib = None if rss is None else rss / workers
        mb = None if mib is None else mib * MB_PER_MIB
        check(
            mb,
            (mb or 0) <= 100,
            f"idle RSS per worker, {LABEL[name]} (no litellm-protocol provider): "
            f"{fmt(mb, '.1f')} MB = {fmt(mib, '.1f')} MiB (process tree ÷ workers; "
            f"budget ≤ 100 MB){_procs(t)}",
        )
        s = t.get("startup_s")
        check(
            s,
            (s or 0) <= 1.5,
            f"start-up, {LABEL[name]}: {fmt(s, '.2f')} s, spawn → first "
            "200 on /healthz (budget ≤ 1.5 s)",
        )
    for key, what in (("rps", "non-stream"), ("rps_stream", "stream")):
        v = r.get(f"{TWO}_vs_{ONE}_{key}")
        check(v, (v or 0) >= 1.7, f"2 workers vs 1 worker, {what}: {fmt(v, '.2f')}× "
              "(budget ≥ 1.7×)")  # fmt: skip
    soak = _soak()
    if soak is None:
        out.append((None, "soak: not run (`.venv/bin/python bench/soak.py`, 15 min, writes "
                    "bench/SOAK.md)"))  # fmt: skip
    else:
        sv = soak["verdicts"]
        when = f"from bench/SOAK.md, {soak['date']}, {soak['config']['minutes']:g} min"
        out.append(
            (
                sv["rss_pass"],
                f"soak RSS growth, minute {sv['baseline']['t_s'] / 60:.0f} "
                f"→ end: {sv['rss_growth'] * 100:+.2f} % (budget ≤ +5 %; {when})",
            )
        )
        level = (
            f"level {sv['fd_level_base']:g} → {sv['fd_level_end']:g}, "
            if "fd_level_end" in sv
            else ""
        )
        fds = f"{level}{sv['baseline']['fds']} → {sv['end']['fds']}"
        out.append((sv["fd_pass"], f"soak open fds: {fds} (budget: no growth; {when})"))
    for name in (ONE, TWO, EXACT):
        c = (targets.get(name) or {}).get("ledger_check")
        if c is not None:
            out.append((bool(c.get("covered")), production.describe_check(LABEL[name], c)))
    return out


def lines(res: dict[str, Any]) -> list[str]:
    targets, r = res["targets"], res["ratios"]

    def x(key: str) -> str:
        return fmt(r.get(key), ".2f", "×")

    out = [*table(res, PROD), ""]
    out += ["**Ratios (requests/s, same run):**", ""]
    for name in (n for n in (ONE, TWO) if n in targets):
        out.append(
            f"- {LABEL[name]}: vs bare passthrough: non-stream {x(f'{name}_vs_passthrough_rps')}"
            f", stream {x(f'{name}_vs_passthrough_rps_stream')}; vs LiteLLM proxy: non-stream "
            f"{x(f'{name}_vs_litellm_rps')}, stream {x(f'{name}_vs_litellm_rps_stream')}."
        )
    if ONE in targets and TWO in targets:
        out.append(
            f"- 2 workers ÷ 1 worker: non-stream {x(f'{TWO}_vs_{ONE}_rps')}, stream "
            f"{x(f'{TWO}_vs_{ONE}_rps_stream')}."
        )
    out += ["", "**Budgets (issue 25: the lean serving plane, 1 worker, limits.mode lease):**", ""]
    for ok, text in lean_budgets(res):
        verdict = "not measured" if ok is None else ("PASS" if ok else "MISS")
        out.append(f"- **{verdict}** {text}")
    out += ["", "**Budgets (issue 13):**", ""]
    for ok, text in budgets(res):
        verdict = "not measured" if ok is None else ("PASS" if ok else "MISS")
        out.append(f"- **{verdict}** {text}")
    bursts = [(n, targets[n]["burst"]) for n in (ONE, TWO) if (targets.get(n) or {}).get("burst")]
    if bursts:
        import burst  # aiohttp, only when there is a burst to describe

        b0 = bursts[0][1]
        out += ["", f"**Burst:** {b0['requests']} requests at once, each a "
                f"{b0['prompt_bytes'] // 1024} KB prompt (distinct), non-stream, after the load "
                "scenarios; latency measured by the client.", ""]  # fmt: skip
        out += [f"- {LABEL[n]}: {burst.describe(b)}." for n, b in bursts]
    return [*out, ""]


def notes(res: dict[str, Any]) -> list[str]:
    targets, pin = res["targets"], res["meta"]["cpu_pinning"]
    if not present(targets):
        return []
    redis = (res["meta"].get("redis") or {}).get("version", "?")
    c = next((t["ledger_check"] for n in (ONE, TWO) if (t := targets.get(n)) and
              t.get("ledger_check")), None)  # fmt: skip
    log = f" ({c['log_bytes'] / 1e6:,.0f} MB for the 1-worker target)" if c else ""
    return [
        "- Production profile (`bench/production.py`): `bench/farebox-production.yaml` (route "
        "`bench`: strategy `cost` over three deployments on three providers, plus a fallback "
        "deployment on a fourth; `bench-slow` the same with a 50 ms upstream; breakers and "
        "retries at their defaults); wrk sends a virtual key made with `farebox keys create` "
        f"(RPM {production.KEY_LIMITS['--rpm']}, TPM {production.KEY_LIMITS['--tpm']}, max "
        f"concurrency {production.KEY_LIMITS['--max-concurrency']}, budget "
        f"${production.KEY_LIMITS['--budget-usd']}/month: never reached, but every request "
        f"is counted against them in Redis); limits, budgets and breakers in Redis {redis} "
        "(started by the harness, persistence off, pinned with the simulator); ledger and "
        "virtual keys in the same PostgreSQL as the bare profile, one database per target; "
        "Prometheus metrics on (multiprocess mode with 2 workers; /metrics scraped at the "
        "end) and the JSON request log on, to the target's log file under bench/.work/"
        f"{log}. Each production target has its own simulator process (same code, same "
        "CPU), so what the simulator served is that target's alone.",
        f"- CPUs: the 1-worker production Farebox is pinned to CPU {pin['gateways']} like the "
        "other gateways; the 2-worker one to both CPUs, which it shares with the simulator, "
        "wrk, PostgreSQL and Redis — so on this 2-core machine its scaling is bounded by "
        "what they use, not by Farebox alone.",
        "- Ledger check (production): after the burst each production Farebox gets SIGTERM "
        "(its ledger writer flushes), then its `attempts` rows are counted and compared with "
        "the requests its simulator received (counted on arrival: warm-ups, runs, checks, "
        "burst, and the calls still in flight when wrk closed its connections at the end of "
        "each run, which the gateway cancels and records as `client_cancelled` attempts). "
        "PASS when equal, or when the surplus of rows is no larger than the cancelled "
        "attempts (one cancelled while connecting never reaches the simulator).",
    ]
