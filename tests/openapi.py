"""Validate gateway bodies against OpenAI's published OpenAPI spec.

The spec is read in place from the shared reference folder beside the repository (CI has
`../shared` at the same relative place), never copied in. It is parsed once per test
session (about a second with libyaml) and each schema's validator is built once.

The spec is OpenAPI 3.1 but still marks some fields 3.0-style with `nullable: true`,
which plain JSON Schema ignores (a streamed `finish_reason: null` would fail), so every
`nullable` schema is rewritten as `anyOf: [schema, null]` before validation. `$ref`s
resolve against the whole document through a `referencing` registry.

    from tests.openapi import check
    check("CreateChatCompletionResponse", body)   # raises AssertionError with every problem
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT.parent / "shared" / "reference" / "openai-openapi.yaml"
_URI = "urn:openai-openapi"

CHAT = "CreateChatCompletionResponse"
CHUNK = "CreateChatCompletionStreamResponse"
EMBEDDING = "CreateEmbeddingResponse"
COMPLETION = "CreateCompletionResponse"
ERROR = "ErrorResponse"

#: The spec component of each Responses stream event type (Farebox's and the simulator's).
RESPONSE_EVENTS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.refusal.delta": "ResponseRefusalDeltaEvent",
    "response.refusal.done": "ResponseRefusalDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.reasoning_summary_part.added": "ResponseReasoningSummaryPartAddedEvent",
    "response.reasoning_summary_part.done": "ResponseReasoningSummaryPartDoneEvent",
    "response.reasoning_summary_text.delta": "ResponseReasoningSummaryTextDeltaEvent",
    "response.reasoning_summary_text.done": "ResponseReasoningSummaryTextDoneEvent",
    "response.reasoning_text.delta": "ResponseReasoningTextDeltaEvent",
    "response.reasoning_text.done": "ResponseReasoningTextDoneEvent",
    "response.web_search_call.in_progress": "ResponseWebSearchCallInProgressEvent",
    "response.web_search_call.searching": "ResponseWebSearchCallSearchingEvent",
    "response.web_search_call.completed": "ResponseWebSearchCallCompletedEvent",
    "error": "ResponseErrorEvent",
}


def _nullable(node: Any) -> Any:
    """3.0-style `nullable: true` as JSON Schema (recursively)."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def _registry() -> Registry[Any]:
    if not SPEC.is_file():
        raise FileNotFoundError(f"OpenAI spec not found at {SPEC} (expected ../shared/reference)")
    with SPEC.open("rb") as handle:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        spec = yaml.load(handle, Loader=loader)  # a safe loader (libyaml when present)
    document = {"components": {"schemas": _nullable(spec["components"]["schemas"])}}
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_URI, resource)
    return registry


@cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    """The validator of `#/components/schemas/<name>`."""
    schema = {"$ref": f"{_URI}#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def problems(name: str, body: Any) -> list[str]:
    """Every way `body` breaks schema `name`, as `path: message` lines (empty when valid)."""
    found = []
    for error in validator(name).iter_errors(body):
        path = "/".join(str(p) for p in error.absolute_path) or "(root)"
        found.append(f"{path}: {error.message}")
    return sorted(found)


def check(name: str, body: Any, context: str = "") -> None:
    """Fail with every problem at once when `body` does not validate against `name`."""
    found = problems(name, body)
    where = f" ({context})" if context else ""
    assert not found, f"{name}{where} does not match the OpenAI spec:\n" + "\n".join(found)


def check_stream(chunks: list[Any], context: str = "") -> None:
    """Every chunk of a chat stream against the chunk schema."""
    assert chunks, f"empty stream ({context})"
    for position, chunk in enumerate(chunks):
        check(CHUNK, chunk, f"{context} chunk {position}")
