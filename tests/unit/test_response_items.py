"""Stored-Responses pure parts: item ids and shapes, input_items paging, the store policy, and
the `responses:` config sections (gateway/conversations, gateway/config/responses.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.config.loading import parse_config
from gateway.config.responses import ResponsesConfig, RouteResponses
from gateway.conversations.items import conversation, page_input_items, stored_item, stored_items
from gateway.conversations.policy import store_wanted
from gateway.errors import InvalidRequest
from gateway.runtime.yaml_loader import ConfigError
from tests.openapi import check

BASE = """\
providers:
  sim: {kind: serverless, api_base: "http://127.0.0.1:9/v1", api_key: k}
deployments:
  small@sim: {provider: sim, model: sim-small}
routes:
  chat:
    targets: [small@sim]
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml", {})
    return [str(issue) for issue in info.value.issues]


# -- ids and shapes --------------------------------------------------------------------------


def test_every_item_gets_an_id_prefixed_by_its_type() -> None:
    sent: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        {"type": "reasoning", "summary": []},
        {"type": "message", "id": "msg_keep", "role": "user", "content": "kept"},
        {"type": "something_new", "x": 1},
    ]
    stored = stored_items(sent)
    prefixes = [item["id"].split("_", 1)[0] for item in stored]
    assert prefixes == ["msg", "fc", "fco", "rs", "msg", "item"]
    assert stored[4]["id"] == "msg_keep"
    for item in stored[:4]:
        assert re.fullmatch(r"[a-z]+_[0-9a-f]{48}", item["id"]), item["id"]
    assert len({item["id"] for item in stored}) == len(stored)
    # The caller's dicts are not changed (they are the request body).
    assert "id" not in sent[0] and sent[0]["content"] == "hi"


def test_stored_items_list_as_the_api_lists_them() -> None:
    stored = stored_items(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"role": "assistant", "content": "Sunny."},
            {"type": "function_call", "call_id": "c", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "{}"},
        ]
    )
    assert stored[0]["type"] == "message"
    assert stored[0]["content"] == [{"type": "input_text", "text": "be brief"}]
    assert stored[2]["content"] == [
        {"type": "output_text", "text": "Sunny.", "annotations": [], "logprobs": []}
    ]
    assert stored[2]["status"] == "completed"
    page, has_more = page_input_items(stored, after=None, limit=20, order="asc")
    check(
        "ResponseItemList",
        {
            "object": "list",
            "data": page,
            "has_more": has_more,
            "first_id": page[0]["id"],
            "last_id": page[-1]["id"],
        },
    )


def test_an_item_that_has_an_id_and_its_fields_is_unchanged() -> None:
    item = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "c",
        "name": "f",
        "arguments": "{}",
        "status": "incomplete",
    }
    assert stored_item(item) == item


def test_conversation_is_the_input_then_the_output() -> None:
    sent = [{"type": "message", "id": "msg_a", "role": "user", "content": []}]
    output = [{"type": "message", "id": "msg_b", "role": "assistant", "content": []}]
    assert conversation(sent, {"output": output}) == [*sent, *output]
    assert conversation(sent, {"status": "failed"}) == sent


# -- paging -----------------------------------------------------------------------------------


ITEMS = [{"id": f"msg_{n}", "type": "message"} for n in range(5)]


def ids(page: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in page]


def test_pages_in_either_order_with_after_and_has_more() -> None:
    page, more = page_input_items(ITEMS, after=None, limit=2, order="desc")
    assert (ids(page), more) == (["msg_4", "msg_3"], True)
    page, more = page_input_items(ITEMS, after="msg_3", limit=2, order="desc")
    assert (ids(page), more) == (["msg_2", "msg_1"], True)
    page, more = page_input_items(ITEMS, after="msg_1", limit=2, order="desc")
    assert (ids(page), more) == (["msg_0"], False)

    page, more = page_input_items(ITEMS, after=None, limit=3, order="asc")
    assert (ids(page), more) == (["msg_0", "msg_1", "msg_2"], True)
    page, more = page_input_items(ITEMS, after="msg_2", limit=3, order="asc")
    assert (ids(page), more) == (["msg_3", "msg_4"], False)
    # Exactly the rest: nothing more.
    page, more = page_input_items(ITEMS, after="msg_1", limit=3, order="asc")
    assert (ids(page), more) == (["msg_2", "msg_3", "msg_4"], False)
    page, more = page_input_items(ITEMS, after="msg_4", limit=3, order="asc")
    assert (page, more) == ([], False)
    assert page_input_items([], after=None, limit=20, order="desc") == ([], False)


@pytest.mark.parametrize(
    ("after", "limit", "order", "param"),
    [
        (None, 0, "desc", "limit"),
        (None, 101, "desc", "limit"),
        (None, 20, "newest", "order"),
        ("msg_nope", 20, "asc", "after"),
    ],
)
def test_a_bad_page_request_is_a_400_naming_the_parameter(
    after: str | None, limit: int, order: Any, param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        page_input_items(ITEMS, after=after, limit=limit, order=order)
    assert info.value.status == 400 and info.value.param == param


# -- policy -----------------------------------------------------------------------------------


def test_the_operators_false_wins_over_the_clients_true() -> None:
    on, off = ResponsesConfig(), ResponsesConfig(store=False)
    assert store_wanted(None, None, on) is True  # the API's default
    assert store_wanted(True, None, on) is True
    assert store_wanted(False, None, on) is False
    assert store_wanted(True, RouteResponses(store=False), on) is False
    assert store_wanted(None, RouteResponses(), on) is True
    assert store_wanted(True, None, off) is False
    assert store_wanted(True, RouteResponses(store=True), off) is False
    assert store_wanted(True, None, on, available=False) is False


# -- config -----------------------------------------------------------------------------------


def test_responses_sections_parse_with_defaults() -> None:
    config = parse_config(BASE, "cfg.yaml", {})
    assert config.responses == ResponsesConfig()
    assert (config.responses.store, config.responses.retention_days) == (True, 30)
    assert config.responses.save_timeout_s == 2.0
    assert config.routes["chat"].responses is None
    text = (
        BASE
        + "    responses: {store: false}\n"
        + "responses: {retention_days: 7, purge_interval_s: 60, save_timeout_s: 0.5}\n"
    )
    config = parse_config(text, "cfg.yaml", {})
    assert config.routes["chat"].responses == RouteResponses(store=False)
    assert config.responses.retention_days == 7 and config.responses.purge_interval_s == 60


def test_responses_config_errors_name_the_line_and_key() -> None:
    (retention,) = errors_of(BASE + "responses: {retention_days: 0}\n")
    assert retention.startswith("cfg.yaml:8: responses.retention_days:"), retention
    assert "greater than or equal to 1" in retention
    (too_long,) = errors_of(BASE + "responses: {retention_days: 5000}\n")
    assert "less than or equal to 3650" in too_long
    (timeout,) = errors_of(BASE + "responses: {save_timeout_s: 0}\n")
    assert timeout.startswith("cfg.yaml:8: responses.save_timeout_s:"), timeout
    (unknown,) = errors_of(BASE + "responses: {stor: false}\n")
    assert "responses.stor" in unknown
    (route,) = errors_of(BASE + "    responses: {store: maybe}\n")
    assert route.startswith("cfg.yaml:8: routes.chat.responses.store:"), route
    (route_key,) = errors_of(BASE + "    responses: {retention_days: 3}\n")
    assert "routes.chat.responses.retention_days" in route_key
