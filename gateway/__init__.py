"""Farebox, the gateway."""

from gateway.runtime import prometheus_pid, redis_otel

# Before anything imports redis: redis-py would import the OpenTelemetry SDK (see there).
redis_otel.install()
# Before any metric is created: multiprocess metrics without a getpid() per update (see there).
prometheus_pid.install()
