"""The response cache through the real OpenAI SDK: hits skip the upstream (the simulator's
own count does not move), the ledger shows `cache_hit` rows with their saving, tenants do not
share entries, `Cache-Control` is honoured, stream hits replay the stored chunks, and
answers that were cut or failed their gate are never stored."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.cache.store import LocalStore
from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, sql_rows, wait_for_rows
from tests.simulator import simulator_stats
from tests.waiting import wait_until

ALICE, BOB, CAROL = "sk-cache-alice-01", "sk-cache-bob-0001", "sk-cache-carol-01"

CONFIG = """
auth:
  keys:
    - {name: alice, key: sk-cache-alice-01, team: blue}
    - {name: bob, key: sk-cache-bob-0001, team: blue}
    - {name: carol, key: sk-cache-carol-01, team: red}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
deployments:
  exact@sim: {provider: sim, model: "sim-cache-exact::tokens=9", price: {input: 2, output: 8}}
  team@sim: {provider: sim, model: "sim-cache-team::tokens=5", price: {input: 1, output: 1}}
  sampled@sim: {provider: sim, model: "sim-cache-sampled::tokens=5"}
  cut@sim: {provider: sim, model: "sim-cache-cut::cut_after=3,tokens=10"}
  gated@sim: {provider: sim, model: "sim-cache-gated::tokens=5"}
  brief@sim: {provider: sim, model: "sim-cache-brief::tokens=5"}
  plain@sim: {provider: sim, model: "sim-cache-plain::tokens=5"}
  semantic@sim: {provider: sim, model: "sim-cache-semantic::tokens=5"}
routes:
  exact: {targets: [exact@sim], cache: {mode: exact, ttl_s: 600}}
  team: {targets: [team@sim], cache: {scope: team}}
  sampled: {targets: [sampled@sim], cache: {sampled: true}}
  cut: {targets: [cut@sim], cache: {}}
  gated: {targets: [gated@sim], gate: {regex: "^NEVER MATCHES$"}, cache: {}}
  brief: {targets: [brief@sim], cache: {ttl_s: 1}}
  plain: {targets: [plain@sim]}
  semantic: {targets: [semantic@sim], cache: {mode: semantic, threshold: 0.95}}
