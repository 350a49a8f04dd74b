"""A route's answer checks over one request's answer (pure: no I/O).

An `AnswerGuard` lives for one request. `text` checks a whole answer text (a non-stream
answer's content, tool arguments); `channel` gives a `Channel` that checks a streamed text
as it arrives. What a mask check finds is replaced by its typed placeholder (`<EMAIL_1>`,
numbered per request like the request's own masking); what a block check finds ends the
answer there (`blocked` names the check; the wire formats say `content_filter`); a flag
check only counts. `hits` counts findings per check, for the metrics and the ledger.

A stream is never held back much more than its patterns need. A `Channel` keeps the last
`HOLD` characters (longer than any built-in finding: an IBAN with spaces is 42, an IPv6
address 45), lets text out in steps of `STEP` past that, and never cuts inside a word,
since a finding is one word or a few short digit groups; a finding that reaches into the
held part, or a word still growing (a long key), is held until it is whole. Only what is
released is counted, so each finding once.
"""

from __future__ import annotations

from collections.abc import Iterable

from routing.guard import BLOCK, FLAG, LABELS, MASK, PRECEDENCE, Check
from routing.masking import Masker
from routing.pii import Custom, Finding, find

HOLD = 64
# Text is let out in steps of at least this much past the hold: each step searches the held
# text once, so a stream in small chunks is searched every few chunks, not at every one.
STEP = 64
# A word longer than this is released in part (nothing built in is that long but a key,
# and keys are held whole up to here): the bound on what one channel keeps back.
MAX_HOLD = 4096
# Characters already released that stay in view: look-behinds and word boundaries at the
# start of what is scanned see what came before it.
_CONTEXT = 16


class AnswerGuard:
    """One request's answer checks: what they found, and the placeholders they gave."""

    __slots__ = (
        "_by_kind",
        "_custom",
        "_kinds",
        "before",
        "blocked",
        "changes",
        "checks",
        "hits",
        "masker",
    )

    def __init__(self, checks: Iterable[Check], before: str | None = None) -> None:
        """`before`: what the request's checks did (their `x-farebox-guard` summary)."""
        self.before = before
        self.changes = 0  # findings counted so far: a caller notes when it moved
        self.checks = tuple(c for c in checks if c.action in (MASK, BLOCK, FLAG))
        kinds: list[str] = []
        custom: list[Custom] = []
        by_kind: dict[str, list[Check]] = {}
        for check in self.checks:
            for kind in (*check.kinds, *(c.kind for c in check.custom)):
                by_kind.setdefault(kind, []).append(check)
                if kind in kinds:
                    continue
                kinds.append(kind)
            custom += [c for c in check.custom if c not in custom]
        self._kinds = tuple(k for k in kinds if not any(c.kind == k for c in custom))
        self._custom = tuple(custom)
        self._by_kind = by_kind
        mask_kinds = [k for c in self.checks if c.action == MASK for k in c.kinds]
        mask_custom = [x for c in self.checks if c.action == MASK for x in c.custom]
        self.masker = Masker(dict.fromkeys(mask_kinds), mask_custom)
        self.blocked: str | None = None
        self.hits: dict[str, int] = {}

    def find(self, text: str) -> list[Finding]:
        return find(text, self._kinds, self._custom)

    def text(self, text: str) -> str:
        """A whole answer text checked: masked, or cut where a blocked finding starts
        (then `blocked` is set, and this answer and every later text are withheld)."""
        if self.blocked is not None:
            return ""
        return self.apply(text, self.find(text))

    def apply(self, text: str, findings: list[Finding]) -> str:
        """`text` with `findings` (all of them inside it) counted and acted on."""
        out: list[str] = []
        at = 0
        for finding in findings:
            action = self._count(finding.kind)
            if action == BLOCK:
                out.append(text[at : finding.start])
                return "".join(out)
            if action == MASK:
                out.append(text[at : finding.start])
                out.append(self.masker.placeholder(finding.kind, text[finding.start : finding.end]))
                at = finding.end
        out.append(text[at:])
        return "".join(out)

    def _count(self, kind: str) -> str | None:
        """Count a finding of `kind` for every check that looks for it; the strongest
        action among them."""
        strongest: str | None = None
        self.changes += 1
        for check in self._by_kind.get(kind, ()):
            self.hits[check.name] = self.hits.get(check.name, 0) + 1
            if check.action == BLOCK:
                strongest = BLOCK
                if self.blocked is None:
                    self.blocked = check.name
            elif check.action == MASK and strongest != BLOCK:
                strongest = MASK
        return strongest

    def channel(self) -> Channel:
        return Channel(self)

    @property
    def fired(self) -> dict[str, list[str]]:
        """Check names that found something, by action."""
        out: dict[str, list[str]] = {}
        for check in self.checks:
            if self.hits.get(check.name):
                out.setdefault(check.action, []).append(check.name)
        return out

    def summary(self) -> str | None:
        """The request's summary with the answer's checks added (`answer-masked=leaks`),
        led by the strongest action of both: `x-farebox-guard`'s and `requests.guard`'s
        form."""
        fired = self.fired
        if not fired:
            return self.before
        outcomes, parts = [], []
        if self.before:
            first, *parts = self.before.split("; ")
            outcomes.append(first)
        for action in (BLOCK, MASK, FLAG):
            names = fired.get(action)
            if names:
                outcomes.append(action)
                parts.append(f"answer-{LABELS[action]}={','.join(names)}")
        return "; ".join([min(outcomes, key=PRECEDENCE.__getitem__), *parts])


