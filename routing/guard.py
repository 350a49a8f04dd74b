"""Guard checks and their verdict on one request's texts (pure: no I/O).

A check finds something (personal data of some kinds, custom patterns, an injection score
over a threshold) and says what to do when it does: `mask` it (typed placeholders, put
back in the answer if `restore`), `block` the request (a 400 naming the check, never the
text), `reroute` it (only deployments whose provider kind is in `allow_kinds`: the planner
filters, the ledger records why) or `flag` it (a header and the ledger only). `inspect`
runs a route's checks over the texts of a request (`routing.guard_texts` finds them in
chat, Responses and Anthropic bodies) and returns the `Verdict`; what is found is counted
per check, never kept.

A check reads the request, the answer or both (`on_request`, `on_answer`). On an answer
it may mask (the client sees placeholders), block (the answer is withheld) or flag. A
check with a `GuardModel` also asks a classifier deployment about the request; that call
is I/O, so the gateway makes it (gateway/guard/model.py) and hands `inspect` its finding
in `decided`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from routing.injection import DEFAULT_THRESHOLD, signals, weight_of
from routing.masking import Masker
from routing.model import DeploymentSpec
from routing.pii import KINDS, Custom, find

MASK, BLOCK, REROUTE, FLAG = "mask", "block", "reroute", "flag"
# The error code of a refused request, and the error class of a request (refused, or its
# answer withheld) in the ledger.
GUARDRAIL_BLOCKED = "guardrail_blocked"
ACTIONS = (MASK, BLOCK, REROUTE, FLAG)
# What an action did, as summaries and reports say it ("rerouted=pii-local"), strongest first.
LABELS = {BLOCK: "blocked", REROUTE: "rerouted", MASK: "masked", FLAG: "flagged"}
# Which action wins when several checks fire: a block ends the request, a reroute narrows
# the plan (masking still applies to what is sent), a flag only records.
PRECEDENCE = {BLOCK: 0, REROUTE: 1, MASK: 2, FLAG: 3}


@dataclass(frozen=True, slots=True)
class GuardModel:
    """A classifier on a deployment of the config, asked about each request's texts."""

    deployment: str
    timeout_s: float = 1.0
    fail_closed: bool = False  # no verdict in time: True counts it a hit, False lets it by


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    action: str
    kinds: tuple[str, ...] = KINDS  # personal data it looks for (none: an injection check)
    custom: tuple[Custom, ...] = ()
    injection_threshold: float | None = None  # set: the injection heuristic is run too
    restore: bool = True  # mask: originals back in the answer
    allow_kinds: frozenset[str] = frozenset()  # reroute: the provider kinds it may go to
    on_request: bool = True
    on_answer: bool = False
    model: GuardModel | None = None  # request only: its finding comes in `decided`

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"check {self.name!r}: action must be one of {', '.join(ACTIONS)}")
        if self.action == REROUTE and not self.allow_kinds:
            raise ValueError(f"check {self.name!r}: reroute needs the provider kinds it allows")
        if self.action == MASK and self.injection_threshold is not None:
            raise ValueError(f"check {self.name!r}: an injection score cannot be masked")
        if self.on_answer and self.action == REROUTE:
            raise ValueError(f"check {self.name!r}: an answer cannot be rerouted")
        if self.on_answer and (self.injection_threshold is not None or self.model is not None):
            raise ValueError(
                f"check {self.name!r}: injection scores and guard models read requests only"
            )
        if self.model is not None and self.action == MASK:
            raise ValueError(f"check {self.name!r}: a guard model's finding cannot be masked")

    @classmethod
    def injection(cls, name: str, action: str, threshold: float = DEFAULT_THRESHOLD) -> Check:
        return cls(name, action, kinds=(), injection_threshold=threshold)


@dataclass(slots=True)
class Verdict:
    """What a request's checks decided. `hits` counts findings per check (the metrics'
    and the ledger's figures); `masker` holds the placeholders when a mask check fired."""

    blocked_by: str | None = None
    rerouted_by: list[str] = field(default_factory=list)
    flagged_by: list[str] = field(default_factory=list)
    masked_by: list[str] = field(default_factory=list)
    allow_kinds: frozenset[str] | None = None
    hits: dict[str, int] = field(default_factory=dict)
    masker: Masker | None = None

    @property
    def outcome(self) -> str | None:
        """The strongest action taken (None: nothing found), for `requests.guard`."""
        if self.blocked_by:
            return BLOCK
        if self.rerouted_by:
            return REROUTE
        if self.masked_by:
            return MASK
        return FLAG if self.flagged_by else None


