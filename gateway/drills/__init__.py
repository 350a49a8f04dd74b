"""Failover drills: the board every replica applies, drill config and schedules, and the
operations behind the admin API and CLI.

May import: routing (drill rules), ledger (drills repository), runtime, observability.
"""
