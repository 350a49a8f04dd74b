"""Per-key limits: RPM/TPM buckets, concurrency leases and monthly budgets, enforced in one
batched Redis Lua script per round trip (or in process without Redis); reservation expiry,
ledger -> Redis spend reconciliation, and the provider in-flight sync shared by replicas.

May import: routing (quota rules), ledger (spend), runtime, observability, errors.
"""
