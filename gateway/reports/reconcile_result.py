"""The result of a reconciliation run (what the renderers and the CLI read) and the row that
is stored for it in `reconciliations`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from gateway.reports.importers import ImportedFile
from gateway.reports.store import AnsweredBy
from routing.lcpr import ConsensusLine
from routing.reconcile_rules import (
    GPU_HOURS,
    OTHER,
    Cell,
    ModelVerdict,
    Thresholds,
    within,
)
from routing.red_flags import (
    RedFlag,
)

_ZERO = Decimal(0)


@dataclass(slots=True)
class ReconcileResult:
    month: str
    start: datetime
    end: datetime
    thresholds: Thresholds
    imports: list[ImportedFile]
    cells: list[Cell]
    verdicts: list[ModelVerdict]
    token_variance_pct: Decimal | None
    cost_variance_pct: Decimal | None
    metered_usd: Decimal
    invoiced_usd: Decimal | None
    metered_unbilled_usd: Decimal  # metered where the invoice carries no dollars
    non_token_usd: Decimal
    unreconciled: dict[str, Decimal]  # providers with metered spend and no invoice given
    red_flags: list[RedFlag]
    unpriced_attempts: int
    elapsed_s: float = 0.0
    run_id: str | None = None
    notes: list[str] = field(default_factory=list)
    # (provider, role, attempts, metered USD) for the reconciled providers
    spend_by_role: list[tuple[str, str, int, Decimal]] = field(default_factory=list)
    # Agreement rate and cost multiple per consensus route (gateway/reports/consensus.py).
    consensus: list[ConsensusLine] = field(default_factory=list)
    # The month's requests per final deployment, every provider (not only those reconciled),
    # with their successes: the denominator of `farebox lcpr` for the same month.
    answered: list[AnsweredBy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return within(self.verdicts)

    @property
    def requests(self) -> int:
        return sum(a.requests for a in self.answered)

    @property
    def successful(self) -> int:
        return sum(a.successful for a in self.answered)

    def daily(self) -> dict[str, list[tuple[date, Decimal, Decimal | None]]]:
        """Per provider: (day, metered tokens, invoiced tokens) for the chart."""
        out: dict[str, dict[date, list[Decimal | None]]] = defaultdict(dict)
        for c in self.cells:
            if c.token_type in (GPU_HOURS, OTHER):
                continue
            slot = out[c.provider].setdefault(c.day, [_ZERO, None])
            slot[0] = (slot[0] or _ZERO) + c.metered_tokens
            if c.invoiced_tokens is not None:
                slot[1] = (slot[1] or _ZERO) + c.invoiced_tokens
        return {
            p: [(d, v[0] or _ZERO, v[1]) for d, v in sorted(days.items())]
            for p, days in sorted(out.items())
        }


def _num(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def verdict_dict(v: ModelVerdict) -> dict[str, Any]:
    return {
        "provider": v.provider,
        "model": v.model,
        "flagged": v.flagged,
        "token_flag": v.token_flag,
        "cost_flag": v.cost_flag,
        "token_variance_pct": _num(v.token_variance_pct),
        "cost_variance_pct": _num(v.cost_variance_pct),
        "metered_usd": _num(v.metered_usd),
        "invoiced_usd": _num(v.invoiced_usd),
        "metered_tokens": {k: str(n) for k, n in v.metered_tokens.items()},
        "invoiced_tokens": {k: str(n) for k, n in v.invoiced_tokens.items()},
        "causes": [{"code": c.code, "message": c.message} for c in v.causes],
    }


def run_row(r: ReconcileResult) -> dict[str, Any]:
    return {
        "month": r.month,
        "status": "ok" if r.ok else "flagged",
        "token_threshold_pct": r.thresholds.token_pct,
        "cost_threshold_pct": r.thresholds.cost_pct,
        "token_variance_pct": _clip(r.token_variance_pct),
        "cost_variance_pct": _clip(r.cost_variance_pct),
        "metered_usd": r.metered_usd,
        "invoiced_usd": r.invoiced_usd,
        "import_ids": sorted({f.import_id for f in r.imports}),
        "summary": {
            "files": [
                {
                    "provider": f.provider,
                    "file": f.source_file,
                    "format": f.format,
                    "import_id": f.import_id,
                    "lines": len(f.lines),
                }
                for f in r.imports
            ],
            "models": [verdict_dict(v) for v in r.verdicts],
            "red_flags": [
                {"code": f.code, "subject": f.subject, "message": f.message} for f in r.red_flags
            ],
            "notes": r.notes,
            "requests": {
                "total": r.requests,
                "successful": r.successful,
                "by_deployment": [
                    {"deployment": a.deployment, "requests": a.requests, "successful": a.successful}
                    for a in r.answered
                ],
            },
        },
    }


def _clip(value: Decimal | None) -> Decimal | None:
    # The column holds ±10^10 %: anything beyond is "all of it on one side" anyway.
    if value is None:
        return None
    return max(min(value, Decimal("9999999999")), Decimal("-9999999999")).quantize(
        Decimal("0.0001")
    )
