"""Guardrails on the wire: a route's guard checks (gateway/config/guard.py) applied to a
request before it is planned further — blocked, rerouted to allowed provider kinds, masked
or flagged — and masked values put back in its answer. The detectors and verdicts are
routing's (pure); this package owns applying them to a call, the `x-farebox-guard` header
and the guard metrics."""
