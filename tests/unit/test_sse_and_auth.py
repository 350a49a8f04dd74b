"""SSE framing, key checks, model resolution: pure pieces without a server."""

from __future__ import annotations

import pytest

from gateway.keys.auth import KeyStore
from gateway.providers.sse import SSEDecoder
from routing.model import DeploymentSpec, RouteSpec, Timeouts
from routing.resolve import ModelIndex, describe_plan


def collect(chunks: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    out = [data for chunk in chunks for data in decoder.feed(chunk)]
    return out + decoder.finish()


STREAM = b'data: {"a":1}\n\ndata: {"b":2}\n\n: keep-alive comment\n\ndata: [DONE]\n\n'


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_sse_split_on_any_chunk_boundary(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert collect(chunks) == [b'{"a":1}', b'{"b":2}', b"[DONE]"]


def test_sse_crlf_multiline_and_event_lines() -> None:
    raw = b"event: message\r\ndata: line1\r\ndata:line2\r\n\r\ndata: tail"
    assert collect([raw]) == [b"line1\nline2", b"tail"]


def test_keystore_accepts_bearer_and_x_api_key_only_for_known_keys() -> None:
    store = KeyStore([("a", "sk-alpha-123"), ("b", "sk-beta-456")])
    assert store.authenticate(b"Bearer sk-alpha-123") is not None
    principal = store.authenticate(b"bearer   sk-beta-456 ")
    assert principal is not None and principal.key_name == "b"
    assert store.authenticate(None, b"sk-alpha-123") is not None
    assert store.authenticate(b"Bearer sk-alpha-12") is None
    assert store.authenticate(b"Basic sk-alpha-123") is None
    assert store.authenticate(None) is None
    assert KeyStore([], disabled=True).authenticate(None) is not None


def test_keystore_keeps_no_plaintext() -> None:
    store = KeyStore([("a", "sk-alpha-123")])
    assert "sk-alpha-123" not in repr(
        vars(store) if hasattr(store, "__dict__") else store._by_digest
    )


T = Timeouts(connect_ms=1, ttft_ms=2, total_ms=3)


def dep(i: str, model: str) -> DeploymentSpec:
    return DeploymentSpec(
        id=i, provider="p", provider_kind="serverless", protocol="openai", upstream_model=model
    )


def test_index_precedence_route_then_id_then_unique_upstream_name() -> None:
    deployments = {
        "a@p": dep("a@p", "m-a"),
        "b@p": dep("b@p", "shared"),
        "c@p": dep("c@p", "shared"),
    }
    routes = {"m-a": RouteSpec("m-a", "direct", ("b@p",), T)}
    index = ModelIndex(routes, deployments, T)
    plan = index.plan("m-a")
    assert plan is not None and plan.attempts[0].deployment.id == "b@p"  # route wins
    plan = index.plan("a@p")
    assert plan is not None and plan.attempts[0].deployment.id == "a@p"
    assert index.plan("shared") is None
    assert index.ambiguous_upstream == {"shared": ("b@p", "c@p")}
    assert index.routable_names() == ["m-a", "a@p", "b@p", "c@p"]


def test_describe_plan_names_every_attempt() -> None:
    deployments = {"a@p": dep("a@p", "m-a")}
    index = ModelIndex({"r": RouteSpec("r", "direct", ("a@p",), T, "wl")}, deployments, T)
    plan = index.plan("r")
    assert plan is not None
    lines = describe_plan(plan)
    assert "workload wl" in lines[0] and "ttft 2 ms" in lines[0]
    assert "1 tries per target" in lines[1]
    assert "primary" in lines[2] and "a@p" in lines[2] and "m-a" in lines[2]
