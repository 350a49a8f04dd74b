"""routing.json_schema: the compact JSON Schema validator behind the quality gates."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.json_schema import MAX_ERRORS, Schema, SchemaError, check_schema, validate


def ok(instance: Any, schema: Any) -> None:
    assert validate(instance, schema) == []


def one(instance: Any, schema: Any) -> str:
    errors = validate(instance, schema)
    assert len(errors) == 1, errors
    return errors[0]


# --- type -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("string", ["", "x"], [1, None, True, [], {}]),
        ("integer", [0, -3, 2.0, 10**30], [1.5, "1", True, False, None]),
        ("number", [0, 1.5, -2, 10**30], ["1", True, None, [], {}]),
        ("boolean", [True, False], [0, 1, "true", None]),
        ("null", [None], [0, "", False, []]),
        ("array", [[], [1, "a"]], [{}, "[]", None]),
        ("object", [{}, {"a": 1}], [[], "{}", None]),
    ],
)
def test_types(kind: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        ok(value, {"type": kind})
    for value in bad:
        assert one(value, {"type": kind}).startswith(f"$: expected {kind}, got ")


def test_type_names_in_messages() -> None:
    assert one(3.5, {"type": "string"}) == "$: expected string, got number"
    assert one(3, {"type": "string"}) == "$: expected string, got integer"
    assert one(True, {"type": "integer"}) == "$: expected integer, got boolean"
    assert one(None, {"type": "object"}) == "$: expected object, got null"


def test_type_list() -> None:
    schema = {"type": ["string", "null"]}
    ok("a", schema)
    ok(None, schema)
    assert one(1, schema) == "$: expected string or null, got integer"


def test_paths_are_json_pointer_ish() -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
            "odd key": {"type": "string"},
        },
    }
    doc = {"items": [{"name": "a"}, {"name": "b"}, {"name": 7.5}], "odd key": 1}
    assert validate(doc, schema) == [
        "$.items[2].name: expected string, got number",
        '$["odd key"]: expected string, got integer',
    ]


def test_type_mismatch_stops_other_keywords_on_that_node() -> None:
    assert validate(5, {"type": "string", "minLength": 3, "enum": ["abc"]}) == [
        "$: expected string, got integer"
    ]


# --- objects ----------------------------------------------------------------------


def test_required_and_additional_properties() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    ok({"a": 1, "b": "x"}, schema)
    assert validate({"a": 1, "c": 2}, schema) == [
        '$: missing required property "b"',
        '$: unexpected property "c"',
    ]


def test_additional_properties_schema_and_pattern_properties() -> None:
    schema = {
        "patternProperties": {"^x-": {"type": "string"}},
        "properties": {"id": {"type": "integer"}},
        "additionalProperties": {"type": "number"},
    }
    ok({"id": 1, "x-a": "s", "other": 2.5}, schema)
    assert validate({"x-a": 1, "other": "no"}, schema) == [
        '$["x-a"]: expected string, got integer',
        "$.other: expected number, got string",
    ]


def test_property_counts_names_and_dependent_required() -> None:
    assert one({}, {"minProperties": 1}) == "$: expected at least 1 properties, got 0"
    assert one({"a": 1, "b": 2}, {"maxProperties": 1}).startswith("$: expected at most 1")
    assert "property name" in one({"Bad": 1}, {"propertyNames": {"pattern": "^[a-z]+$"}})
    schema = {"dependentRequired": {"card": ["billing"]}}
    ok({"billing": 1}, schema)
    assert one({"card": 1}, schema) == '$: property "card" requires "billing"'


# --- arrays -----------------------------------------------------------------------


def test_items_min_max_unique() -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3}
    ok([1, 2], schema)
    assert one([], schema) == "$: expected at least 1 items, got 0"
    assert one([1, 2, 3, 4], schema) == "$: expected at most 3 items, got 4"
    assert one([1, "x"], schema) == "$[1]: expected integer, got string"
    unique = {"uniqueItems": True}
    ok([1, "1", True, [1], {"a": 1}], unique)
    assert one([{"a": [1]}, 2, {"a": [1.0]}], unique) == (
        "$: items must be unique (items 0 and 2 are equal)"
    )
    ok([1, True], unique)  # JSON equality: true is not 1


def test_prefix_items_and_draft7_tuple_items() -> None:
    schema = {"prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False}
    ok(["a", 1], schema)
    ok(["a"], schema)
    assert one([1, 1], schema) == "$[0]: expected string, got integer"
    assert one(["a", 1, None], schema) == "$[2]: no value is allowed here"
    draft7 = {"items": [{"type": "string"}], "additionalItems": {"type": "integer"}}
    ok(["a", 1, 2], draft7)
    assert one(["a", "b"], draft7) == "$[1]: expected integer, got string"


def test_contains() -> None:
    schema = {"contains": {"type": "string"}, "maxContains": 1}
    ok([1, "a"], schema)
    assert "at least 1" in one([1, 2], schema)
    assert "at most 1" in one(["a", "b"], schema)


# --- scalars ----------------------------------------------------------------------


def test_enum_and_const_use_json_equality() -> None:
    ok(1.0, {"enum": [1, 2]})
    assert one(True, {"enum": [1, 2]}) == "$: true is not one of [1, 2]"
    ok({"a": [1]}, {"const": {"a": [1.0]}})
    assert one(0, {"const": False}) == "$: must be false"
    assert one("b", {"enum": ["a", None]}) == '$: "b" is not one of ["a", null]'


def test_numeric_bounds() -> None:
    assert one(1, {"minimum": 2}) == "$: must be >= 2, got 1"
    assert one(3, {"maximum": 2}) == "$: must be <= 2, got 3"
    assert one(2, {"exclusiveMinimum": 2}) == "$: must be > 2, got 2"
    assert one(2, {"exclusiveMaximum": 2}) == "$: must be < 2, got 2"
    ok(2, {"minimum": 2, "maximum": 2})
    # draft-4 boolean form
    assert one(2, {"minimum": 2, "exclusiveMinimum": True}) == "$: must be > 2, got 2"
    ok(2, {"minimum": 2, "exclusiveMinimum": False})


def test_multiple_of() -> None:
    ok(10, {"multipleOf": 5})
    ok(0.3, {"multipleOf": 0.1})
    ok(4.5, {"multipleOf": 1.5})
    assert one(7, {"multipleOf": 5}) == "$: must be a multiple of 5, got 7"
    assert one(0.35, {"multipleOf": 0.1}).startswith("$: must be a multiple of 0.1")
    ok(10**400, {"multipleOf": 0.5})  # beyond float range: not judged, never raises


def test_strings() -> None:
    assert one("ab", {"minLength": 3}) == "$: expected at least 3 characters, got 2"
    assert one("abcd", {"maxLength": 3}) == "$: expected at most 3 characters, got 4"
    ok("ñandú", {"maxLength": 5})  # code points, not bytes
    ok("order-12", {"pattern": r"\d+"})  # re.search: unanchored, like ECMA
    assert one("order", {"pattern": r"^\d+$"}) == '$: "order" does not match pattern "^\\\\d+$"'


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("date", ["2024-02-29"], ["2023-02-29", "2024-1-01", "yesterday"]),
        (
            "date-time",
            ["2024-01-01T10:00:00Z", "2024-01-01T23:59:60.5+02:00", "2024-01-01 10:00:00z"],
            ["2024-01-01T24:00:00Z", "2024-01-01T10:00:00", "2024-13-01T00:00:00Z"],
        ),
        ("email", ["a.b@example.co"], ["a@b", "no at.com", "a b@c.de"]),
        ("uuid", ["anything"], []),  # other formats are annotations only
    ],
)
def test_formats(fmt: str, good: list[str], bad: list[str]) -> None:
    for value in good:
        ok(value, {"type": "string", "format": fmt})
    for value in bad:
        assert one(value, {"format": fmt}).endswith(f"is not a valid {fmt}")
    ok(5, {"format": "date"})  # formats only apply to strings


# --- combinators ------------------------------------------------------------------


def test_any_of_nullable_union_message() -> None:
    schema = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    ok(None, schema)
    ok("x", schema)
    assert one(1, schema) == "$: expected string or null, got integer"


def test_any_of_mixed_failures_summarised() -> None:
    schema = {
        "anyOf": [
            {"type": "object", "required": ["a"]},
            {"type": "object", "required": ["b"]},
        ]
    }
    assert one({}, schema) == (
        '$: matches no anyOf alternative: missing required property "a"; '
        'missing required property "b"'
    )


def test_one_of() -> None:
    schema = {"oneOf": [{"type": "integer"}, {"type": "number"}]}
    ok(1.5, schema)
    assert one(1, schema) == "$: matches more than one oneOf alternative"
    assert one("x", schema) == "$: expected integer or number, got string"


def test_all_of_not_if_then_else() -> None:
    schema = {"allOf": [{"minimum": 1}, {"maximum": 3}]}
    ok(2, schema)
    assert one(4, schema) == "$: must be <= 3, got 4"
    assert one("x", {"not": {"type": "string"}}) == "$: must not match the 'not' schema"
    conditional = {
        "if": {"properties": {"kind": {"const": "card"}}},
        "then": {"required": ["number"]},
        "else": {"required": ["iban"]},
    }
    ok({"kind": "card", "number": "4242"}, conditional)
    ok({"kind": "bank", "iban": "DE00"}, conditional)
    assert one({"kind": "card"}, conditional) == '$: missing required property "number"'
    assert one({"kind": "bank"}, conditional) == '$: missing required property "iban"'


def test_nullable_openapi_style() -> None:
    schema = {"type": "string", "nullable": True, "enum": ["a"]}
    ok(None, schema)
    ok("a", schema)
    assert one(1, schema) == "$: expected string, got integer"
    assert one(None, {"type": "string", "nullable": False}) == "$: expected string, got null"


def test_boolean_schemas() -> None:
    ok(123, True)
    assert one(123, False) == "$: no value is allowed here"
    ok({"a": 1}, {"properties": {"a": True}})


# --- $ref ---------------------------------------------------------------------------


def test_refs_to_defs_and_definitions() -> None:
    schema = {
        "$defs": {"name": {"type": "string", "minLength": 1}},
        "definitions": {"age": {"type": "integer", "minimum": 0}},
        "properties": {"name": {"$ref": "#/$defs/name"}, "age": {"$ref": "#/definitions/age"}},
    }
    ok({"name": "a", "age": 3}, schema)
    assert validate({"name": "", "age": -1}, schema) == [
        "$.name: expected at least 1 characters, got 0",
        "$.age: must be >= 0, got -1",
    ]


def test_recursive_ref_validates_trees() -> None:
    schema = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["value"],
            }
        },
        "$ref": "#/$defs/node",
    }
    ok({"value": 1, "children": [{"value": 2, "children": [{"value": 3}]}]}, schema)
    assert one({"value": 1, "children": [{"children": []}]}, schema) == (
        '$.children[0]: missing required property "value"'
    )


def test_ref_loops_that_never_descend_terminate() -> None:
    schema = {
        "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}},
        "$ref": "#/$defs/a",
    }
    ok(1, schema)
    ok({"x": [1, 2]}, {"$ref": "#"})


def test_ref_pointer_escapes_and_percent_encoding() -> None:
    schema = {"$defs": {"a/b": {"type": "integer"}, "c d": {"type": "string"}}}
    ok(1, {**schema, "$ref": "#/$defs/a~1b"})
    ok("x", {**schema, "$ref": "#/$defs/c%20d"})


def test_deep_instances_are_reported_not_crashing() -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(3000):
        child: list[Any] = []
        node.append(child)
        node = child
    schema = {
        "$defs": {"a": {"type": "array", "items": {"$ref": "#/$defs/a"}}},
        "$ref": "#/$defs/a",
    }
    (error,) = validate(deep, schema)
    assert error.endswith("nested too deeply to validate")


# --- malformed schemas ------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "strng"}, "'type' must be one of"),
        ({"type": []}, "'type' must be one of"),
        ({"properties": []}, "'properties' must be an object"),
        ({"properties": {"a": 5}}, "#/properties/a: a schema must be an object or a boolean"),
        ({"required": "a"}, "'required' must be an array of strings"),
        ({"minLength": -1}, "'minLength' must be a non-negative integer"),
        ({"minimum": "3"}, "'minimum' must be a number"),
        ({"multipleOf": 0}, "'multipleOf' must be a number > 0"),
        ({"pattern": "("}, "'pattern' is not a valid regular expression"),
        ({"patternProperties": {"(": {}}}, "'patternProperties' key '(' is not a valid"),
        ({"enum": "a"}, "'enum' must be an array"),
        ({"anyOf": []}, "'anyOf' must be a non-empty array"),
        ({"$ref": "#/$defs/missing"}, "does not resolve"),
        ({"$ref": "https://example.com/s.json"}, "is not local"),
        ({"$ref": 5}, "'$ref' must be a string"),
        ({"items": [1]}, "#/items/0: a schema must be"),
        ("not a schema", "#: a schema must be an object or a boolean"),
        (None, "#: a schema must be"),
    ],
)
def test_malformed_schema_is_one_error(schema: Any, fragment: str) -> None:
    errors = validate({"a": 1}, schema)
    assert len(errors) == 1
    assert errors[0].startswith("schema error: ")
    assert fragment in errors[0]


def test_check_schema_lists_every_problem_and_schema_raises() -> None:
    bad = {"type": "nope", "properties": {"a": {"minimum": "x"}}}
    problems = check_schema(bad)
    assert problems == [
        "#: 'type' must be one of ['array', 'boolean', 'integer', 'null', 'number', "
        "'object', 'string'] or a list of them, got 'nope'",
        "#/properties/a: 'minimum' must be a number, got 'x'",
    ]
    with pytest.raises(SchemaError) as caught:
        Schema(bad)
    assert caught.value.problems == problems
    assert isinstance(caught.value, ValueError)
    assert validate(1, bad)[0].endswith("(and 1 more)")


def test_unknown_keywords_are_ignored() -> None:
    ok("x", {"type": "string", "x-whatever": {"nonsense": []}, "description": 5, "title": []})
    assert check_schema({"unevaluatedProperties": "weird", "$comment": 1}) == []


def test_cyclic_schema_structures_are_walked_once() -> None:
    schema: dict[str, Any] = {"type": "object", "properties": {}}
    schema["properties"]["self"] = schema  # what a recursive YAML anchor builds
    assert check_schema(schema) == []
    ok({"self": {"self": {}}}, schema)
    assert one({"self": {"self": 1}}, schema) == "$.self.self: expected object, got integer"


# --- limits and reuse -------------------------------------------------------------


def test_errors_are_capped() -> None:
    schema = {"type": "array", "items": {"type": "string"}}
    errors = validate(list(range(100)), schema)
    assert len(errors) == MAX_ERRORS
    assert errors[0] == "$[0]: expected string, got integer"
    assert len(validate(list(range(100)), schema, max_errors=3)) == 3
    assert len(validate(list(range(100)), schema, max_errors=0)) == 1


def test_schema_object_is_reusable() -> None:
    compiled = Schema({"properties": {"a": {"enum": ["x", "y"]}}, "required": ["a"]})
    assert compiled.validate({"a": "x"}) == []
    assert compiled.validate({"a": "z"}) == ['$.a: "z" is not one of ["x", "y"]']
    assert compiled.validate({}) == ['$: missing required property "a"']
    assert compiled.validate({"a": "y"}) == []


def test_large_unique_array_is_linear_enough() -> None:
    values = [{"id": i, "tags": [str(i)]} for i in range(20_000)]
    assert validate(values, {"uniqueItems": True}) == []


@pytest.mark.serial  # CPU timing: not beside another test worker
def test_nested_unions_over_recursive_refs_stay_linear() -> None:
    # Every level holds an anyOf whose branches recurse to the root: without memoising
    # branch results (and clipping branch summaries) this takes 3**depth steps.
    alternatives = [
        {"$ref": "#", "required": ["zz"]},
        {"$ref": "#", "required": ["yy"]},
        {"type": "null"},
    ]
    schema = {"type": "object", "properties": {"a": {"anyOf": alternatives}}}
    doc: dict[str, Any] = {}
    node = doc
    for _ in range(70):
        node["a"] = {}
        node = node["a"]
    started = time.perf_counter()
    (error,) = validate(doc, schema)
    assert time.perf_counter() - started < 1.0
    assert error.startswith("$.a: matches no anyOf alternative: ")
    assert len(error) < 1000


def test_openai_strict_mode_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "explanation": {"type": "string"},
                        "output": {"type": ["string", "null"]},
                    },
                    "required": ["explanation", "output"],
                    "additionalProperties": False,
                },
            },
            "final_answer": {"type": "string"},
        },
        "required": ["steps", "final_answer"],
        "additionalProperties": False,
    }
    ok({"steps": [{"explanation": "e", "output": None}], "final_answer": "42"}, schema)
    assert validate({"steps": [{"explanation": "e"}], "final_answer": 42}, schema) == [
        '$.steps[0]: missing required property "output"',
        "$.final_answer: expected string, got integer",
    ]


# --- never raises -----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)
keywords = st.sampled_from(
    [
        "type",
        "properties",
        "required",
        "items",
        "prefixItems",
        "additionalItems",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "if",
        "then",
        "else",
        "$ref",
        "$defs",
        "additionalProperties",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "uniqueItems",
        "minItems",
        "maxItems",
        "contains",
        "minContains",
        "maxContains",
        "nullable",
    ]
)
schemas = st.recursive(
    st.booleans() | st.dictionaries(keywords, json_values, max_size=3),
    lambda inner: st.dictionaries(keywords, inner | st.lists(inner, max_size=3), max_size=3),
    max_leaves=10,
)


@settings(max_examples=400, deadline=None)
@given(instance=json_values, schema=schemas)
def test_never_raises(instance: Any, schema: Any) -> None:
    errors = validate(instance, schema)
    assert isinstance(errors, list)
    assert all(isinstance(e, str) for e in errors)
    assert len(errors) <= MAX_ERRORS


def _well_formed(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Schemas whose keyword values have the right shapes, to exercise validation itself."""
    counts = st.integers(0, 3)
    numbers = st.integers(-3, 3) | st.floats(-3, 3)
    parts: dict[str, st.SearchStrategy[Any]] = {
        "type": st.sampled_from(["string", "integer", "number", "array", "object", "null"])
        | st.lists(st.sampled_from(["string", "null", "boolean"]), min_size=1, max_size=2),
        "properties": st.dictionaries(st.sampled_from("abc"), inner, max_size=2),
        "required": st.lists(st.sampled_from("abc"), max_size=2),
        "additionalProperties": inner,
        "items": inner,
        "prefixItems": st.lists(inner, min_size=1, max_size=2),
        "enum": st.lists(json_values, max_size=3),
        "const": json_values,
        "minimum": numbers,
        "exclusiveMaximum": numbers | st.booleans(),
        "multipleOf": st.sampled_from([1, 2, 0.5, 0.1]),
        "minLength": counts,
        "maxItems": counts,
        "uniqueItems": st.booleans(),
        "pattern": st.sampled_from(["^a", "b$", "[0-9]"]),
        "format": st.sampled_from(["date", "date-time", "email", "uri"]),
        "anyOf": st.lists(inner, min_size=1, max_size=2),
        "oneOf": st.lists(inner, min_size=1, max_size=2),
        "allOf": st.lists(inner, min_size=1, max_size=2),
        "not": inner,
        "if": inner,
        "then": inner,
        "else": inner,
        "contains": inner,
        "propertyNames": inner,
        "nullable": st.booleans(),
        "$ref": st.just("#"),
    }
    return st.fixed_dictionaries({}, optional=parts)


well_formed: st.SearchStrategy[Any] = st.recursive(
    st.booleans() | st.just({}), _well_formed, max_leaves=8
)


@settings(max_examples=400, deadline=None)
@given(instance=json_values, schema=well_formed)
def test_well_formed_schemas_validate_without_internal_errors(instance: Any, schema: Any) -> None:
    assert check_schema(schema) == []
    errors = validate(instance, schema)
    assert not any(e.startswith("schema error") for e in errors), errors
    assert len(errors) <= MAX_ERRORS
