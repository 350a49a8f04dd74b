"""Virtual keys: authentication (bearer key -> principal, in-memory cache), the key models,
cache invalidation across replicas (Redis pub/sub + database poll) and the admin operations.

May import: ledger (keys repository), runtime, observability, errors, routing.
"""
