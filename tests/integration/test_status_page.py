"""The status page (/ui): master key only, and an open breaker shows after a deployment fails.

A real gateway (SQLite ledger) serves traffic; the simulator then fails one deployment
(HTTP 500) until its breaker opens. The page, fetched with the master key, is rendered in
headless Chromium: before the failures no pixel has the open-breaker colour, after them the
open badge does.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.api.status_page import CLOSED_COLOUR, OPEN_COLOUR
from gateway.ledger.migrate import upgrade
from gateway.settings import Settings
from tests.browser import count_colour, screenshot
from tests.conftest import CLIENT_KEY, SIM_KEY
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway

MASTER = "sk-master-status-page-0001"
CONFIG = """
auth:
  keys:
    - {name: tests, key: "%(client_key)s"}
server:
  breaker: {consecutive_failures: 2, cooldown_s: 300}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
deployments:
  small@sim: {provider: sim, model: sim-small, price: {input: 0.1, output: 0.2}}
  flaky@sim: {provider: sim, model: "sim-broken::status=500", price: {input: 1, output: 1}}
routes:
  chat: {targets: [small@sim], workload: support}
  flaky: {targets: [flaky@sim], fallbacks: [small@sim], retry: {attempts: 1}}
"""


@pytest.fixture
def gw(simulator: str, tmp_path: Path) -> Iterator[RunningGateway]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    settings = Settings(
        database_url=url,
        spool_dir=str(tmp_path / "spool"),
        master_key=MASTER,
        request_log=False,
    )
    config = config_from_yaml(
        CONFIG % {"client_key": CLIENT_KEY}, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY}
    )
    with running_gateway(config, settings) as running:
        yield running


def _chat(gw: RunningGateway, route: str) -> int:
    body = {"model": route, "messages": [{"role": "user", "content": "hello"}]}
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    return httpx.post(f"{gw.base_url}/chat/completions", json=body, headers=headers).status_code


def _page(gw: RunningGateway) -> str:
    response = httpx.get(f"{gw.root}/ui", headers={"Authorization": f"Bearer {MASTER}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def test_only_the_master_key_sees_the_page(gw: RunningGateway) -> None:
    anonymous = httpx.get(f"{gw.root}/ui")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Basic")  # browsers prompt
    client = httpx.get(f"{gw.root}/ui", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert client.status_code == 403
    basic = base64.b64encode(f"admin:{MASTER}".encode()).decode()
    browser = httpx.get(f"{gw.root}/ui", headers={"Authorization": f"Basic {basic}"})
    assert browser.status_code == 200 and "Farebox status" in browser.text


def test_an_open_breaker_shows_in_chromium(gw: RunningGateway, tmp_path: Path) -> None:
    for _ in range(3):
        assert _chat(gw, "chat") == 200
    before = _page(gw)
    # Self-contained and self-refreshing: nothing for the browser to fetch, no build step.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", before)
    assert '<meta http-equiv="refresh"' in before
    assert "flaky@sim" in before and "support" in before  # deployments, routes and plans
    assert "strategy" in before
    calm = screenshot(before, tmp_path, "before", window="1200,1600")
    assert count_colour(calm, OPEN_COLOUR) == 0
    assert count_colour(calm, CLOSED_COLOUR) > 200  # the closed badges

    # The simulator fails flaky@sim (HTTP 500): the fallback answers, the breaker opens.
    for _ in range(3):
        assert _chat(gw, "flaky") == 200
    assert gw.state.breakers is not None
    assert gw.state.breakers.snapshot()["flaky@sim"].state == "open"
    after = _page(gw)
    row = re.search(r"<tr><td>flaky@sim</td>.*?</tr>", after, re.S)
    assert row is not None and ">open<" in row.group(0), after
    assert re.search(r"<tr><td>small@sim</td>.*?>closed<", after, re.S)
    shown = screenshot(after, tmp_path, "after", window="1200,1600")
    assert count_colour(shown, OPEN_COLOUR) > 200, "the open badge is visible"
