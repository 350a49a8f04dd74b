"""Redaction of PII and secrets: realistic positives, and look-alikes that must survive."""

from __future__ import annotations

import pytest

from gateway.observability.redact import (
    CARD,
    EMAIL,
    PHONE,
    SECRET,
    Scrubber,
    redact_json,
    redact_secrets,
    redact_text,
    register_credentials,
    scrub,
)
from routing.pii import luhn_ok


@pytest.mark.parametrize(
    ("text", "marker"),
    [
        ("write to jane.doe+billing@example.co.uk today", EMAIL),
        ("Contact: ops-team@sub.mail.example.com.", EMAIL),
        ("call me on +1 415 555 0132", PHONE),
        ("office (415) 555-0132", PHONE),
        ("cell 415-555-0132", PHONE),
        ("London +44 20 7946 0958", PHONE),
        ("Paris +33 6 12 34 56 78", PHONE),
        ("Berlin +49 30 901820", PHONE),
        ("toll free 1-800-555-0199", PHONE),
        ("my card is 4111 1111 1111 1111, exp 12/29", CARD),
        ("4242-4242-4242-4242", CARD),
        ("mastercard 5555555555554444", CARD),
        ("amex 3782 822463 10005", CARD),
    ],
)
def test_pii_is_redacted(text: str, marker: str) -> None:
    out = redact_text(text)
    assert marker in out, out


@pytest.mark.parametrize(
    "text",
    [
        "key sk-proj-abcdefghijklmnop1234567890",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",
        "use fbx-AbCdEf0123456789xyzw for tests",
        "AKIAIOSFODNN7EXAMPLE",
        "AIzaSyA-12345678901234567890123456789ab",
        "Authorization: Bearer abc.def-ghi_12345",
        "curl -H 'x-api-key: 0123456789abcdef0123456789abcdef'",
        '{"api_key": "0123456789abcdef0123456789abcdef"}',
        "token=ZXhhbXBsZXNlY3JldHRva2Vu",
        "client_secret: 9f86d081884c7d659a2feaa0c55ad015",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ],
)
def test_secrets_are_redacted(text: str) -> None:
    out = redact_secrets(text)
    assert SECRET in out, out
    assert redact_text(text).count(SECRET) >= 1


def test_gemini_url_key_is_redacted_and_the_url_kept() -> None:
    url = (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:"
        "generateContent?key=AIzaSyA-123456789012345678901234567890a&alt=sse"
    )
    out = redact_secrets(f"Cannot connect to {url}")
    assert "AIza" not in out
    assert "?key=[REDACTED]&alt=sse" in out


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-15",
        "at 12:30:45 UTC",
        "version 1.2.3",
        "ip 192.168.1.1",
        "order #12345",
        "$1,234.56",
        "1234567890123456",  # 16 digits, fails Luhn
        "0000 0000 0000 0000",  # passes Luhn, not a card
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "the token count was 4096",
        "max_tokens is 100000",
        "use the key 'model'",
        "sk-short",
        "a@b",
        "see https://example.com/path?page=2",
        "In 2024 there were 1500 users",
        "ISBN 978-0-306-40615-7",
        "temperature 0.7 and top_p 0.9",
        "1 000 000 tokens",
        "Invalid 'messages[0].content': expected a string.",
        "This model's maximum context length is 8192 tokens.",
        '{"error": {"code": "max_tokens", "param": "max_tokens", "type": "invalid_request_error"}}',
        "token_limit: exceeded_for_this_model",
    ],
)
def test_look_alikes_survive(text: str) -> None:
    assert redact_text(text) == text


def test_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")


def test_redact_json_walks_keys_and_values() -> None:
    value = {
        "messages": [
            {"role": "user", "content": "I am bob@example.com, card 4111 1111 1111 1111"},
            {"role": "user", "content": [{"type": "text", "text": "call +1 415 555 0132"}]},
        ],
        "n": 2,
        "bob@example.com": None,
    }
    out = redact_json(value)
    assert out["messages"][0]["content"] == f"I am {EMAIL}, card {CARD}"
    assert out["messages"][1]["content"][0]["text"] == f"call {PHONE}"
    assert out["n"] == 2 and EMAIL in out


def test_scrubber_removes_known_secrets_however_they_appear() -> None:
    scrubber = Scrubber(["opaque-provider-secret-value", None, "tiny"])
    text = "upstream said: bad key opaque-provider-secret-value (tiny)"
    assert scrubber.text(text) == f"upstream said: bad key {SECRET} (tiny)"
    body = {"error": {"message": "key opaque-provider-secret-value", "code": 401}}
    assert scrubber.json(body) == {"error": {"message": f"key {SECRET}", "code": 401}}
    assert scrubber.raw(b'{"m":"opaque-provider-secret-value"}') == b'{"m":"[REDACTED]"}'
    assert scrubber.raw(b"nothing") == b"nothing"


def test_registered_credentials_are_scrubbed_everywhere() -> None:
    register_credentials(
        "registered-key-123456",
        {"X-Custom-Auth": "Bearer header-token-abcdef", "x-mock-behavior": "context_length"},
        {"aws_secret_access_key": "wJalrXUtnFEMIbPxRfiCYEXAMPLEKEY", "api_version": "2024-10-21"},
    )
    text = (
        "got registered-key-123456, header-token-abcdef and "
        "wJalrXUtnFEMIbPxRfiCYEXAMPLEKEY, api 2024-10-21, context_length_exceeded"
    )
    out = scrub(text)
    for secret in (
        "registered-key-123456",
        "header-token-abcdef",
        "wJalrXUtnFEMIbPxRfiCYEXAMPLEKEY",
    ):
        assert secret not in out
    assert "2024-10-21" in out  # options that are not secrets are left alone
    assert "context_length_exceeded" in out  # nor headers that are not credentials


def test_litellm_errors_lose_keys_from_urls_and_echoes() -> None:
    from gateway.providers.litellm_adapter import LitellmProvider, upstream_error

    LitellmProvider("gem", "gemini", None, "gemini-secret-abcdef123", {}, {})

    class BadRequestError(Exception):
        status_code = 400

        def __init__(self, message: str) -> None:
            super().__init__(message)
            self.message = message

    exc = BadRequestError(
        "litellm.BadRequestError: GeminiException - POST https://generativelanguage.googleapis"
        ".com/v1beta/models/gemini-2.0-flash:generateContent?key=AIzaSyA-1234567890123456789"
        "0123456789ab failed: API key gemini-secret-abcdef123 not valid"
    )
    error = upstream_error(exc, "flash@gem")
    text = repr(error.body) + error.message
    assert "AIza" not in text and "gemini-secret-abcdef123" not in text
    assert SECRET in text
