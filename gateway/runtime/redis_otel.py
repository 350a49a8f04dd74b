"""Keep redis-py from importing the OpenTelemetry SDK (issue #25: OpenTelemetry stays lazy).

redis-py 8 imports `opentelemetry.sdk.metrics` when `redis` is first imported, if the SDK is
installed (Farebox's `otel` extra, which the image carries), only to record whether its own
OTel metrics could be turned on. Farebox never turns them on (its metrics are Prometheus; its
traces, when FAREBOX/OTEL endpoints ask for them, import the SDK themselves), and that import
costs every worker ~0.1 s of start-up and ~2 MB of resident memory.

`install()` (run by gateway/__init__.py, before any Redis import) adds an import hook that
refuses exactly that one import while redis-py's `redis.observability.providers` module is
executing its top level: redis-py then records the SDK as unavailable, as it does when the
extra is not installed. Any other importer of the SDK (Farebox's tracing included) is not
affected, and an SDK already imported is not hidden. If a redis-py release moves that import,
the hook no longer matches and nothing changes but memory (tests/unit/test_redis_otel.py
would notice).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

_SDK_METRICS = "opentelemetry.sdk.metrics"
_REDIS_PROVIDERS = "redis.observability.providers"


class _HideSdkFromRedis:
    """A meta-path finder that only ever says no (or nothing)."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == _SDK_METRICS:
            providers = sys.modules.get(_REDIS_PROVIDERS)
            # In sys.modules but without OTEL_AVAILABLE yet: its top level is running now.
            if providers is not None and not hasattr(providers, "OTEL_AVAILABLE"):
                raise ImportError(f"{_SDK_METRICS} is not loaded for redis-py (gateway)")
        return None


def install() -> None:
    if not any(isinstance(finder, _HideSdkFromRedis) for finder in sys.meta_path):
        sys.meta_path.insert(0, _HideSdkFromRedis())
