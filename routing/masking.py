"""Reversible masking of one request's personal data (pure: no I/O).

A `Masker` lives for one request: every distinct value `routing.pii.find` reports gets one
typed placeholder (`<EMAIL_1>`, `<CARD_2>`…), the same wherever the value appears in that
request (every message part, tool argument and input item), so a model can still tell two
people's addresses apart. `unmask` puts the originals back into the answer; `StreamUnmask`
does it on a streamed answer without holding back more than a placeholder's length. The
originals never leave the Masker: the ledger, the logs and the cache key see the masked
text, and another request (another tenant) has its own Masker.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from routing.pii import KINDS, Custom, find

_PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*?)_(\d+)>")
_LONGEST_PLACEHOLDER = 40  # `<` + a kind + `_` + a number + `>`, generously


class Masker:
    """One request's placeholders, and counts of what was masked per kind."""

    __slots__ = ("_custom", "_kinds", "_originals", "_placeholders", "counts")

    def __init__(self, kinds: Iterable[str] = KINDS, custom: Iterable[Custom] = ()) -> None:
        self._kinds = tuple(kinds)
        self._custom = tuple(custom)
        self._placeholders: dict[tuple[str, str], str] = {}  # (kind, original) → placeholder
        self._originals: dict[str, str] = {}  # placeholder → original
        self.counts: dict[str, int] = {}  # kind → distinct values masked

    def mask(self, text: str) -> str:
        """`text` with every finding replaced by its placeholder."""
        findings = find(text, self._kinds, self._custom)
        if not findings:
            return text
        out: list[str] = []
        at = 0
        for finding in findings:
            out.append(text[at : finding.start])
            out.append(self.placeholder(finding.kind, text[finding.start : finding.end]))
            at = finding.end
        out.append(text[at:])
        return "".join(out)

    def unmask(self, text: str, escape: Callable[[str], str] | None = None) -> str:
        """`text` with this request's placeholders replaced by their originals, passed
        through `escape` if given (any other `<KIND_n>`-looking text is left as it is)."""
        if not self._originals or "<" not in text:
            return text
        originals = self._originals

        def original(match: re.Match[str]) -> str:
            value = originals.get(match.group())
            if value is None:
                return match.group()
            return escape(value) if escape is not None else value

        return _PLACEHOLDER.sub(original, text)

    def placeholder(self, kind: str, original: str) -> str:
        """The placeholder of `original` (a value of `kind`), given on first sight."""
        key = (kind, original)
        placeholder = self._placeholders.get(key)
        if placeholder is None:
            number = self.counts.get(kind, 0) + 1
            self.counts[kind] = number
            placeholder = self._placeholders[key] = f"<{kind}_{number}>"
            self._originals[placeholder] = original
        return placeholder


class StreamUnmask:
    """`Masker.unmask` over a streamed answer's text pieces: a piece ending in what may be
    the start of a placeholder keeps that tail back until the next piece says (at most a
    placeholder's length); `finish` gives what is left."""

    __slots__ = ("_held", "_masker", "released")

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._held = ""
        self.released = ""  # all it gave so far (the events that repeat a whole text)

    def feed(self, piece: str) -> str:
        text = self._held + piece
        cut = text.rfind("<")
        if cut >= 0 and ">" not in text[cut:] and len(text) - cut < _LONGEST_PLACEHOLDER:
            self._held = text[cut:]
            text = text[:cut]
        else:
            self._held = ""
        out = self._masker.unmask(text)
        self.released += out
        return out

    def finish(self) -> str:
        text, self._held = self._held, ""
        out = self._masker.unmask(text)
        self.released += out
        return out


class Restorer:
    """A request's placeholders put back in each text of a streamed answer: what
    gateway/providers/answer_checks.py rewrites a stream with (as it does with answer
    checks), never withholding anything."""

    __slots__ = ("_masker",)
    blocked = None
    changes = 0

    def __init__(self, masker: Masker) -> None:
        self._masker = masker

    def channel(self) -> StreamUnmask:
        return StreamUnmask(self._masker)
