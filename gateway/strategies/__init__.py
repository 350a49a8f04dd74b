"""Route strategies that run several upstream calls for one request: gating and cascades,
consensus, speculative execution, and the fan-out loop they share.

Called by the core's service; they reach upstreams through the service's attempt runner
(gateway.core.ports.AttemptRunner: `caller`, `walk`, the meter, the breakers), which the
service passes in; they never import gateway.core.service. May import: routing, core (ports,
metering, upstream_errors), providers' types, ledger rows, observability, errors.
"""
