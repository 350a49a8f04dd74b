"""Property tests: generated requests against the admin API and /v1/*, over real HTTP.

The admin operations come from `app.openapi()` (plus the admin routes kept out of the
schema), so every /admin route is fuzzed, including ones added after this file was written;
bodies are drawn from each operation's JSON schema, then mutated (wrong types, extra and
missing fields, nulls, huge numbers, unicode). /v1 bodies mix plausible requests with junk,
deep nesting and oversized padding.

Invariants: Farebox never answers 500; every error is JSON in the endpoint's error format
(OpenAI's, or Anthropic's on /v1/messages); no response body or header contains a
configured secret (master key, client keys, provider keys), even from upstreams that echo
the key they were sent; oversized bodies are 413 and over-deep ones 400.

Deterministic (derandomized, no example database) and bounded to a few hundred requests.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from tests.gateway_harness import RunningGateway
from tests.hardened_gateway import (
    CLIENT_KEY,
    MASTER_KEY,
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    hardened,
    leaked,
    request,
)

__all__ = ["hardened"]  # the fixture, imported for pytest

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["", "0", "-1", "null", "key_0", "💥", "\u202e", "a" * 300, "\x00"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=15,
)


def dumps(value: Any) -> bytes:
    """JSON with integers of any size (orjson stops at 64 bits; clients need not)."""
    return json.dumps(value).encode()


def nested(depth: int) -> Any:
    value: Any = 0
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


# ---------------------------------------------------------------- JSON schema → strategy


def from_schema(schema: Any, defs: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values (mostly) valid for `schema`: enough to get past validation into handlers."""
    if not isinstance(schema, dict) or depth > 6:
        return json_values
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return from_schema(defs.get(ref.rsplit("/", 1)[-1], {}), defs, depth + 1)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            return st.one_of([from_schema(s, defs, depth + 1) for s in schema[combinator]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, defs, depth) for k in kind])
    if kind == "string":
        low = schema.get("minLength", 0)
        high = min(schema.get("maxLength", 40), low + 40)
        return st.text(min_size=low, max_size=high)
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = from_schema(schema.get("items", {}), defs, depth + 1)
        return st.lists(items, max_size=min(schema.get("maxItems", 4), 4))
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: from_schema(v, defs, depth + 1) for k, v in props.items() if k in required},
            optional={
                k: from_schema(v, defs, depth + 1) for k, v in props.items() if k not in required
            },
        )
    return json_values


