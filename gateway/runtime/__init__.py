"""Helpers every domain shares: the background task set with one bounded wait, the one Redis
client factory (one timeout policy), and Redis health (down on first failure, PING probe).

Imports nothing from other gateway domains.
"""
