"""The simulator's dedicated-GPU model (``slots=N``, simulator/gpu.py): a request holds a slot
for its service time, the rest wait FIFO, and ``/_stats`` reports it under ``gpus``.

Over real HTTP with the simulator in a thread; the pool's own edge cases (a waiter cancelled
as the slot reaches it, resizing) directly on :class:`simulator.gpu.GpuPool`. Assertions are on
counts and ordering (who finished first, how many waited), never on how fast the machine is,
except lower bounds the service time guarantees (a slot held 300 ms is busy ≥ 300 ms).
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from simulator.gpu import GpuPool, Gpus, holding
from tests.simulator import reset_simulator, simulator_stats, start_simulator
from tests.waiting import until, wait_until

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    url, stop = start_simulator()
    yield url
    stop()


@pytest.fixture(autouse=True)
def _reset(base_url: str) -> None:
    reset_simulator(base_url)


def post(base_url: str, path: str, body: dict[str, Any], timeout: float = 10) -> tuple[int, Any]:
    request = urllib.request.Request(
        base_url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def gpu(base_url: str, model: str = "sim-gpu") -> dict[str, Any]:
    found: dict[str, Any] = simulator_stats(base_url).get("gpus", {}).get(model, {})
    return found


class Background:
    """Requests sent from threads; `done` records the order they finished in."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.done: list[str] = []
        self.statuses: dict[str, int] = {}
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def send(self, name: str, path: str, body: dict[str, Any], timeout: float = 10) -> None:
        def run() -> None:
            try:
                status, _ = post(self.base_url, path, body, timeout)
            except OSError:  # the client's own timeout: it gave up
                status = 0
            with self.lock:
                self.done.append(name)
                self.statuses[name] = status

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(15)


def at_gpu(base_url: str, count: int) -> bool:
    """`count` requests hold a slot or wait for one."""
    stats = gpu(base_url)
    return bool(stats) and stats["in_use"] + stats["waiting"] == count


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER, **extra}


def test_requests_beyond_the_slots_wait_fifo_and_finish_in_arrival_order(base_url: str) -> None:
    model = "sim-gpu::slots=1,latency=300"
    bg = Background(base_url)
    for i, name in enumerate(("a", "b", "c", "d")):
        bg.send(name, "/v1/chat/completions", chat_body(model))
        # The next one is sent only once this one holds the slot or queues: arrival order.
        wait_until(partial(at_gpu, base_url, i + 1), f"request {name} at the GPU")
    mid = gpu(base_url)
    assert mid["slots"] == 1 and mid["in_use"] == 1 and mid["waiting"] == 3
    bg.join()
    assert bg.done == ["a", "b", "c", "d"]
    assert set(bg.statuses.values()) == {200}
    stats = gpu(base_url)
    assert stats["in_use"] == 0 and stats["waiting"] == 0
    assert stats["peak_in_use"] == 1 and stats["peak_waiting"] == 3
    assert stats["acquired"] == 4 and stats["queued"] == 3
    # Four 300 ms leases one after another: at least 1.2 slot-seconds, one slot all along.
    assert stats["busy_slot_seconds"] >= 1.2
    assert 0 < stats["utilization"] <= 1.0
    # The last one, queued while the first held the slot, waited for two whole leases more.
    assert stats["queue_wait_ms"]["max"] >= 600
    assert stats["queue_wait_ms"]["p50"] > 0


def test_within_the_slots_nothing_waits(base_url: str) -> None:
    bg = Background(base_url)
    for name in ("a", "b", "c"):
        bg.send(name, "/v1/chat/completions", chat_body("sim-gpu::slots=4,latency=200"))
    wait_until(lambda: gpu(base_url).get("in_use") == 3, "three slots in use")
    bg.join()
    stats = gpu(base_url)
    assert stats["peak_in_use"] == 3 and stats["queued"] == 0 and stats["peak_waiting"] == 0
    assert stats["queue_wait_ms"] == {"p50": 0.0, "p99": 0.0, "max": 0.0}
    assert stats["busy_slot_seconds"] >= 0.6
    # Three of four slots for about one 200 ms service time: never more than 3/4 busy.
    assert stats["utilization"] <= 0.75 + 1e-6


