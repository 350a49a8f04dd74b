"""What Farebox itself does on `/v1/responses`, beyond the wire: built-in tools only on the
targets that run them, stored conversations and their policy, failover before the first
content event, gates, metering, workflows, and the ledger equal to the upstream under
faults and client hang-ups. The client matrix (Python, Node, Agents SDKs on every target)
is tests/e2e/test_responses_sdk.py and friends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, sql_rows
from tests.openapi import check
from tests.simulator import running_simulator, simulator_stats
from tests.waiting import wait_until
from tests.wire_recorder import sse_events

KEY = "sk-responses-gateway-01"
CONFIG = """
auth: {keys: [{name: resp-gw, key: "CLIENT_KEY"}]}
server:
  breaker: {consecutive_failures: 1000, min_requests: 1000}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
  simr:
    kind: closed_api
    protocol: openai
    api_base: "${SIM_URL}/v1"
    api_key: "${SIM_KEY}"
    responses_api: true
  simweb:
    kind: closed_api
    protocol: openai
    api_base: "${SIM_URL}/v1"
    api_key: "${SIM_KEY}"
    responses_api: true
    builtin_tools: [web_search]
deployments:
  native@simr: {provider: simr, model: "sim-native::tokens=5", price: {input: 1.0, output: 2.0}}
  open@sim: {provider: sim, model: "sim-open::tokens=5", price: {input: 0.1, output: 0.2}}
  think@sim: {provider: sim, model: "sim-think::tokens=5,reasoning=3,cached=4"}
  web@simweb: {provider: simweb, model: "sim-web::builtin=web_search,tokens=5"}
  early-error@simr: {provider: simr, model: "sim-early::midstream_error=0,tokens=5"}
  late-error@sim: {provider: sim, model: "sim-late::midstream_error=2,tokens=8"}
  badjson@sim: {provider: sim, model: "sim-badjson::invalid_json_rate=1"}
  slow@sim: {provider: sim, model: "sim-slow::tokens=40,tps=40"}
routes:
  native: {targets: [native@simr]}
  translated: {targets: [open@sim]}
  thinking: {targets: [think@sim]}
  search: {strategy: failover, targets: [open@sim, web@simweb], retry: {attempts: 1}}
  no-search: {strategy: failover, targets: [open@sim, native@simr]}
  early:
    strategy: failover
    targets: [early-error@simr]
    fallbacks: [open@sim]
    retry: {attempts: 1}
  late: {targets: [late-error@sim], retry: {attempts: 1}}
  forgetful: {targets: [open@sim], responses: {store: false}}
  slow: {targets: [slow@sim]}
  gated:
    strategy: cascade
    targets: [badjson@sim, open@sim]
    retry: {attempts: 1}
    gate: {json_schema: request}
