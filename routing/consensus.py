"""Consensus over several answers to one request: normalize, compare, vote, break ties.

Pure: the gateway hands in the candidates' OpenAI-shaped answers (with what each cost and
how strong its deployment is) and gets back the outcome, the answer to return and, for a
disagreement, what every candidate said.

What is compared (`compare`), for the first choice of each answer:

- `text`: the message content, Unicode-normalized (NFKC), case-folded, whitespace collapsed,
  trailing full stops dropped: "Paris." and " paris" agree, "Paris" and "Lyon" do not.
- `json`: the content parsed as JSON (a Markdown code fence around it is ignored) and
  compared field by field: key order, insignificant whitespace, `1` vs `1.0` and the case
  and spacing of strings do not matter; a disagreement names the fields that differ.
  Content that does not parse compares as its normalized text.
- `tool_calls`: the calls' function names and their arguments (parsed and compared as
  JSON), as a set: parallel calls in another order still agree.
- `auto` (default): tool calls if the answer has any, else JSON if the content is a JSON
  object or array, else text. An answer of one kind never agrees with one of another.

Outcomes: `agree` (at least two answers, all the same), `majority` (one answer has more than
half of the votes), `disagree` (anything else, including a lone answer: one candidate is
not a consensus). The answer returned is the largest group's; when groups tie for largest,
or to pick which member's body goes back, the tie-break decides:

- `first`: the earliest in the route's target order;
- `cheapest`: the lowest cost of this very call (unknown costs last), then target order;
- `strongest`: the deployment with the highest output price per token (unknown prices count
  lowest); equal prices go to the later target, as routes list targets cheap first.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

AGREE = "agree"
MAJORITY = "majority"
DISAGREE = "disagree"
OUTCOMES = (AGREE, MAJORITY, DISAGREE)

TEXT = "text"
JSON = "json"
TOOL_CALLS = "tool_calls"
COMPARE_MODES = ("auto", TEXT, JSON, TOOL_CALLS)
TIE_BREAKS = ("first", "cheapest", "strongest")

_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Ballot:
    """One candidate's answer."""

    order: int  # position in the route's target order (0 = first)
    deployment: str
    data: Mapping[str, Any]  # the OpenAI chat completion (or completion) body
    cost_usd: float | None = None  # what this call cost; None when unknown
    strength: float | None = None  # output price per 1M tokens; None when unknown


@dataclass(frozen=True, slots=True)
class Vote:
    ballot: Ballot
    kind: str  # text | json | tool_calls: what was compared
    key: str  # the canonical form: equal keys agree
    shown: Any  # what the candidate said, for a disagreement's error body


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str  # agree | majority | disagree
    winner: Ballot  # whose answer goes back (on `disagree`, if the route passes it)
    votes: tuple[Vote, ...]  # in ballot order
    groups: tuple[tuple[int, ...], ...]  # indexes into votes, one tuple per distinct answer
    agreeing: int  # votes for the winner's answer
    differing_fields: tuple[str, ...] = ()  # json: the paths where the answers differ

    @property
    def group_of(self) -> dict[int, int]:
        """Vote index → its group's number."""
        return {i: g for g, members in enumerate(self.groups) for i in members}


