"""The Batch API's wire shapes: the create request's checks and the Batch object.

Farebox keeps OpenAI's shapes. Where it adds something, it says so in the batch's
`metadata` (keys prefixed `farebox_`): the path it runs on, its route and deployment.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from gateway.errors import bad_request, clip
from gateway.files.store import check_expires_after

# The Batch API endpoint a batch names -> the service endpoint its lines call.
ENDPOINTS = {
    "/v1/chat/completions": "chat/completions",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
}
TERMINAL = ("completed", "failed", "expired", "cancelled")
METADATA_MAX = 16
_WINDOW = re.compile(r"^([1-9][0-9]{0,5})([smh])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
# OpenAI accepts only "24h"; shorter windows are a Farebox extension (a batch that must be
# done by a deadline), longer ones are refused: a week is the most a reservation is held.
WINDOW_MAX = timedelta(days=7)


def completion_window(value: Any) -> timedelta:
    match = _WINDOW.match(value) if isinstance(value, str) else None
    window = None if match is None else timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])
    if window is None or window > WINDOW_MAX:
        raise bad_request(
            f"Invalid completion_window {clip(repr(value), 40)}: expected '24h' (or a duration "
            "such as '30m' or '72h', at most 168h).",
            param="completion_window",
            code="invalid_value",
        )
    return window


def output_expiry(body: dict[str, Any]) -> int | None:
    """`output_expires_after` ({"anchor": "created_at", "seconds": N}) in seconds, checked
    as the Files API checks an upload's `expires_after`; None when absent."""
    value = body.get("output_expires_after")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(
            "'output_expires_after' must be an object {anchor, seconds}.",
            param="output_expires_after",
            code="invalid_value",
        )
    seconds = value.get("seconds")
    return check_expires_after(
        None if value.get("anchor") is None else str(value.get("anchor")),
        None if seconds is None else str(seconds),
    )


def check_create(body: Any) -> tuple[str, str, str, dict[str, str]]:
    """(input_file_id, endpoint, completion_window, metadata) of a create request."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise bad_request(
            "Missing 'input_file_id': the id of an uploaded file with purpose 'batch'.",
            param="input_file_id",
            code="missing_required_parameter",
        )
    endpoint = body.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise bad_request(
            f"Invalid endpoint {clip(repr(endpoint), 60)}: expected one of {', '.join(ENDPOINTS)}.",
            param="endpoint",
            code="invalid_value",
        )
    window = body.get("completion_window")
    completion_window(window)
    assert isinstance(window, str)
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or len(metadata) > METADATA_MAX:
        raise bad_request(
            f"'metadata' must be an object of at most {METADATA_MAX} string pairs.",
            param="metadata",
            code="invalid_value",
        )
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            raise bad_request(
                "'metadata' keys are strings of at most 64 characters and values strings of "
                "at most 512.",
                param="metadata",
                code="invalid_value",
            )
    return file_id, str(endpoint), window, dict(metadata)


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def batch_object(row: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI Batch object of a `batches` row. Optional fields that have no value yet are
    left out (the spec types them as integers and strings, not null; the SDKs read a missing
    field as None)."""
    errors = row.get("errors")
    body = {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "model": row.get("model"),
        "errors": errors,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row.get("output_file_id"),
        "error_file_id": row.get("error_file_id"),
        "created_at": _ts(row["created_at"]),
        "in_progress_at": _ts(row.get("in_progress_at")),
        "expires_at": _ts(row.get("expires_at")),
        "finalizing_at": _ts(row.get("finalizing_at")),
        "completed_at": _ts(row.get("completed_at")),
        "failed_at": _ts(row.get("failed_at")),
        "expired_at": _ts(row.get("expired_at")),
        "cancelling_at": _ts(row.get("cancelling_at")),
        "cancelled_at": _ts(row.get("cancelled_at")),
        "request_counts": {
            "total": row["total"],
            "completed": row["completed"],
            "failed": row["failed"],
        },
        "metadata": row.get("metadata") or {},
    }
    return {k: v for k, v in body.items() if v is not None}


def line_error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


def failed_errors(line: int | None, code: str, message: str) -> dict[str, Any]:
    """The `errors` list of a batch that failed validation."""
    return {
        "object": "list",
        "data": [{"code": code, "message": message, "param": None, "line": line}],
    }