""".replace("CLIENT_KEY", KEY)

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def farebox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, str]]:
    with running_simulator(require_key=SIM_KEY) as sim:
        config = config_from_yaml(CONFIG, {"SIM_URL": sim, "SIM_KEY": SIM_KEY})
        settings = sqlite_settings(tmp_path_factory.mktemp("responses-gateway"))
        with running_gateway(config, settings) as gw:
            yield gw, sim


@pytest.fixture
def client(farebox: tuple[RunningGateway, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=farebox[0].base_url, api_key=KEY, max_retries=0, timeout=10)


def _http(gw: RunningGateway) -> httpx.Client:
    return httpx.Client(
        base_url=gw.base_url, headers={"authorization": f"Bearer {KEY}"}, timeout=10
    )


def _request_row(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def written() -> bool:
        rows = sql_rows(ledger_url(gw), "SELECT * FROM requests WHERE id = :id", {"id": request_id})
        if rows:
            found.update(rows[0]._mapping)
        return bool(rows)

    wait_until(written, f"request row {request_id}")
    return found


def _attempts(gw: RunningGateway, request_id: str) -> list[Any]:
    _request_row(gw, request_id)  # written in the same ledger batch as its attempts
    return sql_rows(
        ledger_url(gw),
        "SELECT * FROM attempts WHERE request_id = :id ORDER BY attempt_no",
        {"id": request_id},
    )


def test_built_in_tool_goes_only_to_a_native_target_that_runs_it(
    client: openai.OpenAI, farebox: tuple[RunningGateway, str]
) -> None:
    gw, _ = farebox
    raw = client.responses.with_raw_response.create(
        model="search", input="What is the weather in Lisbon?", tools=[{"type": "web_search"}]
    )
    # The route's first target (translated chat) cannot search: it was skipped, not called.
    assert raw.headers["x-farebox-deployment"] == "web@simweb"
    assert raw.headers["x-farebox-attempts"] == "1"
    response = raw.parse()
    assert [item.type for item in response.output][:1] == ["web_search_call"]
    check("Response", orjson.loads(raw.content))
    assert len(_attempts(gw, raw.headers["x-request-id"])) == 1


def test_built_in_tool_nobody_runs_is_a_400_naming_it(
    client: openai.OpenAI, farebox: tuple[RunningGateway, str]
) -> None:
    gw, sim = farebox
    before = simulator_stats(sim)["endpoints"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model="no-search", input="Search the web", tools=[{"type": "web_search"}]
        )
    error = caught.value
    assert error.code == "unsupported_tool" and error.param == "tools"
    assert "web_search" in error.message
    request_id = error.response.headers["x-request-id"]
    row = _request_row(gw, request_id)
    assert (row["final_status"], row["error_class"], row["attempts"]) == (
        400,
        "unsupported_tool",
        0,
    )
    assert _attempts(gw, request_id) == []
    assert simulator_stats(sim)["endpoints"] == before  # nothing reached an upstream


def test_store_false_keeps_nothing_and_cannot_be_continued(client: openai.OpenAI) -> None:
    first = client.responses.create(model="translated", input="Remember 42", store=False)
    assert first.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="translated", input="What?", previous_response_id=first.id)
    assert caught.value.param == "previous_response_id"


def test_route_that_keeps_no_responses(client: openai.OpenAI) -> None:
    kept = client.responses.create(model="translated", input="Hello")
    forgotten = client.responses.create(model="forgetful", input="Hello")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(forgotten.id)
    # Continuing on a route that stores nothing is refused, even from a stored response.
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="forgetful", input="Again", previous_response_id=kept.id)
    assert "store: false" in caught.value.message


def test_stored_response_is_invisible_to_another_key(
    client: openai.OpenAI, farebox: tuple[RunningGateway, str]
) -> None:
    gw, _ = farebox
    response = client.responses.create(model="native", input="A secret")
    stranger = openai.OpenAI(base_url=gw.base_url, api_key="sk-nobody", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.responses.retrieve(response.id)
    assert client.responses.retrieve(response.id).id == response.id
    deleted = client.responses.delete(response.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def test_stream_fails_over_until_its_first_content_event(
    client: openai.OpenAI, farebox: tuple[RunningGateway, str]
) -> None:
    gw, _ = farebox
    with client.responses.with_streaming_response.create(
        model="early", input="Hello", stream=True
    ) as raw:
        body = b"".join(raw.iter_bytes())
        headers = raw.headers
    events = sse_events(body)
    for event in events:
        check("ResponseStreamEvent", event)
    assert events[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert headers["x-farebox-deployment"] == "open@sim"
    tried = _attempts(gw, headers["x-request-id"])
    assert [(a.deployment, a.error_class) for a in tried] == [
        ("early-error@simr", "stream_error"),
        ("open@sim", None),
    ]


def test_failure_after_content_ends_with_a_failed_response(
    farebox: tuple[RunningGateway, str],
) -> None:
    gw, _ = farebox
    with _http(gw) as http:
        reply = http.post("/responses", json={"model": "late", "input": "Hi", "stream": True})
    events = sse_events(reply.content)
    types = [e["type"] for e in events]
    assert "response.output_text.delta" in types
    assert types[-1] in ("error", "response.failed")
    assert "response.completed" not in types
    for event in events:
        check("ResponseStreamEvent", event)
    row = _request_row(gw, reply.headers["x-request-id"])
    assert row["error_class"] == "stream_error"


def test_gate_escalates_a_responses_answer_that_breaks_the_schema(
    client: openai.OpenAI, farebox: tuple[RunningGateway, str]
) -> None:
    gw, _ = farebox
    raw = client.responses.with_raw_response.create(
        model="gated",
        input="Plan a trip",
        text={"format": {"type": "json_schema", "name": "trip", "schema": SCHEMA, "strict": True}},
    )
    assert raw.headers["x-farebox-deployment"] == "open@sim"
    assert raw.headers["x-farebox-gate"].startswith("pass")
    document = orjson.loads(raw.parse().output_text)
    assert set(document) == {"city", "days"}
    tried = _attempts(gw, raw.headers["x-request-id"])
    assert tried[0].gate_outcome not in (None, "pass")
    assert tried[-1].gate_outcome == "pass"


def test_usage_uses_responses_names_and_reaches_the_ledger(
    client: openai.OpenAI, farebox: tuple[RunningGateway, str]
) -> None:
    gw, _ = farebox
    raw = client.responses.with_raw_response.create(model="thinking", input="Think, then say hi")
    usage = raw.parse().usage
    assert usage is not None
    assert usage.output_tokens_details.reasoning_tokens == 3
    assert usage.input_tokens_details.cached_tokens == 4
    row = _attempts(gw, raw.headers["x-request-id"])[0]
    assert row.reasoning_tokens == 3 and row.cached_read_tokens == 4
    assert row.output_tokens == usage.output_tokens
    assert row.input_uncached_tokens + row.cached_read_tokens == usage.input_tokens


def test_chained_calls_are_one_workflow_unless_tagged(
    client: openai.OpenAI, farebox: tuple[RunningGateway, str]
) -> None:
    gw, _ = farebox
    first = client.responses.with_raw_response.create(model="native", input="Turn one")
    one = first.parse()
    second = client.responses.with_raw_response.create(
        model="translated", input="Turn two", previous_response_id=one.id
    )
    third = client.responses.with_raw_response.create(
        model="native", input="Turn three", previous_response_id=second.parse().id
    )
    ids = [r.headers["x-request-id"] for r in (first, second, third)]
    workflows = {_request_row(gw, i)["workflow_id"] for i in ids}
    assert workflows == {ids[0]}  # the chain's first request names it
    tagged = client.responses.with_raw_response.create(
        model="native", input="Mine", extra_headers={"x-farebox-workflow": "agent-run-7"}
    )
    assert _request_row(gw, tagged.headers["x-request-id"])["workflow_id"] == "agent-run-7"
    # The second turn saw the first: its input items hold turn one's question and answer.
    items = client.responses.input_items.list(second.parse().id, order="asc")
    texts = [part.text for item in items.data for part in getattr(item, "content", []) or []]
    assert texts[0] == "Turn one" and texts[-1] == "Turn two"


def test_input_tokens_counts_the_whole_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model="native", input="A fairly long first question " * 5)
    alone = client.responses.input_tokens.count(model="native", input="And then?")
    chained = client.responses.input_tokens.count(
        model="native", input="And then?", previous_response_id=first.id
    )
    assert 0 < alone.input_tokens < chained.input_tokens


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (orjson.dumps({"model": "native"}), 400, "input"),
        (orjson.dumps({"model": "native", "input": 7}), 400, "input"),
        (orjson.dumps({"model": "native", "input": "x", "stream": "yes"}), 400, "stream"),
        (orjson.dumps({"model": "no-such-model", "input": "x"}), 404, "model"),
        (orjson.dumps({"model": "native", "input": "x", "background": True}), 400, "background"),
    ],
)
def test_bad_requests_get_openai_errors(
    farebox: tuple[RunningGateway, str], body: bytes, status: int, param: str | None
) -> None:
    with _http(farebox[0]) as http:
        reply = http.post("/responses", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text
    assert reply.headers["x-request-id"].startswith("req_")
    error = reply.json()["error"]
    check("ErrorResponse", reply.json())
    if status == 400:
        assert error["param"] == param


def test_unknown_ids_and_methods(farebox: tuple[RunningGateway, str]) -> None:
    with _http(farebox[0]) as http:
        assert http.get("/responses/resp_nope").status_code == 404
        assert http.delete("/responses/resp_nope").status_code == 404
        assert http.get("/responses/resp_nope/input_items").status_code == 404
        assert http.put("/responses/resp_nope").status_code == 405
        assert http.get("/responses").status_code == 405


def test_ledger_equals_upstream_for_mixed_traffic_with_faults_and_hangups(
    farebox: tuple[RunningGateway, str], client: openai.OpenAI
) -> None:
    """Chat and Responses, JSON and streams, fallbacks, upstream cuts and clients that hang
    up mid-stream: every upstream call is one attempt row, nothing more."""
    gw, sim = farebox
    for model in ("native", "translated", "early", "late", "gated", "thinking"):
        with _http(gw) as http:
            http.post("/responses", json={"model": model, "input": "Hi"})
            http.post("/responses", json={"model": model, "input": "Hi", "stream": True})
            http.post(
                "/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "Hi"}]},
            )
    hung_up = []
    for model in ("slow", "slow"):
        with (
            _http(gw) as http,
            http.stream(
                "POST", "/responses", json={"model": model, "input": "Hi", "stream": True}
            ) as reply,
        ):
            hung_up.append(reply.headers["x-request-id"])
            for line in reply.iter_lines():
                if "output_text.delta" in line:
                    break  # the client goes away mid-answer
    for request_id in hung_up:
        row = _request_row(gw, request_id)
        assert row["final_status"] == 499 and row["error_class"] == "client_cancelled"
        attempt = _attempts(gw, request_id)[0]
        assert attempt.input_uncached_tokens > 0  # an interrupted stream is still metered

    def settled() -> bool:
        endpoints = simulator_stats(sim)["endpoints"]
        upstream = endpoints["responses"] + endpoints["chat"]
        (rows,) = sql_rows(ledger_url(gw), "SELECT count(*) FROM attempts")[0]
        return bool(rows == upstream)

    wait_until(settled, "attempt rows == upstream requests", within_s=15)


def test_streams_validate_against_the_spec_on_both_paths(
    farebox: tuple[RunningGateway, str],
) -> None:
    with _http(farebox[0]) as http:
        for model in ("native", "translated", "thinking"):
            reply = http.post(
                "/responses",
                json={
                    "model": model,
                    "input": "Hi",
                    "stream": True,
                    "reasoning": {"effort": "low"},
                },
            )
            events = sse_events(reply.content)
            assert events[-1]["type"] == "response.completed", model
            for event in events:
                check("ResponseStreamEvent", event)
            check("Response", events[-1]["response"])
