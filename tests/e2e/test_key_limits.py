"""Per-key limits as the OpenAI SDK sees them: `x-ratelimit-*` headers, RateLimitError with
OpenAI's codes, no SDK retries against an exhausted budget, route allow-lists (403)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from prometheus_client import REGISTRY

from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.simulator import simulator_stats
from tests.waiting import wait_until

CONFIG = """
auth:
  keys:
    - {name: paced, key: sk-paced-000001, rpm: 3, tpm: 100000}
    - {name: tokens, key: sk-tokens-00001, tpm: 1000}
    - {name: broke, key: sk-broke-000001, budget_usd: 0.0001, soft_budget_ratio: 0.5}
    - {name: narrow, key: sk-narrow-00001, routes: [chat]}
    - {name: free, key: sk-free-0000001}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
deployments:
  small@sim: {provider: sim, model: "sim-small::tokens=5", price: {input: 1.0, output: 2.0}}
  slow@sim: {provider: sim, model: "sim-slow::tokens=5,latency=600", price: {input: 1, output: 2}}
routes:
  chat: {targets: [small@sim]}
  slow: {targets: [slow@sim]}
  other: {targets: [small@sim]}
"""


@pytest.fixture(scope="module")
def gw(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    settings = sqlite_settings(Path(tmp_path_factory.mktemp("limits")))
    with running_gateway(config, settings) as running:
        yield running


def client(gw: RunningGateway, key: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=retries)


def ask(c: openai.OpenAI, model: str = "chat", max_tokens: int = 20) -> object:
    return c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens
    )


def test_rpm_headers_count_down_then_rate_limit_error(gw: RunningGateway) -> None:
    c = client(gw, "sk-paced-000001")
    remaining = []
    for _ in range(3):
        raw = ask(c)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"  # type: ignore[attr-defined]
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])  # type: ignore[attr-defined]
        assert raw.headers["x-ratelimit-limit-tokens"] == "100000"  # type: ignore[attr-defined]
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as caught:
        ask(c)
    err = caught.value
    assert err.code == "rate_limit_exceeded"
    assert "requests per min (RPM): Limit 3" in err.message
    # One request every 20 s: the SDK reads these to back off.
    assert 18_000 <= int(err.response.headers["retry-after-ms"]) <= 20_000
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_tpm_reserves_the_request_cap_and_settles_to_usage(
    gw: RunningGateway, simulator: str
) -> None:
    c = client(gw, "sk-tokens-00001")
    raw = ask(c, max_tokens=600)
    first = int(raw.headers["x-ratelimit-remaining-tokens"])  # type: ignore[attr-defined]
    assert 300 < first < 400  # 1,000 minus 600 reserved and the prompt's estimate
    # The first answer used ~15 tokens, not 600: settling gave the rest back.
    raw = ask(c, max_tokens=600)
    second = int(raw.headers["x-ratelimit-remaining-tokens"])  # type: ignore[attr-defined]
    assert first - 40 < second < first
    # While a 900-token reservation is in flight, a second one does not fit.
    chats = simulator_stats(simulator)["endpoints"]["chat"]
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(ask, c, "slow", 900)
        # Upstream has it (600 ms of simulated latency to go): its reservation is held.
        wait_until(
            lambda: simulator_stats(simulator)["endpoints"]["chat"] > chats, "the slow request"
        )
        with pytest.raises(openai.RateLimitError) as caught:
            ask(c, max_tokens=600)
        slow.result()
    assert "tokens per min (TPM): Limit 1000" in caught.value.message


def test_exhausted_budget_is_insufficient_quota_and_not_retried(
    gw: RunningGateway, simulator: str
) -> None:
    # $0.0001 covers one small request (25 tokens at $1-2/M ≈ $0.00004 reserved), not many.
    c = client(gw, "sk-broke-000001", retries=2)
    refused_before = REGISTRY.get_sample_value("farebox_limits_refused_total", {"check": "budget"})
    served = 0
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(20):
            ask(c)
            served += 1
    assert 1 <= served < 20
    err = caught.value
    assert err.code == "insufficient_quota"
    assert err.type == "insufficient_quota"  # type: ignore[attr-defined]
    assert "monthly budget of $0.0001" in err.message
    # The SDK honours x-should-retry: one refused call, not three.
    assert err.response.headers["x-should-retry"] == "false"
    refused = REGISTRY.get_sample_value("farebox_limits_refused_total", {"check": "budget"})
    assert (refused or 0) - (refused_before or 0) == 1


def test_route_allow_list_is_a_permission_error(gw: RunningGateway) -> None:
    c = client(gw, "sk-narrow-00001")
    ask(c, "chat")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        ask(c, "other")
    assert caught.value.code == "route_not_allowed"
    assert "its routes are: chat" in caught.value.message


def test_keys_without_limits_get_no_limit_headers(gw: RunningGateway) -> None:
    raw = ask(client(gw, "sk-free-0000001"))
    assert "x-ratelimit-limit-requests" not in raw.headers  # type: ignore[attr-defined]
