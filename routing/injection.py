"""A prompt-injection heuristic: a score from weighted signals (pure: no I/O, no state).

Three families of signal, each a regex with a weight: instructions that try to override the
ones before them ("ignore all previous instructions", "you are now DAN", "reveal your system
prompt"), markup that spoofs a role or a system turn (`<|im_start|>system`, `[INST]`,
`### System:`, a fake "assistant:" line), and hidden-text tricks (zero-width or bidi
control characters, long base64 blobs, HTML comments or CSS that hide text). `score` adds
the weights of the signals present (each counted once); a guard compares it with its
threshold (`DEFAULT_THRESHOLD`). A heuristic, fast and offline: the config can add a guard
model for what it misses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_THRESHOLD = 1.0


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    weight: float
    pattern: re.Pattern[str]
    # Lower-case words one of which every match holds: a text with none is not searched
    # (the patterns cost several µs each on a long prompt; these checks run per request).
    needles: tuple[str, ...] = ()

    # Or a cheaper test of the whole text that every match passes.
    gate: Callable[[str], bool] | None = None

    def present(self, text: str, lower: str) -> bool:
        if self.needles and not any(n in lower for n in self.needles):
            return False
        if self.gate is not None and not self.gate(text):
            return False
        return self.pattern.search(text) is not None


def _signal(
    name: str,
    weight: float,
    pattern: str,
    needles: tuple[str, ...] = (),
    gate: Callable[[str], bool] | None = None,
) -> Signal:
    return Signal(name, weight, re.compile(pattern, re.IGNORECASE | re.DOTALL), needles, gate)


def _long_word(text: str) -> bool:
    """Whether `text` may hold a run of 64 characters without a space (what an encoded
    blob needs): such a run covers a whole aligned block of 32 characters, so a text whose
    every block holds a space has none. Blocks are tested at C speed; splitting the text
    into words cost several times more, and this runs on every request's text."""
    n = len(text)
    return n >= 64 and any(" " not in text[i : i + 32] for i in range(0, n - 31, 32))


_VERBS = (
    r"(?:ignore|disregard|forget|override|bypass|skip|drop|ignora|ignorez|oublie[rz]?|vergiss|"
    r"ignoriere|olvida)"
)
_EARLIER = (
    r"(?:previous|prior|above|earlier|preceding|all|any|your|the|system|précédentes|"
    r"vorherigen|anteriores|precedenti)"
)
_RULES = (
    r"(?:instructions?|prompts?|rules?|guidelines?|directives?|consignes|anweisungen|"
    r"instrucciones|istruzioni)"
)

