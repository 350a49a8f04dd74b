"""The real Node `openai` SDK (tests/node, pinned in its package-lock.json) against Farebox:
tests/node/responses.mjs runs chat, Responses JSON and SSE (text and a function call), a
function-tool round trip chained by previous_response_id whose second turn moves to another
target, retrieve, input items, input tokens and delete on each of the four targets
(tests/responses_targets.py), and prints one JSON object of results.

Needs `node` and `npm ci --prefix tests/node` (`make install` runs it): without them these
tests fail saying so; they never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.gateway_harness import RunningGateway
from tests.responses_targets import (
    KEY,
    SERVED_BY,
    TARGETS,
    TEXT,
    assert_ledger_matches_upstream,
    responses_gateway,
)
from tests.wire_recorder import Exchange, validate_exchange

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
SCRIPT = NODE_DIR / "responses.mjs"
STEPS = (
    "chat",
    "create",
    "stream",
    "stream_helper",
    "stream_tool",
    "tool_round_trip",
    "retrieve",
    "input_items",
    "input_tokens",
    "delete",
)


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the Node SDK tests need node >= 20 and npm")
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").is_file():
        pytest.fail(
            "tests/node/node_modules is missing: run `make install` "
            "(or `npm ci --prefix tests/node`)"
        )
    return node


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, str]]:
    with responses_gateway(Path(tmp_path_factory.mktemp("node-sdk"))) as pair:
        yield pair


def run_script(gw: RunningGateway, model: str, next_model: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "BASE_URL": gw.base_url,
        "API_KEY": KEY,
        "MODEL": model,
        "NEXT_MODEL": next_model,
    }
    done = subprocess.run(
        [node_binary(), str(SCRIPT)],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    results: dict[str, Any] = orjson.loads(done.stdout)
    failed = {name: results[name] for name in STEPS if not results[name]["ok"]}
    assert not failed, f"steps failed on {model}: {failed}"
    # Every body the Node SDK received, against OpenAI's spec.
    for sent in results["wire"]:
        body = bytearray(sent.pop("body").encode())
        validate_exchange(Exchange(**sent, body=body, complete=True))
    assert len(results["wire"]) >= 12
    return results


#: Each target serves the whole script; the tool round trip's second turn moves to the next.
MOVES = [(target, TARGETS[(n + 1) % len(TARGETS)]) for n, target in enumerate(TARGETS)]


@pytest.mark.parametrize(("target", "next_target"), MOVES)
def test_node_sdk_unchanged(
    served: tuple[RunningGateway, str], target: str, next_target: str
) -> None:
    gw, _ = served
    results = run_script(gw, target, next_target)
    assert results["chat"]["object"] == "chat.completion" and results["chat"]["text"]
    create = results["create"]
    assert create["object"] == "response" and create["status"] == "completed"
    assert create["text"] == TEXT and create["output_types"][-1] == "message"
    assert create["output_tokens"] == 5 and create["input_tokens"] > 0
    assert create["request_id"].startswith("req_")

    stream = results["stream"]
    assert stream["types"][0] == "response.created"
    assert stream["types"][-1] == "response.completed"
    assert "response.output_text.delta" in stream["types"]
    assert stream["sequence"] == list(range(len(stream["types"])))
    assert stream["text"] == stream["final_text"] == TEXT

    helper = results["stream_helper"]
    assert helper["text"] == helper["final_text"] == TEXT and helper["status"] == "completed"

    streamed_tool = results["stream_tool"]
    assert "response.function_call_arguments.delta" in streamed_tool["types"]
    assert streamed_tool["types"][-1] == "response.completed"
    assert isinstance(streamed_tool["arguments"]["city"], str)
    assert streamed_tool["final_types"] == ["function_call"]

    tool = results["tool_round_trip"]
    assert tool["call_name"] == "get_weather"
    assert isinstance(tool["call_arguments"]["city"], str)
    assert tool["second_output_types"] == ["message"] and tool["second_text"] == TEXT
    assert tool["second_deployment"] == SERVED_BY[next_target]  # moved mid-conversation

    assert results["retrieve"]["id"] == create["id"]
    assert results["retrieve"]["text"] == TEXT
    assert sorted(results["input_items"]["types"]) == [
        "function_call",
        "function_call_output",
        "message",
    ]
    assert results["input_tokens"]["object"] == "response.input_tokens"
    assert results["input_tokens"]["input_tokens"] > 0
    assert results["delete"]["retrieve_after"] == 404
    # The continued answer names the response it continues, as OpenAI's does.
    assert tool["second_previous"] == tool["first_id"]


def test_ledger_attempts_equal_upstream_requests(served: tuple[RunningGateway, str]) -> None:
    """Runs last (file order): every Node call above, one attempt row per upstream call."""
    gw, sim = served
    assert assert_ledger_matches_upstream(gw, sim) > 0
