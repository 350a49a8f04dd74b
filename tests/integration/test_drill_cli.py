"""`farebox drill start|status|stop|report` against real Postgres and Redis, with a running
gateway that applies the drills and writes the verdicts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner, Result

from gateway.cli.main import app
from tests.conftest import SIM_KEY
from tests.drill_env import DrillEnv, drill_env
from tests.ledger_reads import sql_rows
from tests.services import RedisServer, free_port


@pytest.fixture
def env(
    simulator: str, pg_url: str, redis_server: RedisServer, tmp_path: Path
) -> Iterator[DrillEnv]:
    with drill_env(simulator, pg_url, redis_server.url, tmp_path) as running:
        yield running


def drill(env: DrillEnv, *args: str, **overrides: str) -> Result:
    variables = {
        "FAREBOX_DATABASE_URL": env.pg_url,
        "FAREBOX_REDIS_URL": env.redis_url,
        "FAREBOX_CONFIG": str(env.config_file),
        **overrides,
    }
    return CliRunner().invoke(app, ["drill", *args], env=variables)


def started_id(result: Result) -> str:
    assert result.exit_code == 0, result.output
    drill_id: str = json.loads(result.stdout)["id"]
    return drill_id


def test_start_status_stop_report(env: DrillEnv, tmp_path: Path) -> None:
    # Subscribe first: the start must be announced on farebox:drills.
    client = redis.Redis.from_url(env.redis_url)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe("farebox:drills")
    subscribed = pubsub.get_message(timeout=2)
    assert subscribed is not None and subscribed["type"] == "subscribe"

    result = drill(env, "start", "chat", "--to", "alt@sim", "--percent", "100", "--minutes", "5")
    assert result.exit_code == 0, result.output
    assert "% of route chat to alt@sim" in result.stdout
    drill_id = result.stdout.split()[1].rstrip(":")
    message = pubsub.get_message(timeout=5)
    while message is not None and message["type"] != "message":
        message = pubsub.get_message(timeout=5)
    assert message is not None and message["data"] == b"changed"
    pubsub.close()
    client.close()

    # A second drill on the same route is refused while this one runs.
    busy = drill(env, "start", "chat", "--to", "alt@sim")
    assert busy.exit_code == 1 and "already has drill" in busy.stderr

    answers = env.chat(25)
    assert {r.headers.get("x-farebox-drill") for r in answers} == {drill_id}
    env.wait_attempts(drill_id, 25)

    status = drill(env, "status")
    assert status.exit_code == 0, status.output
    assert drill_id in status.stdout and "Running drills" in status.stdout
    as_json = json.loads(drill(env, "status", "--json").stdout)
    (running,) = [d for d in as_json["data"] if d["id"] == drill_id]
    assert running["progress"]["attempts"] == 25 and running["progress"]["success_rate"] == 1.0
    one = drill(env, "status", drill_id)
    assert one.exit_code == 0 and "attempts" in one.stdout and "25" in one.stdout

    early = drill(env, "report", drill_id)
    assert early.exit_code == 1 and "no verdict yet" in early.stderr

    stopped = drill(env, "stop", drill_id, "--wait", "--timeout", "30")
    assert stopped.exit_code == 0, stopped.output
    assert "stopping" in stopped.stdout and "PASS" in stopped.stdout

    out = tmp_path / "drill.md"
    report = drill(env, "report", drill_id, "--out", str(out))
    assert report.exit_code == 0, report.output
    assert "PASS" in report.stdout and "alt@sim" in report.stdout
    assert out.read_text().startswith(f"# Drill {drill_id}: PASS")
    verdict = json.loads(drill(env, "report", drill_id, "--json").stdout)
    assert verdict["result"] == "PASS" and verdict["drill_side"]["attempts"] == 25

    # The last verdict per route is in `status`.
    after = json.loads(drill(env, "status", "--json").stdout)
    assert after["last_verdicts"]["chat"]["drill_id"] == drill_id
    assert "Last verdicts" in drill(env, "status").stdout
    again = drill(env, "stop", drill_id)
    assert again.exit_code == 1 and "already finished" in again.stderr

    actors = sql_rows(env.pg_url, "SELECT action, actor FROM admin_audit ORDER BY at")
    assert [r[0] for r in actors] == ["drill.start", "drill.stop"]
    assert all(str(r[1]).startswith("cli:") for r in actors)


def test_failing_verdict_exits_3(env: DrillEnv) -> None:
    # No traffic at all: too few drill attempts to judge the fallback is a FAIL.
    drill_id = started_id(drill(env, "start", "chat", "--to", "alt@sim", "--json"))
    stopped = drill(env, "stop", drill_id, "--wait", "--timeout", "30")
    assert stopped.exit_code == 3, stopped.output
    assert "FAIL" in stopped.stdout and "only 0 drill attempts" in stopped.stdout
    report = drill(env, "report", drill_id)
    assert report.exit_code == 3 and "only 0 drill attempts" in report.stdout


def test_bad_input_is_a_clear_error(env: DrillEnv, tmp_path: Path) -> None:
    cases = [
        (["start", "chta", "--to", "alt@sim"], "unknown route 'chta' (did you mean 'chat'?)"),
        (["start", "chat", "--to", "alt@sm"], "unknown deployment 'alt@sm'"),
        (["start", "chat", "--to", "small@sim"], "primary"),
        (["start", "chat", "--to", "alt@sim", "--percent", "0"], "--percent"),
        (["start", "chat", "--to", "alt@sim", "--percent", "150"], "--percent"),
        (["start", "chat", "--to", "alt@sim", "--minutes", "-1"], "--minutes"),
        (
            ["start", "chat", "--to", "alt@sim", "--config", str(tmp_path / "no.yaml")],
            "cannot read",
        ),
        (["report", "drill_000000000000"], "no drill with id"),
        (["stop", "drill_000000000000"], "no drill with id"),
        (["status", "drill_000000000000"], "no drill with id"),
    ]
    for args, message in cases:
        result = drill(env, *args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output
    missing_to = drill(env, "start", "chat")  # neither a deployment nor checks to try
    assert missing_to.exit_code == 1
    assert "give --to (a deployment to drill) or --guard" in missing_to.stderr

    # Database unreachable: one line naming it (password hidden), exit 1, well under the
    # driver's own timeout.
    dead = f"postgresql+asyncpg://farebox:secret@127.0.0.1:{free_port()}/nothing"
    begun = time.monotonic()
    result = drill(env, "start", "chat", "--to", "alt@sim", FAREBOX_DATABASE_URL=dead)
    assert result.exit_code == 1 and "cannot reach the drill database" in result.stderr
    assert "secret" not in result.stderr and time.monotonic() - begun < 15
    status = drill(env, "status", FAREBOX_DATABASE_URL=dead)
    assert status.exit_code == 1 and "cannot reach" in status.stderr
    # Nothing was started by any of it.
    assert sql_rows(env.pg_url, "SELECT count(*) FROM drills")[0][0] == 0


def test_start_without_redis_still_reaches_the_gateway(env: DrillEnv) -> None:
    # No FAREBOX_REDIS_URL: no announcement, and the gateway's poll picks the drill up.
    drill_id = started_id(
        drill(
            env,
            "start",
            "chat",
            "--to",
            "alt@sim",
            "--percent",
            "100",
            "--json",
            FAREBOX_REDIS_URL="",
        )
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if env.chat(1)[0].headers.get("x-farebox-drill") == drill_id:
            break
        time.sleep(0.1)  # poll: a condition wait
    else:
        pytest.fail("the gateway did not pick the drill up by polling")
    stopped = drill(env, "stop", drill_id, FAREBOX_REDIS_URL="")
    assert stopped.exit_code == 0 and "stopping" in stopped.stdout


def test_provider_secrets_are_not_needed_to_start(env: DrillEnv, tmp_path: Path) -> None:
    # The operator's shell need not hold the providers' keys: names are what is checked.
    text = env.config_file.read_text().replace(SIM_KEY, "${DRILL_TEST_UNSET_SIM_KEY}")
    config = tmp_path / "no-secrets.yaml"
    config.write_text(text)
    result = drill(env, "start", "chat", "--to", "alt@sim", "--config", str(config))
    assert result.exit_code == 0, result.output
    # A real mistake next to a missing variable is still reported, with its line.
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("fallbacks:", "fallbaks:"))
    result = drill(env, "start", "other", "--to", "alt@sim", "--config", str(broken))
    assert result.exit_code == 1 and "fallbaks" in result.stderr


def test_guard_checks_on_trial_from_a_file(env: DrillEnv, tmp_path: Path) -> None:
    checks = tmp_path / "checks.yaml"
    checks.write_text("- {name: no-keys, detect: [secret], action: block}\n")
    result = drill(env, "start", "chat", "--guard", str(checks), "--percent", "100")
    assert result.exit_code == 0, result.output
    assert "read by guard checks on trial" in result.stdout
    drill_id = result.stdout.split()[1].rstrip(":")
    (answer,) = env.chat(1)
    assert answer.headers["x-farebox-drill"] == drill_id
    assert drill(env, "stop", drill_id, "--wait").exit_code == 0
    broken = tmp_path / "broken.yaml"
    broken.write_text("- {name: x, detect: [secret], action: block\n")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("- {name: x, detect: [ssn], action: block}\n")
    for path, message in ((broken, "--guard"), (wrong, "--guard")):
        failed = drill(env, "start", "chat", "--guard", str(path))
        assert failed.exit_code == 1 and message in failed.stderr, failed.stderr
        assert "Traceback" not in failed.output