SIGNALS = (
    _signal(
        "override",
        1.0,
        rf"\b{_VERBS}\b.{{0,40}}\b{_EARLIER}\b.{{0,30}}\b{_RULES}\b"
        rf"|\b{_VERBS}\b.{{0,30}}\b{_RULES}\b.{{0,15}}\b{_EARLIER}\b",  # rules, then which
        (
            "ignor",
            "disregard",
            "forget",
            "overrid",
            "bypass",
            "skip",
            "drop",
            "oubli",
            "vergiss",
            "olvida",
        ),
    ),
    _signal(
        "new_rules",
        0.6,
        r"\b(?:new|updated|real) (?:system )?(?:instructions|rules)\b\s*:",
        ("instructions", "rules"),
    ),
    _signal(
        "persona",
        1.0,
        r"\b(?:act|pretend|roleplay) as (?:an? )?(?:unfiltered|unrestricted|jailbroken|evil|DAN)"
        r"\b|\bdeveloper mode\b|\bDAN\b.{0,20}\b(?:mode|prompt)\b",
        ("act as", "pretend as", "roleplay as", "developer mode", "dan"),
    ),
    _signal("you_are_now", 0.5, r"\byou are (?:now|no longer)\b", ("you are n",)),
    _signal(
        "asks_instructions",
        1.0,
        r"\byour (?:initial|original|hidden|secret|system) (?:instructions|prompt)\b",
        ("instructions", "prompt"),
    ),
    _signal(
        "decode_follow",
        0.6,
        r"\b(?:decode|base64)\b.{0,30}\b(?:follow|execute|run|obey)\b",
        ("decode", "base64"),
    ),
    _signal(
        "exfiltrate",
        1.0,
        r"\b(?:reveal|print|show|repeat|output|leak|tell me)\b.{0,30}\b(?:system prompt|"
        r"(?:hidden|initial|original|secret) (?:instructions|prompt)|your instructions)\b",
        ("prompt", "instructions"),
    ),
    _signal(
        "role_markup",
        1.0,
        r"<\|(?:im_start|im_end|system|endoftext|start_header_id)\|>|\[/?INST\]|<<SYS>>|"
        r"^\s*#{2,}\s*(?:system|assistant)\s*:|^\s*(?:system|assistant)\s*:\s",
        ("<|", "[inst]", "[/inst]", "<<sys>>", "system:", "assistant:", "system :", "assistant :"),
    ),
    _signal(
        "hidden_text",
        1.0,
        "[\u200b\u200c\u200d\u2060\ufeff\u202a-\u202e\u2066-\u2069]|<!--.*?-->|"
        r"display\s*:\s*none|font-size\s*:\s*0|color\s*:\s*(?:white|#fff(?:fff)?)\b",
        (
            "\u200b",
            "\u200c",
            "\u200d",
            "\u2060",
            "\ufeff",
            "\u202a",
            "\u202b",
            "\u202c",
            "\u202d",
            "\u202e",
            "\u2066",
            "\u2067",
            "\u2068",
            "\u2069",
            "<!--",
            "display",
            "font-size",
            "color",
        ),
    ),
    _signal("encoded", 0.5, r"[A-Za-z0-9+/]{64,}={0,2}", gate=_long_word),  # base64
    _signal(
        "no_limits",
        0.5,
        r"\b(?:no|without) (?:restrictions|limits|filters|censorship)\b",
        ("restrictions", "limits", "filters", "censorship"),
    ),
)


# Every signal's needles, each once: a text holding none of them (most prompts) is done
# with one pass per needle at C speed, and no signal is looked at. A needle is only looked
# for when the text holds its gate character (one memchr): the markup ones hold "<", "[" or
# ":", and the CSS ones' signal needs a ":" after them; the zero-width and bidi ones are
# only looked for in a text that is not ASCII.
_NEEDLES = tuple(dict.fromkeys(n for s in SIGNALS for n in s.needles))
_CSS = ("display", "font-size", "color")


def _gate(needle: str) -> str:
    own = [c for c in needle if c in ":<["]
    return own[0] if own else ":" if needle in _CSS else ""


_WIDE = tuple(n for n in _NEEDLES if not n.isascii())
_GATED = tuple(
    (gate, tuple(n for n in _NEEDLES if n.isascii() and _gate(n) == gate)) for gate in ":<["
)
_PLAIN = tuple(n for n in _NEEDLES if n.isascii() and not _gate(n))
_UNGATED = tuple(s for s in SIGNALS if not s.needles)


def _any_needle(lower: str) -> bool:
    if any(map(lower.__contains__, _PLAIN)):
        return True
    for gate, needles in _GATED:
        if gate in lower and any(map(lower.__contains__, needles)):
            return True
    return not lower.isascii() and any(map(lower.__contains__, _WIDE))


def _candidates(text: str, lower: str) -> tuple[Signal, ...]:
    return SIGNALS if _any_needle(lower) else _UNGATED


def signals(text: str, lower: str | None = None) -> list[str]:
    """The names of the signals present in `text` (`lower`: its lower case, if known)."""
    lower = text.lower() if lower is None else lower
    return [s.name for s in _candidates(text, lower) if s.present(text, lower)]


def score(text: str, lower: str | None = None) -> float:
    """The sum of the weights of the signals present in `text` (each once)."""
    return weight_of(frozenset(signals(text, lower)))


_WEIGHTS = {s.name: s.weight for s in SIGNALS}


def weight_of(names: frozenset[str] | set[str]) -> float:
    """The score of a set of signal names (those of `signals`, from one or several texts)."""
    return sum(_WEIGHTS[n] for n in names)
