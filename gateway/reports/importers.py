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

Batch line items (billed through the provider's batch API, at its batch price) keep their
token type with a ``batch_`` prefix (``batch_input_uncached``, ``batch_output``…), stored so
in ``invoice_lines.token_type``: ``"batch": true`` results in ``openai_usage``; line items
``"<model>, batch input"`` or ``"<model>, input (batch)"`` in ``openai_costs``;
``service_tier: "batch"`` in both Anthropic reports; usage types with ``-batch-`` (or ending
``-batch``, or a batch operation) in the CUR; ``usage_type`` ``BATCH_…`` for Fireworks; and
``batch_<type>`` written out in the generic CSV (not for ``gpu_hours``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.reports import invoice_csv, invoice_json
from gateway.reports.invoice_csv import csv_header
from gateway.reports.invoice_json import json_pages

# The types callers import from here; their definitions are in invoice_lines.py.
from gateway.reports.invoice_lines import FORMATS as FORMATS
from gateway.reports.invoice_lines import GENERIC_COLUMNS as GENERIC_COLUMNS
from gateway.reports.invoice_lines import GENERIC_TOKEN_TYPES as GENERIC_TOKEN_TYPES
from gateway.reports.invoice_lines import ImportedFile as ImportedFile
from gateway.reports.invoice_lines import InvoiceFormatError as InvoiceFormatError
from gateway.reports.invoice_lines import InvoiceLine as InvoiceLine
from gateway.reports.invoice_lines import Parsed, Where

# --- detection and entry point ---------------------------------------------------------------


def detect_format(data: bytes, file: str) -> str:
    """The format of a file from its content (JSON structure, or the CSV header)."""
    head = data.lstrip()[:1]
    if head in (b"{", b"["):
        pages = json_pages(data, file)
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
    header = csv_header(data, file)
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
    lines, skipped, notes = parser(provider, data, Where(file))
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


_PARSERS: Mapping[str, Callable[[str, bytes, Where], Parsed]] = {
    "openai_usage": invoice_json.openai_usage,
    "openai_costs": invoice_json.openai_costs,
    "anthropic_usage": invoice_json.anthropic_usage,
    "anthropic_cost": invoice_json.anthropic_cost,
    "bedrock_cur": invoice_csv.bedrock_cur,
    "fireworks": invoice_csv.fireworks,
    "generic": invoice_csv.generic,
}
