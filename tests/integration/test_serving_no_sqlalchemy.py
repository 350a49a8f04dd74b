"""A serving worker on a Postgres ledger does not load SQLAlchemy (issue #25, item 2): a real
`farebox serve` (Postgres ledger, limits in Redis, a virtual key with a budget) starts, answers
/v1 with that key, writes the request to the ledger and reports ready, and SQLAlchemy's
compiled extensions are still not mapped in its memory. The first admin-API call then loads
SQLAlchemy (which also shows the check can see it)."""

from __future__ import annotations

import asyncio
import glob
import json
import urllib.request
from decimal import Decimal
from pathlib import Path

from gateway.ledger.keys_repository import KeysRepository
from tests.conftest import SIM_KEY
from tests.gateway_process import GatewayProcess, gateway_process
from tests.ledger_reads import wait_for_rows
from tests.services import RedisServer

MASTER = "master-key-for-the-lean-worker-test"
YAML = f"""
providers:
  sim: {{kind: serverless, protocol: openai, api_base: "${{SIM_URL}}/v1", api_key: "{SIM_KEY}"}}
deployments:
  small@sim: {{provider: sim, model: sim-small, price: {{input: 0.1, output: 0.2}}}}
routes:
  chat: {{targets: [small@sim]}}
"""


def _worker_pids(root: int) -> list[int]:
    """The server process and its descendants (one worker here: usually the same process)."""
    pids = [root]
    for children in glob.glob(f"/proc/{root}/task/*/children"):
        for pid in Path(children).read_text().split():
            pids += _worker_pids(int(pid))
    return pids


def _sqlalchemy_mapped(gw: GatewayProcess) -> bool:
    """Whether any of the gateway's processes has a file of the sqlalchemy package mapped (its
    compiled extensions are loaded by `import sqlalchemy`)."""
    for pid in _worker_pids(gw.proc.pid):
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:  # exited meanwhile
            continue
        if "/site-packages/sqlalchemy/" in maps:
            return True
    return False


def _request(gw: GatewayProcess, method: str, path: str, key: str, body: object = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{gw.port}{path}",
        data=data,
        method=method,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
        return int(response.status)


def _create_key(pg_url: str) -> str:
    async def create() -> str:
        repository = KeysRepository.connect(pg_url)
        try:
            fields = {"name": "lean", "rpm": 1000, "budget_usd": Decimal("5")}
            _key, secret = await repository.create(fields, actor="test")
            return secret
        finally:
            await repository.close()

    return asyncio.run(create())


def test_a_serving_worker_on_postgres_never_loads_sqlalchemy(
    simulator: str, pg_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    secret = _create_key(pg_url)
    env = {
        "SIM_URL": simulator,
        "FAREBOX_DATABASE_URL": pg_url,
        "FAREBOX_REDIS_URL": redis_server.url,
        "FAREBOX_MASTER_KEY": MASTER,
    }
    with gateway_process(YAML, tmp_path, env) as gw:
        chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        assert _request(gw, "POST", "/v1/chat/completions", secret, chat) == 200
        # The writer flushed the row (COPY on asyncpg), and the probe pinged the database.
        rows = wait_for_rows(pg_url, "SELECT key_id FROM requests")
        assert len(rows) == 1
        assert _request(gw, "GET", "/readyz", MASTER) == 200
        assert not _sqlalchemy_mapped(gw), "the serving worker loaded SQLAlchemy"
        # The admin API's key repository is SQLAlchemy's, opened on its first use.
        assert _request(gw, "GET", "/admin/keys", MASTER) == 200
        assert _sqlalchemy_mapped(gw)
