"""Helpers every domain shares: the background task set with one bounded wait, the one Redis
client factory (one timeout policy), Redis health (down on first failure, PING probe), the
process's shutdown state (drain, cut, the outcome of a cancelled request) and the readiness
probe's database ping: below every domain, so the API, core and strategies can all read them.

Imports nothing from other gateway domains but gateway.errors.
"""
