"""One definition of a successful request, end to end (issue 21, item 1).

Real traffic through the gateway (OpenAI SDK) to the simulator, with a Postgres ledger:
plain answers, streams, streams that break after their first bytes (an upstream error event,
a cut connection: the client got a 200 and then an error), answers that fail the route's
gate, a fallback that rescues a failing target, a route that fails outright and a
response-cache hit. The test counts what the client itself saw succeed, then asks every
report for its count of successful requests: `farebox usage --by route` and
`--by deployment`, `farebox lcpr` (by route and by model: the LCPR denominator) and the
reconciliation report. All must agree with the client.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.settings import Settings
from tests import waiting
from tests.gateway_harness import config_from_yaml, running_gateway
from tests.ledger_reads import sql_rows
from tests.simulator import running_simulator

CONFIG = """
auth: none
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM}/v1"}
deployments:
  good@sim: {provider: sim, model: "sim-good::tokens=8", price: {input: 1, output: 2}}
  mid@sim: {provider: sim, model: "sim-mid::midstream_error=2,tokens=10",
            price: {input: 1, output: 2}}
  cut@sim: {provider: sim, model: "sim-cut::cut_after=3,tokens=10", price: {input: 1, output: 2}}
  spoiled@sim: {provider: sim, model: "sim-spoiled::invalid_json_rate=1,tokens=20",
                price: {input: 1, output: 2}}
  broken@sim: {provider: sim, model: "sim-broken::status=500", price: {input: 1, output: 2}}
routes:
  chat: {targets: [good@sim]}
  midstream: {targets: [mid@sim], retry: {attempts: 1}}
  cut: {targets: [cut@sim], retry: {attempts: 1}}
  extract: {targets: [spoiled@sim], gate: {json_schema: request}, retry: {attempts: 1}}
  rescue: {targets: [broken@sim], fallbacks: [good@sim], retry: {attempts: 1}}
  down: {targets: [broken@sim], retry: {attempts: 1}}
  memo: {targets: [good@sim], cache: {ttl_s: 600}}
