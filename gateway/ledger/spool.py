"""The disk spool: where ledger batches wait while the database is away.

Segments are JSON-lines files, one batch per line, fsync'd per batch. A segment is claimed
for replay by renaming it, so several workers sharing one spool directory never replay the
same file twice; ids are primary keys, so even a crash mid-replay only causes harmless
re-inserts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from gateway.ledger_rows import AttemptRow, RequestRow

Batch = tuple[list[RequestRow], list[AttemptRow]]


def encode_default(value: Any) -> Any:
    """orjson's fallback: Decimals go as strings, so no cost loses precision on disk."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot spool {type(value).__name__}")


def encode_batch(requests: Sequence[RequestRow], attempts: Sequence[AttemptRow]) -> bytes:
    # Rows as objects keyed by field name (the format spools have always had, so a spool
    # left by an older version replays); orjson writes aware datetimes natively. Off the
    # hot path: a spool is written only while the database is away, or at shutdown.
    return (
        orjson.dumps(
            {"r": [r._asdict() for r in requests], "a": [a._asdict() for a in attempts]},
            default=encode_default,
        )
        + b"\n"
    )


_DECIMALS = ("cost_usd", "saved_usd", "units")
_TIMESTAMPS = ("started_at", "received_at")


def decode_row(cls: type[Any], data: dict[str, Any]) -> Any:
    """A RequestRow or AttemptRow from its JSON fields (names it no longer has are ignored)."""
    known = cls._fields
    return _row(cls, {k: v for k, v in data.items() if k in known})


def _row(cls: type[Any], data: dict[str, Any]) -> Any:
    for name in _DECIMALS:
        value = data.get(name)
        if value is not None:
            data[name] = Decimal(value)
    for name in _TIMESTAMPS:
        value = data.get(name)
        if value is not None:
            data[name] = datetime.fromisoformat(value)
    return cls(**data)


def decode_batch(line: bytes) -> Batch:
    data = orjson.loads(line)
    return (
        [_row(RequestRow, r) for r in data["r"]],
        [_row(AttemptRow, a) for a in data["a"]],
    )


class Spool:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._segment: Path | None = None
        self._fd: int | None = None
        self._seq = 0

    def append(self, requests: Sequence[RequestRow], attempts: Sequence[AttemptRow]) -> int:
        """Write one batch durably; returns the bytes written."""
        data = encode_batch(requests, attempts)
        if self._fd is None:
            self._seq += 1
            stamp = datetime.now().strftime("%Y%m%dT%H%M%S%f")
            self._segment = self.dir / f"ledger-{stamp}-{os.getpid()}-{self._seq:06d}.jsonl"
            self._fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(self._fd, data)
        os.fsync(self._fd)
        return len(data)

    def seal(self) -> None:
        """Close the current segment so it can be replayed; new writes start a new one."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._segment = None

    def pending(self) -> list[Path]:
        """Sealed segments (ours and other workers'), oldest first; excludes our open one."""
        files = sorted(self.dir.glob("ledger-*.jsonl"))
        return [f for f in files if f != self._segment]

    def claim(self, segment: Path) -> Path | None:
        claimed = segment.with_suffix(f".replaying-{os.getpid()}")
        try:
            segment.rename(claimed)
        except FileNotFoundError:
            return None  # another worker took it
        return claimed

    def orphaned_claims(self) -> list[Path]:
        """Claims left by workers that died mid-replay (their pid is gone)."""
        out = []
        for path in sorted(self.dir.glob("ledger-*.replaying-*")):
            pid = int(path.suffix.rsplit("-", 1)[-1])
            if pid == os.getpid() or not _alive(pid):
                out.append(path)
        return out

    @staticmethod
    def read(segment: Path) -> Iterator[Batch]:
        with segment.open("rb") as fh:
            for line in fh:
                if line.endswith(b"\n"):  # a torn last line was never acknowledged
                    yield decode_batch(line)

    def has_open_segment(self) -> bool:
        return self._fd is not None

    def bytes_pending(self) -> int:
        total = 0
        for path in self.dir.glob("ledger-*"):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
