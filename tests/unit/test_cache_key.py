"""Response-cache keys and stores: what is cached, how requests are told apart, TTL and size
bounds, and that a route's config change retires its entries."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.cache.response import Entry, ResponseCache
from gateway.cache.store import LocalStore
from gateway.config.loading import parse_config
from routing import cache_key
from routing.cache_key import KeyPolicy
from routing.cost import Usage

ROOT = Path(__file__).resolve().parents[2]
HELLO = [{"role": "user", "content": "hello"}]


def key(payload: dict[str, Any], scope: str = "k:a", ns: str = "chat:1") -> str:
    return cache_key.exact_key(ns, scope, payload)


def test_fields_that_cannot_change_the_answer_do_not_change_the_key() -> None:
    base = {"model": "chat", "messages": HELLO, "temperature": 0}
    same = {
        **base,
        "model": "chat-alias",
        "user": "u-42",
        "metadata": {"trace": "x"},
        "prompt_cache_key": "p",
    }
    assert key(base) == key(same)
    parts = {**base, "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}
    assert key(base) == key(parts)
    # Key order in the body is irrelevant.
    assert key(dict(reversed(list(base.items())))) == key(base)


def test_anything_that_can_change_the_answer_changes_the_key() -> None:
    base = {"model": "chat", "messages": HELLO, "temperature": 0}
    variants = [
        {**base, "messages": [{"role": "user", "content": "hello!"}]},
        {**base, "temperature": 0.0001},
        {**base, "max_tokens": 5},
        {**base, "tools": [{"type": "function", "function": {"name": "f"}}]},
        {**base, "response_format": {"type": "json_object"}},
        {**base, "seed": 1},
        {**base, "stop": ["\n"]},
        {**base, "some_future_field": True},  # unknown fields are kept: a miss beats a wrong hit
        {**base, "stream": True},  # a stream entry holds SSE chunks, not a JSON body
        {**base, "stream": True, "stream_options": {"include_usage": True}},
    ]
    keys = {key(v) for v in variants} | {key(base)}
    assert len(keys) == len(variants) + 1
    assert key(base, scope="k:b") != key(base)
    assert key(base, ns="chat:2") != key(base)


def test_sampled_and_multi_choice_requests_are_refused_unless_allowed() -> None:
    strict, loose = KeyPolicy(), KeyPolicy(sampled=True, multiple_choices=True)
    assert cache_key.refusal({"messages": HELLO}, strict) == cache_key.SAMPLED  # default 1.0
    assert cache_key.refusal({"temperature": 0.3}, strict) == cache_key.SAMPLED
    assert cache_key.refusal({"temperature": 0}, strict) is None
    assert cache_key.refusal({"temperature": 0, "n": 3}, strict) == cache_key.MULTIPLE
    assert cache_key.refusal({"temperature": 0, "n": 1}, strict) is None
    assert cache_key.refusal({"temperature": 0.9, "n": 2}, loose) is None


def test_scopes_keep_tenants_apart() -> None:
    assert cache_key.scope_id("key", "alice", "blue") == "k:alice"
    assert cache_key.scope_id("team", "alice", "blue") == cache_key.scope_id("team", "bob", "blue")
    assert cache_key.scope_id("team", "carol", None) == "k:carol"  # no team: only itself
    assert cache_key.scope_id("route", "alice", "blue") == "*"


def test_context_key_ignores_only_the_last_user_turn() -> None:
    one = {"messages": [{"role": "system", "content": "be brief"}, *HELLO], "temperature": 0}
    two = {
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "temperature": 0,
    }
    other_system = {
        "messages": [{"role": "system", "content": "be long"}, *HELLO],
        "temperature": 0,
    }
    assert cache_key.context_key("n", "s", one) == cache_key.context_key("n", "s", two)
    assert cache_key.context_key("n", "s", one) != cache_key.context_key("n", "s", other_system)
    assert cache_key.last_user_text(two) == "hi"
    assert cache_key.last_user_text({"messages": [{"role": "assistant", "content": "x"}]}) is None


CONFIG = """
auth: none
providers:
  sim: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:9/v1"}
deployments:
  a@sim: {provider: sim, model: %(model)s}
routes:
  chat: {targets: [a@sim], cache: {ttl_s: %(ttl)d}}
  other: {targets: [a@sim], cache: {}}
  plain: {targets: [a@sim]}
"""


def namespaces(model: str = "m1", ttl: int = 60) -> dict[str, str]:
    config = parse_config(CONFIG % {"model": model, "ttl": ttl}, "t.yaml", {})
    cache = ResponseCache(config, None)
    return {name: route.namespace for name, route in cache.routes.items()}


def test_a_route_config_change_retires_its_entries() -> None:
    before = namespaces()
    assert set(before) == {"chat", "other"}  # routes without cache: are not in it
    assert namespaces() == before  # stable across loads (and processes)
    changed = namespaces(ttl=120)
    assert changed["chat"] != before["chat"] and changed["other"] == before["other"]
    # A deployment the route uses changed its upstream model: both routes start afresh.
    moved = namespaces(model="m2")
    assert moved["chat"] != before["chat"] and moved["other"] != before["other"]


def test_no_cache_section_means_no_cache_object() -> None:
    config = parse_config(
        CONFIG.replace(", cache: {ttl_s: %(ttl)d}", "").replace(", cache: {}", "") % {"model": "m"},
        "t.yaml",
        {},
    )
    assert ResponseCache.build(config, None) is None


def test_local_store_expires_and_stays_bounded() -> None:
    now = [0.0]
    store = LocalStore(max_entries=3, max_bytes=100, clock=lambda: now[0])

    async def run() -> None:
        for i in range(5):
            store.put(f"k{i}", b"x" * 10, ttl_s=10)
        assert len(store) == 3 and await store.get("k0") is None  # oldest evicted
        assert await store.get("k2") == b"x" * 10  # k2 now most recently used
        store.put("k5", b"y" * 10, ttl_s=10)
        assert await store.get("k2") is not None and await store.get("k3") is None
        store.put("big", b"z" * 95, ttl_s=10)  # byte bound evicts the rest
        assert store.bytes <= 100 and await store.get("big") is not None
        store.put("huge", b"z" * 101, ttl_s=10)  # larger than the whole store: not kept
        assert await store.get("huge") is None
        now[0] = 10.0  # TTL reached
        assert await store.get("big") is None and len(store) == 0

    asyncio.run(run())


def test_entries_round_trip_and_stale_formats_are_misses() -> None:
    entry = Entry("sse", "a@sim", Usage(5, 2, 0, 9, 1), b"data: 1\n\ndata: [DONE]\n\n", (9, 16))
    back = Entry.decode(entry.encode())
    assert back == entry
    assert back is not None and back.chunks() == [b"data: 1\n\n", b"data: [DONE]\n\n"]
    assert Entry.decode(b"garbage") is None
    assert Entry.decode(b'{"k": 1}\nbody') is None


def test_exact_mode_never_imports_the_embedding_model() -> None:
    code = (
        "import sys\n"
        "from gateway.cache.response import ResponseCache\n"
        "from gateway.config.loading import parse_config\n"
        f"config = parse_config({CONFIG!r} % {{'model': 'm', 'ttl': 5}}, 't.yaml', {{}})\n"
        "assert ResponseCache.build(config, None) is not None\n"
        "print('wordllama' in sys.modules, 'gateway.cache.semantic' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]
