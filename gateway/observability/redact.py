"""Redaction of personal data and secrets from text (pure: no I/O, no state).

Two uses, two strengths:

- `redact_secrets` / `Scrubber`: credentials only (API keys, bearer tokens, `?key=` URL
  parameters, `key=value` secrets, plus the exact secrets a gateway is configured with).
  Applied to upstream error text before it reaches a client or a log, where emails or
  numbers must survive (an upstream's "invalid value 4096 for max_tokens" is useful).
- `redact_text` / `redact_json`: everything above plus emails, phone numbers and card
  numbers (Luhn-checked, so order numbers and timestamps survive). Applied to prompts and
  answers in the opt-in payload log.

Patterns err on the side of redacting: a false positive costs a log reader some context,
a false negative leaks a customer's data or a key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

SECRET = "[REDACTED]"
EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"

# Secrets shorter than this are not searched for verbatim: replacing "x" or "test" in
# every error message would destroy the message and protect nothing.
MIN_KNOWN_SECRET = 6

_PREFIXED_KEYS = re.compile(
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
# `Authorization: Bearer …`, `Basic …`, and bare `Bearer …` in any text.
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic|Token)(\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
# URL parameters that carry credentials (Gemini's `?key=`, SAS `sig=`, OAuth tokens).
_URL_SECRET = re.compile(
    r"([?&](?:key|api[_-]?key|apikey|token|access_token|auth|sig|signature|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token|code|password)=)[^&\s\"'<>#]+",
    re.IGNORECASE,
)
# `api_key=…`, `"token": "…"`, `secret: …`: a long opaque value next to a secret's name.
_NAMED_SECRET = re.compile(
    r"""(?ix)
    (\b[\w-]*(?:api[_-]?key|secret|token|password|passwd|credential|private[_-]?key|
              access[_-]?key|x-api-key|x-goog-api-key|authorization)[\w-]*
     ["']?\s*[:=]\s*["']?)
    (?!\[REDACTED\])(?:Bearer\s+)?
    ([A-Za-z0-9+/_.~=-]{12,})
    """
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally grouped by single spaces or dashes; Luhn decides.
_CARD = re.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?![\w-]|\.\d)")
# Grouped phone numbers: an optional +country code, an optional (area) code, and at least
# one separator between digit groups. Ungrouped digit runs are left alone: too many ids,
# amounts and timestamps look like that. The digit count is checked in `_phone`.
_PHONE = re.compile(
    r"""(?x)
    (?<![\w+.:/-])
    (?:\+\d{1,3}[\s.-]?)?
    (?:\(\d{1,4}\)[\s.-]?|\d{1,4}[\s.-])
    (?:\d{2,4}[\s.-]){0,4}
    \d{2,8}
    (?![\w.:/-]|-\d)
    """
)


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


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    if 13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1:
        return CARD
    return match.group()


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    digits = sum(c.isdigit() for c in text)
    # With a +country code, 7-15 digits (E.164's range). Without one, national numbers
    # have 9-11 digits; requiring 9 keeps "1 000 000" and short codes out.
    low = 7 if text.startswith("+") else 9
    return PHONE if low <= digits <= 15 else text


def redact_secrets(text: str, known: Iterable[str] = ()) -> str:
    """`text` without credentials: configured `known` secrets verbatim, then patterns."""
    for secret in known:
        if len(secret) >= MIN_KNOWN_SECRET and secret in text:
            text = text.replace(secret, SECRET)
    if not text:
        return text
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{SECRET}", text)
    text = _URL_SECRET.sub(lambda m: m.group(1) + SECRET, text)
    text = _PREFIXED_KEYS.sub(SECRET, text)
    return _NAMED_SECRET.sub(_named, text)


def _named(match: re.Match[str]) -> str:
    value = match.group(2)
    # Secrets are random: digits, or mixed case. Plain words next to a secret-ish name
    # ("max_tokens": "context_length_exceeded") are an upstream's message, not a key.
    random = any(c.isdigit() for c in value) or (value.lower() != value != value.upper())
    return match.group(1) + SECRET if random else match.group()


def redact_text(text: str, known: Iterable[str] = ()) -> str:
    """`text` without credentials, emails, card numbers or phone numbers."""
    text = redact_secrets(text, known)
    if "@" in text:
        text = _EMAIL.sub(EMAIL, text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub(_phone, text)


def redact_json(value: Any, known: tuple[str, ...] = ()) -> Any:
    """A copy of a JSON value with `redact_text` applied to every string (keys too)."""
    if isinstance(value, str):
        return redact_text(value, known)
    if isinstance(value, list):
        return [redact_json(v, known) for v in value]
    if isinstance(value, dict):
        return {redact_text(str(k), known): redact_json(v, known) for k, v in value.items()}
    return value


class Scrubber:
    """Removes known secrets (and credential-shaped text) from a string or JSON value.

    Applied only on error paths, so its cost never touches a success.
    """

    __slots__ = ("known",)

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.known: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str | None]) -> None:
        found = set(self.known) | {s for s in secrets if s and len(s) >= MIN_KNOWN_SECRET}
        # Longest first, so a secret that contains another is replaced whole. Rebuilt as a
        # new tuple: readers on other threads see the old or the new one, never half.
        self.known = tuple(sorted(found, key=len, reverse=True))

    def text(self, text: str) -> str:
        return redact_secrets(text, self.known)

    def raw(self, raw: bytes) -> bytes:
        text = raw.decode("utf-8", "replace")
        clean = self.text(text)
        return raw if clean == text else clean.encode()

    def json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.json(v) for v in value]
        if isinstance(value, dict):
            return {k: self.json(v) for k, v in value.items()}
        return value


# The process's upstream credentials. Whoever holds one registers it (the adapters' provider
# objects do, when a config is loaded), so every error path can scrub them without being
# handed the config: an upstream that echoes the key back, or a URL carrying `?key=` in an
# exception message, never reaches a client, a log line or a metric label. Secrets of an
# old config stay registered after a reload; scrubbing a retired key is harmless.
UPSTREAM_SECRETS = Scrubber()

_SECRET_OPTION = re.compile(r"key|secret|token|password|credential|auth", re.IGNORECASE)


def register_credentials(
    api_key: str | None,
    headers: Mapping[str, str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Register one provider's credentials: its key, and the values of its credential-named
    headers and options."""
    found: list[str | None] = [api_key]
    if headers:
        # Only credential-named headers: a routing or version header ("anthropic-version",
        # a behaviour switch) is not a secret, and scrubbing its value would mangle every
        # message that mentions the same word.
        for name, value in headers.items():
            if not _SECRET_OPTION.search(name):
                continue
            found.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                found.append(token)
    if options:
        found.extend(
            v for k, v in options.items() if isinstance(v, str) and _SECRET_OPTION.search(k)
        )
    UPSTREAM_SECRETS.add(found)


def scrub(text: str) -> str:
    """`text` without registered upstream credentials or credential-shaped substrings."""
    return UPSTREAM_SECRETS.text(text)
