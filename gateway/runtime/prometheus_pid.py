"""Prometheus multiprocess values without a `getpid()` system call per update.

With several workers (PROMETHEUS_MULTIPROC_DIR set: gateway/cli/serve.py), prometheus_client
keeps every metric value in a per-process memory map and, to notice a fork, asks
`os.getpid()` on every `inc`, `set` and `observe` — a system call each time (glibc no longer
caches the pid), and a request updates a few dozen values: in an strace of the production
profile under load the worker made ~30 `getpid` calls per request, more than all its reads and
writes together.

`install()` (run by gateway/__init__.py, before any metric is created) swaps prometheus_client's
value class for the same multiprocess class built with a process identifier that reads the
pid from memory, refreshed in the child after every fork (`os.register_at_fork`): the same
answer `os.getpid()` gives, so prometheus_client's own fork handling still works. Without
PROMETHEUS_MULTIPROC_DIR (one process) nothing is imported or changed.
"""

from __future__ import annotations

import os

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_pid = os.getpid()


def current_pid() -> int:
    """This process's id, as `os.getpid()` would answer, from memory."""
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def install() -> None:
    if _MULTIPROC_ENV not in os.environ and "prometheus_multiproc_dir" not in os.environ:
        return
    from prometheus_client import values

    current = values.ValueClass
    if getattr(current, "_multiprocess", False) and not getattr(current, "_cached_pid", False):
        value_class = values.MultiProcessValue(process_identifier=current_pid)  # type: ignore[no-untyped-call]
        value_class._cached_pid = True
        values.ValueClass = value_class
