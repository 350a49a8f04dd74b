"""The end of a batch: its output and error files, and its last status.

Answered lines (HTTP 200) go to the output file, every other line — failed calls, and lines
an expiry or a cancel left unrun — to the error file, each in input order and in OpenAI's
batch output shape. The files belong to the batch's key, with purpose `batch_output`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from gateway.batch.ports import BatchState

_PAGE = 1_000
# Why a run stopped -> the batch's last status.
_FINAL = {None: "completed", "cancelled": "cancelled", "expired": "expired"}


async def finalize(state: BatchState, row: dict[str, Any], reason: str | None) -> None:
    """Write the files and set the final status. A run stopped by shutdown (or whose claim
    another replica took) is not final: the batch stays active for the next claim."""
    assert state.batches is not None and state.files is not None
    repository = state.batches.repository
    batch_id = row["id"]
    now = datetime.now(UTC)
    if reason in ("shutdown", "lost"):
        return
    if reason == "failed":
        await repository.update(
            batch_id,
            {
                "status": "failed",
                "failed_at": now,
                "errors": {
                    "object": "list",
                    "data": [
                        {
                            "code": "model_not_found",
                            "message": f"The batch's model {row['model']!r} is no longer routed.",
                            "param": None,
                            "line": None,
                        }
                    ],
                },
            },
        )
        return
    if row["status"] != "finalizing":
        await repository.update(batch_id, {"status": "finalizing", "finalizing_at": now})
    output_id = await _write(state, row, ok=True)
    error_id = await _write(state, row, ok=False)
    final = _FINAL.get(reason, "completed")
    await repository.update(
        batch_id,
        {
            "status": final,
            f"{final}_at": datetime.now(UTC),
            "output_file_id": output_id,
            "error_file_id": error_id,
            "owner": None,
            "lease_until": None,
        },
    )


async def _write(state: BatchState, row: dict[str, Any], *, ok: bool) -> str | None:
    """The file of answered (`ok`) or failed lines; None when there are none."""
    assert state.batches is not None and state.files is not None
    counted = await state.batches.repository.fetch(row["id"], any_key=True)
    if counted is None or not counted["completed" if ok else "failed"]:
        return None
    batch_id = row["id"]
    wanted = "completed" if ok else "failed"

    async def chunks() -> AsyncIterator[bytes]:
        after: int | None = 0
        while after is not None:
            page, after = await _page(state, batch_id, after, wanted)
            if page:
                yield page

    name = f"{batch_id}_{'output' if ok else 'error'}.jsonl"
    after = row.get("output_expires_after_s")
    expires_at = None if after is None else datetime.now(UTC) + timedelta(seconds=after)
    created = await state.files.create(
        row["key_id"], name, "batch_output", chunks(), expires_at=expires_at
    )
    return str(created["id"])


async def _page(
    state: BatchState, batch_id: str, after: int, wanted: str
) -> tuple[bytes, int | None]:
    """The JSONL of `wanted` lines among the next page after line `after`, and the last line
    number read (None: no more lines)."""
    assert state.batches is not None
    rows = await state.batches.repository.lines(batch_id, after=after, limit=_PAGE)
    if not rows:
        return b"", None
    data = b"".join(orjson.dumps(r["body"]) + b"\n" for r in rows if r["status"] == wanted)
    last = int(rows[-1]["line_no"])
    return data, (last if len(rows) == _PAGE else None)
