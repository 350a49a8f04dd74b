"""routing.gates: deterministic quality checks on a normalized chat.completion."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.gates import (
    OUTCOMES,
    GateResult,
    GateSpec,
    check,
    load_value_map,
    load_value_maps,
    repair_message,
)
from routing.value_maps import fold, parse_field_path

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}


def answer(
    content: Any = "hello",
    *,
    finish: Any = "stop",
    tool_calls: Any = None,
    refusal: Any = None,
    n: int = 1,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": i, "message": copy.deepcopy(message), "finish_reason": finish}
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def tool_call(name: str, arguments: Any) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


def schema_request(schema: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }


def passes(result: GateResult) -> None:
    assert result.passed, result
    assert result.outcome == "pass"
    assert result.failures == []


def fails(result: GateResult, outcome: str) -> list[str]:
    assert not result.passed, result
    assert result.outcome == outcome, result
    assert result.failures
    return result.failures


# --- pass-through -----------------------------------------------------------------


def test_all_off_spec_passes_anything() -> None:
    spec = GateSpec()
    assert not spec.enabled
    passes(check(spec, {}, answer(None, finish="length")))


def test_passing_answer_has_no_body_when_nothing_changed() -> None:
    spec = GateSpec(json_schema=PERSON, non_empty=True, not_refusal=True, reject_truncated=True)
    assert spec.enabled
    result = check(spec, {}, answer('{"name": "Ana", "age": 3}'))
    passes(result)
    assert result.body is None
    assert result.notes == []


# --- json_schema ------------------------------------------------------------------


def test_schema_violations_are_listed_with_paths() -> None:
    spec = GateSpec(json_schema=PERSON)
    failures = fails(check(spec, {}, answer('{"name": 5, "extra": true}')), "schema")
    assert failures == [
        '$: missing required property "age"',
        "$.name: expected string, got integer",
        '$: unexpected property "extra"',
    ]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"name": "Ana", "age": ', "is not valid JSON (Expecting value at char 23)"),
        ("Sure! Here it is: {}", "is not valid JSON"),
        ('```json\n{"name": "Ana", "age": 3}\n```', "is not valid JSON"),
        ('{"name": "Ana", "age": NaN}', "NaN is not valid JSON"),
        ("", "is empty"),
        ("   ", "is empty"),
        (None, "is empty"),
    ],
)
def test_invalid_json(content: Any, fragment: str) -> None:
    (failure,) = fails(check(GateSpec(json_schema=PERSON), {}, answer(content)), "json_invalid")
    assert failure.startswith("the content ")
    assert fragment in failure


def test_request_schema_is_used() -> None:
    spec = GateSpec(json_schema="request")
    request = schema_request(PERSON)
    passes(check(spec, request, answer('{"name": "Ana", "age": 3}')))
    fails(check(spec, request, answer('{"name": "Ana", "age": -1}')), "schema")


def test_request_json_object_requires_an_object() -> None:
    spec = GateSpec(json_schema="request")
    request = {"messages": [], "response_format": {"type": "json_object"}}
    passes(check(spec, request, answer('{"anything": [1]}')))
    assert fails(check(spec, request, answer("[1, 2]")), "schema") == [
        "$: expected object, got array"
    ]
    fails(check(spec, request, answer("not json")), "json_invalid")


def test_request_without_json_format_skips_schema_with_a_note() -> None:
    spec = GateSpec(json_schema="request")
    requests: list[dict[str, Any] | None] = [
        {"messages": []},
        {"response_format": {"type": "text"}},
        None,
    ]
    for request in requests:
        result = check(spec, request, answer("plain prose"))
        passes(result)
        assert result.notes == [
            "json_schema: the request asked for no JSON response_format; skipped"
        ]


def test_request_with_malformed_schema_is_not_blamed_on_the_answer() -> None:
    result = check(
        GateSpec(json_schema="request"), schema_request({"type": "strng"}), answer('{"a": 1}')
    )
    passes(result)
    assert result.notes[0].startswith("json_schema: the request's schema is not usable")


def test_request_json_schema_without_schema_accepts_any_json() -> None:
    request = {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}
    spec = GateSpec(json_schema="request")
    passes(check(spec, request, answer("[1]")))
    fails(check(spec, request, answer("[1")), "json_invalid")


def test_tool_call_answer_is_not_held_to_the_content_schema() -> None:
    body = answer(None, finish="tool_calls", tool_calls=[tool_call("get_weather", "{}")])
    passes(check(GateSpec(json_schema=PERSON, regex="x"), {}, body))


# --- tool_arguments ---------------------------------------------------------------


def test_tool_arguments_valid() -> None:
    request = {"tools": [WEATHER_TOOL]}
    calls = [tool_call("get_weather", '{"city": "Lima", "unit": "c"}')]
    passes(check(GateSpec(tool_arguments=True), request, answer(None, tool_calls=calls)))


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            tool_call("get_weather", '{"city": 5}'),
            "tool call 'get_weather': $.city: expected string, got integer",
        ),
        (
            tool_call("get_weather", '{"unit": "c"}'),
            "tool call 'get_weather': $: missing required property \"city\"",
        ),
        (
            tool_call("get_weather", '{"city": "Lima"'),
            "tool call 'get_weather': arguments is not valid JSON",
        ),
        (tool_call("get_weather", "[]"), "tool call 'get_weather': arguments must be a JSON"),
        (tool_call("get_weather", ""), "tool call 'get_weather': arguments is empty"),
        (
            tool_call("get_weather", {"city": "Lima"}),
            "tool call 'get_weather': arguments must be a JSON string",
        ),
        (
            tool_call("get_time", "{}"),
            "tool call 'get_time': unknown tool (the request offers: get_weather)",
        ),
        ({"type": "function", "function": {}}, "tool call #0: unknown tool"),
        ("garbage", "tool call #0 is not an object"),
    ],
)
def test_tool_arguments_failures(call: Any, expected: str) -> None:
    body = answer(None, finish="tool_calls", tool_calls=[call])
    (failure,) = fails(
        check(GateSpec(tool_arguments=True), {"tools": [WEATHER_TOOL]}, body), "tool_args"
    )
    assert failure.startswith(expected), failure


def test_tool_arguments_every_call_is_checked() -> None:
    calls = [tool_call("get_weather", '{"city": "Lima"}'), tool_call("get_weather", "{}")]
    body = answer(None, finish="tool_calls", tool_calls=calls)
    failures = fails(
        check(GateSpec(tool_arguments=True), {"tools": [WEATHER_TOOL]}, body), "tool_args"
    )
    assert failures == ["tool call 'get_weather': $: missing required property \"city\""]


def test_tool_without_parameters_takes_any_object_and_custom_tools_are_skipped() -> None:
    request = {"tools": [{"type": "function", "function": {"name": "ping"}}]}
    calls = [
        tool_call("ping", '{"anything": 1}'),
        {"id": "c2", "type": "custom", "custom": {"name": "sql", "input": "SELECT 1"}},
    ]
    passes(check(GateSpec(tool_arguments=True), request, answer(None, tool_calls=calls)))


def test_tool_call_when_the_request_offered_no_tools() -> None:
    body = answer(None, tool_calls=[tool_call("x", "{}")])
    (failure,) = fails(check(GateSpec(tool_arguments=True), {}, body), "tool_args")
    assert failure == "tool call 'x': unknown tool (the request offers: none)"


def test_tool_with_malformed_parameters_schema_is_noted_not_failed() -> None:
    request = {"tools": [{"type": "function", "function": {"name": "t", "parameters": 7}}]}
    result = check(
        GateSpec(tool_arguments=True), request, answer(None, tool_calls=[tool_call("t", "{}")])
    )
    passes(result)
    assert "parameters schema not usable" in result.notes[0]


# --- truncated, empty, refusal, regex -----------------------------------------------


def test_reject_truncated() -> None:
    spec = GateSpec(reject_truncated=True)
    passes(check(spec, {}, answer("done")))
    fails(check(spec, {}, answer("half an ans", finish="length")), "truncated")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (answer(None), "no content and no tool calls"),
        (answer(""), "no content and no tool calls"),
        (answer(" \n\t "), "only whitespace"),
        (answer([{"type": "text", "text": "  "}]), "only whitespace"),
        (answer(None, tool_calls=[]), "no content and no tool calls"),
        ({"choices": []}, "no content and no tool calls"),
        ({}, "no content and no tool calls"),
    ],
)
def test_non_empty_failures(body: dict[str, Any], why: str) -> None:
    (failure,) = fails(check(GateSpec(non_empty=True), {}, body), "empty")
    assert failure == f"the answer is empty ({why})"


def test_non_empty_passes() -> None:
    spec = GateSpec(non_empty=True)
    passes(check(spec, {}, answer("x")))
    passes(check(spec, {}, answer([{"type": "text", "text": "part"}])))
    passes(check(spec, {}, answer(None, tool_calls=[tool_call("f", "{}")])))


@pytest.mark.parametrize(
    "body",
    [
        answer(None, refusal="I can't help with that."),
        answer("", finish="content_filter"),
        answer("I'm sorry, but I can't help with that request."),
        answer("I’m sorry, but I can’t assist."),  # typographic apostrophes
        answer("  I cannot help with creating malware."),
        answer("**I can't assist with that.**"),
        answer("As an AI language model, I do not have opinions."),
        answer("i am unable to help with this"),
    ],
)
def test_refusals(body: dict[str, Any]) -> None:
    fails(check(GateSpec(not_refusal=True), {}, body), "refusal")


@pytest.mark.parametrize(
    "content",
    [
        "I'm sorry for the delay; here is the summary.",
        "The model said: I'm sorry, but I can't — in a quote, not at the start.",
        "Sorry to hear that. Let's fix it.",
        None,
    ],
)
def test_not_refusals(content: Any) -> None:
    passes(check(GateSpec(not_refusal=True), {}, answer(content)))


def test_regex() -> None:
    spec = GateSpec(regex=r"^\d{4}-\d{2}-\d{2}$")
    passes(check(spec, {}, answer("2024-05-01")))
    (failure,) = fails(check(spec, {}, answer("May 1st")), "regex")
    assert failure == "the content does not match the pattern '^\\\\d{4}-\\\\d{2}-\\\\d{2}$'"
    fails(check(spec, {}, answer(None)), "regex")
    passes(check(GateSpec(regex="yes"), {}, answer("well, yes indeed")))  # re.search


def test_failure_order_names_the_main_reason() -> None:
    spec = GateSpec(
        json_schema=PERSON, reject_truncated=True, not_refusal=True, non_empty=True, regex="x"
    )
    result = check(spec, {}, answer('{"name": "An', finish="length"))
    assert result.outcome == "truncated"
    assert [f.split(" ")[1] for f in result.failures[:2]] == ["answer", "content"]
    assert "not valid JSON" in result.failures[1]
    assert result.failures[2].startswith("the content does not match")


def test_every_choice_is_checked_and_prefixed() -> None:
    body = answer('{"name": "A", "age": 1}', n=2)
    body["choices"][1]["message"]["content"] = '{"name": "B"}'
    (failure,) = fails(check(GateSpec(json_schema=PERSON), {}, body), "schema")
    assert failure == 'choices[1]: $: missing required property "age"'


# --- normalization ----------------------------------------------------------------

COUNTRIES = {
    "Mexico": ["México", "United Mexican States", "MX"],
    "United States": ["USA", "U.S.A.", "United States of America"],
}
CONTRACT = {
    "type": "object",
    "properties": {
        "governing_law": {"enum": ["Mexico", "United States"]},
        "parties": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "country": {"enum": list(COUNTRIES)}},
                "required": ["name", "country"],
            },
        },
    },
    "required": ["governing_law", "parties"],
}


def contract_spec(**extra: Any) -> GateSpec:
    maps, problems = load_value_maps({"governing_law": COUNTRIES, "parties[].country": COUNTRIES})
    assert problems == []
    return GateSpec(json_schema=CONTRACT, normalize=maps, **extra)


def test_fold_ignores_case_accents_and_whitespace() -> None:
    assert fold("  MÉXICO ") == fold("mexico") == "mexico"
    assert fold("United\u00a0 Mexican\tStates") == "united mexican states"
    assert fold("Straße") == fold("STRASSE")
    assert fold("ﬁnal") == "final"  # NFKD compatibility forms


def test_normalization_runs_before_the_schema_and_rewrites_the_content() -> None:
    original = {
        "governing_law": " united  MEXICAN states ",
        "parties": [
            {"name": "Acme", "country": "usa"},
            {"name": "Señor Pérez", "country": "méxico"},
        ],
    }
    body = answer(json.dumps(original, indent=2))
    snapshot = copy.deepcopy(body)
    result = check(contract_spec(), {}, body)
    passes(result)
    assert body == snapshot  # the input is never mutated
    assert result.body is not None
    content = result.body["choices"][0]["message"]["content"]
    assert json.loads(content) == {
        "governing_law": "Mexico",
        "parties": [
            {"name": "Acme", "country": "United States"},
            {"name": "Señor Pérez", "country": "Mexico"},
        ],
    }
    assert "Señor Pérez" in content  # not \\u-escaped
    assert content == json.dumps(json.loads(content), ensure_ascii=False, separators=(",", ":"))
    # Everything but the content is carried over.
    assert result.body["usage"] == body["usage"]
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert result.body["choices"][0]["message"]["role"] == "assistant"


def test_normalized_body_is_returned_even_when_the_schema_then_fails() -> None:
    doc = {"governing_law": "MX", "parties": [{"name": "A", "country": "Canada"}]}
    result = check(contract_spec(), {}, answer(json.dumps(doc)))
    assert fails(result, "schema") == [
        '$.parties[0].country: "Canada" is not one of ["Mexico", "United States"]'
    ]
    assert result.body is not None
    assert json.loads(result.body["choices"][0]["message"]["content"])["governing_law"] == "Mexico"


def test_already_canonical_content_passes_through_untouched() -> None:
    doc = {"governing_law": "Mexico", "parties": [{"name": "A", "country": "United States"}]}
    result = check(contract_spec(), {}, answer(json.dumps(doc, indent=4)))
    passes(result)
    assert result.body is None  # formatting kept: nothing to rewrite


def test_normalization_leaves_other_shapes_alone() -> None:
    doc = {
        "governing_law": 5,  # not a string
        "parties": [{"name": "usa", "country": None}, "not an object", {"name": "B"}],
        "other": {"country": "usa"},  # not on a configured path
    }
    maps = {"governing_law": {"usa": "United States"}, "parties[].country": {"usa": "US"}}
    result = check(GateSpec(normalize=maps), {}, answer(json.dumps(doc)))
    passes(result)
    assert result.body is None


def test_normalization_of_string_lists_root_arrays_and_nested_paths() -> None:
    maps = {
        "[].tags[]": {"urgent": "URGENT", "Low priority": "LOW"},
        "[].meta.owner.team": {"Platform": "platform-eng"},
    }
    doc = [
        {"tags": [" Urgent", "low   PRIORITY", "other"], "meta": {"owner": {"team": "PLATFORM"}}},
        {"tags": "urgent", "meta": None},
    ]
    result = check(GateSpec(normalize=maps), {}, answer(json.dumps(doc)))
    passes(result)
    assert result.body is not None
    assert json.loads(result.body["choices"][0]["message"]["content"]) == [
        {"tags": ["URGENT", "LOW", "other"], "meta": {"owner": {"team": "platform-eng"}}},
        {"tags": "urgent", "meta": None},
    ]


def test_normalization_without_a_schema_ignores_non_json_content() -> None:
    result = check(GateSpec(normalize={"a": {"x": "X"}}), {}, answer("plain prose"))
    passes(result)
    assert result.body is None


def test_normalization_applies_per_choice() -> None:
    body = answer('{"a": "x"}', n=2)
    body["choices"][1]["message"]["content"] = '{"a": "X"}'
    result = check(GateSpec(normalize={"a": {"x": "X"}}), {}, body)
    passes(result)
    assert result.body is not None
    assert [c["message"]["content"] for c in result.body["choices"]] == ['{"a":"X"}', '{"a": "X"}']


def test_regex_sees_the_normalized_content() -> None:
    spec = GateSpec(normalize={"c": {"mexico": "MX"}}, regex='"c":"MX"')
    passes(check(spec, {}, answer('{"c": "México"}')))


def test_parse_field_path() -> None:
    assert parse_field_path("governing_law") == ("governing_law",)
    assert parse_field_path("parties[].country") == ("parties", "[]", "country")
    assert parse_field_path("[].x[][]") == ("[]", "x", "[]", "[]")
    for bad in ("", "a..b", "a.[]", "a[", "a[0]", "a]"):
        with pytest.raises(ValueError, match="bad field path"):
            parse_field_path(bad)


# --- value map loader ---------------------------------------------------------------


def test_load_value_map() -> None:
    table, problems = load_value_map(
        {"Mexico": ["México", "MX"], "United States": "USA", "Canada": None}
    )
    assert problems == []
    assert table == {
        "mexico": "Mexico",
        "mx": "Mexico",
        "united states": "United States",
        "usa": "United States",
        "canada": "Canada",
    }


def test_load_value_map_reports_conflicts_and_bad_shapes() -> None:
    table, problems = load_value_map(
        {
            "Mexico": ["MX", "méxico"],
            "Mexico City": ["mx"],
            "Peru": [1],
            "": ["x"],
            "Chile": ["  "],
        },
        "normalize country",
    )
    assert table["mx"] == "Mexico"  # first claim wins; the conflict is reported
    assert problems == [
        "normalize country: 'mx' is a variant of both 'Mexico' and 'Mexico City'",
        "normalize country: variants of 'Peru' must be a list of strings",
        "normalize country: canonical value '' must be a non-empty string",
        "normalize country: variant '  ' of 'Chile' is blank",
    ]
    assert load_value_map(["not", "a", "mapping"])[1] == [
        "expected a mapping of canonical value to a list of variants"
    ]


def test_load_value_maps() -> None:
    maps, problems = load_value_maps(
        {"a.b": {"X": ["x1"]}, "bad..path": {"Y": []}, "c": "oops", 5: {}}
    )
    assert maps == {"a.b": {"x": "X", "x1": "X"}, "c": {}}
    assert len(problems) == 3
    assert problems[0].startswith("normalize: bad field path 'bad..path'")
    assert problems[1] == (
        "normalize c: expected a mapping of canonical value to a list of variants"
    )
    assert problems[2] == "normalize: field path 5 must be a string"
    assert load_value_maps(None) == (
        {},
        ["normalize: expected a mapping of field path to value map"],
    )


# --- spec validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"json_schema": "response"}, "json_schema must be 'request' or a schema"),
        ({"json_schema": 5}, "json_schema must be 'request' or a schema"),
        ({"json_schema": {"type": "nope"}}, "json_schema is not usable"),
        ({"regex": "("}, "regex '(' is not valid"),
        ({"normalize": {"a..b": {}}}, "bad field path"),
        ({"normalize": {"a": {"MX": "Mexico", "mx": "Mexico City"}}}, "maps to both"),
        ({"normalize": {"a": {"MX": 5}}}, "variants and values must be strings"),
        ({"normalize": {"a": ["x"]}}, "must map a field path"),
    ],
)
def test_spec_rejects_bad_config(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        GateSpec(**kwargs)


def test_spec_with_prefolded_or_raw_variant_keys_behaves_the_same() -> None:
    raw = GateSpec(normalize={"a": {"MÉXICO ": "Mexico"}})
    result = check(raw, {}, answer('{"a": "mexico"}'))
    assert result.body is not None
    assert result.body["choices"][0]["message"]["content"] == '{"a":"Mexico"}'


# --- repair message ---------------------------------------------------------------


def test_repair_message_lists_errors_and_asks_for_the_answer_only() -> None:
    result = check(GateSpec(json_schema=PERSON), {}, answer('{"name": 1}'))
    text = repair_message(result)
    assert text.splitlines() == [
        "Your previous answer failed validation:",
        '- $: missing required property "age"',
        "- $.name: expected string, got integer",
        "Reply with only the corrected JSON document, matching the required schema exactly: "
        "no Markdown code fences, no commentary.",
    ]


@pytest.mark.parametrize("outcome", [o for o in OUTCOMES if o != "pass"])
def test_repair_message_for_every_outcome(outcome: str) -> None:
    text = repair_message(GateResult(False, outcome, ["why"]))
    assert text.startswith("Your previous answer failed validation:\n- why\n")
    assert len(text.splitlines()) == 3


def test_repair_message_without_failures_still_reads() -> None:
    assert "(no details)" in repair_message(GateResult(False, "schema"))


# --- never raises -----------------------------------------------------------------

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "content": st.none() | st.text(max_size=30) | junk,
        "refusal": junk,
        "tool_calls": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "type": st.sampled_from(["function", "custom"]) | junk,
                    "function": st.fixed_dictionaries(
                        {},
                        optional={
                            "name": st.sampled_from(["get_weather", "x"]) | junk,
                            "arguments": st.sampled_from(['{"city":"a"}', "{", "[]"]) | junk,
                        },
                    )
                    | junk,
                },
            )
            | junk,
            max_size=2,
        )
        | junk,
    },
)
bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "choices": st.lists(
                st.fixed_dictionaries(
                    {}, optional={"message": messages | junk, "finish_reason": junk}
                )
                | junk,
                max_size=2,
            )
            | junk
        },
    )
    | junk
)
requests = (
    st.fixed_dictionaries(
        {},
        optional={
            "tools": st.just([WEATHER_TOOL]) | junk,
            "response_format": st.just({"type": "json_object"})
            | st.just(schema_request(PERSON)["response_format"])
            | junk,
        },
    )
    | junk
)
EVERYTHING = GateSpec(
    json_schema="request",
    tool_arguments=True,
    reject_truncated=True,
    non_empty=True,
    not_refusal=True,
    regex="a",
    normalize={"a": {"x": "X"}, "[].b[]": {"y": "Y"}},
)


@settings(max_examples=300, deadline=None)
@given(request=requests, body=bodies)
def test_malformed_inputs_never_raise(request: Any, body: Any) -> None:
    result = check(EVERYTHING, request, body)
    assert result.outcome in OUTCOMES
    assert result.passed == (result.outcome == "pass")
    assert all(isinstance(f, str) for f in result.failures)
    assert not any("crashed" in note for note in result.notes), result.notes
    repair_message(result)
