"""Quality gates: deterministic checks on an answer before it reaches the client.

The gateway builds a :class:`GateSpec` from YAML and calls :func:`check` with the request
payload and the normalized OpenAI ``chat.completion`` dict.  On failure it re-prompts the
same deployment once with :func:`repair_message`, or escalates to a stronger deployment.
Pure: no I/O, and :func:`check` never raises on malformed requests or answers.

Check order (the first failure is the main reason and names the ``outcome``): truncated
(finish ``length``), refusal, empty, tool arguments, JSON parse, schema, regex.  Every
choice is checked; with ``n > 1`` failures are prefixed ``choices[i]:``.

Normalization (:mod:`routing.value_maps`) runs on the parsed JSON content *before* schema
validation, so ``"México"`` can satisfy ``enum: ["Mexico"]``; when it changed anything the
result's ``body`` is the response with the re-serialized content, which is what the client
should receive.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from routing.json_schema import Schema, SchemaError, type_name
from routing.value_maps import (
    FieldMap,
    apply_field_maps,
    compile_field_maps,
    load_value_map,
    load_value_maps,
)

__all__ = [
    "OUTCOMES",
    "GateResult",
    "GateSpec",
    "check",
    "load_value_map",
    "load_value_maps",
    "repair_message",
]

Outcome = Literal[
    "pass", "json_invalid", "schema", "tool_args", "truncated", "empty", "refusal", "regex"
]
OUTCOMES: Final[tuple[str, ...]] = (
    "pass",
    "json_invalid",
    "schema",
    "tool_args",
    "truncated",
    "empty",
    "refusal",
    "regex",
)
_MAX_FAILURES = 12
#: Folded openings of a refusal (apostrophes straightened, lower case).  Kept short and
#: specific: a gate that fires on "I'm sorry for the delay" would burn repair budget.
_REFUSALS: Final = (
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "i'm sorry, but i won't",
    "i am sorry, but i can't",
    "i am sorry, but i cannot",
    "i'm sorry, i can't",
    "i'm sorry, i cannot",
    "sorry, but i can't",
    "sorry, i can't",
    "i can't help with",
    "i cannot help with",
    "i can't assist with",
    "i cannot assist with",
    "i'm unable to help",
    "i'm unable to assist",
    "i am unable to help",
    "i am unable to assist",
    "i'm not able to help",
    "i can't comply",
    "i cannot comply",
    "i won't be able to help",
    "i must decline",
    "as an ai",
)
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


@dataclass(frozen=True, slots=True)
class GateSpec:
    """Which checks to run.  Construction validates it (``ValueError`` on a bad schema,
    regex, field path or normalization conflict), so config errors surface at load time.

    ``json_schema``: a schema dict, or ``"request"`` for the request's
    ``response_format.json_schema.schema`` (``json_object`` → any JSON object; a request
    without a JSON ``response_format`` skips the check).  ``normalize`` maps a field path
    to ``{variant: canonical}`` (see :mod:`routing.value_maps`).
    """

    json_schema: Literal["request"] | Mapping[str, Any] | None = None
    tool_arguments: bool = False
    reject_truncated: bool = False
    non_empty: bool = False
    not_refusal: bool = False
    regex: str | None = None
    normalize: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    _schema: Schema | None = field(default=None, init=False, repr=False, compare=False)
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _maps: tuple[FieldMap, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        schema = self.json_schema
        if isinstance(schema, str):
            if schema != "request":
                raise ValueError(f"json_schema must be 'request' or a schema, got {schema!r}")
        elif isinstance(schema, Mapping):
            try:
                object.__setattr__(self, "_schema", Schema(dict(schema)))
            except SchemaError as exc:
                raise ValueError(f"json_schema is not usable: {exc}") from None
        elif schema is not None:
            raise ValueError(f"json_schema must be 'request' or a schema, got {schema!r}")
        if self.regex is not None:
            try:
                object.__setattr__(self, "_pattern", re.compile(self.regex))
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} is not valid: {exc}") from None
        object.__setattr__(self, "_maps", compile_field_maps(self.normalize))

    @property
    def enabled(self) -> bool:
        """Whether any check is on (an all-off spec need not be called at all)."""
        return bool(
            self.json_schema is not None
            or self.tool_arguments
            or self.reject_truncated
            or self.non_empty
            or self.not_refusal
            or self.regex is not None
            or self._maps
        )


@dataclass(frozen=True, slots=True)
class GateResult:
    """``failures[0]`` is the main reason; ``outcome`` its short tag for the ledger.

    ``body`` is the response with normalized content when normalization changed something
    (``None`` otherwise); ``notes`` lists checks skipped because the request gave them
    nothing usable (e.g. a malformed tool schema), which is not the answer's fault.
    """

    passed: bool
    outcome: str
    failures: list[str] = field(default_factory=list)
    body: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


class _Found:
    """Failures of one check run, each tagged with its outcome."""

    __slots__ = ("items", "notes")

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def add(self, outcome: str, message: str) -> None:
        if len(self.items) < _MAX_FAILURES:
            self.items.append((outcome, message))


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(text: str) -> tuple[Any, str | None]:
    """``(document, None)`` or ``(None, why)``; strict JSON (no NaN/Infinity)."""
    if not text.strip():
        return None, "is empty"
    try:
        return json.loads(text, parse_constant=_reject_constant), None
    except json.JSONDecodeError as exc:
        return None, f"is not valid JSON ({exc.msg} at char {exc.pos})"
    except ValueError as exc:
        return None, f"is not valid JSON ({exc})"
    except RecursionError:
        return None, "is nested too deeply to parse"


def _text_of(content: Any) -> str | None:
    """Message content as text: a string, or the joined ``text`` parts of a parts list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, Mapping)]
        return "".join(t for t in texts if isinstance(t, str))
    return None


