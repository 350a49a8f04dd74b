"""The declarative base every ledger table registers on, and the column types they share.

Its own module so the table modules (models, models_drills, models_reports) all import it
and not each other: models imports the other two only so one import registers every table.
"""

from __future__ import annotations

from sqlalchemy import MetaData, Numeric, String
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names so Alembic revisions and autogenerate agree across dialects.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Ten decimal places keep sub-micro-dollar per-token prices exact; 18 digits hold any realistic
# month of spend.
COST = Numeric(18, 10)
ID = String(128)
NAME = String(255)
TAG = String(64)
# Budgets are set by people in dollars and cents; six places leave room for sub-cent limits.
USD = Numeric(18, 6)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