"""
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
MESSAGES: Any = [{"role": "user", "content": "Say something short."}]
MASTER = "sk-master-success-0001"


@dataclass
class Seen:
    """What the client saw, per route: requests sent and requests that succeeded."""

    sent: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0

    def add(self, route: str, succeeded: bool) -> None:
        self.sent[route] = self.sent.get(route, 0) + 1
        self.ok[route] = self.ok.get(route, 0) + int(succeeded)

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    @property
    def successful(self) -> int:
        return sum(self.ok.values())


def _answer(client: openai.OpenAI, route: str, **extra: Any) -> tuple[bool, dict[str, str]]:
    """A non-stream call: success is a 200 whose answer passed the gate (a failed gate is
    still a 200, marked `x-farebox-gate: fail; …`)."""
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=route, messages=MESSAGES, **extra
        )
    except openai.APIStatusError:
        return False, {}
    raw.parse()
    headers = dict(raw.headers)
    return not headers.get("x-farebox-gate", "").startswith("fail"), headers


def _stream(client: openai.OpenAI, route: str) -> bool:
    """A stream: success is reading it to its end. An in-stream error event (the upstream's,
    or the gateway's own after a cut) makes the SDK raise mid-iteration."""
    finished = False
    try:
        for chunk in client.chat.completions.create(model=route, messages=MESSAGES, stream=True):
            if chunk.choices and chunk.choices[0].finish_reason is not None:
                finished = True
    except openai.APIError:
        return False
    return finished


def _wait_until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    waiting.wait_until(check, what, within_s=timeout)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def _traffic(client: openai.OpenAI, seen: Seen) -> None:
    for _ in range(4):
        seen.add("chat", _answer(client, "chat")[0])
    for _ in range(3):
        seen.add("chat", _stream(client, "chat"))
    for _ in range(3):  # an upstream error event after two content chunks
        seen.add("midstream", _stream(client, "midstream"))
    for _ in range(2):  # the connection cut after three content chunks
        seen.add("cut", _stream(client, "cut"))
    for _ in range(3):  # every answer breaks the schema: 200, gate failed
        seen.add("extract", _answer(client, "extract", response_format=FORMAT)[0])
    for _ in range(2):  # broken@sim answers 500, the fallback answers
        seen.add("rescue", _answer(client, "rescue")[0])
    for _ in range(2):  # nothing answers: 5xx to the client
        seen.add("down", _answer(client, "down")[0])

    # The same deterministic request until the response cache answers it (the entry is
    # stored after the first answer is sent).
    deadline = time.monotonic() + 10
    while not seen.cache_hits:
        assert time.monotonic() < deadline, "the response cache never answered"
        ok, headers = _answer(client, "memo", temperature=0)
        seen.add("memo", ok)
        seen.cache_hits += headers.get("x-farebox-cache", "").upper() == "HIT"


def test_every_report_counts_the_successes_the_client_saw(pg_url: str, tmp_path: Path) -> None:
    seen = Seen()
    with running_simulator() as sim:
        text = CONFIG.replace("${SIM}", sim)
        config_path = tmp_path / "gateway.yaml"
        config_path.write_text(text)
        settings = Settings(
            database_url=pg_url,
            spool_dir=str(tmp_path / "spool"),
            master_key=MASTER,
            ledger_max_delay_ms=20,
            request_log=False,
        )
        started = datetime.now(UTC)
        with running_gateway(config_from_yaml(text, {}), settings) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
            _traffic(client, seen)

            def flushed() -> bool:
                (count,) = sql_rows(pg_url, "SELECT count(*) FROM requests")[0]
                return int(count) >= seen.total

            _wait_until(flushed, "the ledger to record every request")
            page = httpx.get(f"{gw.root}/ui", headers={"Authorization": f"Bearer {MASTER}"})
            assert page.status_code == 200, page.text
    month = started.strftime("%Y-%m")
    if datetime.now(UTC).strftime("%Y-%m") != month:
        pytest.skip("the traffic straddled a month boundary")

    # The traffic is the mix it is meant to be: some of everything failed, some succeeded.
    assert seen.ok["chat"] == 7 and seen.ok["rescue"] == 2 and seen.ok["memo"] >= 2
    assert seen.ok["midstream"] == seen.ok["cut"] == seen.ok["extract"] == seen.ok["down"] == 0
    # What the ledger holds for the broken streams: a 200 whose request carries the error.
    broken = sql_rows(
        pg_url,
        "SELECT route, final_status, error_class FROM requests "
        "WHERE route IN ('midstream', 'cut') ORDER BY route",
    )
    assert len(broken) == 5 and all(s == 200 and e is not None for _, s, e in broken), broken

    db = ("--database-url", pg_url)
    by: dict[str, dict[str, Any]] = {}
    for grouping in ("route", "deployment"):
        code, output = _cli("usage", "--since", "1h", "--by", grouping, "--json", *db)
        assert code == 0, output
        by[grouping] = json.loads(output)
    routes = {line["group"]: line for line in by["route"]["lines"]}
    assert {r: routes[r]["successful"] for r in seen.sent} == seen.ok
    assert {r: routes[r]["requests"] for r in seen.sent} == seen.sent
    deployments = {line["group"]: line for line in by["deployment"]["lines"]}
    # Requests belong to the deployment that answered: the rescued ones to good@sim.
    assert (
        deployments["good@sim"]["successful"]
        == seen.ok["chat"] + seen.ok["rescue"] + (seen.ok["memo"])
    )
    for grouping in ("route", "deployment"):
        lines = by[grouping]["lines"]
        assert sum(line["successful"] for line in lines) == seen.successful, grouping
        assert sum(line["requests"] for line in lines) == seen.total, grouping

    config = ("--config", str(config_path))
    for segment in ("route", "model"):
        code, output = _cli("lcpr", "--month", month, "--by", segment, "--json", *config, *db)
        assert code == 0, output
        report = json.loads(output)
        # The LCPR denominator.
        assert report["successful"] == seen.successful, segment
        assert sum(s["successful"] for s in report["segments"]) == seen.successful, segment
        assert report["requests"] == seen.total, segment

    # The status page's routes this month: requests and successful requests per route.
    shown = {
        route: (int(n.replace(",", "")), int(ok.replace(",", "")))
        for route, n, ok in re.findall(
            r"<tr><td>([\w-]+)</td><td class=\"n\">[^<]*</td><td class=\"n\">([\d,]+)</td>"
            r"<td class=\"n\">([\d,]+) \(",
            page.text,
        )
    }
    assert shown == {r: (seen.sent[r], seen.ok[r]) for r in seen.sent}, page.text

    invoice = tmp_path / "sim.csv"
    invoice.write_text(
        "provider,date,model,token_type,tokens,amount_usd\n"
        f"sim,{started:%Y-%m-%d},sim-good,input_uncached,100,0.0001\n"
    )
    out = tmp_path / "reconciliation"
    code, output = _cli(
        "reconcile", "--month", month, "--invoice", f"sim={invoice}", "--out", str(out),
        *config, *db,
    )  # fmt: skip
    assert code in (0, 3), output  # within thresholds or flagged: the invoice is made up
    assert f"{seen.total:,} received in {month}, {seen.successful:,} successful" in output
    (summary,) = sql_rows(pg_url, "SELECT summary FROM reconciliations")[0]
    assert summary["requests"]["successful"] == seen.successful
    assert summary["requests"]["total"] == seen.total
    markdown = (out / "reconciliation.md").read_text()
    assert f"{seen.total:,} requests received in {month} (all providers), " in markdown
    assert f"{seen.successful:,} successful." in markdown
    print(
        f"\n{seen.total} requests, {seen.successful} successful as the client saw them; "
        f"usage, lcpr and reconcile agree (sent per route {seen.sent}, ok {seen.ok})"
    )
