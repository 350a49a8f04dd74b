"""The response cache: exact and semantic lookups, entry storage in Redis or in process.

May import: routing, core (metering, streaming types), runtime, observability, errors.
"""
