"""Monthly reports: invoice importers, metering reconciliation, LCPR, red flags, renderers.

The only package besides gateway.ledger.repository that holds SQL (in :mod:`.store`); the
arithmetic it applies lives in routing (reconcile_rules, lcpr, red_flags), pure and tested
on its own.
"""
