"""What the invoice importers produce (InvoiceLine, ImportedFile), their error that points
at file, row and column, and the reader (Where) the format parsers share."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from routing.reconcile_rules import (
    CACHE_WRITE,
    GPU_HOURS,
    INPUT,
    INPUT_CACHED,
    INPUT_UNCACHED,
    OUTPUT,
)

FORMATS = (
    "openai_usage",
    "openai_costs",
    "anthropic_usage",
    "anthropic_cost",
    "bedrock_cur",
    "fireworks",
    "generic",
)
GENERIC_COLUMNS = ("provider", "date", "model", "token_type", "tokens", "amount_usd")
# A line billed through the provider's batch API keeps its token type with this prefix
# (`batch_output`…), in `invoice_lines.token_type` too: reconciliation compares batch lines
# with the ledger's provider-batch attempts, apart from live ones.
BATCH_PREFIX = "batch_"
_BATCHABLE = (INPUT_UNCACHED, INPUT_CACHED, CACHE_WRITE, OUTPUT, INPUT)
GENERIC_TOKEN_TYPES = (*_BATCHABLE, GPU_HOURS, *(BATCH_PREFIX + t for t in _BATCHABLE))
ZERO = Decimal(0)
CENT = Decimal(100)
DAY = timedelta(days=1)


def batch_type(token_type: str, batch: bool = True) -> str:
    """`output` → `batch_output` for a batch line (token types that are not per token, such
    as `gpu_hours` and `other`, stay as they are)."""
    return BATCH_PREFIX + token_type if batch and token_type in _BATCHABLE else token_type


def split_batch(token_type: str) -> tuple[str, bool]:
    """(the plain token type, whether it is a batch line)."""
    if token_type.startswith(BATCH_PREFIX):
        return token_type[len(BATCH_PREFIX) :], True
    return token_type, False


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    provider: str
    period_start: datetime  # UTC
    period_end: datetime  # UTC, exclusive
    model: str
    token_type: str
    tokens: Decimal | None  # None: this line carries dollars only
    amount_usd: Decimal | None  # None: this line carries tokens only
    line_item: str
    requests: int | None = None

    @property
    def day(self) -> date:
        return self.period_start.date()

    @property
    def batch(self) -> bool:
        return self.token_type.startswith(BATCH_PREFIX)


@dataclass(frozen=True, slots=True)
class ImportedFile:
    provider: str
    source_file: str
    format: str
    import_id: str  # content hash: re-importing the same file replaces, never duplicates
    lines: tuple[InvoiceLine, ...]
    skipped: int = 0
    notes: tuple[str, ...] = field(default=())


class InvoiceFormatError(ValueError):
    """A file that cannot be imported; says where."""

    def __init__(self, file: str, row: str | int | None, column: str | None, message: str):
        self.file, self.row, self.column, self.message = file, row, column, message
        where = file
        if row is not None:
            where += f": row {row}"
        if column is not None:
            where += f", column {column}" if row is not None else f": column {column}"
        super().__init__(f"{where}: {message}")


class Where:
    """The file and row being read, to raise errors that point at them."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.row: str | int | None = None

    def fail(self, column: str | None, message: str) -> InvoiceFormatError:
        return InvoiceFormatError(self.file, self.row, column, message)

    def number(self, raw: Any, column: str, *, required: bool = True) -> Decimal | None:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            if required:
                raise self.fail(column, "value is missing")
            return None
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise self.fail(column, f"expected a number, got {show(raw)}")
        try:
            value = Decimal(raw.strip()) if isinstance(raw, str) else Decimal(repr(raw))
        except InvalidOperation:
            raise self.fail(column, f"expected a number, got {show(raw)}") from None
        if not value.is_finite():
            raise self.fail(column, f"expected a finite number, got {show(raw)}")
        return value

    def count(self, raw: Any, column: str, *, required: bool = True) -> Decimal | None:
        value = self.number(raw, column, required=required)
        if value is not None and value < 0:
            raise self.fail(column, f"a token count cannot be negative ({value})")
        return value

    def text(self, raw: Any, column: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise self.fail(column, f"expected a non-empty string, got {show(raw)}")
        return raw.strip()

    def timestamp(self, raw: Any, column: str) -> datetime:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return datetime.fromtimestamp(raw, UTC)
        if isinstance(raw, str) and raw.strip():
            text = raw.strip().removesuffix(" UTC").replace(" ", "T", 1)
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                pass
            else:
                return (
                    parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
                )
        raise self.fail(column, f"expected a UTC timestamp, got {show(raw)}")


def show(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


# What a parser returns: the lines, how many rows it skipped, and notes for the report.
Parsed = tuple[list[InvoiceLine], int, list[str]]
