"""Route strategies that run several upstream calls for one request: gating and cascades,
consensus, speculative execution, and the fan-out loop they share.

Called by the core's service; they reach upstreams through the service's attempt runner
(`Service.caller`, the meter, the breakers). May import: routing, core (ports, metering,
attempts, streaming), providers' types, observability, errors.
"""
