"""Invoice and usage-export importers: provider files → :class:`InvoiceLine` rows.

Every importer parses the whole file before anything is stored, so a bad file imports
nothing; its error names the file, the row (CSV line number, or JSON path) and the column
(or JSON field). Formats, detected from the content (see :func:`detect_format`):

``openai_usage``
    ``GET /v1/organization/usage/completions`` pages (one page object, or a JSON array of
    pages). ``input_tokens`` includes cached tokens; ``input_uncached_tokens`` is used when
    present, else ``input_tokens − input_cached_tokens − input_cache_write_tokens``.
    ``num_model_requests`` is kept (it tests for unmetered retries). No dollars.
``openai_costs``
    ``GET /v1/organization/costs`` pages grouped by ``line_item``: ``amount.value`` is USD;
    a line item ``"<model>, input|cached input|cache write|output"`` gives model and token
    type, anything else (tools, storage) is a non-token charge (``other``). Tokens are not
    taken from ``quantity`` so that a usage export of the same month is not counted twice.
``anthropic_usage``
    ``/v1/organizations/usage_report/messages``: ``uncached_input_tokens``,
    ``cache_read_input_tokens``, ``cache_creation.ephemeral_{5m,1h}_input_tokens`` (both are
    cache writes), ``output_tokens``, per ``starting_at`` bucket.
``anthropic_cost``
    ``/v1/organizations/cost_report``: ``amount`` is a decimal string in CENTS; ``token_type``
    names the token kind when ``cost_type`` is ``tokens``.
``bedrock_cur``
    AWS CUR 2.0 CSV: ``line_item_usage_type`` ending in ``-input-tokens``,
    ``-output-tokens``, ``-cache-read-input-token-count`` or
    ``-cache-write-input-token-count``; ``line_item_usage_amount`` tokens,
    ``line_item_unblended_cost`` USD, ``line_item_usage_start_date``. Credit, Tax and Refund
    lines are excluded; rows of other AWS services and non-token usage are skipped and counted.
    The model is the ``foundation-model/…`` part of ``line_item_resource_id`` when present,
    else the middle of the usage type (``USE1-Claude3Haiku-input-tokens`` → ``Claude3Haiku``).
``fireworks``
    ``firectl billing export-metrics`` CSV: ``start_time, end_time, usage_type,
    base_model_name, prompt_tokens, completion_tokens`` — no dollars, and prompt tokens are
    not split by cache, so input is compared undivided (token type ``input``).
``generic``
    ``provider,date,model,token_type,tokens,amount_usd``; ``date`` is ``YYYY-MM-DD`` (UTC),
    ``token_type`` one of ``input_uncached|input_cached|cache_write|output`` (also ``input``
    for undivided prompt tokens and ``gpu_hours`` for dedicated bills, tokens = hours),
    ``amount_usd`` may be empty when unknown. For Together, GPU bills and anything else.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson

from routing.reconcile_rules import (
    CACHE_WRITE,
    GPU_HOURS,
    INPUT,
    INPUT_CACHED,
    INPUT_UNCACHED,
    OTHER,
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
GENERIC_TOKEN_TYPES = (INPUT_UNCACHED, INPUT_CACHED, CACHE_WRITE, OUTPUT, INPUT, GPU_HOURS)
_ZERO = Decimal(0)
_CENT = Decimal(100)
_DAY = timedelta(days=1)


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


class _Where:
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
            raise self.fail(column, f"expected a number, got {_show(raw)}")
        try:
            value = Decimal(raw.strip()) if isinstance(raw, str) else Decimal(repr(raw))
        except InvalidOperation:
            raise self.fail(column, f"expected a number, got {_show(raw)}") from None
        if not value.is_finite():
            raise self.fail(column, f"expected a finite number, got {_show(raw)}")
        return value

    def count(self, raw: Any, column: str, *, required: bool = True) -> Decimal | None:
        value = self.number(raw, column, required=required)
        if value is not None and value < 0:
            raise self.fail(column, f"a token count cannot be negative ({value})")
        return value

    def text(self, raw: Any, column: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise self.fail(column, f"expected a non-empty string, got {_show(raw)}")
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
        raise self.fail(column, f"expected a UTC timestamp, got {_show(raw)}")


def _show(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


# --- detection and entry point ---------------------------------------------------------------


def detect_format(data: bytes, file: str) -> str:
    """The format of a file from its content (JSON structure, or the CSV header)."""
    head = data.lstrip()[:1]
    if head in (b"{", b"["):
        pages = _json_pages(data, file)
        for page in pages:
            for bucket in page.get("data") or []:
                if not isinstance(bucket, dict):
                    continue
                for result in bucket.get("results") or []:
                    if not isinstance(result, dict):
                        continue
                    kind = result.get("object")
                    if kind == "organization.usage.completions.result":
                        return "openai_usage"
                    if kind == "organization.costs.result":
                        return "openai_costs"
                    if "uncached_input_tokens" in result or "cache_read_input_tokens" in result:
                        return "anthropic_usage"
                    if "amount" in result and "currency" in result:
                        return "anthropic_cost"
        raise InvoiceFormatError(
            file,
            None,
            None,
            "JSON that is neither an OpenAI usage/costs page nor an Anthropic usage/cost "
            "report (no recognizable results, or no results at all)",
        )
    header = _csv_header(data, file)
    names = set(header)
    if "line_item_usage_type" in names:
        return "bedrock_cur"
    if {"base_model_name", "prompt_tokens"} <= names:
        return "fireworks"
    if names >= set(GENERIC_COLUMNS):
        return "generic"
    raise InvoiceFormatError(
        file,
        1,
        None,
        f"unrecognized CSV header {', '.join(header)!s}; the generic format is "
        + ",".join(GENERIC_COLUMNS),
    )


def import_file(provider: str, path: Path, fmt: str | None = None) -> ImportedFile:
    """Read and parse one file (raises :class:`InvoiceFormatError`, never half-imports)."""
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvoiceFormatError(file, None, None, f"cannot read: {exc.strerror or exc}") from None
    return parse_bytes(provider, data, file, fmt)


def parse_bytes(provider: str, data: bytes, file: str, fmt: str | None = None) -> ImportedFile:
    if fmt is None:
        fmt = detect_format(data, file)
    elif fmt not in FORMATS:
        raise InvoiceFormatError(file, None, None, f"unknown format {fmt!r}; one of {FORMATS}")
    parser = _PARSERS[fmt]
    lines, skipped, notes = parser(provider, data, _Where(file))
    if not lines:
        raise InvoiceFormatError(file, None, None, f"no invoice lines found ({fmt})")
    digest = hashlib.sha256(b"\0".join((provider.encode(), fmt.encode(), data))).hexdigest()
    return ImportedFile(
        provider=provider,
        source_file=file,
        format=fmt,
        import_id=digest[:32],
        lines=tuple(lines),
        skipped=skipped,
        notes=tuple(notes),
    )


Parsed = tuple[list[InvoiceLine], int, list[str]]


# --- JSON exports ----------------------------------------------------------------------------


def _json_pages(data: bytes, file: str) -> list[dict[str, Any]]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvoiceFormatError(file, None, None, f"invalid JSON: {exc}") from None
    pages = doc if isinstance(doc, list) else [doc]
    for i, page in enumerate(pages):
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            where = f"[{i}]" if isinstance(doc, list) else "top level"
            raise InvoiceFormatError(file, where, "data", "expected a page with a `data` list")
    return pages


def _buckets(
    data: bytes, where: _Where, start_key: str, end_key: str
) -> Iterator[tuple[datetime, datetime, dict[str, Any]]]:
    pages = _json_pages(data, where.file)
    for p, page in enumerate(pages):
        prefix = f"[{p}]." if len(pages) > 1 else ""
        for b, bucket in enumerate(page["data"]):
            where.row = f"{prefix}data[{b}]"
            if not isinstance(bucket, dict):
                raise where.fail(None, "expected a bucket object")
            start = where.timestamp(bucket.get(start_key), start_key)
            end = (
                where.timestamp(bucket.get(end_key), end_key) if end_key in bucket else start + _DAY
            )
            if end <= start:
                raise where.fail(end_key, f"bucket ends ({end}) before it starts ({start})")
            results = bucket.get("results")
            if not isinstance(results, list):
                raise where.fail("results", "expected a list")
            for r, result in enumerate(results):
                where.row = f"{prefix}data[{b}].results[{r}]"
                if not isinstance(result, dict):
                    raise where.fail(None, "expected a result object")
                yield start, end, result


def _openai_usage(provider: str, data: bytes, where: _Where) -> Parsed:
    lines: list[InvoiceLine] = []
    for start, end, r in _buckets(data, where, "start_time", "end_time"):
        if r.get("object") != "organization.usage.completions.result":
            raise where.fail(
                "object", f"expected a completions usage result, got {_show(r.get('object'))}"
            )
        model = where.text(r.get("model"), "model")
        total = where.count(r.get("input_tokens"), "input_tokens")
        cached = where.count(r.get("input_cached_tokens", 0), "input_cached_tokens") or _ZERO
        write = where.count(r.get("input_cache_write_tokens", 0), "input_cache_write_tokens")
        write = write or _ZERO
        uncached = where.count(
            r.get("input_uncached_tokens"), "input_uncached_tokens", required=False
        )
        assert total is not None
        if uncached is None:
            uncached = total - cached - write
            if uncached < 0:
                raise where.fail(
                    "input_cached_tokens",
                    f"cached ({cached}) + cache-write ({write}) exceed input_tokens ({total})",
                )
        output = where.count(r.get("output_tokens"), "output_tokens")
        requests = where.count(r.get("num_model_requests", 0), "num_model_requests")
        label = f"{model} usage"
        for i, (token_type, tokens) in enumerate(
            (
                (INPUT_UNCACHED, uncached),
                (INPUT_CACHED, cached),
                (CACHE_WRITE, write),
                (OUTPUT, output),
            )
        ):
            if token_type == CACHE_WRITE and not tokens:
                continue
            lines.append(
                InvoiceLine(
                    provider,
                    start,
                    end,
                    model,
                    token_type,
                    tokens,
                    None,
                    label,
                    # Requests ride on one line per result so they are not counted 4 times.
                    int(requests or 0) if i == 0 else None,
                )
            )
    return lines, 0, []


_OPENAI_LINE_TYPES = {
    "input": INPUT_UNCACHED,
    "uncached input": INPUT_UNCACHED,
    "cached input": INPUT_CACHED,
    "cache write": CACHE_WRITE,
    "cached write": CACHE_WRITE,
    "output": OUTPUT,
}


def _openai_costs(provider: str, data: bytes, where: _Where) -> Parsed:
    lines: list[InvoiceLine] = []
    for start, end, r in _buckets(data, where, "start_time", "end_time"):
        if r.get("object") != "organization.costs.result":
            raise where.fail("object", f"expected a costs result, got {_show(r.get('object'))}")
        amount = r.get("amount")
        if not isinstance(amount, dict):
            raise where.fail("amount", "expected an object {value, currency}")
        currency = str(amount.get("currency") or "usd").lower()
        if currency != "usd":
            raise where.fail("amount.currency", f"only USD is supported, got {currency!r}")
        value = where.number(amount.get("value"), "amount.value")
        item = r.get("line_item")
        if item is None:
            raise where.fail(
                "line_item",
                "null: export the costs with group_by=line_item so dollars can be "
                "attributed to a model and token type",
            )
        label = where.text(item, "line_item")
        model, sep, kind = label.rpartition(",")
        token_type = _OPENAI_LINE_TYPES.get(kind.strip().lower()) if sep else None
        if token_type is None:
            model, token_type = label, OTHER
        lines.append(
            InvoiceLine(provider, start, end, model.strip(), token_type, None, value, label)
        )
    return lines, 0, []


def _anthropic_usage(provider: str, data: bytes, where: _Where) -> Parsed:
    lines: list[InvoiceLine] = []
    for start, end, r in _buckets(data, where, "starting_at", "ending_at"):
        model = where.text(r.get("model"), "model")
        creation = r.get("cache_creation") or {}
        if not isinstance(creation, dict):
            raise where.fail("cache_creation", "expected an object")
        write = _ZERO
        for key in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"):
            write += where.count(creation.get(key, 0), f"cache_creation.{key}") or _ZERO
        values = (
            (INPUT_UNCACHED, where.count(r.get("uncached_input_tokens"), "uncached_input_tokens")),
            (
                INPUT_CACHED,
                where.count(r.get("cache_read_input_tokens", 0), "cache_read_input_tokens"),
            ),
            (CACHE_WRITE, write),
            (OUTPUT, where.count(r.get("output_tokens"), "output_tokens")),
        )
        for token_type, tokens in values:
            lines.append(
                InvoiceLine(provider, start, end, model, token_type, tokens, None, f"{model} usage")
            )
    return lines, 0, []


_ANTHROPIC_TOKEN_TYPES = {
    "uncached_input_tokens": INPUT_UNCACHED,
    "cache_read_input_tokens": INPUT_CACHED,
    "cache_creation.ephemeral_5m_input_tokens": CACHE_WRITE,
    "cache_creation.ephemeral_1h_input_tokens": CACHE_WRITE,
    "output_tokens": OUTPUT,
}


def _anthropic_cost(provider: str, data: bytes, where: _Where) -> Parsed:
    lines: list[InvoiceLine] = []
    for start, end, r in _buckets(data, where, "starting_at", "ending_at"):
        currency = str(r.get("currency") or "USD").upper()
        if currency != "USD":
            raise where.fail("currency", f"only USD is supported, got {currency!r}")
        raw = r.get("amount")
        if not isinstance(raw, str):
            # The API sends a decimal string; a bare number is most likely already dollars
            # from some other tool, and guessing the unit would be a 100× error.
            raise where.fail("amount", f"expected a decimal string in cents, got {_show(raw)}")
        cents = where.number(raw, "amount")
        assert cents is not None
        cost_type = str(r.get("cost_type") or "tokens")
        kind = r.get("token_type")
        token_type = _ANTHROPIC_TOKEN_TYPES.get(str(kind)) if cost_type == "tokens" else OTHER
        if token_type is None:
            raise where.fail("token_type", f"unknown token type {_show(kind)}")
        model = r.get("model")
        if token_type != OTHER:
            model = where.text(model, "model")
        label = str(r.get("description") or f"{model} {kind or cost_type}")
        lines.append(
            InvoiceLine(
                provider,
                start,
                end,
                str(model or cost_type),
                token_type,
                None,
                cents / _CENT,
                label,
            )
        )
    return lines, 0, []


# --- CSV exports -----------------------------------------------------------------------------


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvoiceFormatError(
            file, None, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


def _csv_header(data: bytes, file: str) -> list[str]:
    reader = csv.reader(io.StringIO(_decode(data, file)))
    header = next(reader, None)
    if not header:
        raise InvoiceFormatError(file, 1, None, "empty file (no CSV header)")
    return [h.strip() for h in header]


def _csv_rows(data: bytes, where: _Where, required: Sequence[str]) -> Iterator[dict[str, str]]:
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


def _generic(provider: str, data: bytes, where: _Where) -> Parsed:
    lines: list[InvoiceLine] = []
    for row in _csv_rows(data, where, GENERIC_COLUMNS):
        named = where.text(row["provider"], "provider")
        if named != provider:
            raise where.fail("provider", f"{named!r}, but the file was given for {provider!r}")
        try:
            day = date.fromisoformat(row["date"].strip())
        except ValueError:
            raise where.fail("date", f"expected YYYY-MM-DD, got {_show(row['date'])}") from None
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
                start + _DAY,
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


def _bedrock_cur(provider: str, data: bytes, where: _Where) -> Parsed:
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
        usage_type = row["line_item_usage_type"].strip()
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
        end = where.timestamp(end_raw, "line_item_usage_end_date") if end_raw else start + _DAY
        model = _bedrock_model(row.get("line_item_resource_id", ""), usage_type, token_type)
        if not model:
            raise where.fail("line_item_usage_type", f"no model in {usage_type!r}")
        tokens = where.count(row["line_item_usage_amount"], "line_item_usage_amount")
        amount = where.number(row["line_item_unblended_cost"], "line_item_unblended_cost")
        lines.append(
            InvoiceLine(provider, start, end, model, token_type, tokens, amount, usage_type)
        )
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


def _fireworks(provider: str, data: bytes, where: _Where) -> Parsed:
    required = ("start_time", "base_model_name", "prompt_tokens", "completion_tokens")
    lines: list[InvoiceLine] = []
    for row in _csv_rows(data, where, required):
        start = where.timestamp(row["start_time"], "start_time")
        end_raw = row.get("end_time", "").strip()
        end = where.timestamp(end_raw, "end_time") if end_raw else start + _DAY
        model = where.text(row["base_model_name"], "base_model_name")
        label = f"{model} {row.get('usage_type', '').strip() or 'usage'}"
        for token_type, column in ((INPUT, "prompt_tokens"), (OUTPUT, "completion_tokens")):
            tokens = where.count(row[column], column)
            lines.append(InvoiceLine(provider, start, end, model, token_type, tokens, None, label))
    return lines, 0, []


_PARSERS: Mapping[str, Callable[[str, bytes, _Where], Parsed]] = {
    "openai_usage": _openai_usage,
    "openai_costs": _openai_costs,
    "anthropic_usage": _anthropic_usage,
    "anthropic_cost": _anthropic_cost,
    "bedrock_cur": _bedrock_cur,
    "fireworks": _fireworks,
    "generic": _generic,
}
