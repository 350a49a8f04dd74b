"""The successful-request rule's values and its Python form, without SQLAlchemy: the SQL
forms are in gateway/ledger/success.py (which explains the rule), and the Postgres ledger
writer, on the serving worker (no SQLAlchemy there, issue #25), builds its rollup statement
from these.
"""

from __future__ import annotations

SUCCESS_STATUS = 200
GATE_PASS = "pass"
# The attempt error class of a stream that ended cleanly without usage (gateway/core/streaming.py).
NO_USAGE = "no_usage"


def is_successful(final_status: int, error_class: str | None, gate_outcome: str | None) -> bool:
    """The rule in Python, for code that holds a request in memory."""
    return (
        final_status == SUCCESS_STATUS
        and error_class is None
        and (gate_outcome is None or gate_outcome == GATE_PASS)
    )
