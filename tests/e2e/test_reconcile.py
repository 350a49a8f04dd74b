"""Reconciliation end to end: real traffic through the gateway (OpenAI SDK) to the simulator,
a real Postgres ledger, invoices rendered by the simulator in each supported format, and
`farebox reconcile` run as the CLI.

Several simulated days: each batch of traffic is sent while the simulator's billing day is
pinned (`POST /_clock?day=`), so the simulator bills it on that day; once the ledger has
flushed the batch, the test moves that batch's `started_at` / `received_at` to the same day
in the test database. Both sides therefore agree on the day without faking any token count.

Providers are distinct accounts on one simulator (`/_invoice?models=` picks each account's
models). All of them speak the OpenAI wire to the simulator; what is under test is the
invoice format each account's bill arrives in.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.ledger.migrate import upgrade
from gateway.settings import Settings
from tests.gateway_harness import config_from_yaml, running_gateway
from tests.ledger_reads import sql_rows
from tests.reconcile_helpers import edit_ledger, flagged_models, post
from tests.services import PostgresServer
from tests.simulator import running_simulator

MONTH = "2025-11"
DAYS = [date(2025, 11, 4), date(2025, 11, 11), date(2025, 11, 18)]
HAIKU = "anthropic.claude-3-haiku-20240307-v1"
LLAMA = "meta-llama/Llama-3.3-70B-Instruct-Turbo"

CONFIG = """
auth: none
providers:
  openai: {kind: closed_api, protocol: openai, api_base: "${SIM}/v1", api_key: k}
  anthropic: {kind: closed_api, protocol: openai, api_base: "${SIM}/v1", api_key: k}
  together: {kind: serverless, protocol: openai, api_base: "${SIM}/v1", api_key: k}
  fireworks: {kind: serverless, protocol: openai, api_base: "${SIM}/v1", api_key: k}
  bedrock: {kind: closed_api, protocol: openai, api_base: "${SIM}/v1", api_key: k}
deployments:
  mini@openai: {provider: openai, model: "gpt-4o-mini::cached=12,tokens=20"}
  4o@openai: {provider: openai, model: "gpt-4o::tokens=30"}
  sonnet@anthropic:
    {provider: anthropic, model: "claude-sonnet-4-5::cached=10,cache_write=6,tokens=25"}
  llama@together: {provider: together, model: "LLAMA::tokens=22"}
  qwen@together: {provider: together, model: "Qwen/Qwen2.5-72B-Instruct-Turbo::tokens=15"}
  dsv3@fireworks: {provider: fireworks, model: "accounts/fireworks/models/deepseek-v3::tokens=18"}
  haiku@bedrock:
    provider: bedrock
    model: "HAIKU::tokens=12"
    price: {input: 0.25, output: 1.25}
routes:
  mini: {targets: [mini@openai]}
  4o: {targets: [4o@openai]}
  sonnet: {targets: [sonnet@anthropic]}
  llama: {targets: [llama@together]}
  qwen: {targets: [qwen@together]}
  dsv3: {targets: [dsv3@fireworks]}
  haiku: {targets: [haiku@bedrock]}
