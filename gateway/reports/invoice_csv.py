"""Invoice importers for CSV exports: AWS CUR 2.0 (Bedrock), Fireworks billing metrics and
the generic format (formats described in gateway/reports/importers.py)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime

from gateway.reports.invoice_lines import (
    DAY,
    GENERIC_COLUMNS,
    GENERIC_TOKEN_TYPES,
    InvoiceFormatError,
    InvoiceLine,
    Parsed,
    Where,
    batch_type,
    show,
)
from routing.reconcile_rules import (
    CACHE_WRITE,
    INPUT,
    INPUT_CACHED,
    INPUT_UNCACHED,
    OUTPUT,
)


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvoiceFormatError(
            file, None, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


def csv_header(data: bytes, file: str) -> list[str]:
    reader = csv.reader(io.StringIO(_decode(data, file)))
    header = next(reader, None)
    if not header:
        raise InvoiceFormatError(file, 1, None, "empty file (no CSV header)")
    return [h.strip() for h in header]


def _csv_rows(data: bytes, where: Where, required: Sequence[str]) -> Iterator[dict[str, str]]:
    text = _decode(data, where.file)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in required if c not in header]
    if missing:
        where.row = 1
        raise where.fail(missing[0], "required column is missing from the header")
    for row in reader:
        where.row = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise where.fail(None, f"{len(row)} fields where the header has {len(header)}")
        yield dict(zip(header, row, strict=True))


def generic(provider: str, data: bytes, where: Where) -> Parsed:
    lines: list[InvoiceLine] = []
    for row in _csv_rows(data, where, GENERIC_COLUMNS):
        named = where.text(row["provider"], "provider")
        if named != provider:
            raise where.fail("provider", f"{named!r}, but the file was given for {provider!r}")
        try:
            day = date.fromisoformat(row["date"].strip())
        except ValueError:
            raise where.fail("date", f"expected YYYY-MM-DD, got {show(row['date'])}") from None
        model = where.text(row["model"], "model")
        token_type = row["token_type"].strip()
        if token_type not in GENERIC_TOKEN_TYPES:
            raise where.fail(
                "token_type", f"{token_type!r} is not one of {'|'.join(GENERIC_TOKEN_TYPES)}"
            )
        tokens = where.count(row["tokens"], "tokens")
        amount = where.number(row["amount_usd"], "amount_usd", required=False)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        lines.append(
            InvoiceLine(
                provider,
                start,
                start + DAY,
                model,
                token_type,
                tokens,
                amount,
                f"{model} {token_type}",
            )
        )
    return lines, 0, []


_BEDROCK_SUFFIXES = (
    ("-cache-read-input-token-count", INPUT_CACHED),
    ("-cache-write-input-token-count", CACHE_WRITE),
    ("-input-tokens", INPUT_UNCACHED),
    ("-output-tokens", OUTPUT),
)
_BEDROCK_USAGE = {"Usage", "DiscountedUsage", "SavingsPlanCoveredUsage"}
_BEDROCK_EXCLUDED = {"Credit", "Tax", "Refund"}


def _bedrock_batch(usage_type: str, operation: str) -> tuple[str, bool]:
    """(the usage type without its batch marker, whether it is batch inference):
    `USE1-Claude3Haiku-batch-input-tokens`, `…-input-tokens-batch`, or the batch operation."""
    for marker, cut in (("-batch-", "-"), ("-Batch-", "-")):
        if marker in usage_type:
            return usage_type.replace(marker, cut, 1), True
    for suffix in ("-batch", "-Batch"):
        if usage_type.endswith(suffix):
            return usage_type.removesuffix(suffix), True
    return usage_type, "batch" in operation.lower()


def bedrock_cur(provider: str, data: bytes, where: Where) -> Parsed:
    required = (
        "line_item_usage_type",
        "line_item_usage_amount",
        "line_item_unblended_cost",
        "line_item_line_item_type",
        "line_item_usage_start_date",
    )
    lines: list[InvoiceLine] = []
    skipped = excluded = 0
    for row in _csv_rows(data, where, required):
        product = row.get("line_item_product_code", "AmazonBedrock").strip()
        line_type = row["line_item_line_item_type"].strip()
        if line_type in _BEDROCK_EXCLUDED:
            excluded += 1
            continue
        label = row["line_item_usage_type"].strip()
        usage_type, batch = _bedrock_batch(label, row.get("line_item_operation", ""))
        token_type = next((tt for suf, tt in _BEDROCK_SUFFIXES if usage_type.endswith(suf)), None)
        if (
            product not in ("AmazonBedrock", "")
            or token_type is None
            or line_type not in _BEDROCK_USAGE
        ):
            skipped += 1
            continue
        start = where.timestamp(row["line_item_usage_start_date"], "line_item_usage_start_date")
        end_raw = row.get("line_item_usage_end_date", "").strip()
        end = where.timestamp(end_raw, "line_item_usage_end_date") if end_raw else start + DAY
        model = _bedrock_model(row.get("line_item_resource_id", ""), usage_type, token_type)
        if not model:
            raise where.fail("line_item_usage_type", f"no model in {usage_type!r}")
        tokens = where.count(row["line_item_usage_amount"], "line_item_usage_amount")
        amount = where.number(row["line_item_unblended_cost"], "line_item_unblended_cost")
        kind = batch_type(token_type, batch)
        lines.append(InvoiceLine(provider, start, end, model, kind, tokens, amount, label))
    notes = []
    if excluded:
        notes.append(f"{excluded} credit/tax/refund line(s) excluded")
    if skipped:
        notes.append(f"{skipped} non-token or non-Bedrock line(s) skipped")
    return lines, skipped + excluded, notes


def _bedrock_model(resource_id: str, usage_type: str, token_type: str) -> str:
    marker = "foundation-model/"
    if marker in resource_id:
        return resource_id.split(marker, 1)[1].strip()
    suffix = next(
        suf for suf, tt in _BEDROCK_SUFFIXES if tt == token_type and usage_type.endswith(suf)
    )
    middle = usage_type[: -len(suffix)]
    # The region code (USE1-, EUC1-, …) comes first; some usage types have none.
    head, sep, rest = middle.partition("-")
    return rest if sep and head.isalnum() and head.isupper() and len(head) <= 5 else middle


def fireworks(provider: str, data: bytes, where: Where) -> Parsed:
    required = ("start_time", "base_model_name", "prompt_tokens", "completion_tokens")
    lines: list[InvoiceLine] = []
    for row in _csv_rows(data, where, required):
        start = where.timestamp(row["start_time"], "start_time")
        end_raw = row.get("end_time", "").strip()
        end = where.timestamp(end_raw, "end_time") if end_raw else start + DAY
        model = where.text(row["base_model_name"], "base_model_name")
        usage = row.get("usage_type", "").strip()
        label = f"{model} {usage or 'usage'}"
        batch = usage.upper().startswith("BATCH")  # BATCH_INFERENCE_USAGE
        for token_type, column in ((INPUT, "prompt_tokens"), (OUTPUT, "completion_tokens")):
            tokens = where.count(row[column], column)
            kind = batch_type(token_type, batch)
            lines.append(InvoiceLine(provider, start, end, model, kind, tokens, None, label))
    return lines, 0, []
