"""Error shapes at the edge: readable validation messages, clipped echoes, the Anthropic
paths, and FastAPI's unhandled-exception answer."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.testclient import TestClient

from gateway.api.app_errors import describe, field_path, install_error_handlers
from gateway.api.asgi import speaks_anthropic
from gateway.errors import (
    ECHO_LIMIT,
    MESSAGE_LIMIT,
    GatewayError,
    anthropic_error_type,
    clip,
    model_not_found,
)


class Limits(BaseModel):
    rpm: int
    tpm: int


class Body(BaseModel):
    name: str
    limits: Limits
    routes: list[str]


def pydantic_errors(payload: bytes) -> list[Any]:
    with pytest.raises(ValidationError) as info:
        Body.model_validate_json(payload)
    # FastAPI prefixes body errors with "body", as RequestValidationError shows them.
    return [{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()]


def test_validation_message_names_the_field_path() -> None:
    errors = pydantic_errors(b'{"name": "a", "limits": {"rpm": "x", "tpm": 1}, "routes": ["r"]}')
    message, param, code = describe(errors)
    assert (
        message
        == "body.limits.rpm: Input should be a valid integer, unable to parse string as an integer"
    )
    assert param == "body.limits.rpm" and code == "invalid_value"


def test_validation_lists_a_few_errors_with_indexes_and_counts_the_rest() -> None:
    errors = pydantic_errors(b'{"limits": {}, "routes": [1, 2]}')
    message, param, code = describe(errors)
    # name, limits.rpm, limits.tpm, routes[0], routes[1]: three shown, two counted.
    assert message.count("; ") == 2 and message.endswith("(and 2 more)")
    assert param == "body.name" and code == "missing_required_parameter"
    assert field_path(("body", "routes", 1)) == "body.routes[1]"


def test_invalid_json_says_where_not_a_fake_field() -> None:
    errors = [
        {
            "type": "json_invalid",
            "loc": ("body", 12),
            "msg": "JSON decode error",
            "ctx": {"error": "Expecting value"},
        }
    ]
    assert describe(errors) == (
        "body: Invalid JSON at character 12 (Expecting value)",
        "body",
        "invalid_value",
    )


def test_client_field_names_are_clipped_in_paths() -> None:
    path = field_path(("body", "k" * 10_000))
    assert path is not None and len(path) <= ECHO_LIMIT + 1 and path.endswith("…")


def test_echoes_and_messages_are_bounded() -> None:
    assert clip("abc") == "abc" and clip("x" * 300) == "x" * ECHO_LIMIT + "…"
    error = model_not_found("m" * 1_000_000, ["chat"])
    assert f"'{'m' * ECHO_LIMIT}…'" in error.message and len(error.message) < 400
    huge = GatewayError(400, "z" * 100_000, param="p" * 10_000)
    assert len(huge.message) == MESSAGE_LIMIT + 1
    assert huge.param == "p" * ECHO_LIMIT + "…"
    assert len(huge.anthropic_body()) < MESSAGE_LIMIT + 100


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/messages", True),
        ("/messages", True),
        ("/v1/messages/", True),
        ("/v1/messages/count_tokens", True),
        ("/messages/batches/x", True),
        ("/v1/messagesx", False),
        ("/v1/chat/completions", False),
        ("/admin/messages", False),
        ("/", False),
    ],
)
def test_which_paths_speak_anthropic(path: str, expected: bool) -> None:
    assert speaks_anthropic(path) is expected


def test_conflict_has_its_anthropic_type() -> None:
    assert anthropic_error_type(409) == "conflict_error"


def test_an_unhandled_exception_is_a_json_500_with_request_id() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/admin/boom")
    @app.get("/v1/messages/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    client = TestClient(app, raise_server_exceptions=False)
    reply = client.get("/admin/boom")
    assert reply.status_code == 500 and reply.headers["content-type"] == "application/json"
    request_id = reply.headers["x-request-id"]
    error = orjson.loads(reply.content)["error"]
    assert error["code"] == "internal_error" and request_id in error["message"]
    assert "secret detail" not in reply.text
    reply = client.get("/v1/messages/boom")
    body = orjson.loads(reply.content)
    assert reply.status_code == 500 and set(body) == {"type", "error"}
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert reply.headers["request-id"] in body["error"]["message"]
