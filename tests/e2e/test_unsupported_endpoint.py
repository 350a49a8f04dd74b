"""A request no target can serve is refused before any upstream attempt exists.

Embeddings and legacy completions need an OpenAI-protocol deployment; a route whose
targets are all litellm providers (Anthropic here) answers 400 `unsupported_endpoint`
with a request row and no attempt row, since no upstream call was made — and the
simulator confirms it received nothing. A route that mixes both kinds skips the target
that cannot serve the endpoint rather than burning an attempt on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import sqlite_settings
from tests.gateway_harness import config_from_yaml, running_gateway
from tests.ledger_reads import sql_rows
from tests.openapi import ERROR, check
from tests.simulator import simulator_stats, start_simulator

pytestmark = pytest.mark.e2e

CONFIG = """
auth: none
providers:
  anthropic: {kind: closed_api, protocol: anthropic, api_base: "%(sim)s", api_key: k}
  sim: {kind: serverless, protocol: openai, api_base: "%(sim)s/v1", api_key: k}
deployments:
  sonnet@anthropic: {provider: anthropic, model: claude-sim}
  embed@sim: {provider: sim, model: sim-embed}
routes:
  claude: {targets: [sonnet@anthropic]}
  mixed: {strategy: failover, targets: [sonnet@anthropic, embed@sim]}
"""


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Refused and mixed calls through a gateway with a SQLite ledger; what the simulator
    saw, the errors the client got, and the ledger rows once the gateway has shut down."""
    url, stop = start_simulator()
    directory: Path = tmp_path_factory.mktemp("unsupported")
    settings = sqlite_settings(directory)
    seen: dict[str, Any] = {"errors": []}
    try:
        with running_gateway(config_from_yaml(CONFIG % {"sim": url}, {}), settings) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
            for call in (
                lambda: client.embeddings.create(model="claude", input="hi"),
                lambda: client.completions.create(model="claude", prompt="hi"),
                lambda: list(client.completions.create(model="claude", prompt="hi", stream=True)),
            ):
                with pytest.raises(openai.BadRequestError) as info:
                    call()
                seen["errors"].append(info.value)
            seen["refused_stats"] = simulator_stats(url)
            try:
                raw = client.embeddings.with_raw_response.create(model="mixed", input="hi")
                seen["mixed_headers"] = dict(raw.headers)
            except openai.APIStatusError as exc:  # kept, so the other checks still run
                seen["mixed_headers"] = {"error": exc.message}
            seen["mixed_stats"] = simulator_stats(url)
    finally:
        stop()
    # Leaving the block shut the gateway down, which flushed its ledger.
    seen["requests"] = sql_rows(
        settings.database_url,
        "SELECT id, route, endpoint, final_status, error_class, attempts FROM requests",
    )
    seen["attempts"] = sql_rows(
        settings.database_url, "SELECT request_id, deployment FROM attempts"
    )
    yield seen


def test_refusal_is_a_400_with_no_attempt(ledger: dict[str, Any]) -> None:
    for error in ledger["errors"]:
        assert error.status_code == 400 and error.code == "unsupported_endpoint"
        assert "sonnet@anthropic" in error.message
        check(ERROR, error.response.json(), "refusal")
    refused = [r for r in ledger["requests"] if r.route == "claude"]
    assert len(refused) == 3  # one request row per refused call …
    assert {(r.final_status, r.error_class, r.attempts) for r in refused} == {
        (400, "unsupported_endpoint", 0)
    }
    refused_ids = {r.id for r in refused}
    # … and no attempt row: no upstream call was made.
    assert not [a for a in ledger["attempts"] if a.request_id in refused_ids]


def test_simulator_received_nothing_for_refusals(ledger: dict[str, Any]) -> None:
    stats = ledger["refused_stats"]
    assert stats["requests"] == {}
    assert sum(stats["endpoints"].values()) == 0


def test_mixed_route_skips_the_target_that_cannot_serve(ledger: dict[str, Any]) -> None:
    assert ledger["mixed_headers"].get("x-farebox-deployment") == "embed@sim", ledger[
        "mixed_headers"
    ]
    assert ledger["mixed_headers"]["x-farebox-attempts"] == "1"
    assert ledger["mixed_stats"]["endpoints"]["embeddings"] == 1
    assert ledger["mixed_stats"]["endpoints"]["messages"] == 0
    [mixed] = [r for r in ledger["requests"] if r.route == "mixed"]
    assert (mixed.final_status, mixed.attempts) == (200, 1)
    attempts = [a.deployment for a in ledger["attempts"] if a.request_id == mixed.id]
    assert attempts == ["embed@sim"]
