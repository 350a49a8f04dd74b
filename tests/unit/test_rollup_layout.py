"""The rollups' plain layout (gateway/ledger/rollup_layout.py, what the Postgres writer builds
its statement from) matches the SQLAlchemy tables the migrations and reports use, and the
writer's modules load without SQLAlchemy (the serving worker never imports it, issue #25)."""

from __future__ import annotations

import subprocess
import sys

from gateway.ledger.models_rollups import ROLLUP_TABLES
from gateway.ledger.rollup_layout import LAYOUT


def test_every_table_has_the_layout_s_columns_and_key() -> None:
    assert {t.name for t in ROLLUP_TABLES} == set(LAYOUT)
    for table in ROLLUP_TABLES:
        columns, dims = LAYOUT[table.name]
        assert tuple(c.name for c in table.columns) == columns, table.name
        assert tuple(c.name for c in table.primary_key.columns) == dims, table.name


def test_the_postgres_writer_loads_without_sqlalchemy() -> None:
    code = (
        "import sys; import gateway.ledger.pg_sink; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
