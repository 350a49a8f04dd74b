"""The one definition of a successful request, for every report, verdict and page.

A request is **successful** when it passed its gate (or had none) and reached the client
whole. On its `requests` row:

    final_status = 200 AND error_class IS NULL
    AND (gate_outcome IS NULL OR gate_outcome = 'pass')

Why each part:

- `final_status = 200`: anything else (4xx/5xx, 409 on a consensus disagreement, 499 when
  the client hung up) is not an answer.
- `error_class IS NULL`: a stream's 200 goes out with its headers, before the first byte, so
  a stream that breaks later (`stream_error`, a cut connection, a timeout, `shutdown` at
  SIGTERM, a `gateway_crashed` replay) keeps `final_status = 200` and only its error class
  says the client got a broken answer. ANY error class fails: a class added later counts as
  a failure without touching this module.
- the gate: an answer handed back with `x-farebox-gate: fail` reached the client but is not
  one it can use (the gate's failing check is the outcome).

What that means for the special cases (decided here, so every report agrees):

- a response-cache hit (200, no error, no gate outcome) is a success: the client got a
  whole answer, at no token cost;
- a consensus route with `on_disagree: pass` answers 200 and is a success (the
  disagreement rate is reported on its own); with `on_disagree: fail` it is a 409 failure;
- a request's success belongs to its `final_deployment` (the deployment whose answer the
  client got) when reports group by deployment, so every grouping sums to the same total.

Attempt-level notions (a "clean" first attempt, retry rate, an attempt's error class, the
gate pass rate of attempts) stay attempt-level and are never called success. The one
attempt-level helper here, :data:`ANSWERED_CLIENT`, marks the attempt whose answer made its
request a success (drill verdicts judge a deployment by it).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, case, or_

from gateway.ledger.models import attempts_table, requests_table

# The values and the Python form live in success_rule (no SQLAlchemy); re-exported here.
from gateway.ledger.success_rule import GATE_PASS as GATE_PASS
from gateway.ledger.success_rule import NO_USAGE as NO_USAGE
from gateway.ledger.success_rule import SUCCESS_STATUS as SUCCESS_STATUS
from gateway.ledger.success_rule import is_successful as is_successful
from gateway.ledger_rows import RequestRow

#: The rule in words, for the reports to print next to the numbers.
DEFINITION = (
    "Successful request: answered 200, reached the client whole (no error class: not cut or "
    "broken mid-stream) and passed the route's quality gate if it has one."
)


def success_condition(
    final_status: ColumnElement[Any],
    error_class: ColumnElement[Any],
    gate_outcome: ColumnElement[Any],
) -> ColumnElement[bool]:
    """The rule over any three columns (a subquery's or an alias's as well as the table's)."""
    return and_(
        final_status == SUCCESS_STATUS,
        error_class.is_(None),
        gate_passed(gate_outcome),
    )


def gate_passed(gate_outcome: ColumnElement[Any]) -> ColumnElement[bool]:
    """No gate, or the gate passed (for a request's or an attempt's gate outcome)."""
    return or_(gate_outcome.is_(None), gate_outcome == GATE_PASS)


_r = requests_table.c
_a = attempts_table.c

#: The rule on `requests`. NULL (so not true) for a missing row of an outer join.
SUCCESSFUL: ColumnElement[bool] = success_condition(
    _r.final_status, _r.error_class, _r.gate_outcome
)
#: 1 for a successful request, else 0: `func.sum(SUCCESS_FLAG)` counts them.
SUCCESS_FLAG: ColumnElement[int] = case((SUCCESSFUL, 1), else_=0)
#: The attempt (on `attempts` joined to its `requests` row) whose answer the client got
#: in a successful request: its request succeeded, the answer came from its deployment,
#: and the attempt itself neither failed nor failed the gate (a repair or retry on the
#: same deployment may have answered instead). A stream that ended cleanly but without a
#: usage chunk is an attempt "error" only for metering (its tokens are estimated): the
#: client got it whole.
ANSWERED_CLIENT: ColumnElement[bool] = and_(
    SUCCESSFUL,
    _a.deployment == _r.final_deployment,
    or_(_a.error_class.is_(None), _a.error_class == NO_USAGE),
    gate_passed(_a.gate_outcome),
)


def request_succeeded(row: RequestRow) -> bool:
    return is_successful(row.final_status, row.error_class, row.gate_outcome)