def mutated(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid values, and valid objects with one field replaced, dropped or added as junk."""

    def mutate(value: Any, data: st.DataObject) -> Any:
        if not isinstance(value, dict):
            return value
        out = dict(value)
        action = data.draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace" and out:
            out[data.draw(st.sampled_from(sorted(out)))] = data.draw(json_values)
        elif action == "drop" and out:
            del out[data.draw(st.sampled_from(sorted(out)))]
        else:
            out[data.draw(st.text(max_size=10))] = data.draw(json_values)
        return out

    return st.one_of(
        valid,
        st.tuples(valid, st.data()).map(lambda pair: mutate(*pair)),
        json_values,
        st.just(nested(MAX_JSON_DEPTH + 5)),
    )


# ---------------------------------------------------------------- admin API


def _flat_routes(routes: list[Any]) -> list[Route]:
    """Routes, including those of included routers (FastAPI wraps them lazily)."""
    out: list[Route] = []
    for route in routes:
        if isinstance(route, Route):
            out.append(route)
        inner = getattr(route, "original_router", None)
        if inner is not None:
            out.extend(_flat_routes(inner.routes))
    return out


def admin_operations(gateway: RunningGateway) -> list[dict[str, Any]]:
    """Every /admin operation: from the OpenAPI document, plus routes kept out of it."""
    assert gateway.app is not None
    app = gateway.app.app
    spec = app.openapi()
    components = spec.get("components", {}).get("schemas", {})
    ops: list[dict[str, Any]] = []
    documented: set[tuple[str, str]] = set()
    for path, methods in spec["paths"].items():
        if not path.startswith("/admin"):
            continue
        for method, op in methods.items():
            schema = (
                op.get("requestBody", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema")
            )
            defs = {**components, **(schema or {}).get("$defs", {})}
            ops.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "params": op.get("parameters", []),
                    "body": from_schema(schema, defs) if schema is not None else None,
                }
            )
            documented.add((method.upper(), path))
    for route in _flat_routes(app.routes):
        if route.path.startswith("/admin"):
            path = re.sub(r"\{(\w+):path\}", r"{\1}", route.path)
            for method in sorted((route.methods or set()) - {"HEAD"}):
                if (method, path) not in documented:
                    ops.append({"method": method, "path": path, "params": [], "body": json_values})
    return ops


def test_every_admin_route_is_fuzzed(hardened: RunningGateway) -> None:
    paths = {op["path"] for op in admin_operations(hardened)}
    assert "/admin/routes/{route}/explain" in paths
    assert "/admin/keys" in paths  # virtual keys
    assert "/admin/drills/{drill_id}/stop" in paths  # failover drills


path_values = st.sampled_from(["key_0", "key_" + "f" * 32, "chat", "nope", "..", "%00"]) | st.text(
    min_size=1, max_size=20
)
# Filled as the examples run: virtual keys the admin API issued, and their secrets.
CREATED_IDS: set[str] = set()
ISSUED_SECRETS: set[str] = set()
auths = st.sampled_from([MASTER_KEY] * 5 + [CLIENT_KEY, None, "garbage-key-123"])


def _admin_error_ok(status: int, raw: bytes) -> None:
    assert status != 500 and status < 502, raw
    if status >= 400:
        error = json.loads(raw)["error"]
        assert {"message", "type", "param", "code"} <= set(error), raw
        assert isinstance(error["message"], str) and "Traceback" not in error["message"]


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_admin_api_survives_generated_requests(
    hardened: RunningGateway, data: st.DataObject
) -> None:
    ops = admin_operations(hardened)
    op = data.draw(st.sampled_from(ops), label="operation")
    path = op["path"]
    query = []
    for name in re.findall(r"\{(\w+)\}", path):
        value = data.draw(path_values, label=name)
        # Often a key created by an earlier example, so PATCH / revoke / rotate reach real
        # rows. Drawn the same way whatever exists, to keep generation deterministic.
        pick = data.draw(st.integers(0, 9), label=f"{name} pick")
        if pick < 6 and CREATED_IDS:
            value = sorted(CREATED_IDS)[pick % len(CREATED_IDS)]
        path = path.replace("{" + name + "}", quote(value, safe=""))
    for param in op["params"]:
        if param["in"] == "query" and data.draw(st.booleans()):
            value = data.draw(from_schema(param.get("schema", {}), {}) | st.text(max_size=8))
            query.append(f"{param['name']}={quote(str(value), safe='')}")
    if query:
        path += "?" + "&".join(query)
    body = None
    if op["body"] is not None:
        value = data.draw(mutated(op["body"]), label="body")
        body = dumps(value)
    key = data.draw(auths, label="key")
    status, headers, raw = request(hardened, op["method"], path, body, key=key)
    _admin_error_ok(status, raw)
    assert not leaked(raw, repr(headers)), (op, raw)
    # A virtual key's secret is shown once, in the answer that issued it; never again.
    text = raw.decode("utf-8", "replace")
    assert not [s for s in ISSUED_SECRETS if s in text], (op, raw)
    if 200 <= status < 300:
        answer = json.loads(raw)
        if isinstance(answer, dict):
            if isinstance(answer.get("secret"), str):
                ISSUED_SECRETS.add(answer["secret"])
            if isinstance(answer.get("id"), str) and answer["id"].startswith("key_"):
                CREATED_IDS.add(answer["id"])


# ---------------------------------------------------------------- /v1/*

MODELS = st.sampled_from(["chat", "embeddings", "echo400", "echo429", "echomid", "logged"])
words = st.text(min_size=1, max_size=40)
chat_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]), "content": words}
    ),
    min_size=1,
    max_size=3,
)
# Valid requests per endpoint; `mutated` then breaks them one field at a time.
VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "/v1/chat/completions": st.fixed_dictionaries(
        {"model": MODELS, "messages": chat_messages},
        optional={
            "stream": st.booleans(),
            "max_tokens": st.integers(1, 64),
            "temperature": st.floats(0, 2),
            "user": words,
        },
    ),
    "/v1/completions": st.fixed_dictionaries(
        {"model": MODELS, "prompt": words | st.lists(words, min_size=1, max_size=3)},
        optional={"stream": st.booleans(), "max_tokens": st.integers(1, 64)},
    ),
    "/v1/embeddings": st.fixed_dictionaries(
        {"model": MODELS, "input": words | st.lists(words, min_size=1, max_size=3)},
        optional={"encoding_format": st.sampled_from(["float", "base64"])},
    ),
    "/v1/messages": st.fixed_dictionaries(
        {
            "model": MODELS,
            "max_tokens": st.integers(1, 64),
            "messages": st.lists(
                st.fixed_dictionaries({"role": st.just("user"), "content": words}),
                min_size=1,
                max_size=2,
            ),
        },
        optional={"stream": st.booleans(), "system": words, "temperature": st.floats(0, 1)},
    ),
}
# Fields a client may get wrong in type or range, on any endpoint.
KNOBS = {
    "max_tokens": st.integers(-(10**20), 10**20) | json_values,
    "temperature": st.floats(allow_nan=False) | json_values,
    "n": st.integers(-3, 10**9) | json_values,
    "stream": json_values,
    "tools": json_values,
    "response_format": json_values,
    "stream_options": json_values,
    "encoding_format": json_values,
    "messages": json_values,
    "model": json_values,
}


def deep_body(fields: dict[str, Any], depth: int) -> bytes:
    """`fields` plus an array nested `depth` levels (built as bytes: orjson stops at 255)."""
    rest = dumps(fields)[1:]
    return b'{"x": ' + b"[" * depth + b"]" * depth + b", " + rest


def v1_bodies(path: str) -> st.SearchStrategy[tuple[str, bytes]]:
    valid = VALID[path]
    knobbed = st.tuples(valid, st.dictionaries(st.sampled_from(sorted(KNOBS)), st.none())).flatmap(
        lambda pair: st.fixed_dictionaries({k: KNOBS[k] for k in pair[1]}).map(
            lambda junk: {**pair[0], **junk}
        )
    )
    ordinary = st.one_of(valid, knobbed, mutated(valid), json_values).map(
        lambda v: ("any", dumps(v))
    )
    deep = st.tuples(valid, st.integers(MAX_JSON_DEPTH, 3000)).map(
        lambda pair: ("deep", deep_body(pair[0], pair[1]))
    )
    big = valid.map(lambda v: ("big", dumps({**v, "pad": "x" * MAX_BODY_BYTES})))
    junk = st.binary(max_size=64).map(lambda b: ("any", b))
    return st.one_of(ordinary, ordinary, ordinary, ordinary, deep, big, junk)


def _v1_error_ok(path: str, status: int, raw: bytes) -> None:
    body = json.loads(raw)
    if path == "/v1/messages":
        assert body["type"] == "error" and isinstance(body["error"]["message"], str), raw
    else:
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, raw
        assert isinstance(error["message"], str) and "Traceback" not in error["message"]


@pytest.mark.parametrize("path", list(VALID))
def test_v1_survives_generated_bodies(hardened: RunningGateway, path: str) -> None:
    @FUZZ
    @given(case=v1_bodies(path))
    def check(case: tuple[str, bytes]) -> None:
        kind, body = case
        status, headers, raw = request(hardened, "POST", path, body)
        assert not leaked(raw, repr(headers)), raw
        # 502/429 come from the echoing upstreams on purpose; 500 would be Farebox's own.
        assert status != 500 and (status < 500 or status == 502), raw
        if kind == "big":
            assert status == 413, raw
        elif kind == "deep":
            assert status == 400 and b"nested too deeply" in raw, raw
        if status >= 400:
            _v1_error_ok(path, status, raw)
        else:
            assert raw.startswith((b"{", b"data: ", b"event: ")), raw[:100]

    check()