def normalize_text(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(folded.split()).rstrip(".").rstrip()


def canonical(value: Any) -> Any:
    """A JSON value with key order, integral floats and string spelling made irrelevant."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, str):
        return normalize_text(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _parse_json(text: str) -> tuple[bool, Any]:
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced is not None:
        stripped = fenced.group(1).strip()
    try:
        return True, json.loads(stripped)
    except ValueError:
        return False, None


def _message(data: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """(content, tool calls) of the first choice; legacy completions carry `text`."""
    choices = data.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(first, dict):
        return "", []
    message = first.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        calls = message.get("tool_calls")
        return (
            content if isinstance(content, str) else "",
            calls if isinstance(calls, list) else [],
        )
    text = first.get("text")
    return (text if isinstance(text, str) else ""), []


def _tool_calls(calls: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    shown: list[dict[str, Any]] = []
    keys: list[str] = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        name = str(function.get("name") or "")
        raw = function.get("arguments")
        ok, parsed = _parse_json(raw) if isinstance(raw, str) else (False, None)
        arguments = parsed if ok else raw
        shown.append({"name": name, "arguments": arguments})
        compared = canonical(parsed) if ok else normalize_text(str(raw or ""))
        keys.append(_dump({"name": name, "arguments": compared}))
    return _dump(sorted(keys)), shown


def vote_of(ballot: Ballot, compare: str = "auto") -> Vote:
    """What one answer says, in comparable form."""
    content, calls = _message(ballot.data)
    if compare == TOOL_CALLS or (compare == "auto" and calls):
        key, shown = _tool_calls(calls)
        return Vote(ballot, TOOL_CALLS, f"{TOOL_CALLS}:{key}", shown)
    if compare in ("auto", JSON):
        ok, parsed = _parse_json(content)
        if ok and (compare == JSON or isinstance(parsed, dict | list)):
            return Vote(ballot, JSON, f"{JSON}:{_dump(canonical(parsed))}", parsed)
    return Vote(ballot, TEXT, f"{TEXT}:{normalize_text(content)}", content)


def _rank(tie_break: str, ballot: Ballot) -> tuple[float, int]:
    """Lower ranks win."""
    if tie_break == "cheapest":
        cost = ballot.cost_usd
        return (math.inf if cost is None else cost), ballot.order
    if tie_break == "strongest":
        strength = ballot.strength
        return (math.inf if strength is None else -strength), -ballot.order
    return 0.0, ballot.order


def decide(ballots: Sequence[Ballot], compare: str = "auto", tie_break: str = "first") -> Verdict:
    """Group the answers, find the outcome and pick the answer to return."""
    if not ballots:
        raise ValueError("consensus needs at least one answer")
    if compare not in COMPARE_MODES:
        raise ValueError(f"unknown compare mode {compare!r}")
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"unknown tie-break {tie_break!r}")
    votes = tuple(vote_of(b, compare) for b in sorted(ballots, key=lambda b: b.order))
    by_key: dict[str, list[int]] = {}
    for i, vote in enumerate(votes):
        by_key.setdefault(vote.key, []).append(i)
    groups = sorted((tuple(m) for m in by_key.values()), key=lambda m: (-len(m), m[0]))
    top = len(groups[0])
    total = len(votes)
    if total >= 2 and top == total:
        outcome = AGREE
    elif total >= 2 and 2 * top > total:
        outcome = MAJORITY
    else:
        outcome = DISAGREE
    leaders = [i for g in groups if len(g) == top for i in g]
    best = min(leaders, key=lambda i: _rank(tie_break, votes[i].ballot))
    return Verdict(
        outcome=outcome,
        winner=votes[best].ballot,
        votes=votes,
        groups=tuple(groups),
        agreeing=top,
        differing_fields=_differing(votes, groups) if len(groups) > 1 else (),
    )


def _differing(votes: Sequence[Vote], groups: Sequence[tuple[int, ...]]) -> tuple[str, ...]:
    """Field paths where the JSON answers of different groups differ."""
    firsts = [votes[g[0]] for g in groups]
    if not all(v.kind == JSON for v in firsts):
        return ()
    paths: set[str] = set()
    values = [canonical(v.shown) for v in firsts]
    for other in values[1:]:
        _diff(values[0], other, "", paths)
    return tuple(sorted(paths))


def _diff(a: Any, b: Any, path: str, out: set[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            where = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                out.add(where)
            else:
                _diff(a[key], b[key], where, out)
        return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{path}[{i}]", out)
        return
    if a != b:
        out.add(path or "$")


def candidates_body(verdict: Verdict) -> list[dict[str, Any]]:
    """Every candidate's answer, for a disagreement's error body."""
    group_of = verdict.group_of
    return [
        {
            "deployment": v.ballot.deployment,
            "kind": v.kind,
            "answer": v.shown,
            "group": group_of[i],
        }
        for i, v in enumerate(verdict.votes)
    ]
