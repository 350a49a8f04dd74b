"""The per-attempt ledger: events, pricing, the batch writer with its disk spool, SQL."""
