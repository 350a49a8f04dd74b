"""Farebox, the gateway."""

from gateway.runtime import redis_otel

# Before anything imports redis: redis-py would import the OpenTelemetry SDK (see there).
redis_otel.install()