def _refusal(message: Mapping[str, Any], finish: Any, text: str | None) -> str | None:
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal.strip():
        return f"the model refused: {_clip(refusal)}"
    if finish == "content_filter":
        return "the provider's content filter stopped the answer (finish_reason content_filter)"
    if text:
        head = " ".join(text[:200].translate(_QUOTES).lower().split()).lstrip("\"'*_> ")
        if head.startswith(_REFUSALS):
            return f"the answer is a refusal: {_clip(text)}"
    return None


def _request_schema(spec: GateSpec, request: Mapping[str, Any], found: _Found) -> Schema | None:
    if spec._schema is not None or spec.json_schema != "request":
        return spec._schema
    fmt = request.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "json_object":
        return _OBJECT
    if kind != "json_schema":
        found.notes.append("json_schema: the request asked for no JSON response_format; skipped")
        return None
    spec_block = fmt.get("json_schema") if isinstance(fmt, Mapping) else None
    raw = spec_block.get("schema", True) if isinstance(spec_block, Mapping) else True
    try:
        return Schema(raw)
    except SchemaError as exc:
        found.notes.append(f"json_schema: the request's schema is not usable ({exc}); skipped")
        return None


_OBJECT = Schema({"type": "object"})


def _tools(request: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: parameters schema}`` of the request's function tools."""
    out: dict[str, Any] = {}
    tools = request.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            out[fn["name"]] = fn.get("parameters", True)
    return out


def _check_tool_calls(calls: list[Any], request: Mapping[str, Any], found: _Found) -> None:
    tools = _tools(request)
    for i, call in enumerate(calls):
        if not isinstance(call, Mapping):
            found.add("tool_args", f"tool call #{i} is not an object")
            continue
        if call.get("type", "function") != "function":
            continue  # custom tools take free-form input
        fn = call.get("function")
        fn = fn if isinstance(fn, Mapping) else {}
        name = fn.get("name")
        label = f"tool call {name!r}" if isinstance(name, str) else f"tool call #{i}"
        if not isinstance(name, str) or name not in tools:
            offered = ", ".join(sorted(tools)) or "none"
            found.add("tool_args", f"{label}: unknown tool (the request offers: {offered})")
            continue
        arguments = fn.get("arguments")
        if not isinstance(arguments, str):
            found.add("tool_args", f"{label}: arguments must be a JSON string")
            continue
        document, why = _parse_json(arguments)
        if why is not None:
            found.add("tool_args", f"{label}: arguments {why}")
            continue
        if not isinstance(document, dict):
            kind = type_name(document)
            found.add("tool_args", f"{label}: arguments must be a JSON object, not {kind}")
            continue
        try:
            schema = Schema(tools[name])
        except SchemaError as exc:
            found.notes.append(f"{label}: parameters schema not usable ({exc}); not validated")
            continue
        for error in schema.validate(document):
            found.add("tool_args", f"{label}: {error}")


