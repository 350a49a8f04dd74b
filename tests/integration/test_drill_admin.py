"""/admin/drills through a running gateway: Postgres ledger, Redis, the simulator upstream.

A drill is started over HTTP, live traffic is sent through the gateway, and the gateway itself
(DrillBoard) writes the verdict when the drill is stopped or aborts itself.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.ledger.drills_repository import DrillsRepository
from tests.drill_env import CLIENT, DrillEnv, drill_env
from tests.ledger_reads import sql_rows
from tests.redis_topologies import on_every_topology
from tests.services import RedisServer


@pytest.fixture
def env(
    simulator: str, pg_url: str, redis_server: RedisServer, tmp_path: Path
) -> Iterator[DrillEnv]:
    with drill_env(simulator, pg_url, redis_server.url, tmp_path) as running:
        yield running


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, object] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@on_every_topology
def test_drill_lifecycle_over_the_admin_api(env: DrillEnv, redis_server: RedisServer) -> None:
    started = env.admin(
        "POST", "/admin/drills", json={"route": "chat", "to": "alt@sim", "percent": 100}
    )
    assert started.status_code == 201, started.text
    drill = started.json()
    assert drill["object"] == "drill" and drill["status"] == "running"
    assert (drill["route"], drill["target"], drill["percent"]) == ("chat", "alt@sim", 100)
    assert drill["created_by"] == "admin-api" and drill["result"] is None
    drill_id = drill["id"]

    again = env.admin("POST", "/admin/drills", json={"route": "chat", "to": "alt@sim"})
    assert again.status_code == 409 and error_of(again)["code"] == "drill_running"

    # The announcement reached the board at once: every request now goes to the drill target.
    answers = env.chat(25)
    assert all(r.status_code == 200 for r in answers)
    assert {r.headers["x-farebox-deployment"] for r in answers} == {"alt@sim"}
    assert {r.headers["x-farebox-drill"] for r in answers} == {drill_id}
    # Another route is untouched.
    (other,) = env.chat(1, route="other")
    assert "x-farebox-drill" not in other.headers

    live = env.wait_attempts(drill_id, 25)
    assert live["progress"]["attempts"] == 25 and live["progress"]["success_rate"] == 1.0
    listing = env.admin("GET", "/admin/drills").json()
    assert listing["object"] == "list" and listing["data"][0]["id"] == drill_id
    assert "report" not in listing["data"][0] and listing["data"][0]["progress"]["attempts"] == 25

    report = env.admin("GET", f"/admin/drills/{drill_id}/report")
    assert report.status_code == 409 and error_of(report)["code"] == "drill_not_finished"

    stopped = env.admin("POST", f"/admin/drills/{drill_id}/stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["status"] == "stopping"
    done = env.wait_status(drill_id, {"stopped"})
    assert done["status"] == "stopped" and done["result"] == "PASS", done
    assert done["verdict"]["drill_side"]["attempts"] == 25 and done["verdict"]["reasons"] == []

    markdown = env.admin("GET", f"/admin/drills/{drill_id}/report")
    assert markdown.status_code == 200
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text.startswith(f"# Drill {drill_id}: PASS")

    # Stopped drills are no longer applied, cannot be stopped twice, and free the route.
    assert "x-farebox-drill" not in env.chat(1)[0].headers
    twice = env.admin("POST", f"/admin/drills/{drill_id}/stop")
    assert twice.status_code == 409 and error_of(twice)["code"] == "drill_not_running"
    verdicts = env.admin("GET", "/admin/drills").json()["last_verdicts"]
    assert verdicts["chat"]["result"] == "PASS" and verdicts["chat"]["drill_id"] == drill_id
    metrics = env.admin("GET", "/metrics", key=None).text
    assert re.search(r'farebox_drill_last_verdict\{route="chat"\} 1\.0', metrics)

    # Both actions are in the admin audit trail.
    audit = sql_rows(
        env.pg_url,
        "SELECT action, actor FROM admin_audit WHERE target = :id ORDER BY at",
        {"id": drill_id},
    )
    assert [tuple(r) for r in audit] == [("drill.start", "admin-api"), ("drill.stop", "admin-api")]


def test_failing_target_aborts_while_the_primary_serves(env: DrillEnv) -> None:
    started = env.admin(
        "POST",
        "/admin/drills",
        json={"route": "chat", "to": "broken@sim", "percent": 100, "abort_after_errors": 5},
    )
    assert started.status_code == 201, started.text
    drill_id = started.json()["id"]
    # The cohort is answered by the route's own plan behind the failing target.
    answers = env.chat(12)
    assert all(r.status_code == 200 for r in answers)
    assert {r.headers["x-farebox-deployment"] for r in answers} == {"small@sim"}
    done = env.wait_status(drill_id, {"aborted"})
    assert done["status"] == "aborted" and done["result"] == "FAIL", done
    assert any(r.startswith("aborted") for r in done["verdict"]["reasons"])
    # Once aborted, nobody is sent to the broken target any more.
    later = env.chat(5)
    assert all("x-farebox-drill" not in r.headers for r in later)


def test_bad_requests_are_4xx_with_reasons(env: DrillEnv) -> None:
    def start(body: object) -> tuple[int, dict[str, object]]:
        response = env.admin("POST", "/admin/drills", json=body)
        return response.status_code, error_of(response)

    status, error = start({"route": "chta", "to": "alt@sim"})
    assert (
        status == 400
        and error["param"] == "route"
        and "did you mean 'chat'" in str(error["message"])
    )
    status, error = start({"route": "chat", "to": "nope@sim"})
    assert status == 400 and error["param"] == "to"
    status, error = start({"route": "chat", "to": "small@sim"})
    assert status == 400 and "primary" in str(error["message"])
    bodies: list[object] = [
        {"route": "chat", "to": "alt@sim", "percent": 0},
        {"route": "chat", "to": "alt@sim", "percent": 101},
        {"route": "chat", "to": "alt@sim", "minutes": 10**30},
        {"route": "chat", "to": "alt@sim", "colour": "red"},
        {"to": "alt@sim"},
        [],
        "x",
    ]
    for body in bodies:
        status, error = start(body)
        assert status == 400, body
    empty = env.admin("POST", "/admin/drills", content=b"")
    assert empty.status_code == 400
    junk = env.admin("POST", "/admin/drills", content=b"{not json")
    assert junk.status_code == 400

    # Authorization comes first: no key 401, a client key 403.
    assert env.admin("GET", "/admin/drills", key=None).status_code == 401
    assert env.admin("GET", "/admin/drills", key=CLIENT).status_code == 403
    anonymous = env.admin("POST", "/admin/drills", key=None, json={"colour": 1})
    assert anonymous.status_code == 401

    for path in ("drill_0123456789ab", "nope", "drill_" + "z" * 10, "drill_" + "0" * 100):
        for method, suffix in (("GET", ""), ("POST", "/stop"), ("GET", "/report")):
            response = env.admin(method, f"/admin/drills/{path}{suffix}")
            assert response.status_code == 404, (method, path, suffix, response.text)
            assert error_of(response)["code"] in ("drill_not_found", "not_found")
    assert env.admin("GET", "/admin/drills?limit=0").status_code == 400
    # Nothing was started by any of that.
    assert env.admin("GET", "/admin/drills").json()["data"] == []


def test_drills_are_in_the_openapi_document(env: DrillEnv) -> None:
    assert env.gw.app is not None
    paths = env.gw.app.app.openapi()["paths"]
    assert {"/admin/drills", "/admin/drills/{drill_id}", "/admin/drills/{drill_id}/stop"} <= set(
        paths
    )
    body = paths["/admin/drills"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    # `to` or `guard` (checks on trial): the model says which is missing.
    assert body["additionalProperties"] is False and set(body["required"]) == {"route"}
    assert {"to", "guard"} <= set(body["properties"])


def test_last_verdict_gauge_is_restored_at_start_up(
    simulator: str, pg_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    async def finished_drill() -> None:
        repo = DrillsRepository.create(pg_url)
        try:
            row = await repo.start("other", "alt@sim", 5, 15)
            await repo.finish(row.id, "completed", "FAIL", {"reasons": ["too few"]}, "# x\n")
        finally:
            await repo.close()

    asyncio.run(finished_drill())
    with drill_env(simulator, pg_url, redis_server.url, tmp_path) as env:
        metrics = env.admin("GET", "/metrics", key=None).text
        assert re.search(r'farebox_drill_last_verdict\{route="other"\} 0\.0', metrics)
        verdicts = env.admin("GET", "/admin/drills").json()["last_verdicts"]
        assert verdicts["other"]["result"] == "FAIL"
        assert verdicts["other"]["reasons"] == ["too few"]