def test_one_gpu_per_base_model_across_endpoints_and_directives(base_url: str) -> None:
    """Chat, Responses and embeddings on `sim-gpu` (any other directives) share its slots;
    another base model is another GPU."""
    bg = Background(base_url)
    bg.send("chat", "/v1/chat/completions", chat_body("sim-gpu::slots=2,latency=400"))
    wait_until(lambda: gpu(base_url).get("in_use") == 1, "chat on the GPU")
    body = {"model": "sim-gpu::slots=2,latency=400,tokens=3", "input": "hi"}
    bg.send("responses", "/v1/responses", body)
    wait_until(lambda: gpu(base_url).get("in_use") == 2, "responses on the GPU")
    bg.send(
        "embeddings", "/v1/embeddings", {"model": "sim-gpu::slots=2,latency=200", "input": "hi"}
    )
    wait_until(lambda: gpu(base_url).get("waiting") == 1, "embeddings queued")
    bg.send("other", "/v1/chat/completions", chat_body("sim-other::slots=2,latency=10"))
    bg.join()
    assert bg.done[0] == "other"  # its own GPU: it never waited for sim-gpu's
    assert bg.done.index("embeddings") > min(bg.done.index("chat"), bg.done.index("responses"))
    assert set(bg.statuses.values()) == {200}
    stats = simulator_stats(base_url)["gpus"]
    assert stats["sim-gpu"]["acquired"] == 3 and stats["sim-gpu"]["queued"] == 1
    assert stats["sim-other"]["acquired"] == 1 and stats["sim-other"]["queued"] == 0


def test_a_stream_holds_its_slot_until_its_last_token(base_url: str) -> None:
    # 20 tokens at 20/s: 19 intervals of 50 ms after the headers, all on the slot.
    bg = Background(base_url)
    streamed = chat_body("sim-gpu::slots=1,tokens=20,tps=20", stream=True)
    bg.send("stream", "/v1/chat/completions", streamed)
    wait_until(lambda: gpu(base_url).get("in_use") == 1, "the stream on the GPU")
    bg.send("next", "/v1/chat/completions", chat_body("sim-gpu::slots=1"))
    wait_until(lambda: gpu(base_url).get("waiting") == 1, "the next request queued")
    bg.join()
    assert bg.statuses == {"stream": 200, "next": 200}
    stats = gpu(base_url)
    assert stats["queued"] == 1 and stats["queue_wait_ms"]["max"] > 0
    # A slot given back at the headers would be busy for almost nothing.
    assert stats["busy_slot_seconds"] >= 0.95


def test_a_client_that_leaves_the_queue_frees_its_place(base_url: str) -> None:
    bg = Background(base_url)
    bg.send("holder", "/v1/chat/completions", chat_body("sim-gpu::slots=1,latency=1500"))
    wait_until(lambda: gpu(base_url).get("in_use") == 1, "the holder on the GPU")
    bg.send("quitter", "/v1/chat/completions", chat_body("sim-gpu::slots=1"), timeout=0.3)
    wait_until(lambda: "quitter" in bg.done, "the quitter giving up")
    wait_until(lambda: gpu(base_url).get("waiting") == 0, "the quitter out of the queue")
    assert gpu(base_url)["in_use"] == 1  # the holder still has it
    bg.join()
    assert bg.statuses == {"quitter": 0, "holder": 200}
    status, _ = post(base_url, "/v1/chat/completions", chat_body("sim-gpu::slots=1"))
    assert status == 200
    stats = gpu(base_url)
    assert stats["in_use"] == 0 and stats["waiting"] == 0
    assert stats["acquired"] == 2  # holder and the last one; the quitter never got a slot


