"""Request models for changing virtual keys, shared by the admin API and `farebox keys`.

Kept free of FastAPI and the gateway state, so the CLI validates with the same rules without
importing the server.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

MAX_INT = 2_147_483_647  # the columns are 32-bit
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(value: str) -> str:
    # Postgres rejects NUL in text; other control characters only make logs and tables lie.
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


Text = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_printable)]
TagKey = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_printable)]
Limit = Annotated[int, Field(ge=1, le=MAX_INT)]
Budget = Annotated[
    Decimal, Field(ge=0, le=Decimal("999999999999"), decimal_places=6, allow_inf_nan=False)
]
Ratio = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    team: Text | None = None
    routes: Annotated[list[Text], Field(max_length=1000)] | None = Field(
        None, description="Routes this key may call; null for every route."
    )
    rpm: Limit | None = Field(None, description="Requests per minute.")
    tpm: Limit | None = Field(None, description="Tokens per minute (input + output).")
    max_concurrency: Limit | None = None
    budget_usd: Budget | None = Field(None, description="Monthly budget in USD.")
    soft_budget_ratio: Ratio | None = Field(
        None, description="Share of the budget at which an alert fires (e.g. 0.8)."
    )
    expires_at: datetime | None = Field(None, description="ISO 8601; naive times are UTC.")

    @field_validator("expires_at")
    @classmethod
    def _sane_year(cls, value: datetime | None) -> datetime | None:
        # Years near 1 or 9999 overflow once shifted to UTC.
        if value is not None and not 1970 <= value.year <= 9000:
            raise ValueError("year must be between 1970 and 9000")
        return value


class KeyCreate(_Fields):
    name: Text
    tags: Annotated[dict[TagKey, Text], Field(max_length=50)] = Field(
        default_factory=dict, description="Metadata into the ledger: workload, segment, ..."
    )


class KeyUpdate(_Fields):
    """Only the fields sent change; null clears a limit."""

    name: Text | None = None
    tags: Annotated[dict[TagKey, Text], Field(max_length=50)] | None = None
