"""Helpers every domain shares: the background task set with one bounded wait, and Redis
health (down on first failure, background PING probe).

Imports nothing from other gateway domains.
"""