@dataclass(frozen=True, slots=True)
class Guards:
    """A route's checks, by when they run, and what its request checks found in the long
    texts it saw last (`memo`)."""

    request: tuple[Check, ...]
    answer: tuple[Check, ...]
    models: tuple[Check, ...]  # request checks that ask a guard model
    memo: TextMemo = field(default_factory=lambda: TextMemo(), compare=False, repr=False)

    @classmethod
    def of(cls, checks: Iterable[Check]) -> Guards:
        checks = tuple(checks)
        return cls(
            request=tuple(c for c in checks if c.on_request),
            answer=tuple(c for c in checks if c.on_answer),
            models=tuple(c for c in checks if c.on_request and c.model is not None),
        )


def inspect(
    checks: Iterable[Check],
    texts: list[str],
    decided: Mapping[str, int] | None = None,
    memo: TextMemo | None = None,
) -> Verdict:
    """Run `checks` over a request's `texts`, strongest action first; a block stops
    the others (nothing more need be known about a request that is refused). `decided`
    holds the hits of the checks' guard models, asked before; `memo` (the route's, for
    these checks) what they found in long texts seen before."""
    verdict = Verdict()
    mask_kinds: list[str] = []  # every mask check's, masked by one Masker
    mask_custom: list[Custom] = []
    request_checks = sorted(checks, key=lambda c: PRECEDENCE[c.action])
    counts, signals = _found(request_checks, texts, memo)
    for i, check in enumerate(request_checks):
        hits = counts[i]
        threshold = check.injection_threshold
        if threshold is not None and signals and weight_of(signals) >= threshold:
            hits += 1
        if decided:
            hits += decided.get(check.name, 0)
        if not hits:
            continue
        verdict.hits[check.name] = hits
        if check.action == BLOCK:
            verdict.blocked_by = check.name
            return verdict
        if check.action == REROUTE:
            verdict.rerouted_by.append(check.name)
            allowed = check.allow_kinds
            verdict.allow_kinds = (
                allowed if verdict.allow_kinds is None else verdict.allow_kinds & allowed
            )
        elif check.action == MASK:
            verdict.masked_by.append(check.name)
            mask_kinds += [k for k in check.kinds if k not in mask_kinds]
            mask_custom += check.custom
        else:
            verdict.flagged_by.append(check.name)
    if verdict.masked_by:
        verdict.masker = Masker(mask_kinds, mask_custom)
    return verdict


# A text this long is looked up in the route's memo before it is read: agents and apps send
# the same system prompt, and the same conversation so far, with every request. Shorter
# texts are read together as one (a pattern costs about as much per call as per character
# at this length) and never kept.
MEMO_MIN_CHARS = 64
MEMO_MAX_CHARS = 1_000_000  # per route and worker: the texts kept, in characters


@dataclass(frozen=True, slots=True)
class Found:
    """What one text holds for a route's request checks: personal data per check (in the
    checks' order of precedence) and the injection signals present."""

    counts: tuple[int, ...]
    signals: frozenset[str]


class TextMemo:
    """The route's long texts seen last (first in, first out, bounded in characters), each
    with what its request checks found in it. Only counts and signal names are kept with a
    text, never a finding's value apart from it; a route's checks never change while the
    route exists (a config reload builds new Guards)."""

    __slots__ = ("_chars", "_entries", "_max")

    def __init__(self, max_chars: int = MEMO_MAX_CHARS) -> None:
        self._entries: dict[str, Found] = {}
        self._chars = 0
        self._max = max_chars

    def found(self, checks: list[Check], text: str) -> Found:
        hit = self._entries.get(text)
        if hit is not None:
            return hit
        found = _read(checks, text)
        self._entries[text] = found
        self._chars += len(text)
        while self._chars > self._max:
            oldest = next(iter(self._entries))
            self._chars -= len(oldest)
            del self._entries[oldest]
        return found

    def __len__(self) -> int:
        return len(self._entries)


def _found(
    checks: list[Check], texts: list[str], memo: TextMemo | None
) -> tuple[list[int], frozenset[str]]:
    """Per check (in order) the personal data found in `texts`, and the injection signals
    present in any of them."""
    counts = [0] * len(checks)
    signals: frozenset[str] = frozenset()
    short = [t for t in texts if len(t) < MEMO_MIN_CHARS] if memo is not None else texts
    units = [_read(checks, short[0] if len(short) == 1 else "\n".join(short))] if short else []
    if memo is not None:
        units += [memo.found(checks, t) for t in texts if len(t) >= MEMO_MIN_CHARS]
    for unit in units:
        for i, n in enumerate(unit.counts):
            counts[i] += n
        if unit.signals:
            signals = signals | unit.signals
    return counts, signals


def _read(checks: list[Check], text: str) -> Found:
    counts = tuple(
        len(find(text, c.kinds, c.custom)) if (c.kinds or c.custom) and text else 0 for c in checks
    )
    scored = text and any(c.injection_threshold is not None for c in checks)
    return Found(counts, frozenset(signals(text)) if scored else frozenset())


def allowed(deployment: DeploymentSpec, kinds: frozenset[str] | None) -> bool:
    """Whether a rerouted request may go to `deployment` (None: not rerouted)."""
    return kinds is None or deployment.provider_kind in kinds
