"""The error tree renders exactly what the single free-form GatewayError rendered before it."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.errors import GatewayError, anthropic_error_type

KINDS = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors._Kind) and cls is not errors._Kind
]


def test_every_kind_is_listed() -> None:
    assert len(KINDS) >= 18


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_kind_renders_like_the_old_free_form_error(kind: type[errors._Kind]) -> None:
    error = kind("Something went wrong.", headers=[(b"retry-after", b"1")])
    legacy = GatewayError(
        kind.http_status,
        "Something went wrong.",
        error_type=kind.openai_type,
        code=kind.default_code,
    )
    assert error.status == kind.http_status
    assert error.body() == legacy.body()
    assert error.anthropic_body() == legacy.anthropic_body()
    # The Anthropic type named by the class is the one its status always mapped to.
    assert kind.anthropic_type == anthropic_error_type(kind.http_status)
    assert error.extra_headers == [(b"retry-after", b"1")]


def test_code_and_param_override_the_defaults() -> None:
    error = errors.NotFound("No such model.", code="model_not_found", param="model")
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")


def test_rate_limit_type_names_the_limit() -> None:
    assert errors.RateLimited("Slow down.").error_type == "requests"
    assert errors.RateLimited("Slow down.", error_type="tokens").error_type == "tokens"


def test_upstream_rejection_keeps_the_upstream_status() -> None:
    error = errors.UpstreamRejected(413, "Too long.", code="too_long")
    assert error.status == 413
    assert error.anthropic_body() == GatewayError(413, "Too long.").anthropic_body()
    assert error.body() == GatewayError(413, "Too long.", code="too_long").body()
