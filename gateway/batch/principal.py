"""A batch's key, kept with the batch: its lines are admitted (RPM, TPM, budget) and settled
against the key's limits as they were when the batch was created, on whichever replica runs
them, after any restart.

Concurrency is left out on purpose: a batch's own concurrency is its path's (a few lines on
serverless, the free slots of a GPU), and counting its lines against the key's
`max_concurrency` would let a batch starve the same key's live requests.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from gateway.keys.auth import Principal


def dump(principal: Principal | None) -> dict[str, Any] | None:
    if principal is None:
        return None
    return {
        "key_name": principal.key_name,
        "key_id": principal.key_id,
        "team": principal.team,
        "routes": None if principal.routes is None else sorted(principal.routes),
        "rpm": principal.rpm,
        "tpm": principal.tpm,
        "budget_usd": None if principal.budget_usd is None else str(principal.budget_usd),
        "soft_budget_ratio": principal.soft_budget_ratio,
        "tags": dict(principal.tags),
    }


def load(data: dict[str, Any] | None) -> Principal | None:
    if not data:
        return None
    budget = data.get("budget_usd")
    routes = data.get("routes")
    return Principal(
        key_name=data["key_name"],
        key_id=data.get("key_id"),
        team=data.get("team"),
        routes=None if routes is None else frozenset(routes),
        rpm=data.get("rpm"),
        tpm=data.get("tpm"),
        max_concurrency=None,
        budget_usd=None if budget is None else Decimal(budget),
        soft_budget_ratio=data.get("soft_budget_ratio"),
        tags=dict(data.get("tags") or {}),
    )
