"""The service: plan -> attempt loop -> stream relay -> metering; where routing meets I/O.

Owns the walk through a request's plan (retries, fallbacks, hedging, breakers, deadlines),
relaying streams, turning outcomes into priced ledger rows, and the live routing state the
planner reads. May import: routing, providers, ledger (rows, pricing, journal),
observability, runtime, errors, strategies. Never imports api, keys admin, cli or serving.
"""
