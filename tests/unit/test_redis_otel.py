"""redis-py does not drag the OpenTelemetry SDK into a serving process (issue #25): checked in
fresh interpreters, since this one may have imported it already."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import gateway.app
import redis.observability.providers as providers
print(providers.OTEL_AVAILABLE, "opentelemetry.sdk.metrics" in sys.modules)
import opentelemetry.sdk.metrics  # anyone else still gets it
print("opentelemetry.sdk.metrics" in sys.modules)
"""


def _run(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_serving_imports_leave_the_otel_sdk_out_and_importable() -> None:
    assert _run(CHECK) == ["False", "False", "True"]


def test_without_the_hook_redis_would_import_it() -> None:
    """The hook is what keeps it out: redis-py imported before gateway takes the SDK."""
    code = "import sys, redis, gateway.app; print('opentelemetry.sdk.metrics' in sys.modules)"
    assert _run(code) == ["True"]
