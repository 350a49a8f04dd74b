"""The journal's segment files (gateway/ledger/journal.py): a file mapped into memory, and
spare ones made ready by a background thread.

Appending through a map into a fresh file is cheap only if the filesystem has nothing left
to do for that page: into a fallocated (or sparse) file, every first write to a page takes
an extent conversion (or a block allocation) inside the page fault, on the event loop —
measured here on ext4 with 1.7 KB lines: 1.6–2.1 µs per append and stalls of 2–3 ms; into
a file whose zeros were already written and synced, 0.5 µs and at most ~20 µs. Creating a
segment is filesystem work too (allocating 8 MB), which stalled the loop for milliseconds
behind the fsync thread's commits. So `Spares` keeps one segment file ready — created,
zero-filled, synced and mapped by its own thread — and a rotation takes it with a rename.
A spare is sized from what the last segment held (at most the segment size), so a quiet
gateway does not write megabytes of zeros every rotation.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import os
import threading
from pathlib import Path

log = logging.getLogger("farebox.ledger")

# The smallest spare (a quiet gateway's segments hold a few KB).
_MIN_SPARE = 256 << 10
_SPARE_GRAIN = 64 << 10


class _MappedFile:
    """A segment file of fixed size, mapped shared: appends are memory copies."""

    __slots__ = ("fd", "map", "size")

    def __init__(self, path: Path, size: int) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        # Blocks reserved up front: a first write to a page then allocates nothing (on a
        # sparse file every new page cost a filesystem transaction in the page fault).
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError:  # a filesystem without it (tmpfs has it; some network ones don't)
            os.ftruncate(self.fd, size)
        self.size = size
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    @classmethod
    def prepared(cls, path: Path, size: int) -> _MappedFile:
        """A segment file made ready off the event loop: its blocks allocated AND written
        (zeros), so appends through the map take no filesystem work in their page faults.
        Measured on this machine's ext4, 1.7 KB lines: 1.6–2.1 µs per append with stalls of
        2–3 ms into a fallocated file, 0.5 µs and ≤ 20 µs into a written and synced one."""
        self = cls.__new__(cls)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            zeros = bytes(min(size, 1 << 20))
            for offset in range(0, size, len(zeros)):
                os.pwrite(self.fd, zeros[: size - offset], offset)
            os.fdatasync(self.fd)
            self.size = size
            self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def sync(self) -> None:
        # fdatasync writes the file's dirty pages, the mapped ones included, without the
        # walk over the whole mapping that msync makes (measured: msync every 10 ms cost a
        # fifth of the throughput, this a few per cent).
        os.fdatasync(self.fd)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class Spares:
    """One spare segment file, kept ready by a daemon thread (see the module docstring)."""

    def __init__(self, directory: Path, ident: str, max_bytes: int) -> None:
        self._dir, self._ident, self._max = directory, ident, max_bytes
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        self._ready: tuple[Path, _MappedFile] | None = None
        self._want = _MIN_SPARE
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ledger-journal-spares", daemon=True)
        self._thread.start()
        self._wake.set()

    def take(self, path: Path, at_least: int, used_last: int) -> _MappedFile | None:
        """The spare renamed to `path`, if one is ready and holds `at_least` bytes; None
        (then the caller creates the segment itself). `used_last`: what the segment being
        replaced held, which sizes the next spare."""
        with self._lock:
            ready = self._ready
            if ready is not None and ready[1].size >= at_least:
                self._ready = None
            else:
                ready = None
            self._want = min(
                self._max, max(_MIN_SPARE, -(-2 * used_last // _SPARE_GRAIN) * _SPARE_GRAIN)
            )
        self._wake.set()
        if ready is None:
            return None
        spare_path, file = ready
        try:
            os.rename(spare_path, path)
        except OSError:
            file.close()
            with contextlib.suppress(OSError):
                spare_path.unlink()
            return None
        return file

    @property
    def ready(self) -> bool:
        """Whether a spare is ready to be taken."""
        return self._ready is not None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, None
        self._wake.set()
        self._thread.join(5)
        if ready is not None:
            _discard(*ready)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                if self._closed:
                    return
                current = self._ready
                size = self._want
            if current is not None and current[1].size >= size:
                continue
            path = self._dir / f"spare-{self._ident}-{next(self._names)}.tmp"
            try:
                file = _MappedFile.prepared(path, size)
            except OSError as exc:
                log.warning("journal: could not prepare a spare segment (%s)", exc)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            with self._lock:
                if self._closed:
                    stale: tuple[Path, _MappedFile] | None = (path, file)
                else:
                    stale, self._ready = self._ready, (path, file)
            if stale is not None:
                _discard(*stale)


def _discard(path: Path, file: _MappedFile) -> None:
    file.close()
    with contextlib.suppress(OSError):
        path.unlink()
