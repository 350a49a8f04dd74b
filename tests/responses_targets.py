"""The four Responses serving targets the client tests (Python SDK, Node SDK, Agents SDK) run
against, each behind its own route of one Farebox in front of its own simulator:

* ``native``: an OpenAI-protocol provider with ``responses_api: true`` — Farebox forwards to
  the simulator's ``/v1/responses``;
* ``translated``: the same simulator's Chat Completions (an open-weights serverless provider):
  Farebox translates Responses ⇄ Chat;
* ``anthropic``: an Anthropic provider through litellm to the simulator's ``/v1/messages``;
* ``failover``: a native target that answers 500, then the translated one (one try each);
* ``cut-native`` / ``cut-translated``: streams the upstream drops after two deltas;
* ``broken``: its only target answers 500;
* ``slow-native`` / ``slow-translated``: 40 deltas at 40 a second, for clients that hang up.

A module-scoped simulator of its own makes the ledger check exact: every attempt row in the
gateway's database is one request the simulator received, and nothing else reached it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, sql_rows
from tests.simulator import running_simulator, simulator_stats
from tests.waiting import wait_until

KEY = "sk-responses-clients-01"
TARGETS = ("native", "translated", "anthropic", "failover")
#: The deployment that answers each target's route.
SERVED_BY = {
    "native": "native@simr",
    "translated": "open@sim",
    "anthropic": "claude@claude",
    "failover": "open@sim",
}
#: Every target answers five words (the `tokens=5` directive).
TEXT = "tok0 tok1 tok2 tok3 tok4"

CONFIG = """
auth: {keys: [{name: responses-clients, key: "CLIENT_KEY"}]}
server:
  # The failing target must fail every time it is tried, not be skipped by its breaker.
  breaker: {consecutive_failures: 1000, min_requests: 1000}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
  simr:
    kind: closed_api
    protocol: openai
    api_base: "${SIM_URL}/v1"
    api_key: "${SIM_KEY}"
    responses_api: true
  claude: {kind: closed_api, protocol: anthropic, api_base: "${SIM_URL}", api_key: "${SIM_KEY}"}
deployments:
  native@simr: {provider: simr, model: "sim-native::tokens=5", price: {input: 1.0, output: 2.0}}
  broken@simr: {provider: simr, model: "sim-broken::status=500"}
  open@sim: {provider: sim, model: "sim-open::tokens=5", price: {input: 0.1, output: 0.2}}
  claude@claude: {provider: claude, model: "claude-sim::tokens=5"}
  cut@simr: {provider: simr, model: "sim-cut::cut_after=2,tokens=10"}
  cutchat@sim: {provider: sim, model: "sim-cutchat::cut_after=2,tokens=10"}
  slow@simr: {provider: simr, model: "sim-slow::tokens=40,tps=40"}
  slowchat@sim: {provider: sim, model: "sim-slowchat::tokens=40,tps=40"}
routes:
  native: {targets: [native@simr]}
  translated: {targets: [open@sim]}
  anthropic: {targets: [claude@claude]}
  failover:
    strategy: failover
    targets: [broken@simr]
    fallbacks: [open@sim]
    retry: {attempts: 1}
  # Streams the upstream drops after two deltas: the client must see them fail.
  cut-native: {targets: [cut@simr], retry: {attempts: 1}}
  cut-translated: {targets: [cutchat@sim], retry: {attempts: 1}}
  broken: {targets: [broken@simr], retry: {attempts: 1}}
  # A second's worth of deltas: time for a client to hang up mid-answer.
  slow-native: {targets: [slow@simr]}
  slow-translated: {targets: [slowchat@sim]}
""".replace("CLIENT_KEY", KEY)


@contextmanager
def responses_gateway(directory: Path) -> Iterator[tuple[RunningGateway, str]]:
    """A gateway (SQLite ledger and conversation store) and the root URL of the simulator
    that only it talks to."""
    with running_simulator(require_key=SIM_KEY) as sim:
        config = config_from_yaml(CONFIG, {"SIM_URL": sim, "SIM_KEY": SIM_KEY})
        with running_gateway(config, sqlite_settings(directory)) as gw:
            yield gw, sim


def upstream_calls(sim: str) -> int:
    """Requests the simulator received on the three wires the targets use."""
    endpoints: dict[str, int] = simulator_stats(sim)["endpoints"]
    return endpoints["responses"] + endpoints["chat"] + endpoints["messages"]


def attempt_rows(gw: RunningGateway) -> int:
    return int(sql_rows(ledger_url(gw), "SELECT count(*) FROM attempts")[0][0])


def assert_ledger_matches_upstream(gw: RunningGateway, sim: str) -> int:
    """Wait for the ledger writer, then: attempt rows == upstream requests. Returns it."""
    seen: dict[str, int] = {}

    def settled() -> bool:
        seen["rows"], seen["calls"] = attempt_rows(gw), upstream_calls(sim)
        return seen["rows"] == seen["calls"]

    try:
        wait_until(settled, "ledger attempts to equal the simulator's requests", within_s=15)
    except AssertionError:
        raise AssertionError(
            f"ledger has {seen['rows']} attempt rows, the simulator received "
            f"{seen['calls']} requests ({simulator_stats(sim)['endpoints']})"
        ) from None
    return seen["rows"]


def request_rows(gw: RunningGateway, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The ledger's request rows of `ids` (by id), once all of them are written."""
    marks = ", ".join(f":id{n}" for n in range(len(ids)))
    sql = f"SELECT * FROM requests WHERE id IN ({marks})"
    params = {f"id{n}": value for n, value in enumerate(ids)}
    found: dict[str, dict[str, Any]] = {}

    def all_there() -> bool:
        found.clear()
        for row in sql_rows(ledger_url(gw), sql, params):
            found[row.id] = dict(row._mapping)
        return len(found) == len(set(ids))

    wait_until(all_there, f"request rows {ids}", within_s=15)
    return found
