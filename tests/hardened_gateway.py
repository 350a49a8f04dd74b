"""A gateway with tight hardening limits, a master key and secret-echoing upstreams.

Shared by tests/e2e/test_hardening.py and tests/e2e/test_fuzz_api.py.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gateway.ledger.migrate import upgrade
from gateway.settings import Settings
from tests.conftest import SIM_KEY
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway

MASTER_KEY = "fbx-master-hardening-0123456789"
CLIENT_KEY = "sk-hardening-client-abcdef123456"
# A provider key that no upstream accepts: only ever sent upstream, never shown.
OTHER_PROVIDER_KEY = "sk-other-provider-secret-9876543210"
SECRETS = (MASTER_KEY, CLIENT_KEY, SIM_KEY, OTHER_PROVIDER_KEY)

BODY_TIMEOUT_S = 0.5
MAX_HEADER_COUNT = 40
MAX_HEADER_BYTES = 8192
MAX_BODY_BYTES = 65536
MAX_JSON_DEPTH = 16
MAX_ARRAY_ITEMS = 1000

HARDENED_YAML = f"""
auth:
  keys:
    - {{name: hardening, key: "{CLIENT_KEY}"}}
server:
  max_body_bytes: {MAX_BODY_BYTES}
  max_json_depth: {MAX_JSON_DEPTH}
  max_array_items: {MAX_ARRAY_ITEMS}
  max_object_keys: {MAX_ARRAY_ITEMS}
  max_header_count: {MAX_HEADER_COUNT}
  max_header_bytes: {MAX_HEADER_BYTES}
  body_timeout_s: {BODY_TIMEOUT_S}
providers:
  sim: {{kind: serverless, protocol: openai, api_base: "${{SIM_URL}}/v1", api_key: "${{SIM_KEY}}"}}
  other: {{kind: serverless, protocol: openai, api_base: "${{SIM_URL}}/v1",
           api_key: "{OTHER_PROVIDER_KEY}"}}
deployments:
  small@sim: {{provider: sim, model: sim-small}}
  embed@sim: {{provider: sim, model: sim-embed}}
  echo400@sim: {{provider: sim, model: "sim-echo::status=400,echo_key"}}
  echo429@sim: {{provider: sim, model: "sim-echo::status=429,echo_key"}}
  echo500@sim: {{provider: sim, model: "sim-echo::status=500,echo_key"}}
  echomid@sim: {{provider: sim, model: "sim-echo::midstream_error=2,tokens=6,echo_key"}}
  rejected@other: {{provider: other, model: "sim-small::echo_key"}}
routes:
  chat: {{targets: [small@sim]}}
  embeddings: {{targets: [embed@sim]}}
  logged: {{targets: [small@sim], log_payloads: true}}
  echo400: {{targets: [echo400@sim]}}
  echo429: {{targets: [echo429@sim]}}
  echo500: {{targets: [echo500@sim]}}
  echomid: {{targets: [echomid@sim]}}
  rejected: {{targets: [rejected@other]}}
"""


def hardened_settings(directory: Path) -> Settings:
    url = f"sqlite+aiosqlite:///{directory / 'ledger.db'}"
    upgrade(url)
    return Settings(
        database_url=url,
        spool_dir=str(directory / "spool"),
        master_key=MASTER_KEY,
        metrics_on_api_port="open",  # in-process: no metrics listener
    )


@pytest.fixture(scope="module")
def hardened(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    config = config_from_yaml(HARDENED_YAML, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    with running_gateway(config, hardened_settings(tmp_path_factory.mktemp("hardened"))) as gw:
        yield gw


def request(
    gateway: RunningGateway,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    key: str | None = CLIENT_KEY,
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(gateway.root)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    sent = {"Content-Type": "application/json"}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    sent.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw_exchange(gateway: RunningGateway, data: bytes, wait_s: float = 5.0) -> bytes:
    """Send `data` on a raw socket, then read until the server closes or `wait_s` passes."""
    parts = urlsplit(gateway.root)
    with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=wait_s) as s:
        s.sendall(data)
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received


def leaked(*texts: str | bytes) -> list[str]:
    """The configured secrets found in any of `texts`."""
    found: list[str] = []
    for text in texts:
        value = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        found.extend(secret for secret in SECRETS if secret in value)
    return found
