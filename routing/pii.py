"""Personal data and credentials in text, found as typed spans (pure: no I/O, no state).

One set of patterns for every use: the payload log's redaction and the error scrubber
(gateway/observability/redact.py) replace what they match; guardrails (issue 27) mask,
block, reroute or flag on the `Finding`s `find` returns. Each kind is a pattern plus, where
a pattern alone would over-match, a check of the candidate: Luhn for card numbers, ISO
7064 mod 97 for IBANs, the digit count for phone numbers, `ipaddress` for IPv6, "looks
random" for a secret named in `key=value` text.

Patterns err on the side of matching: a false positive costs a reader some context, a
false negative leaks a customer's data or a key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

EMAIL = "EMAIL"
PHONE = "PHONE"
CARD = "CARD"
SECRET = "SECRET"
IBAN = "IBAN"
IP = "IP"
# The built-in kinds, in the order a span claimed by two of them is given to the first.
KINDS = (SECRET, EMAIL, IBAN, CARD, IP, PHONE)

PREFIXED_KEYS = re.compile(
    r"""
    \b(?:
        sk-(?:proj-|ant-(?:api\d\d-)?|svcacct-|or-v1-)?[A-Za-z0-9_-]{16,}  # OpenAI, Anthropic…
      | fbx-[A-Za-z0-9_-]{16,}                            # Farebox virtual keys
      | (?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}          # AWS access key ids
      | AIza[0-9A-Za-z_-]{35}                             # Google API keys
      | gh[pousr]_[A-Za-z0-9]{30,}                        # GitHub tokens
      | xox[abprs]-[A-Za-z0-9-]{10,}                      # Slack tokens
      | hf_[A-Za-z0-9]{30,}                               # Hugging Face tokens
      | gsk_[A-Za-z0-9]{30,}                              # Groq
      | r8_[A-Za-z0-9]{30,}                               # Replicate
      | eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}  # JWTs
    )
    """,
    re.VERBOSE,
)
# `Authorization: Bearer …`, `Basic …`, and bare `Bearer …` in any text: group 3 the secret.
AUTH_SCHEME = re.compile(r"\b(Bearer|Basic|Token)(\s+)([A-Za-z0-9._~+/=-]{8,})", re.IGNORECASE)
# URL parameters that carry credentials (Gemini's `?key=`, SAS `sig=`, OAuth tokens).
URL_SECRET = re.compile(
    r"([?&](?:key|api[_-]?key|apikey|token|access_token|auth|sig|signature|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token|code|password)=)([^&\s\"'<>#]+)",
    re.IGNORECASE,
)
# `api_key=…`, `"token": "…"`, `secret: …`: a long opaque value next to a secret's name.
NAMED_SECRET = re.compile(
    r"""(?ix)
    (\b[\w-]*(?:api[_-]?key|secret|token|password|passwd|credential|private[_-]?key|
              access[_-]?key|x-api-key|x-goog-api-key|authorization)[\w-]*
     ["']?\s*[:=]\s*["']?)
    (?!\[REDACTED\])(?:Bearer\s+)?
    ([A-Za-z0-9+/_.~=-]{12,})
    """
)
EMAIL_PATTERN = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally grouped by single spaces or dashes; Luhn decides.
CARD_PATTERN = re.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?![\w-]|\.\d)")
# Grouped phone numbers: an optional +country code, an optional (area) code, and at least
# one separator between digit groups. Ungrouped digit runs are left alone: too many ids,
# amounts and timestamps look like that. The digit count is checked in `phone_ok`.
PHONE_PATTERN = re.compile(
    r"""(?x)
    (?<![\w+.:/-])
    (?:\+\d{1,3}[\s.-]?)?
    (?:\(\d{1,4}\)[\s.-]?|\d{1,4}[\s.-])
    (?:\d{2,4}[\s.-]){0,4}
    \d{2,8}
    (?![\w:/-]|-\d|\.\d)  # a sentence's full stop may follow, a decimal's digits may not
    """
)
# Two letters, two check digits, then 11-30 letters and digits, grouped by fours or not.
IBAN_PATTERN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
IPV4_PATTERN = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![\w]|\.\d)"
)
IPV6_CANDIDATE = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")


def luhn_ok(digits: str) -> bool:
    """True when `digits` (only digits) passes the Luhn checksum of card numbers."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_ok(text: str) -> bool:
    """A `CARD_PATTERN` match is a card number: 13-19 digits, Luhn, not one digit repeated."""
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1


def phone_ok(text: str) -> bool:
    """A `PHONE_PATTERN` match is a phone number. With a +country code, 7-15 digits (E.164's
    range); without one, national numbers have 9-11 digits: requiring 9 keeps "1 000 000"
    and short codes out."""
    digits = sum(c.isdigit() for c in text)
    low = 7 if text.startswith("+") else 9
    return low <= digits <= 15


def iban_ok(text: str) -> bool:
    """ISO 13616: the letters as numbers (A=10…), the first four characters moved to the
    end, the whole number mod 97 is 1."""
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def named_secret_ok(value: str) -> bool:
    """Secrets are random: digits, or mixed case. Plain words next to a secret-ish name
    ("max_tokens": "context_length_exceeded") are an upstream's message, not a key."""
    return any(c.isdigit() for c in value) or (value.lower() != value != value.upper())


_VERSION_BEFORE = re.compile(
    r"(?:\bversion|\bver\.?|\brelease|\bbuild|\bv)\s*:?\s*$", re.IGNORECASE
)


def _versioned(text: str, start: int) -> bool:
    """An IPv4-shaped match right after "version", "v", "build"…: a version number."""
    return _VERSION_BEFORE.search(text, max(0, start - 12), start) is not None


def _ipv6_ok(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return text.count(":") >= 2


@dataclass(frozen=True, slots=True)
class Finding:
    """`text[start:end]` is of `kind` (one of KINDS, or a custom detector's name)."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Custom:
    """A detector of the config's: a regex, or a list of terms (matched whole-word,
    case-insensitively), reported as `kind`."""

    kind: str
    pattern: re.Pattern[str]

    @classmethod
    def regex(cls, kind: str, pattern: str) -> Custom:
        return cls(kind, re.compile(pattern))

    @classmethod
    def terms(cls, kind: str, terms: Iterable[str]) -> Custom:
        words = sorted({t for t in terms if t}, key=len, reverse=True)
        alternatives = "|".join(re.escape(w) for w in words) or r"(?!)"
        return cls(kind, re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE))


def _matches(
    pattern: re.Pattern[str], text: str, group: int = 0, ok: Callable[[str], bool] | None = None
) -> Iterable[tuple[int, int]]:
    for match in pattern.finditer(text):
        value = match.group(group)
        if ok is None or ok(value):
            yield match.start(group), match.end(group)


# Words one of which every key pattern holds (lower case): a text with none of them is not
# searched by the patterns, which cost tens of µs on a long prompt (guards run per request).
_KEY_WORDS = ("bearer", "basic", "token", "key", "secret", "passw", "credential", "authoriz")
_KEY_PREFIXES = (
    "sk-", "fbx-", "AKIA", "ASIA", "AGPA", "AIDA", "AROA", "AIza", "ghp_", "gho_", "ghu_", "ghs_",
    "ghr_", "xox", "hf_", "gsk_", "r8_", "eyJ",
)  # fmt: skip


# The prefixes by a character each holds, tested first (one memchr): most texts hold no "_",
# so the eight prefixes with one are not looked for.
_PREFIX_GATES = tuple(
    (gate, tuple(p for p in _KEY_PREFIXES if gate in p)) for gate in ("_", "-", "A")
)
_UNGATED_PREFIXES = tuple(p for p in _KEY_PREFIXES if not any(g in p for g in "_-A"))


def _prefixed(text: str) -> bool:
    if any(map(text.__contains__, _UNGATED_PREFIXES)):
        return True
    return any(
        gate in text and any(map(text.__contains__, prefixes)) for gate, prefixes in _PREFIX_GATES
    )


def _secrets(text: str) -> Iterable[tuple[int, int]]:
    # map(str.__contains__): the tests at C speed, without a generator's frame per word.
    if _prefixed(text):
        yield from _matches(PREFIXED_KEYS, text)
    if "=" in text:
        yield from _matches(URL_SECRET, text, 2)
    lower = text.lower()
    if any(map(lower.__contains__, _KEY_WORDS)):
        yield from _matches(AUTH_SCHEME, text, 3)
        yield from _matches(NAMED_SECRET, text, 2, named_secret_ok)


def _ips(text: str) -> Iterable[tuple[int, int]]:
    if text.count(".") >= 3:
        for span in _matches(IPV4_PATTERN, text):
            if not _versioned(text, span[0]):
                yield span
    if text.count(":") >= 2:
        yield from _matches(IPV6_CANDIDATE, text, 0, _ipv6_ok)


# Each kind's finder, and the fewest digits a text needs to hold one (none: 0).
_FINDERS: dict[str, tuple[Callable[[str], Iterable[tuple[int, int]]], int]] = {
    SECRET: (_secrets, 0),
    EMAIL: (lambda text: _matches(EMAIL_PATTERN, text) if "@" in text else (), 0),
    IBAN: (lambda text: _matches(IBAN_PATTERN, text, 0, iban_ok), 2),
    CARD: (lambda text: _matches(CARD_PATTERN, text, 0, card_ok), 13),
    IP: (_ips, 2),
    PHONE: (lambda text: _matches(PHONE_PATTERN, text, 0, phone_ok), 7),
}


_DIGITS = "0123456789"


def find(text: str, kinds: Iterable[str] = KINDS, custom: Iterable[Custom] = ()) -> list[Finding]:
    """The spans of `text` that are of `kinds` (built in) or of a `custom` detector, in
    order and never overlapping: where two overlap, the one found first in `kinds` order
    (then the custom ones, in their order) keeps it."""
    taken: list[Finding] = []
    # Most texts hold no digit, which ten `in` tests (memchr) tell at once; counting them is
    # slower (str.translate, a dict lookup per character, slower still).
    digits = sum(map(text.count, _DIGITS)) if any(map(text.__contains__, _DIGITS)) else 0
    for kind in kinds:
        finder, fewest = _FINDERS[kind]
        if digits < fewest:
            continue
        for start, end in finder(text):
            _claim(taken, Finding(kind, start, end))
    for detector in custom:
        for start, end in _matches(detector.pattern, text):
            if end > start:
                _claim(taken, Finding(detector.kind, start, end))
    taken.sort(key=lambda f: f.start)
    return taken


def _claim(taken: list[Finding], finding: Finding) -> None:
    for other in taken:
        if finding.start < other.end and other.start < finding.end:
            return
    taken.append(finding)
