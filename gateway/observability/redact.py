"""Redaction of personal data and secrets from text (pure: no I/O, no state).

Two uses, two strengths:

- `redact_secrets` / `Scrubber`: credentials only (API keys, bearer tokens, `?key=` URL
  parameters, `key=value` secrets, plus the exact secrets a gateway is configured with).
  Applied to upstream error text before it reaches a client or a log, where emails or
  numbers must survive (an upstream's "invalid value 4096 for max_tokens" is useful).
- `redact_text` / `redact_json`: everything above plus emails, phone numbers and card
  numbers (Luhn-checked, so order numbers and timestamps survive). Applied to prompts and
  answers in the opt-in payload log.

The patterns and their checks are routing/pii.py's (guardrails find the same things).
Patterns err on the side of redacting: a false positive costs a log reader some context,
a false negative leaks a customer's data or a key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from routing.pii import (
    AUTH_SCHEME,
    CARD_PATTERN,
    EMAIL_PATTERN,
    NAMED_SECRET,
    PHONE_PATTERN,
    PREFIXED_KEYS,
    URL_SECRET,
    card_ok,
    named_secret_ok,
    phone_ok,
)

SECRET = "[REDACTED]"
EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"

# Secrets shorter than this are not searched for verbatim: replacing "x" or "test" in
# every error message would destroy the message and protect nothing.
MIN_KNOWN_SECRET = 6


def _card(match: re.Match[str]) -> str:
    return CARD if card_ok(match.group()) else match.group()


def _phone(match: re.Match[str]) -> str:
    return PHONE if phone_ok(match.group()) else match.group()


def redact_secrets(text: str, known: Iterable[str] = ()) -> str:
    """`text` without credentials: configured `known` secrets verbatim, then patterns."""
    for secret in known:
        if len(secret) >= MIN_KNOWN_SECRET and secret in text:
            text = text.replace(secret, SECRET)
    if not text:
        return text
    text = AUTH_SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{SECRET}", text)
    text = URL_SECRET.sub(lambda m: m.group(1) + SECRET, text)
    text = PREFIXED_KEYS.sub(SECRET, text)
    return NAMED_SECRET.sub(_named, text)


def _named(match: re.Match[str]) -> str:
    return match.group(1) + SECRET if named_secret_ok(match.group(2)) else match.group()


def redact_text(text: str, known: Iterable[str] = ()) -> str:
    """`text` without credentials, emails, card numbers or phone numbers."""
    text = redact_secrets(text, known)
    if "@" in text:
        text = EMAIL_PATTERN.sub(EMAIL, text)
    text = CARD_PATTERN.sub(_card, text)
    return PHONE_PATTERN.sub(_phone, text)


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
