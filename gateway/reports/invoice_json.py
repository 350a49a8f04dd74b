"""Invoice importers for JSON exports: OpenAI usage and costs pages, Anthropic usage and
cost reports (formats described in gateway/reports/importers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson

from gateway.reports.invoice_lines import (
    CENT,
    DAY,
    ZERO,
    InvoiceFormatError,
    InvoiceLine,
    Parsed,
    Where,
    batch_type,
    show,
)
from routing.reconcile_rules import (
    CACHE_WRITE,
    INPUT_CACHED,
    INPUT_UNCACHED,
    OTHER,
    OUTPUT,
)


def json_pages(data: bytes, file: str) -> list[dict[str, Any]]:
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
    data: bytes, where: Where, start_key: str, end_key: str
) -> Iterator[tuple[datetime, datetime, dict[str, Any]]]:
    pages = json_pages(data, where.file)
    for p, page in enumerate(pages):
        prefix = f"[{p}]." if len(pages) > 1 else ""
        for b, bucket in enumerate(page["data"]):
            where.row = f"{prefix}data[{b}]"
            if not isinstance(bucket, dict):
                raise where.fail(None, "expected a bucket object")
            start = where.timestamp(bucket.get(start_key), start_key)
            end = (
                where.timestamp(bucket.get(end_key), end_key) if end_key in bucket else start + DAY
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


def openai_usage(provider: str, data: bytes, where: Where) -> Parsed:
    lines: list[InvoiceLine] = []
    for start, end, r in _buckets(data, where, "start_time", "end_time"):
        if r.get("object") != "organization.usage.completions.result":
            raise where.fail(
                "object", f"expected a completions usage result, got {show(r.get('object'))}"
            )
        model = where.text(r.get("model"), "model")
        total = where.count(r.get("input_tokens"), "input_tokens")
        cached = where.count(r.get("input_cached_tokens", 0), "input_cached_tokens") or ZERO
        write = where.count(r.get("input_cache_write_tokens", 0), "input_cache_write_tokens")
        write = write or ZERO
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
        batch = _flag(r.get("batch"), where, "batch")  # set when grouped by batch
        label = f"{model} {'batch ' if batch else ''}usage"
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
                    batch_type(token_type, batch),
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


def _flag(raw: Any, where: Where, column: str) -> bool:
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    raise where.fail(column, f"expected true, false or null, got {show(raw)}")


def _openai_batch_kind(kind: str) -> tuple[str, bool]:
    """`batch input` / `input (batch)` → (`input`, True)."""
    if kind.startswith("batch "):
        return kind.removeprefix("batch ").strip(), True
    if kind.endswith("(batch)"):
        return kind.removesuffix("(batch)").strip(), True
    return kind, False


def openai_costs(provider: str, data: bytes, where: Where) -> Parsed:
    lines: list[InvoiceLine] = []
    for start, end, r in _buckets(data, where, "start_time", "end_time"):
        if r.get("object") != "organization.costs.result":
            raise where.fail("object", f"expected a costs result, got {show(r.get('object'))}")
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
        kind, batch = _openai_batch_kind(kind.strip().lower())
        token_type = _OPENAI_LINE_TYPES.get(kind) if sep else None
        if token_type is None:
            model, token_type = label, OTHER
        token_type = batch_type(token_type, batch)
        lines.append(
            InvoiceLine(provider, start, end, model.strip(), token_type, None, value, label)
        )
    return lines, 0, []


def anthropic_usage(provider: str, data: bytes, where: Where) -> Parsed:
    lines: list[InvoiceLine] = []
    for start, end, r in _buckets(data, where, "starting_at", "ending_at"):
        model = where.text(r.get("model"), "model")
        creation = r.get("cache_creation") or {}
        if not isinstance(creation, dict):
            raise where.fail("cache_creation", "expected an object")
        write = ZERO
        for key in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"):
            write += where.count(creation.get(key, 0), f"cache_creation.{key}") or ZERO
        values = (
            (INPUT_UNCACHED, where.count(r.get("uncached_input_tokens"), "uncached_input_tokens")),
            (
                INPUT_CACHED,
                where.count(r.get("cache_read_input_tokens", 0), "cache_read_input_tokens"),
            ),
            (CACHE_WRITE, write),
            (OUTPUT, where.count(r.get("output_tokens"), "output_tokens")),
        )
        batch = _anthropic_batch(r, where)
        label = f"{model} {'batch ' if batch else ''}usage"
        for token_type, tokens in values:
            kind = batch_type(token_type, batch)
            lines.append(InvoiceLine(provider, start, end, model, kind, tokens, None, label))
    return lines, 0, []


_ANTHROPIC_TOKEN_TYPES = {
    "uncached_input_tokens": INPUT_UNCACHED,
    "cache_read_input_tokens": INPUT_CACHED,
    "cache_creation.ephemeral_5m_input_tokens": CACHE_WRITE,
    "cache_creation.ephemeral_1h_input_tokens": CACHE_WRITE,
    "output_tokens": OUTPUT,
}


def _anthropic_batch(r: dict[str, Any], where: Where) -> bool:
    """`service_tier` (set when the report is grouped by it): `batch` for Message Batches."""
    tier = r.get("service_tier")
    if tier is not None and not isinstance(tier, str):
        raise where.fail("service_tier", f"expected a string, got {show(tier)}")
    return tier == "batch"


def anthropic_cost(provider: str, data: bytes, where: Where) -> Parsed:
    lines: list[InvoiceLine] = []
    for start, end, r in _buckets(data, where, "starting_at", "ending_at"):
        currency = str(r.get("currency") or "USD").upper()
        if currency != "USD":
            raise where.fail("currency", f"only USD is supported, got {currency!r}")
        raw = r.get("amount")
        if not isinstance(raw, str):
            # The API sends a decimal string; a bare number is most likely already dollars
            # from some other tool, and guessing the unit would be a 100× error.
            raise where.fail("amount", f"expected a decimal string in cents, got {show(raw)}")
        cents = where.number(raw, "amount")
        assert cents is not None
        cost_type = str(r.get("cost_type") or "tokens")
        kind = r.get("token_type")
        token_type = _ANTHROPIC_TOKEN_TYPES.get(str(kind)) if cost_type == "tokens" else OTHER
        if token_type is None:
            raise where.fail("token_type", f"unknown token type {show(kind)}")
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
                batch_type(token_type, _anthropic_batch(r, where)),
                None,
                cents / CENT,
                label,
            )
        )
    return lines, 0, []