"""


@pytest.fixture(scope="module")
def gw(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    with running_gateway(config, sqlite_settings(tmp_path_factory.mktemp("cache"))) as running:
        yield running


def client(gw: RunningGateway, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def upstream_calls(gw: RunningGateway, model: str) -> int:
    base = gw.config.providers["sim"].api_base
    assert base is not None
    stats = simulator_stats(base.removesuffix("/v1"))
    return int(stats["requests"].get(model, {}).get("total", 0))


def question() -> Any:
    # A fresh question per test: the simulator and the cache live for the whole module.
    return [{"role": "user", "content": f"What is the capital of {uuid.uuid4().hex}?"}]


def ask(c: openai.OpenAI, model: str, messages: Any, **extra: Any) -> tuple[str, str, Any]:
    """(x-farebox-cache, x-request-id, the parsed completion)."""
    raw = c.chat.completions.with_raw_response.create(
        model=model, messages=messages, temperature=0, **extra
    )
    return raw.headers["x-farebox-cache"], raw.headers["x-request-id"], raw.parse()


def entries(gw: RunningGateway, route: str) -> int:
    store = gw.state.cache.routes[route].store if gw.state.cache else None
    assert isinstance(store, LocalStore)
    return len(store)


@contextmanager
def storing(gw: RunningGateway, route: str) -> Iterator[None]:
    """The block's answer gets stored: a stream's entry is written after its last chunk
    went out, so the next request could otherwise race it."""
    before = entries(gw, route)
    yield
    wait_until(lambda: entries(gw, route) > before, f"an entry stored for {route}")


def test_a_repeated_request_hits_without_an_upstream_call(gw: RunningGateway) -> None:
    c, messages = client(gw), question()
    before = upstream_calls(gw, "sim-cache-exact")
    with storing(gw, "exact"):
        first_state, _, first = ask(c, "exact", messages)
    second_state, hit_id, second = ask(c, "exact", messages)
    assert (first_state, second_state) == ("MISS", "HIT")
    assert upstream_calls(gw, "sim-cache-exact") == before + 1
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage is not None and first.usage is not None
    assert second.usage.completion_tokens == first.usage.completion_tokens

    url = ledger_url(gw)
    found = wait_for_rows(
        url,
        "SELECT final_status, attempts, cost_usd, final_deployment FROM requests WHERE id = :id",
        {"id": hit_id},
    )
    assert found and found[0][0] == 200 and found[0][1] == 1
    assert Decimal(str(found[0][2])) == 0 and found[0][3] == "exact@sim"
    (attempt,) = sql_rows(
        url,
        "SELECT role, deployment, cost_usd, saved_usd, token_source, output_tokens "
        "FROM attempts WHERE request_id = :id",
        {"id": hit_id},
    )
    role, deployment, cost, saved, source, output = attempt
    assert (role, deployment, source, output) == ("cache_hit", "exact@sim", "cache", 9)
    assert Decimal(str(cost)) == 0
    # 9 output tokens at $8/M plus the prompt at $2/M: what the miss would have cost.
    assert Decimal(str(saved)) > Decimal(9 * 8) / 1_000_000


def test_hit_headers_say_it_cost_nothing(gw: RunningGateway) -> None:
    c, messages = client(gw), question()
    with storing(gw, "exact"):
        ask(c, "exact", messages)
    raw = c.chat.completions.with_raw_response.create(
        model="exact", messages=messages, temperature=0
    )
    assert raw.headers["x-farebox-cache"] == "HIT"
    assert raw.headers["x-farebox-cost-usd"] == "0"
    assert raw.headers["x-farebox-attempts"] == "0"
    assert raw.headers["x-farebox-deployment"] == "exact@sim"


def test_keys_do_not_share_entries_unless_the_route_scopes_by_team(gw: RunningGateway) -> None:
    messages = question()
    with storing(gw, "exact"):
        ask(client(gw, ALICE), "exact", messages)
    assert ask(client(gw, BOB), "exact", messages)[0] == "MISS"  # scope: key (default)

    messages = question()
    with storing(gw, "team"):
        ask(client(gw, ALICE), "team", messages)
    assert ask(client(gw, BOB), "team", messages)[0] == "HIT"  # same team
    assert ask(client(gw, CAROL), "team", messages)[0] == "MISS"  # another team


def test_cache_control_no_cache_and_no_store(gw: RunningGateway) -> None:
    c, messages = client(gw), question()
    with storing(gw, "exact"):
        ask(c, "exact", messages)
    before = upstream_calls(gw, "sim-cache-exact")
    state, _, _ = ask(c, "exact", messages, extra_headers={"Cache-Control": "no-cache"})
    assert state == "BYPASS"
    assert upstream_calls(gw, "sim-cache-exact") == before + 1

    messages = question()
    state, _, _ = ask(c, "exact", messages, extra_headers={"Cache-Control": "no-store"})
    assert state == "BYPASS"
    # Nothing to wait for: a non-stream answer is stored before its response is sent.
    assert ask(c, "exact", messages)[0] == "MISS"  # no-store stored nothing

    messages = question()
    with storing(gw, "exact"):
        ask(c, "exact", messages, extra_headers={"Cache-Control": "no-cache"})
    assert ask(c, "exact", messages)[0] == "HIT"  # no-cache still stores the fresh answer


def test_sampled_requests_bypass_unless_the_route_allows_them(gw: RunningGateway) -> None:
    c, messages = client(gw), question()
    for temperature in (None, 0.7):
        extra: dict[str, Any] = {} if temperature is None else {"temperature": temperature}
        raw = c.chat.completions.with_raw_response.create(model="exact", messages=messages, **extra)
        assert raw.headers["x-farebox-cache"] == "BYPASS"
    raw = c.chat.completions.with_raw_response.create(
        model="exact", messages=messages, temperature=0, n=2
    )
    assert raw.headers["x-farebox-cache"] == "BYPASS"
    with storing(gw, "sampled"):
        c.chat.completions.create(model="sampled", messages=messages, temperature=0.7)
    raw = c.chat.completions.with_raw_response.create(
        model="sampled", messages=messages, temperature=0.7
    )
    assert raw.headers["x-farebox-cache"] == "HIT"


def collect(c: openai.OpenAI, model: str, messages: Any, **extra: Any) -> tuple[str, list[Any]]:
    with c.chat.completions.with_streaming_response.create(
        model=model, messages=messages, temperature=0, stream=True, **extra
    ) as response:
        state = response.headers["x-farebox-cache"]
        chunks = [chunk.model_dump() for chunk in response.parse()]
    return state, chunks


def test_a_stream_hit_replays_the_stream_identically(gw: RunningGateway) -> None:
    c, messages = client(gw), question()
    before = upstream_calls(gw, "sim-cache-exact")
    with storing(gw, "exact"):
        first_state, first = collect(c, "exact", messages)
    second_state, second = collect(c, "exact", messages)
    assert (first_state, second_state) == ("MISS", "HIT")
    assert upstream_calls(gw, "sim-cache-exact") == before + 1
    assert second == first
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in second if ch["choices"])
    assert text

    # A stream entry does not answer a non-stream request (nor the other way round).
    assert ask(c, "exact", messages)[0] == "MISS"


def test_stream_usage_chunk_of_a_hit_costs_nothing(gw: RunningGateway) -> None:
    c, messages = client(gw), question()
    options = {"stream_options": {"include_usage": True}}
    with storing(gw, "exact"):
        _, first = collect(c, "exact", messages, **options)
    state, second = collect(c, "exact", messages, **options)
    assert state == "HIT"
    assert first[-1]["usage"]["cost_usd"] > 0
    assert second[-1]["usage"]["cost_usd"] == 0
    assert second[-1]["usage"]["completion_tokens"] == first[-1]["usage"]["completion_tokens"]


def test_cut_streams_and_failed_gates_are_never_cached(gw: RunningGateway) -> None:
    c, messages = client(gw), question()
    before, stored = upstream_calls(gw, "sim-cache-cut"), entries(gw, "cut")
    for _ in range(2):
        response = httpx.post(
            f"{gw.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {ALICE}"},
            json={"model": "cut", "messages": messages, "temperature": 0, "stream": True},
        )
        assert response.headers["x-farebox-cache"] == "MISS"
        assert b"upstream_stream_interrupted" in response.content  # the cut, as an error event
        # httpx read the body to its end, and the relay ends it only after the cache's tap
        # (where a store would happen) has finished: nothing can still be on its way.
        assert entries(gw, "cut") == stored
    assert upstream_calls(gw, "sim-cache-cut") == before + 2

    messages = question()
    before = upstream_calls(gw, "sim-cache-gated")
    for _ in range(2):
        raw = c.chat.completions.with_raw_response.create(
            model="gated", messages=messages, temperature=0
        )
        assert raw.headers["x-farebox-cache"] == "MISS"
        assert raw.headers["x-farebox-gate"].startswith("fail")
        # Non-stream: a store would have happened before the response was sent.
    assert upstream_calls(gw, "sim-cache-gated") == before + 2


def test_entries_do_not_outlive_their_ttl(gw: RunningGateway) -> None:
    c, messages = client(gw), question()
    with storing(gw, "brief"):
        ask(c, "brief", messages)
    assert ask(c, "brief", messages)[0] == "HIT"
    time.sleep(1.1)  # real time must pass the 1 s TTL: there is no clock to move
    assert ask(c, "brief", messages)[0] == "MISS"


def test_routes_without_cache_say_nothing(gw: RunningGateway) -> None:
    raw = client(gw).chat.completions.with_raw_response.create(
        model="plain", messages=question(), temperature=0
    )
    assert "x-farebox-cache" not in raw.headers


def test_the_anthropic_endpoint_is_cached_too(gw: RunningGateway) -> None:
    c = anthropic.Anthropic(base_url=gw.root, api_key=ALICE, max_retries=0)
    messages = question()
    answers, stored = [], entries(gw, "exact")
    for expected in ("MISS", "HIT"):
        raw = c.messages.with_raw_response.create(
            model="exact", max_tokens=50, messages=messages, extra_body={"temperature": 0}
        )
        assert raw.headers["x-farebox-cache"] == expected
        answers.append(raw.parse())
        wait_until(lambda: entries(gw, "exact") > stored, "the Anthropic answer's entry")
    assert answers[0].content == answers[1].content


def cache_metrics(gw: RunningGateway) -> tuple[float, float]:
    """(hits, saved USD) of the `exact` route, as /metrics shows them."""
    hits = saved = 0.0
    for line in httpx.get(f"{gw.root}/metrics").text.splitlines():
        if line.startswith("farebox_cache_requests_total{") and 'route="exact"' in line:
            if 'result="hit"' in line:
                hits = float(line.split()[-1])
        elif line.startswith('farebox_cache_saved_usd_total{route="exact"}'):
            saved = float(line.split()[-1])
    return hits, saved


def test_metrics_count_hits_and_savings(gw: RunningGateway) -> None:
    c, messages = client(gw), question()
    with storing(gw, "exact"):
        ask(c, "exact", messages)
    # The module's gateway served other hits already: count this one.
    hits, saved = cache_metrics(gw)
    ask(c, "exact", messages)
    hits_after, saved_after = cache_metrics(gw)
    assert hits_after == hits + 1
    assert saved_after > saved


def test_semantic_route_serves_paraphrases_only(gw: RunningGateway) -> None:
    c = client(gw)
    topic = uuid.uuid4().hex[:8]
    before = upstream_calls(gw, "sim-cache-semantic")
    asked: Any = [{"role": "user", "content": f"How do I reset my password for account {topic}?"}]
    with storing(gw, "semantic"):
        assert ask(c, "semantic", asked)[0] == "MISS"
    paraphrase: Any = [
        {"role": "user", "content": f"How can I reset my password for account {topic}"}
    ]
    raw = c.chat.completions.with_raw_response.create(
        model="semantic", messages=paraphrase, temperature=0
    )
    assert raw.headers["x-farebox-cache"] == "HIT"
    assert float(raw.headers["x-farebox-cache-similarity"]) >= 0.95
    unrelated: Any = [{"role": "user", "content": f"Where is the office of account {topic}?"}]
    assert ask(c, "semantic", unrelated)[0] == "MISS"
    assert upstream_calls(gw, "sim-cache-semantic") == before + 2
