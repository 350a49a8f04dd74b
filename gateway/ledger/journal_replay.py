"""Reading the attempt journal (gateway/ledger/journal.py): the line format's field lists,
and rebuilding ledger rows from a dead process's segments at start-up (`recover()`), where
an intent with no outcome becomes a `gateway_crashed` attempt. Never on the hot path."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from gateway.ledger.spool import decode_row
from gateway.ledger_rows import ATTEMPT_FIELDS as ATTEMPT_FIELDS
from gateway.ledger_rows import ESTIMATED, AttemptRow, RequestRow
from gateway.ledger_rows import REQUEST_FIELDS as REQUEST_FIELDS
from routing.guard_summary import fit

log = logging.getLogger("farebox.ledger")

CRASHED = "gateway_crashed"
# What a client of a crashed gateway saw: a dropped connection, reported as a server error.
CRASHED_STATUS = 500
# Four bytes of request body per input token: the estimate used when all that survived a
# crash is the body's size (DESIGN: failed attempts carry estimated input tokens).
BYTES_PER_TOKEN = 4

Batch = tuple[list[RequestRow], list[AttemptRow]]

# Outcome lines hold rows as arrays of field values (the rows are tuples in field order:
# gateway/ledger_rows.py); each segment starts with a header naming the fields, so a journal
# written by another version still decodes by name.
# An intent line is ["i", attempt id, *these], in this order (Meter.intent builds it).
INTENT_FIELDS = (
    "request_id",
    "attempt_no",
    "role",
    "deployment",
    "provider",
    "provider_kind",
    "upstream_model",
    "started_at",  # epoch seconds
    "body_bytes",
    "received_at",
    "route",
    "requested_model",
    "endpoint",
    "stream",
    "key_id",
    "workload",
    "team",
    "segment",
    "drill_id",
    # Last, so a journal written before it decodes by its header (the field is then absent).
    "workflow_id",
    "batch_id",
    "guard",
)
# (deployment, upstream model, provider kind, when, input tokens) -> (cost, price version)
Pricer = Callable[[str, str, str, datetime, int], tuple[Decimal | None, str | None]]


def take_lock(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _lines(segments: list[Path]) -> Iterator[bytes]:
    """Complete lines of the segments, in order. Skipped: the unused (NUL) tail of a
    segment and any line a killed process left half-copied (it holds NULs or lacks its
    newline; a half-copied line is also caught by the JSON decoder)."""
    for segment in segments:
        try:
            data = _written_part(segment)
        except FileNotFoundError:
            continue
        *lines, _ = data.split(b"\n")  # the last piece has no newline: tail or torn
        for line in lines:
            line = line.lstrip(b"\x00")
            if line and b"\x00" not in line:
                yield line + b"\n"


def open_calls(directory: str | os.PathLike[str]) -> set[str]:
    """Attempt ids journalled as started with no outcome yet, across every journal in
    `directory` (for operators and the crash tests; reads files, so never on the hot path)."""
    started: set[str] = set()
    finished: set[str] = set()
    for line in _lines(sorted(Path(directory).glob("journal-*.jsonl"))):
        with contextlib.suppress(orjson.JSONDecodeError, IndexError, TypeError):
            if line.startswith(b'["i",'):
                started.add(orjson.loads(line)[1])
            elif line.startswith(b"[["):
                finished.update(a[ATTEMPT_FIELDS.index("id")] for a in orjson.loads(line)[1])
    return started - finished


def _written_part(segment: Path, chunk: int = 1 << 20) -> bytes:
    """The segment up to its unused tail: lines are appended in order, so the first chunk
    that is all NULs ends what was written."""
    parts = []
    with segment.open("rb") as fh:
        while block := fh.read(chunk):
            if not block.strip(b"\x00"):
                break
            parts.append(block)
    return b"".join(parts)


def _decode_outcome(line: bytes, header: dict[str, list[str]]) -> Batch:
    request, attempts = orjson.loads(line)
    return (
        [decode_row(RequestRow, dict(zip(header["r"], request, strict=True)))],
        [decode_row(AttemptRow, dict(zip(header["a"], a, strict=True))) for a in attempts],
    )


def rebuild(segments: list[Path], pricer: Pricer) -> list[Batch]:
    batches: list[Batch] = []
    intents: dict[str, dict[str, Any]] = {}
    finished: set[str] = set()
    recorded_requests: set[str] = set()
    header: dict[str, list[str]] = {
        "r": list(REQUEST_FIELDS),
        "a": list(ATTEMPT_FIELDS),
        "i": list(INTENT_FIELDS),
    }
    for line in _lines(segments):
        try:
            if line.startswith(b'["i",'):
                values = orjson.loads(line)
                intents[values[1]] = {
                    "i": values[1],
                    **dict(zip(header["i"], values[2:], strict=True)),
                }
                continue
            if line.startswith(b'{"h":'):
                header = orjson.loads(line)["h"]
                continue
            batch = _decode_outcome(line, header)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.error("skipping an unreadable ledger journal line: %s", exc)
            continue
        batches.append(batch)
        recorded_requests.update(r.id for r in batch[0])
        finished.update(a.id for a in batch[1])
    crashed: dict[str, list[AttemptRow]] = {}
    for attempt_id, intent in intents.items():
        if attempt_id not in finished:
            crashed.setdefault(intent["request_id"], []).append(_crashed(intent, pricer))
    for request_id, attempts in crashed.items():
        requests = []
        if request_id not in recorded_requests:
            requests.append(_crashed_request(intents, attempts))
        batches.append((requests, attempts))
    if crashed:
        log.warning(
            "ledger journal: %d upstream calls of a crashed process had no outcome; "
            "recorded as %s with estimated tokens",
            sum(len(a) for a in crashed.values()),
            CRASHED,
        )
    return batches


def _crashed(intent: dict[str, Any], pricer: Pricer) -> AttemptRow:
    started_at = datetime.fromtimestamp(float(intent["started_at"]), UTC)
    tokens = max(1, -(-int(intent.get("body_bytes") or 0) // BYTES_PER_TOKEN))
    cost, version = pricer(
        intent["deployment"], intent["upstream_model"], intent["provider_kind"], started_at, tokens
    )
    return AttemptRow(
        id=intent["i"],
        request_id=intent["request_id"],
        attempt_no=int(intent["attempt_no"]),
        role=intent["role"],
        deployment=intent["deployment"],
        provider=intent["provider"],
        provider_kind=intent["provider_kind"],
        upstream_model=intent["upstream_model"],
        provider_request_id=None,
        started_at=started_at,
        ttft_ms=None,
        latency_ms=0.0,
        http_status=None,
        error_class=CRASHED,
        input_uncached_tokens=tokens,
        cached_read_tokens=0,
        cache_write_tokens=0,
        output_tokens=0,
        reasoning_tokens=0,
        token_source=ESTIMATED,
        cost_usd=cost,
        price_version=version,
        drill_id=intent.get("drill_id"),
    )


def _crashed_request(intents: dict[str, dict[str, Any]], attempts: list[AttemptRow]) -> RequestRow:
    first = intents[attempts[0].id]
    costs = [a.cost_usd for a in attempts]
    total = None
    if all(c is not None for c in costs):
        total = sum((c for c in costs if c is not None), Decimal(0))
    return RequestRow(
        id=first["request_id"],
        received_at=datetime.fromisoformat(first["received_at"]),
        key_id=first.get("key_id"),
        route=first.get("route") or first.get("requested_model") or "",
        requested_model=first.get("requested_model") or "",
        endpoint=first.get("endpoint") or "",
        workload=first.get("workload"),
        stream=bool(first.get("stream")),
        final_status=CRASHED_STATUS,
        error_class=CRASHED,
        final_deployment=None,
        attempts=len(attempts),
        input_uncached_tokens=sum(a.input_uncached_tokens for a in attempts),
        cached_read_tokens=0,
        cache_write_tokens=0,
        output_tokens=0,
        reasoning_tokens=0,
        cost_usd=total,
        latency_ms=0.0,
        ttft_ms=None,
        team=first.get("team"),
        segment=first.get("segment"),
        workflow_id=first.get("workflow_id"),
        batch_id=first.get("batch_id"),
        guard=fit(guard) if isinstance(guard := first.get("guard"), str) else None,
    )
