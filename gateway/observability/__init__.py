"""What Farebox tells operators: Prometheus metrics (multiprocess-safe), OpenTelemetry
traces, the JSON request log, the opt-in payload log and its PII redaction.

A leaf domain: imported by everything, imports only ledger rows, routing types and settings.
"""