lcpr: {engineering_hours_per_month: 2, hourly_rate_usd: 50, repair_cost_usd: 0.001}
""".replace("LLAMA", LLAMA).replace("HAIKU", HAIKU)

# provider → [(format, file name, models)]
INVOICES = {
    "openai": [("openai_usage", "openai-usage.json"), ("openai_costs", "openai-costs.json")],
    "anthropic": [
        ("anthropic_usage", "anthropic-usage.json"),
        ("anthropic_cost", "anthropic-cost.json"),
    ],
    "together": [("generic", "together.csv")],
    "fireworks": [("fireworks", "fireworks.csv")],
    "bedrock": [("bedrock_cur", "bedrock-cur.csv")],
}
MODELS = {
    "openai": "gpt-4o-mini,gpt-4o",
    "anthropic": "claude-sonnet-4-5",
    "together": f"{LLAMA},Qwen/Qwen2.5-72B-Instruct-Turbo",
    "fireworks": "accounts/fireworks/models/deepseek-v3",
    "bedrock": HAIKU,
}
ROUTES = ["mini", "4o", "sonnet", "llama", "qwen", "dsv3", "haiku"]


@dataclass
class World:
    sim: str
    db: str
    config: Path
    tmp: Path
    attempts: int


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url) as resp:
        return bytes(resp.read())


def _prompt(i: int, day: int) -> str:
    # Different lengths per request and day, so the daily totals differ.
    return " ".join(["please summarize the quarterly figures"] * (3 + (i * 7 + day) % 11))


@pytest.fixture(scope="module")
def world(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("reconcile")
    name = f"t_{uuid.uuid4().hex[:16]}"
    postgres.create_database(name)
    db = postgres.url(name)
    upgrade(db)
    try:
        with running_simulator() as sim:
            text = CONFIG.replace("${SIM}", sim)
            config_path = tmp / "gateway.yaml"
            config_path.write_text(text)
            settings = Settings(
                database_url=db,
                spool_dir=str(tmp / "spool"),
                master_key=None,
                ledger_max_delay_ms=20,
            )
            sent = 0
            with running_gateway(config_from_yaml(text, {}), settings) as gw:
                client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
                for d, day in enumerate(DAYS):
                    post(f"{sim}/_clock?day={day.isoformat()}")
                    for route in ROUTES:
                        for i in range(4 + d):
                            messages = [{"role": "user", "content": _prompt(i, d)}]
                            if i % 3 == 2:  # some streams: usage must be metered there too
                                stream = client.chat.completions.create(
                                    model=route,
                                    messages=messages,
                                    stream=True,  # type: ignore[arg-type]
                                )
                                for _ in stream:
                                    pass
                            else:
                                client.chat.completions.create(model=route, messages=messages)  # type: ignore[arg-type]
                            sent += 1
                    _wait_for_attempts(db, sent)
                    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
                    # Only this batch is still at real time; earlier ones were moved already.
                    cut = datetime(2026, 1, 1, tzinfo=UTC)
                    edit_ledger(
                        db,
                        "UPDATE attempts SET started_at = :t WHERE started_at > :c",
                        {"t": noon, "c": cut},
                    )
                    edit_ledger(
                        db,
                        "UPDATE requests SET received_at = :t WHERE received_at > :c",
                        {"t": noon, "c": cut},
                    )
            yield World(sim=sim, db=db, config=config_path, tmp=tmp, attempts=sent)
    finally:
        postgres.drop_database(name)


def _wait_for_attempts(db: str, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        (count,) = sql_rows(db, "SELECT count(*) FROM attempts")[0]
        if count >= n or time.monotonic() > deadline:
            assert count == n, f"ledger has {count} attempts, expected {n}"
            return
        time.sleep(0.05)  # poll: a condition wait


def _invoices(w: World, out: Path, drift: str = "") -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    args = []
    for provider, files in INVOICES.items():
        for fmt, name in files:
            query = (
                f"format={fmt}&provider={provider}&models={MODELS[provider]}&month={MONTH}"
                f"&price={HAIKU}:0.25/1.25"
            )
            if drift:
                query += f"&drift={drift}"
            path = out / name
            path.write_bytes(_get(f"{w.sim}/_invoice?{query.replace('/', '%2F')}"))
            args += ["--invoice", f"{provider}={path}"]
    return args


def _reconcile(w: World, invoice_args: list[str], out: Path) -> tuple[int, str, float]:
    started = time.perf_counter()
    result = CliRunner().invoke(
        app,
        [
            "reconcile",
            "--month",
            MONTH,
            *invoice_args,
            "--out",
            str(out),
            "--config",
            str(w.config),
            "--database-url",
            w.db,
        ],
    )
    elapsed = time.perf_counter() - started
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output, elapsed


def test_no_drift_reconciles_within_half_a_percent(world: World) -> None:
    out = world.tmp / "clean"
    code, output, elapsed = _reconcile(world, _invoices(world, out / "in"), out)
    assert code == 0, output
    assert "within thresholds" in output
    (row,) = sql_rows(
        world.db,
        "SELECT status, token_variance_pct, cost_variance_pct, metered_usd, invoiced_usd "
        "FROM reconciliations",
    )
    status, token_var, cost_var, metered, invoiced = row
    assert status == "ok"
    assert abs(token_var) <= Decimal("0.5"), token_var
    assert abs(cost_var) <= Decimal("0.5"), cost_var
    assert metered > 0 and invoiced > 0
    # Every provider, model and day is there, on both sides.
    days = sql_rows(
        world.db,
        "SELECT provider, count(DISTINCT period_start::date) FROM invoice_lines "
        "GROUP BY provider ORDER BY provider",
    )
    assert [(p, n) for p, n in days] == [(p, 3) for p in sorted(INVOICES)]
    assert flagged_models(out) == {}
    for name in ("reconciliation.md", "reconciliation.html", "reconciliation.csv"):
        assert (out / name).stat().st_size > 500
    print(
        f"\nno drift: token variance {token_var} %, cost variance {cost_var} %, "
        f"metered ${metered:.6f}, invoiced ${invoiced:.6f}, {world.attempts} attempts, "
        f"reconcile {elapsed:.2f} s"
    )

    # Importing the same files again replaces them instead of doubling the invoice.
    (before,) = sql_rows(world.db, "SELECT count(*) FROM invoice_lines")[0]
    code, _, _ = _reconcile(world, _invoices(world, out / "in"), out)
    assert code == 0
    assert sql_rows(world.db, "SELECT count(*) FROM invoice_lines")[0][0] == before


def test_drift_on_one_model_flags_only_that_model_as_tokenizer_drift(world: World) -> None:
    out = world.tmp / "drift"
    code, output, _ = _reconcile(world, _invoices(world, out / "in", f"{LLAMA}:0.044"), out)
    assert code == 3, output
    assert flagged_models(out) == {("together", LLAMA): {"tokenizer_drift"}}
    md = (out / "reconciliation.md").read_text()
    assert "tokenizer drift concentrated in meta-llama/Llama-3.3-70B-Instruct-Turbo" in md
    rows = sql_rows(world.db, "SELECT summary FROM reconciliations WHERE status = 'flagged'")
    summary = rows[-1][0]
    llama = next(m for m in summary["models"] if m["model"] == LLAMA)
    assert 4.2 < float(llama["token_variance_pct"]) < 4.6
    assert not llama["cost_flag"]  # +4.4 % in dollars is under the 10 % cost threshold


def test_lcpr_from_the_ledger(world: World) -> None:
    args = [
        "lcpr",
        "--month",
        MONTH,
        "--by",
        "route",
        "--json",
        "--config",
        str(world.config),
        "--database-url",
        world.db,
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    (cost, ok) = sql_rows(
        world.db, "SELECT sum(cost_usd), count(*) FILTER (WHERE final_status = 200) FROM requests"
    )[0]
    assert {s["segment"] for s in report["segments"]} == set(ROUTES)
    assert report["successful"] == ok == world.attempts  # no failures in this traffic
    # LCPR = (token cost + repair (none failed) + 2 h × $50 engineering) / successful
    assert abs(Decimal(report["lcpr_usd"]) - (cost + 100) / ok) < Decimal("1e-8")
    # The last reconciliation of the month (drift test) was not over 10 % in dollars.
    assert [f["code"] for f in report["red_flags"]] == []
    text = CliRunner().invoke(app, args[:-5] + args[-4:])  # the rich table
    assert text.exit_code == 0 and "LCPR 2025-11 by route" in text.output


def test_cache_tokens_dropped_from_the_ledger_name_the_cache_cause(world: World) -> None:
    # What an adapter that loses `cached_tokens` records: the whole prompt as uncached.
    edit_ledger(
        world.db,
        "UPDATE attempts SET input_uncached_tokens = input_uncached_tokens + cached_read_tokens,"
        " cached_read_tokens = 0 WHERE upstream_model LIKE 'gpt-4o-mini%'",
    )
    out = world.tmp / "cache"
    code, output, _ = _reconcile(world, _invoices(world, out / "in"), out)
    assert code == 3, output
    flagged = flagged_models(out)
    assert list(flagged) == [("openai", "gpt-4o-mini")]
    assert "cache_billed_not_metered" in flagged[("openai", "gpt-4o-mini")]
    assert "cache tokens billed but not metered" in output


def test_a_bad_file_imports_nothing_and_says_where(world: World) -> None:
    out = world.tmp / "bad"
    args = _invoices(world, out / "in")
    (before,) = sql_rows(world.db, "SELECT count(*) FROM invoice_lines")[0]
    bad = out / "in" / "together.csv"
    lines = bad.read_text().splitlines()
    lines[1] = lines[1].replace("input_uncached", "uncached")
    bad.write_text("\n".join(lines) + "\n")
    code, output, _ = _reconcile(world, args, out / "report")
    assert code == 1
    assert f"error: {bad}: row 2, column token_type: 'uncached' is not one of" in output
    assert "Traceback" not in output
    # The good files before it were parsed, not stored: nothing is half-imported.
    assert sql_rows(world.db, "SELECT count(*) FROM invoice_lines")[0][0] == before
    assert not (out / "report").exists()

    code, output, _ = _reconcile(world, ["--invoice", f"nosuch={bad}"], out / "report")
    assert code == 1 and "provider(s) nosuch not in the config" in output
    result = CliRunner().invoke(app, ["reconcile", "--month", "2025-13", "--invoice", "a=b"])
    assert result.exit_code == 2
