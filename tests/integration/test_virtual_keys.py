"""Virtual keys end to end: the admin API and `farebox keys` on real Postgres + Redis, clients
through the real OpenAI SDK, answers from the simulator. The cross-replica revocation tests
(three `farebox serve` processes) are in test_virtual_keys_replicas.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.settings import Settings
from tests.conftest import SIM_KEY
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import sql_rows, wait_for_rows
from tests.services import PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parents[2]
MASTER = "master-key-for-virtual-key-tests"

KEYS_YAML = """
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
deployments:
  small@sim: {provider: sim, model: sim-small, price: {input: 0.1, output: 0.2}}
routes:
  chat: {targets: [small@sim]}
  other: {targets: [small@sim]}
"""


@dataclass
class Env:
    gw: RunningGateway
    pg_url: str
    redis_url: str

    def admin(self, method: str, path: str, key: str = MASTER, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, self.gw.root + path, headers=headers, timeout=10, **kw)

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(api_key=key, base_url=self.gw.base_url, max_retries=0, timeout=10)

    def chat(self, key: str, model: str = "chat") -> str:
        """The request id of a successful call."""
        raw = self.client(key).chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        raw.parse()
        return raw.headers["x-request-id"]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "FAREBOX_DATABASE_URL": self.pg_url,
            "FAREBOX_REDIS_URL": self.redis_url,
        }
        return subprocess.run(
            [sys.executable, "-m", "gateway", "keys", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env=env,
        )


@pytest.fixture
def env(simulator: str, pg_url: str, redis_server: RedisServer, tmp_path: Path) -> Iterator[Env]:
    config = config_from_yaml(KEYS_YAML, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    settings = Settings(
        database_url=pg_url,
        master_key=MASTER,
        redis_url=redis_server.url,
        spool_dir=str(tmp_path / "spool"),
    )
    with running_gateway(config, settings) as gw:
        yield Env(gw, pg_url, redis_server.url)


def refused(env: Env, key: str) -> openai.AuthenticationError:
    with pytest.raises(openai.AuthenticationError) as err:
        env.chat(key)
    return err.value


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


def test_admin_api_lifecycle_and_ledger_attribution(env: Env) -> None:
    created = env.admin(
        "POST",
        "/admin/keys",
        json={
            "name": "alice",
            "team": "ml-platform",
            "rpm": 600,
            "budget_usd": "250.50",
            "soft_budget_ratio": 0.8,
            "tags": {"segment": "enterprise", "workload": "support-chat"},
        },
    )
    assert created.status_code == 201, created.text
    key = created.json()
    secret = key["secret"]
    assert secret.startswith("fbx-") and len(secret) > 40
    assert key["key_prefix"] == secret[:8] and key["status"] == "active"
    assert key["budget_usd"] == 250.5 and key["rpm"] == 600

    # The new key works through the OpenAI SDK, and the ledger row names key, team, segment.
    request_id = env.chat(secret)
    rows = wait_for_rows(
        env.pg_url,
        "SELECT key_id, team, segment, workload FROM requests WHERE id = :id",
        {"id": request_id},
    )
    assert [tuple(r) for r in rows] == [(key["id"], "ml-platform", "enterprise", "support-chat")]

    # Listing and showing never reveal the secret or its hash.
    stored_hash = sql_rows(env.pg_url, "SELECT key_hash FROM api_keys")[0][0]
    for path in ("/admin/keys", f"/admin/keys/{key['id']}"):
        shown = env.admin("GET", path)
        assert shown.status_code == 200
        assert secret not in shown.text and stored_hash not in shown.text
        assert "key_hash" not in shown.text and "secret" not in shown.text
    listed = env.admin("GET", "/admin/keys").json()["data"]
    assert [(k["id"], k["key_prefix"]) for k in listed] == [(key["id"], secret[:8])]

    # A virtual key is a client key: 403 on the admin API, whether cached or not.
    forbidden = env.admin("GET", "/admin/keys", key=secret)
    assert forbidden.status_code == 403
    assert error_of(forbidden)["code"] == "admin_key_required"

    # Updates apply at once (allowed routes are enforced on the next call).
    patched = env.admin("PATCH", f"/admin/keys/{key['id']}", json={"routes": ["other"]})
    assert patched.status_code == 200 and patched.json()["routes"] == ["other"]
    with pytest.raises(openai.PermissionDeniedError):
        env.chat(secret, "chat")
    env.chat(secret, "other")

    # Rotation: same id and limits, new secret; the old one is refused immediately.
    rotated = env.admin("POST", f"/admin/keys/{key['id']}/rotate")
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret != secret and rotated.json()["id"] == key["id"]
    assert rotated.json()["rpm"] == 600 and rotated.json()["budget_usd"] == 250.5
    assert "Incorrect API key provided" in str(refused(env, secret))
    env.chat(new_secret, "other")

    revoked = env.admin("POST", f"/admin/keys/{key['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    message = str(refused(env, new_secret))
    assert "Incorrect API key provided" in message and new_secret not in message
    again = env.admin("POST", f"/admin/keys/{key['id']}/rotate")
    assert again.status_code == 409 and error_of(again)["code"] == "key_revoked"

    audit = env.admin("GET", "/admin/audit").json()["data"]
    assert [a["action"] for a in audit] == ["key.revoke", "key.rotate", "key.update", "key.create"]
    assert {a["actor"] for a in audit} == {"admin-api"}
    assert {a["client"] for a in audit} == {"127.0.0.1"}
    assert {a["target"] for a in audit} == {key["id"]}
    assert audit[-1]["detail"]["tags"] == {"segment": "enterprise", "workload": "support-chat"}
    assert secret not in json.dumps(audit) and new_secret not in json.dumps(audit)


def test_expired_keys_are_refused_with_a_clear_message(env: Env) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    key = env.admin("POST", "/admin/keys", json={"name": "temp", "expires_at": soon}).json()
    env.chat(key["secret"])
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    assert env.admin("PATCH", f"/admin/keys/{key['id']}", json={"expires_at": past}).is_success
    assert "This API key has expired." in str(refused(env, key["secret"]))
    assert env.admin("GET", f"/admin/keys/{key['id']}").json()["status"] == "expired"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/admin/keys", {"name": "x", "colour": "red"}, 400, None),
        ("POST", "/admin/keys", {"name": ""}, 400, None),
        ("POST", "/admin/keys", {"name": "x", "rpm": 0}, 400, None),
        ("POST", "/admin/keys", {"name": "x", "rpm": 2**40}, 400, None),
        ("POST", "/admin/keys", {"name": "nul\u0000"}, 400, None),
        ("POST", "/admin/keys", {"name": "x", "budget_usd": "NaN"}, 400, None),
        ("POST", "/admin/keys", {"name": "x", "soft_budget_ratio": 2}, 400, None),
        ("POST", "/admin/keys", {"name": "x", "tags": {"a": 1}}, 400, None),
        ("POST", "/admin/keys", {"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, 400, None),
        ("POST", "/admin/keys", [1, 2], 400, None),
        ("PATCH", "/admin/keys/key_0123abcd", {"rpm": 5}, 404, "key_not_found"),
        ("PATCH", "/admin/keys/key_0123abcd", {"name": None}, 400, None),
        ("PATCH", "/admin/keys/key_0123abcd", {}, 400, None),
        ("GET", "/admin/keys/not-a-key-id%00", None, 404, "key_not_found"),
        ("POST", "/admin/keys/key_ffff/revoke", None, 404, "key_not_found"),
    ],
)
def test_bad_admin_requests_get_openai_shaped_errors(
    env: Env, method: str, path: str, body: Any, status: int, code: str | None
) -> None:
    response = env.admin(method, path, json=body) if body is not None else env.admin(method, path)
    assert response.status_code == status, response.text
    error = error_of(response)
    if code is not None:
        assert error["code"] == code


def test_admin_auth_comes_first(env: Env) -> None:
    anonymous = env.admin("POST", "/admin/keys", key="", content=b"{not json")
    assert anonymous.status_code == 401 and "Missing admin key" in error_of(anonymous)["message"]
    wrong = env.admin("POST", "/admin/keys", key="fbx-guess", json={"name": "x"})
    assert wrong.status_code == 401 and error_of(wrong)["code"] == "invalid_api_key"
    assert sql_rows(env.pg_url, "SELECT count(*) FROM api_keys")[0][0] == 0
    assert sql_rows(env.pg_url, "SELECT count(*) FROM admin_audit")[0][0] == 0


def test_openapi_lists_the_admin_key_routes_and_models(env: Env) -> None:
    assert env.gw.app is not None
    schema = env.gw.app.app.openapi()
    paths = schema["paths"]
    assert {"post", "get"} <= set(paths["/admin/keys"])
    assert {"get", "patch"} <= set(paths["/admin/keys/{key_id}"])
    assert "/admin/keys/{key_id}/revoke" in paths and "/admin/audit" in paths
    create = paths["/admin/keys"]["post"]["requestBody"]["content"]["application/json"]
    assert create["schema"]["title"] == "KeyCreate"
    assert create["schema"]["additionalProperties"] is False


def test_cli_create_list_rotate_revoke(env: Env) -> None:
    made = env.cli(
        "create", "batch-jobs", "--team", "data", "--tpm", "50000", "--tag", "segment=internal",
        "--json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    secret = key["secret"]
    request_id = env.chat(secret)
    rows = wait_for_rows(
        env.pg_url, "SELECT key_id, team, segment FROM requests WHERE id = :id", {"id": request_id}
    )
    assert [tuple(r) for r in rows] == [(key["id"], "data", "internal")]

    listed = env.cli("list", "--json")
    assert listed.returncode == 0 and secret not in listed.stdout
    assert [k["id"] for k in json.loads(listed.stdout)] == [key["id"]]
    table = env.cli("list")
    assert table.returncode == 0 and key["id"] in table.stdout and secret not in table.stdout

    human = env.cli("rotate", key["id"])
    assert human.returncode == 0 and "not shown again" in human.stdout
    new_secret = human.stdout.split("secret: ")[1].split()[0]
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # the CLI announces through Redis: at once
        try:
            env.chat(secret)
        except openai.AuthenticationError:
            break
        time.sleep(0.02)  # poll: a condition wait
    refused(env, secret)
    env.chat(new_secret)

    assert env.cli("update", key["id"], "--rpm", "10", "--json").returncode == 0
    assert env.admin("GET", f"/admin/keys/{key['id']}").json()["rpm"] == 10
    assert env.cli("revoke", key["id"]).returncode == 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            env.chat(new_secret)
        except openai.AuthenticationError:
            break
        time.sleep(0.02)  # poll: a condition wait
    refused(env, new_secret)

    audit = env.admin("GET", "/admin/audit").json()["data"]
    assert [a["action"] for a in audit] == ["key.revoke", "key.update", "key.rotate", "key.create"]
    assert all(a["actor"].startswith("cli:") for a in audit)


def test_cli_errors_are_one_clean_line(env: Env, tmp_path: Path) -> None:
    unknown = env.cli("revoke", "key_0000")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "error: no API key with id key_0000"
    bad = env.cli("create", "x", "--rpm", "0")
    assert bad.returncode == 1 and "rpm" in bad.stderr and "Traceback" not in bad.stderr
    down = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "list"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={
            **os.environ,
            "FAREBOX_DATABASE_URL": "postgresql+asyncpg://farebox:secret@127.0.0.1:9/none",
        },
    )
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert "cannot reach the key database" in down.stderr and "secret" not in down.stderr


def test_admin_bodies_are_bounded(env: Env) -> None:
    huge = env.admin("POST", "/admin/keys", content=b'{"name": "' + b"x" * 200_000 + b'"}')
    assert huge.status_code == 413 and error_of(huge)["code"] == "request_too_large"
    deep = env.admin("POST", "/admin/keys", content=b'{"name":"x","tags":' + b"[" * 5000 + b"}")
    assert deep.status_code == 400 and error_of(deep)["message"].startswith("Invalid request")


def test_database_down_cached_keys_work_unseen_keys_get_503(
    env: Env, postgres: PostgresServer
) -> None:
    key = env.admin("POST", "/admin/keys", json={"name": "steady"}).json()
    env.chat(key["secret"])
    postgres.stop()
    try:
        env.chat(key["secret"])  # from the cache; the ledger row goes to the spool
        with pytest.raises(openai.InternalServerError) as err:
            env.chat("fbx-never-seen-before")
        assert err.value.status_code == 503
        assert "key database is unreachable" in str(err.value)
        created = env.admin("POST", "/admin/keys", json={"name": "during-outage"})
        assert created.status_code == 503
        assert error_of(created)["code"] == "key_store_unavailable"
    finally:
        postgres.start()
    deadline = time.monotonic() + 10
    while True:  # unknown keys are plain 401s again once the database answers
        try:
            refused(env, "fbx-never-seen-after")
            break
        except openai.InternalServerError:
            assert time.monotonic() < deadline
            time.sleep(0.2)  # poll: a condition wait
    env.chat(key["secret"])


def test_without_a_ledger_there_are_only_static_keys(simulator: str) -> None:
    config = config_from_yaml(KEYS_YAML, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    with running_gateway(config, Settings(master_key=MASTER, ledger_enabled=False)) as gw:
        env = Env(gw, "", "")
        disabled = env.admin("GET", "/admin/keys")
        assert disabled.status_code == 403
        assert error_of(disabled)["code"] == "virtual_keys_disabled"
        assert "Incorrect API key" in str(refused(env, "fbx-anything"))
        env.chat(MASTER)