class Channel:
    """One streamed text (a choice's content, a Responses output text) under the answer
    checks: `feed` gives what may go out now, `finish` the rest at the text's end.
    `released` is everything that went out, for the events that repeat the whole text."""

    __slots__ = ("_context", "_guard", "_held", "released")

    def __init__(self, guard: AnswerGuard) -> None:
        self._guard = guard
        self._held = ""
        self._context = ""
        self.released = ""

    def feed(self, piece: str) -> str:
        if self._guard.blocked is not None:
            return ""
        held = self._held + piece
        if len(held) <= HOLD + STEP:
            self._held = held
            return ""
        cut = _word_cut(held, len(held) - HOLD)
        if cut <= 0:
            self._held = held
            return ""
        return self._release(held, cut)

    def finish(self) -> str:
        if self._guard.blocked is not None or not self._held:
            self._held = ""
            return ""
        return self._release(self._held, len(self._held))

    def _release(self, held: str, cut: int) -> str:
        """Check `held` (with the context before it), then let out what lies before `cut`
        and no finding crosses; keep the rest."""
        guard = self._guard
        context = self._context
        scanned = context + held
        offset = len(context)
        findings = guard.find(scanned)
        end = offset + cut
        kept: list[Finding] = []
        for finding in findings:
            if finding.end <= offset:
                continue  # wholly in what already went out (counted then)
            if finding.start < end < finding.end:
                end = finding.start  # crosses the cut: wait for the whole of it
            kept.append(finding)
        end = max(end, offset)
        ready = [f for f in kept if offset <= f.start and f.end <= end]
        text = guard.apply(scanned[offset:end], [_shifted(f, -offset) for f in ready])
        self._held = scanned[end:]
        self._context = scanned[max(0, end - _CONTEXT) : end]
        if guard.blocked is not None:
            self._held = ""
        self.released += text
        return text


def _shifted(finding: Finding, by: int) -> Finding:
    return Finding(finding.kind, finding.start + by, finding.end + by)


def _word_cut(text: str, limit: int) -> int:
    """Just after the last space or line break before `limit` (a word may be a finding
    still being written); a single word longer than MAX_HOLD is cut at `limit`."""
    at = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit), text.rfind("\t", 0, limit))
    if at >= 0:
        return at + 1
    return limit if len(text) > MAX_HOLD else 0
