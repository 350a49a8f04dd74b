"""The provider Batch API client (gateway/batch/upstream*.py) against the simulator's OpenAI
Files + Batch API over real HTTP: a 1,000-line batch submitted, polled and read back (each
line run upstream exactly once, per the simulator's /_stats), failing lines as error results,
`find` from a fresh client after a "crash", cancel, expiry on the simulator clock, and the
provider's errors as UpstreamError."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest

from gateway.batch.upstream import (
    ProviderBatches,
    UpstreamLine,
    UpstreamResult,
    UpstreamState,
    provider_batches,
)
from gateway.batch.upstream_openai import FAREBOX_BATCH_ID, OpenAIBatches
from gateway.config.schema import GatewayConfig
from gateway.providers.base import CONNECT, STATUS, UpstreamError
from gateway.providers.openai_compat import ProviderEndpoint
from routing.model import DeploymentSpec
from tests.simulator import reset_simulator, simulator_stats, start_simulator
from tests.waiting import until

KEY = "sk-sim-batches"
CHAT = "/v1/chat/completions"
T = TypeVar("T")


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    # Its own simulator: the tests reset it and count everything it served.
    url, stop = start_simulator(require_key=KEY)
    yield url
    stop()


@pytest.fixture
def base(sim: str) -> str:
    reset_simulator(sim)
    return sim


def _deployment(batch_api: bool = True) -> DeploymentSpec:
    return DeploymentSpec(
        id="batchy@sim",
        provider="sim",
        provider_kind="serverless",
        protocol="openai",
        upstream_model="sim-batch",
        batch_api=batch_api,
    )


def _endpoint(base: str, key: str = KEY, **headers: str) -> ProviderEndpoint:
    return ProviderEndpoint("sim", f"{base}/v1", key, headers)


def run(scenario: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
    async def main() -> T:
        async with aiohttp.ClientSession() as session:
            return await scenario(session)

    return asyncio.run(main())


def client(base: str, session: aiohttp.ClientSession, **headers: str) -> ProviderBatches:
    found = provider_batches(_deployment(), session, {"sim": _endpoint(base, **headers)})
    assert found is not None
    return found


def chat_lines(models: list[str]) -> list[UpstreamLine]:
    return [
        # Multi-byte text: the upload's length is counted in bytes, not characters.
        UpstreamLine(
            str(n), {"model": model, "messages": [{"role": "user", "content": f"n{n} ✓é"}]}
        )
        for n, model in enumerate(models)
    ]


async def settle(batches: ProviderBatches, upstream_id: str, within_s: float = 30) -> UpstreamState:
    seen: list[UpstreamState] = []

    async def done() -> bool:
        seen.append(await batches.state(upstream_id))
        return seen[-1].done

    await until(done, f"upstream batch {upstream_id} to end", within_s)
    return seen[-1]


async def collect(batches: ProviderBatches, upstream_id: str) -> dict[str, UpstreamResult]:
    results: dict[str, UpstreamResult] = {}
    async for result in batches.results(upstream_id):
        assert result.custom_id not in results, f"line {result.custom_id} came back twice"
        results[result.custom_id] = result
    return results


def _http(method: str, url: str) -> Any:
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request) as resp:
        return resp.read()


def test_a_thousand_lines_run_once_each_and_come_back_with_usage(base: str) -> None:
    lines = chat_lines([f"sim-batch::tokens={1 + n % 5}" for n in range(1000)])

    async def scenario(session: aiohttp.ClientSession) -> tuple[UpstreamState, Any]:
        batches = client(base, session)
        upstream_id = await batches.submit("fbatch_big", CHAT, lines, "24h")
        state = await settle(batches, upstream_id)
        return state, (upstream_id, await collect(batches, upstream_id))

    state, (upstream_id, results) = run(scenario)
    assert (state.status, state.total, state.completed, state.failed, state.error) == (
        "completed",
        1000,
        1000,
        0,
        None,
    )
    assert sorted(results, key=int) == [str(n) for n in range(1000)]
    for n, line in enumerate(lines):
        got = results[line.custom_id]
        assert got.ok and got.http_status == 200 and got.error is None
        assert got.provider_request_id and got.body is not None
        assert got.body["object"] == "chat.completion"
        assert got.usage is not None and got.usage["completion_tokens"] == 1 + n % 5
        assert got.usage["prompt_tokens"] > 0
    # The upload is exactly the JSONL the lines make (framing, Content-Length, no line lost).
    batch = orjson.loads(_http("GET", f"{base}/v1/batches/{upstream_id}"))
    assert batch["metadata"] == {FAREBOX_BATCH_ID: "fbatch_big"}
    uploaded = _http("GET", f"{base}/v1/files/{batch['input_file_id']}/content")
    expected = b"".join(
        orjson.dumps({"custom_id": ln.custom_id, "method": "POST", "url": CHAT, "body": ln.body})
        + b"\n"
        for ln in lines
    )
    assert uploaded == expected
    stats = simulator_stats(base)
    assert stats["endpoints"]["batch_chat"] == 1000
    assert stats["endpoints"]["chat"] == 0
    assert stats["requests"]["sim-batch"] == {
        "total": 1000,
        "by_status": {"200": 1000},
        "stream": 0,
    }


def test_failing_lines_come_back_as_error_results(base: str) -> None:
    models = ["sim-ok::tokens=2", "sim-bad::status=500", "sim-ok::tokens=4", "sim-bad::status=429"]
    embed = [UpstreamLine("e0", {"model": "sim-embed", "input": "hello"})]

    async def scenario(session: aiohttp.ClientSession) -> Any:
        batches = client(base, session)
        chat_id = await batches.submit("fbatch_fail", CHAT, chat_lines(models), "24h")
        embed_id = await batches.submit("fbatch_embed", "/v1/embeddings", embed, "24h")
        chat_state = await settle(batches, chat_id)
        await settle(batches, embed_id)
        results = await collect(batches, chat_id), await collect(batches, embed_id)
        chat = orjson.loads(_http("GET", f"{base}/v1/batches/{chat_id}"))
        await batches.discard(chat_id)
        await batches.discard(chat_id)  # already gone: fine
        return chat_state, *results, chat

    state, results, embedded, chat = run(scenario)
    assert (state.status, state.completed, state.failed) == ("completed", 2, 2)
    assert {k: (r.http_status, r.error) for k, r in results.items()} == {
        "0": (200, None),
        "1": (500, "http_500"),
        "2": (200, None),
        "3": (429, "http_429"),
    }
    assert results["1"].body is not None and results["1"].body["error"]["type"] == "server_error"
    assert results["1"].usage is None and results["1"].provider_request_id
    assert results["2"].usage is not None and results["2"].usage["completion_tokens"] == 4
    assert embedded["e0"].ok and embedded["e0"].usage is not None
    assert embedded["e0"].body is not None and embedded["e0"].body["object"] == "list"
    # Discarded: the chat batch's three files are gone at the provider, the other batch's kept.
    left = {f["id"] for f in orjson.loads(_http("GET", f"{base}/v1/files"))["data"]}
    chat_files = {chat["input_file_id"], chat["output_file_id"], chat["error_file_id"]}
    assert len(chat_files) == 3 and not left & chat_files and len(left) == 2
    stats = simulator_stats(base)
    assert stats["requests"]["sim-bad"]["by_status"] == {"500": 1, "429": 1}
    assert stats["requests"]["sim-ok"]["by_status"] == {"200": 2}


def test_find_after_a_crash_returns_the_batch_already_made(base: str) -> None:
    async def scenario(session: aiohttp.ClientSession) -> Any:
        first = client(base, session)
        made = [
            await first.submit(f"fbatch_{n}", CHAT, chat_lines(["sim-find"]), "24h")
            for n in range(5)
        ]
        # A new gateway process: another session, another client, nothing remembered.
        async with aiohttp.ClientSession() as fresh:
            again = OpenAIBatches(_deployment(), _endpoint(base), fresh, page_size=2)
            found = [await again.find(f"fbatch_{n}", not_before=0) for n in range(5)]
            missing = await again.find("fbatch_never")
            # Every upstream batch is older than this: the search stops at the first one.
            too_old = await again.find("fbatch_0", not_before=int(time.time()) + 3600)
        return made, found, missing, too_old

    made, found, missing, too_old = run(scenario)
    assert found == made  # the oldest is on the third page of two
    assert missing is None and too_old is None
    assert simulator_stats(base)["requests"]["sim-find"]["total"] <= 5


def test_cancel_keeps_answered_lines_and_never_runs_the_rest(base: str) -> None:
    lines = chat_lines(["sim-cancel"] * 200)

    async def scenario(session: aiohttp.ClientSession) -> Any:
        # A provider that takes 20 s over the batch (the simulator's delay header, as a
        # provider `headers:` entry would send it).
        batches = client(base, session, **{"x-mock-batch-delay": "20"})
        upstream_id = await batches.submit("fbatch_cancel", CHAT, lines, "24h")

        async def started() -> bool:
            return (await batches.state(upstream_id)).completed >= 2

        await until(started, "two lines answered")
        await batches.cancel(upstream_id)
        state = await settle(batches, upstream_id)
        await batches.cancel(upstream_id)  # already ended: nothing to do, no error
        return state, await collect(batches, upstream_id)

    state, results = run(scenario)
    assert state.status == "cancelled"
    assert len(results) == 200
    answered = [r for r in results.values() if r.ok]
    unrun = [r for r in results.values() if not r.ok]
    assert 2 <= len(answered) < 200
    assert {r.error for r in unrun} == {"batch_cancelled"}
    assert all(r.http_status is None and r.usage is None for r in unrun)
    assert simulator_stats(base)["requests"]["sim-cancel"]["total"] == len(answered)


def test_expiry_returns_partial_output_and_expired_lines(base: str) -> None:
    lines = chat_lines(["sim-expire"] * 200)

    async def scenario(session: aiohttp.ClientSession) -> Any:
        batches = client(base, session, **{"x-mock-batch-delay": "60"})
        upstream_id = await batches.submit("fbatch_expire", CHAT, lines, "24h")

        async def started() -> bool:
            return (await batches.state(upstream_id)).completed >= 1

        await until(started, "a line answered")
        _http("POST", f"{base}/_clock?advance=86400")
        return await settle(batches, upstream_id), await collect(batches, upstream_id)

    state, results = run(scenario)
    assert state.status == "expired"
    assert sorted(results, key=int) == [str(n) for n in range(200)]
    answered = [r for r in results.values() if r.ok]
    assert answered and all(r.usage is not None for r in answered)
    expired = [r for r in results.values() if not r.ok]
    assert expired and {r.error for r in expired} == {"batch_expired"}
    assert simulator_stats(base)["requests"]["sim-expire"]["total"] == len(answered)


def test_provider_errors_are_upstream_errors(base: str) -> None:
    async def scenario(session: aiohttp.ClientSession) -> dict[str, UpstreamError]:
        seen: dict[str, UpstreamError] = {}
        batches = client(base, session)
        wrong_key = provider_batches(
            _deployment(), session, {"sim": _endpoint(base, key="sk-wrong")}
        )
        down = provider_batches(
            _deployment(),
            session,
            {"sim": ProviderEndpoint("sim", "http://127.0.0.1:9/v1", KEY, {})},
        )
        assert wrong_key is not None and down is not None
        calls: Mapping[str, Callable[[], Awaitable[object]]] = {
            "unknown": lambda: batches.state("batch_nope"),
            "key": lambda: wrong_key.submit("fb", CHAT, chat_lines(["sim-x"]), "24h"),
            "window": lambda: batches.submit("fb", CHAT, chat_lines(["sim-x"]), "1h"),
            "down": lambda: down.find("fb"),
        }
        for name, call in calls.items():
            with pytest.raises(UpstreamError) as caught:
                await call()
            seen[name] = caught.value
        return seen

    errors = run(scenario)
    assert (errors["unknown"].kind, errors["unknown"].status) == (STATUS, 404)
    assert (errors["key"].kind, errors["key"].status) == (STATUS, 401)
    assert KEY not in str(errors["key"].body) and "sk-wrong" not in str(errors["key"].body)
    assert (errors["window"].kind, errors["window"].status) == (STATUS, 400)
    assert errors["down"].kind == CONNECT
    # The refused create left no uploaded file behind (the wrong key never uploaded one).
    assert orjson.loads(_http("GET", f"{base}/v1/files"))["data"] == []
    assert simulator_stats(base)["endpoints"].get("batch_chat", 0) == 0


def test_only_flagged_openai_providers_have_a_batch_api(base: str) -> None:
    config = GatewayConfig.model_validate(
        {
            "providers": {
                "oa": {"kind": "serverless", "api_base": f"{base}/v1", "batch_api": True},
                "plain": {"kind": "serverless", "api_base": f"{base}/v1"},
            },
            "deployments": {
                "a@oa": {"provider": "oa", "model": "m"},
                "b@plain": {"provider": "plain", "model": "m"},
            },
        }
    )
    specs = config.deployment_specs()
    assert specs["a@oa"].batch_api and not specs["b@plain"].batch_api

    async def scenario(session: aiohttp.ClientSession) -> list[ProviderBatches | None]:
        endpoints = {"oa": _endpoint(base), "plain": _endpoint(base)}
        return [provider_batches(specs[d], session, endpoints) for d in ("a@oa", "b@plain")]

    flagged, plain = run(scenario)
    assert isinstance(flagged, OpenAIBatches) and plain is None
    with pytest.raises(ValueError, match="batch_api is only for the openai protocol"):
        GatewayConfig.model_validate(
            {
                "providers": {
                    "claude": {"kind": "closed_api", "protocol": "anthropic", "batch_api": True}
                }
            }
        )
