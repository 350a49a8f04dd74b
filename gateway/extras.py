"""Optional features shipped as pip extras, and the error that names the missing one.

Each extra is checked by importing the module it provides, at the moment a config or
setting asks for the feature (config load, startup), so a missing package is one line that
says what to install instead of an ImportError from deep inside litellm or the cache.
Standard library only: anything in gateway/ may import this.
"""

from __future__ import annotations

import importlib

# extra -> (module whose import proves it is installed, the feature that needs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "vertex": ("google.auth", "a provider with protocol vertex_ai"),
    "semantic-cache": ("wordllama", "a route with cache mode semantic"),
    "otel": ("opentelemetry.sdk.trace", "tracing (an OTLP endpoint is set)"),
    "s3": ("boto3", "the S3 files backend (FAREBOX_FILES_BACKEND=s3)"),
}


class MissingExtra(ImportError):
    """A configured feature needs an optional extra that is not installed."""

    def __init__(self, extra: str) -> None:
        module, feature = EXTRAS[extra]
        self.extra = extra
        super().__init__(
            f"{feature} needs the `{extra}` extra ({module} is not installed): "
            f"pip install 'farebox[{extra}]'"
        )


def installed(extra: str) -> bool:
    module, _ = EXTRAS[extra]
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require(extra: str) -> None:
    """Raise MissingExtra unless `extra`'s packages import."""
    if not installed(extra):
        raise MissingExtra(extra)
