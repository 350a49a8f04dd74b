"""The hot path's metric buffers reach prometheus_client exactly as direct updates would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.observability import metrics


def test_buffered_histogram_and_counter_match_direct_updates() -> None:
    registry = CollectorRegistry()
    buckets = (0.01, 0.1, 1.0)
    direct = Histogram("direct_seconds", "d", buckets=buckets, registry=registry)
    buffered = Histogram("buffered_seconds", "b", buckets=buckets, registry=registry)
    count_direct = Counter("direct", "d", registry=registry)
    count_buffered = Counter("buffered", "b", registry=registry)
    hist = metrics._Hist(buffered)
    count = metrics._Count(count_buffered)
    values = [0.0, 0.01, 0.010001, 0.05, 0.1, 0.5, 1.0, 3.0, 1e9]
    for value in values:
        direct.observe(value)
        hist.observe(value)
        count_direct.inc(value)
        count.n += value
    metrics.flush()
    hist.flush()  # a second flush adds nothing
    text = generate_latest(registry).decode()

    def samples(prefix: str) -> list[str]:
        return [
            line.split(prefix, 1)[1]
            for line in text.splitlines()
            if line.startswith(prefix) and "_created" not in line
        ]

    assert samples("direct_seconds") == samples("buffered_seconds")
    assert samples("direct_total") == samples("buffered_total")
    assert len(samples("direct_seconds")) == 6  # 4 buckets, count, sum