def test_reset_restarts_the_counters_but_keeps_the_leases_in_flight(base_url: str) -> None:
    bg = Background(base_url)
    bg.send("holder", "/v1/chat/completions", chat_body("sim-gpu::slots=1,latency=600"))
    wait_until(lambda: gpu(base_url).get("in_use") == 1, "the holder on the GPU")
    # Its own 200 ms on the slot keep the two answers apart for the client threads.
    bg.send("waiter", "/v1/chat/completions", chat_body("sim-gpu::slots=1,latency=200"))
    wait_until(lambda: gpu(base_url).get("waiting") == 1, "the waiter queued")
    reset_simulator(base_url)
    after = gpu(base_url)
    assert after["in_use"] == 1 and after["waiting"] == 1
    assert after["acquired"] == 0 and after["queued"] == 0
    assert after["peak_in_use"] == 1 and after["peak_waiting"] == 1
    bg.join()
    assert bg.done == ["holder", "waiter"]
    end = gpu(base_url)
    assert end["in_use"] == 0 and end["acquired"] == 1 and end["queued"] == 1


def test_slots_must_be_a_positive_count(base_url: str) -> None:
    for bad in ("0", "x", "-1"):
        status, body = post(base_url, "/v1/chat/completions", chat_body(f"sim-bad::slots={bad}"))
        assert status == 400
        assert body["error"]["code"] == "invalid_mock_directive"
        assert "slots" in body["error"]["message"]
    assert "sim-bad" not in simulator_stats(base_url).get("gpus", {})


def test_a_rate_limited_request_takes_no_slot(base_url: str) -> None:
    model = "sim-gpu::slots=1,rpm=1"
    assert post(base_url, "/v1/chat/completions", chat_body(model))[0] == 200
    assert post(base_url, "/v1/chat/completions", chat_body(model))[0] == 429
    assert gpu(base_url)["acquired"] == 1


def test_a_waiter_cancelled_as_the_slot_reaches_it_passes_the_slot_on() -> None:
    async def scenario() -> None:
        pool = GpuPool(1)
        await pool.acquire()  # held by "us"
        second = asyncio.ensure_future(pool.acquire())
        third = asyncio.ensure_future(pool.acquire())
        await until(lambda: pool.snapshot()["waiting"] == 2, "two waiters")
        pool.release()  # the slot goes to `second`…
        second.cancel()  # …which is cancelled before it runs again
        await third  # so it passes to `third`
        assert second.cancelled()
        assert pool.in_use == 1 and pool.snapshot()["waiting"] == 0
        pool.release()
        assert pool.in_use == 0

    asyncio.run(scenario())


def test_a_waiter_cancelled_in_the_queue_is_skipped() -> None:
    async def scenario() -> None:
        pool = GpuPool(1)
        await pool.acquire()
        gone = asyncio.ensure_future(pool.acquire())
        stays = asyncio.ensure_future(pool.acquire())
        await until(lambda: pool.snapshot()["waiting"] == 2, "two waiters")
        gone.cancel()
        pool.release()  # before `gone` ran its cleanup: it must be skipped, not handed a slot
        await stays
        assert pool.in_use == 1 and pool.queued == 1
        pool.release()
        assert pool.in_use == 0 and pool.snapshot()["waiting"] == 0

    asyncio.run(scenario())


def test_growing_the_gpu_admits_waiters_and_shrinking_lets_leases_finish() -> None:
    async def scenario() -> None:
        pool = GpuPool(1)
        await pool.acquire()
        waiter = asyncio.ensure_future(pool.acquire())
        await until(lambda: pool.snapshot()["waiting"] == 1, "a waiter")
        pool.resize(2)
        await waiter
        assert pool.in_use == 2 and pool.peak_in_use == 2
        pool.resize(1)
        late = asyncio.ensure_future(pool.acquire())
        await until(lambda: pool.snapshot()["waiting"] == 1, "a late waiter")
        pool.release()  # 2 in use on a 1-slot GPU: this one just ends
        assert pool.in_use == 1 and not late.done()
        pool.release()  # now the slot passes on
        await late
        assert pool.in_use == 1
        pool.release()
        assert pool.in_use == 0

    asyncio.run(scenario())


def test_a_slot_taken_outside_a_request_scope_is_refused() -> None:
    async def scenario() -> None:
        gpus = Gpus()
        with pytest.raises(RuntimeError, match="holding"):
            await gpus.acquire("m", 1)
        with holding():
            await gpus.acquire("m", 1)
            assert gpus.snapshot()["m"]["in_use"] == 1
        assert gpus.snapshot()["m"]["in_use"] == 0

    asyncio.run(scenario())
