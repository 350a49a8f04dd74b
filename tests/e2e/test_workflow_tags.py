"""Client workflow tags reach the ledger, and GET /v1/models/{id} answers for ids with `/`.

A call is tagged by the `x-farebox-workflow` header or the body's `metadata.workflow_id`
(the header wins) on chat, completions, embeddings and Anthropic messages; a bad tag is a
400 naming where it came from, before anything is planned, counted or sent upstream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, wait_for_rows
from tests.openapi import ERROR, check

pytestmark = pytest.mark.e2e

KEY = "sk-workflow-tags-01"
CONFIG = """
auth: {keys: [{name: wf, key: "CLIENT_KEY"}]}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
deployments:
  small@sim: {provider: sim, model: sim-small, price: {input: 0.1, output: 0.2}}
  embed@sim: {provider: sim, model: sim-embed}
routes:
  chat: {targets: [small@sim]}
  embeddings: {targets: [embed@sim]}
  "openai/gpt-oss-120b": {targets: [small@sim]}
""".replace("CLIENT_KEY", KEY)
HELLO: Any = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def gw(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    settings = sqlite_settings(tmp_path_factory.mktemp("workflow-tags"))
    with running_gateway(config, settings) as running:
        yield running


@pytest.fixture
def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=10)


def workflow_of(gw: RunningGateway, request_id: str) -> str | None:
    rows = wait_for_rows(
        ledger_url(gw), "SELECT workflow_id FROM requests WHERE id = :id", {"id": request_id}
    )
    assert rows, f"request {request_id} never reached the ledger"
    value: str | None = rows[0][0]
    return value


def test_header_and_body_tags_on_every_openai_endpoint(
    client: openai.OpenAI, gw: RunningGateway
) -> None:
    chats = client.chat.completions.with_raw_response
    by_header = chats.create(
        model="chat", messages=HELLO, extra_headers={"x-farebox-workflow": "wf-header"}
    )
    by_body = chats.create(model="chat", messages=HELLO, metadata={"workflow_id": "wf body/1"})
    both = chats.create(
        model="chat",
        messages=HELLO,
        metadata={"workflow_id": "wf-body"},
        extra_headers={"x-farebox-workflow": "wf-wins"},
    )
    untagged = chats.create(model="chat", messages=HELLO, metadata={"other": "x"})
    completion = client.completions.with_raw_response.create(
        model="chat", prompt="hi", extra_body={"metadata": {"workflow_id": "wf-legacy"}}
    )
    embedding = client.embeddings.with_raw_response.create(
        model="embeddings", input="hi", extra_headers={"x-farebox-workflow": "wf-embed"}
    )
    expected: dict[Any, str | None] = {
        by_header: "wf-header",
        by_body: "wf body/1",
        both: "wf-wins",
        untagged: None,
        completion: "wf-legacy",
        embedding: "wf-embed",
    }
    for raw, workflow in expected.items():
        assert workflow_of(gw, raw.headers["x-request-id"]) == workflow


def test_streams_and_anthropic_messages_are_tagged(gw: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=10)
    with client.chat.completions.with_streaming_response.create(
        model="chat",
        messages=HELLO,
        stream=True,
        extra_headers={"x-farebox-workflow": "wf-stream"},
    ) as raw:
        b"".join(raw.iter_bytes())
        streamed = raw.headers["x-request-id"]
    claude = anthropic.Anthropic(base_url=gw.root, api_key=KEY, max_retries=0, timeout=10)
    message = claude.messages.with_raw_response.create(
        model="chat",
        max_tokens=5,
        messages=HELLO,
        extra_body={"metadata": {"user_id": "u-1", "workflow_id": "wf-claude"}},
    )
    header = claude.messages.with_raw_response.create(
        model="chat",
        max_tokens=5,
        messages=HELLO,
        extra_headers={"x-farebox-workflow": "wf-claude-header"},
    )
    assert workflow_of(gw, streamed) == "wf-stream"
    assert workflow_of(gw, message.headers["request-id"]) == "wf-claude"
    assert workflow_of(gw, header.headers["request-id"]) == "wf-claude-header"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"metadata": {"workflow_id": "w" * 129}}, "metadata.workflow_id"),
        ({"metadata": {"workflow_id": ""}}, "metadata.workflow_id"),
        ({"extra_body": {"metadata": {"workflow_id": 7}}}, "metadata.workflow_id"),
        ({"metadata": {"workflow_id": "caf\u00e9"}}, "metadata.workflow_id"),
        ({"metadata": {"workflow_id": "tab\there"}}, "metadata.workflow_id"),
        ({"extra_headers": {"x-farebox-workflow": "w" * 129}}, "x-farebox-workflow"),
        ({"extra_headers": {"x-farebox-workflow": ""}}, "x-farebox-workflow"),
    ],
)
def test_a_bad_tag_is_a_400_naming_it(
    client: openai.OpenAI, kwargs: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", messages=HELLO, **kwargs)
    assert info.value.param == param
    assert info.value.code == "invalid_value"
    assert "128 printable ASCII" in info.value.message
    check(ERROR, info.value.response.json())


def test_a_bad_tag_on_messages_is_an_anthropic_400(gw: RunningGateway) -> None:
    claude = anthropic.Anthropic(base_url=gw.root, api_key=KEY, max_retries=0, timeout=10)
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(
            model="chat",
            max_tokens=5,
            messages=HELLO,
            extra_body={"metadata": {"workflow_id": ["a"]}},
        )
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "metadata.workflow_id" in info.value.body["error"]["message"]


def test_models_retrieve_takes_ids_with_a_slash(client: openai.OpenAI) -> None:
    listed = {m.id: m for m in client.models.list()}
    for name in ("openai/gpt-oss-120b", "chat", "small@sim"):
        model = client.models.retrieve(name)  # the SDK sends `/` as %2F
        assert (model.id, model.object, model.owned_by) == (name, "model", "farebox")
        assert model.created == listed[name].created
    raw = client.get("/models/openai/gpt-oss-120b", cast_to=object)  # a literal `/` too
    assert isinstance(raw, dict) and raw["id"] == "openai/gpt-oss-120b"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("openai/no-such-model")
    assert info.value.code == "model_not_found" and info.value.param == "model"
    assert "openai/no-such-model" in info.value.message
    assert info.value.response.headers.get_list("content-type") == ["application/json"]