def _check_choice(
    spec: GateSpec, request: Mapping[str, Any], choice: Mapping[str, Any], found: _Found
) -> str | None:
    """Run the checks on one choice; returns re-serialized content if it was normalized."""
    message = choice.get("message")
    message = message if isinstance(message, Mapping) else {}
    text = _text_of(message.get("content"))
    calls = message.get("tool_calls")
    calls = calls if isinstance(calls, list) else []
    finish = choice.get("finish_reason")
    if spec.reject_truncated and finish == "length":
        found.add("truncated", "the answer was cut off at the token limit (finish_reason length)")
    if spec.not_refusal:
        refusal = _refusal(message, finish, text)
        if refusal:
            found.add("refusal", refusal)
    if spec.non_empty and not calls and not (text and text.strip()):
        why = "only whitespace" if text else "no content and no tool calls"
        found.add("empty", f"the answer is empty ({why})")
    if spec.tool_arguments and calls:
        _check_tool_calls(calls, request, found)
    # A tool-call answer without text has no content to hold to a format.
    if text is None and calls:
        return None
    normalized: str | None = None
    schema = _request_schema(spec, request, found) if spec.json_schema is not None else None
    if schema is not None or spec._maps:
        document, problem = _parse_json(text or "")
        if problem is not None:
            if schema is not None:
                found.add("json_invalid", f"the content {problem}")
        else:
            if spec._maps and apply_field_maps(document, spec._maps):
                normalized = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
            for error in schema.validate(document) if schema is not None else ():
                found.add("schema", error)
    if spec._pattern is not None:
        target = normalized if normalized is not None else text or ""
        if not spec._pattern.search(target):
            found.add("regex", f"the content does not match the pattern {spec.regex!r}")
    return normalized


def _with_content(body: Mapping[str, Any], changed: dict[int, str]) -> dict[str, Any]:
    """A copy of ``body`` with new content in the given choices (the input is untouched)."""
    choices = list(body["choices"])
    for index, content in changed.items():
        choice = dict(choices[index])
        choice["message"] = {**choice["message"], "content": content}
        choices[index] = choice
    return {**body, "choices": choices}


def check(
    spec: GateSpec, request_payload: Mapping[str, Any] | None, response_body: Mapping[str, Any]
) -> GateResult:
    """Judge a normalized ``chat.completion`` against ``spec``; never raises."""
    try:
        return _check(spec, request_payload, response_body)
    except Exception as exc:  # a gate bug must not fail the request it was judging
        return GateResult(True, "pass", notes=[f"gate check crashed, answer passed: {exc!r}"])


def _check(
    spec: GateSpec, request_payload: Mapping[str, Any] | None, response_body: Mapping[str, Any]
) -> GateResult:
    request = request_payload if isinstance(request_payload, Mapping) else {}
    body = response_body if isinstance(response_body, Mapping) else {}
    raw = body.get("choices")
    choices: list[Mapping[str, Any]] = raw if isinstance(raw, list) else []
    found = _Found()
    changed: dict[int, str] = {}
    if not choices or not all(isinstance(c, Mapping) for c in choices):
        # No usable choice: judge an empty one, so non_empty / json checks still fail it.
        _check_choice(spec, request, {}, found)
    else:
        for index, choice in enumerate(choices):
            before = len(found.items)
            content = _check_choice(spec, request, choice, found)
            if content is not None:
                changed[index] = content
            if len(choices) > 1:
                for k in range(before, len(found.items)):
                    outcome, message = found.items[k]
                    found.items[k] = (outcome, f"choices[{index}]: {message}")
    new_body = _with_content(body, changed) if changed else None
    notes = list(dict.fromkeys(found.notes))
    if not found.items:
        return GateResult(True, "pass", body=new_body, notes=notes)
    failures = [message for _, message in found.items]
    return GateResult(False, found.items[0][0], failures, new_body, notes)


_ASK: Final = {
    "json_invalid": "Reply with only the corrected JSON document: no Markdown code fences, "
    "no commentary.",
    "schema": "Reply with only the corrected JSON document, matching the required schema "
    "exactly: no Markdown code fences, no commentary.",
    "tool_args": "Call the tool again with arguments that are a JSON object matching its "
    "parameters schema.",
    "truncated": "Your answer was cut off at the output token limit. Give the complete "
    "answer, more concisely.",
    "empty": "Your answer was empty. Answer the request.",
    "refusal": "Answer the original request.",
    "regex": "Reply with only the corrected answer, in the required format.",
}


def repair_message(result: GateResult) -> str:
    """The user-turn text that asks the same deployment to fix a failed answer."""
    lines = ["Your previous answer failed validation:"]
    lines += [f"- {failure}" for failure in result.failures[:_MAX_FAILURES]]
    if len(lines) == 1:
        lines.append("- (no details)")
    lines.append(_ASK.get(result.outcome, "Reply with only the corrected answer."))
    return "\n".join(lines)
