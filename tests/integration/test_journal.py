"""The ledger journal on its own: a process killed mid-call leaves a journal that the next
start-up turns back into ledger rows; durable segments are dropped; ids differ per process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from gateway.api.asgi import new_request_id
from gateway.core.metering import new_attempt_id
from gateway.ledger.journal import CRASHED, INTENT_FIELDS, Journal, open_calls
from gateway.ledger.spool import Spool
from gateway.ledger.writer import LedgerWriter
from gateway.ledger_rows import AttemptRow, RequestRow
from tests import ledger_rows as rows
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def request_row(request_id: str) -> RequestRow:
    return rows.request_row(
        request_id, received_at=NOW, cost_usd=Decimal("0.0000020000"), output_tokens=5
    )


def attempt_row(attempt_id: str, request_id: str) -> AttemptRow:
    return rows.attempt_row(
        attempt_id, request_id, started_at=NOW, cost_usd=Decimal("0.0000020000")
    )


def intent(
    attempt_id: str,
    request_id: str,
    body_bytes: int = 400,
    workflow_id: str | None = None,
    batch_id: str | None = None,
    guard: str | None = None,
) -> tuple[object, ...]:
    """An intent record as Meter.intent builds it: "i", the id, then INTENT_FIELDS."""
    fields = {
        "request_id": request_id,
        "attempt_no": 1,
        "role": "primary",
        "deployment": "small@sim",
        "provider": "sim",
        "provider_kind": "serverless",
        "upstream_model": "sim-small",
        "started_at": NOW.timestamp(),
        "body_bytes": body_bytes,
        "received_at": NOW,
        "route": "chat",
        "requested_model": "chat",
        "endpoint": "chat/completions",
        "stream": True,
        "key_id": "k",
        "workload": "tests",
        "team": "a-team",
        "segment": None,
        "drill_id": None,
        "workflow_id": workflow_id,
        "batch_id": batch_id,
        "guard": guard,
    }
    return ("i", attempt_id, *(fields[name] for name in INTENT_FIELDS))


def price(
    deployment: str, model: str, kind: str, at: datetime, tokens: int
) -> tuple[Decimal | None, str | None]:
    return Decimal(tokens) / Decimal(1_000_000), "v1"


CRASHING_PROCESS = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from tests.integration.test_journal import attempt_row, intent, request_row
    from gateway.ledger.journal import Journal
    journal = Journal({directory!r}, fsync_ms=0)
    journal.intent("att_done", intent("att_done", "req_done"))
    journal.intent("att_open", intent("att_open", "req_open", body_bytes=401))
    journal.outcome(request_row("req_done"), [attempt_row("att_done", "req_done")])
    import glob, time
    deadline = time.monotonic() + 10  # its spare segment made, so the kill leaves one too
    while not glob.glob(os.path.join({directory!r}, "spare-*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_process_leaves_rows_and_a_crashed_attempt(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    script = CRASHING_PROCESS.format(root=str(ROOT), directory=str(directory))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=False)
    assert done.returncode == -signal.SIGKILL

    survivor = Journal(directory, fsync_ms=0)
    batches = survivor.recover(price)
    requests = {r.id: r for b in batches for r in b[0]}
    attempts = {a.id: a for b in batches for a in b[1]}
    assert set(attempts) == {"att_done", "att_open"}
    assert attempts["att_done"].error_class is None  # the outcome survived the kill
    crashed = attempts["att_open"]
    assert crashed.error_class == CRASHED
    assert crashed.token_source == "estimated"
    assert crashed.input_uncached_tokens == 101  # ceil(401 bytes / 4)
    assert crashed.cost_usd == Decimal("0.000101")
    assert requests["req_open"].error_class == CRASHED
    assert requests["req_open"].final_status == 500
    assert requests["req_open"].team == "a-team"
    assert requests["req_open"].stream is True
    assert requests["req_done"].final_status == 200
    dead_spares = [p for p in directory.glob("spare-*.tmp") if f"-{os.getpid()}-" not in p.name]
    assert dead_spares  # the killed process had one ready
    survivor.finish_recovery()
    assert not any(p.exists() for p in dead_spares)  # a dead process's spare goes with it
    # Taken over and gone: a second start-up recovers nothing again.
    assert not list(directory.glob("journal-*")) or all(
        p.name.startswith(f"journal-{os.getpid()}-") for p in directory.glob("journal-*")
    )
    assert Journal(directory, fsync_ms=0).recover(price) == []
    survivor.close(durable_upto=0)


WORKFLOW_PROCESS = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from tests.integration.test_journal import attempt_row, intent, request_row
    from gateway.ledger.journal import Journal
    journal = Journal({directory!r}, fsync_ms=0)
    journal.intent("att_step1", intent("att_step1", "req_step1", workflow_id="wf-crash"))
    journal.intent(
        "att_step2",
        intent(
            "att_step2", "req_step2", workflow_id="wf-crash", batch_id="batch_x",
            guard="reroute; rerouted=pii-local",
        ),
    )
    done = request_row("req_step1")._replace(workflow_id="wf-crash", guard="flag; flagged=inj")
    journal.outcome(done, [attempt_row("att_step1", "req_step1")])
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_process_keeps_the_workflow_of_its_calls(tmp_path: Path) -> None:
    """Step 2 of a workflow was in flight when the process died: its rebuilt request row
    is still in the workflow (so the workflow report sees its last call failed), and the
    finished step 1 keeps its tag through the outcome line."""
    directory = tmp_path / "journal"
    script = WORKFLOW_PROCESS.format(root=str(ROOT), directory=str(directory))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=False)
    assert done.returncode == -signal.SIGKILL

    survivor = Journal(directory, fsync_ms=0)
    requests = {r.id: r for b in survivor.recover(price) for r in b[0]}
    assert requests["req_step2"].error_class == CRASHED
    assert requests["req_step2"].workflow_id == "wf-crash"
    assert requests["req_step2"].batch_id == "batch_x"  # a crashed batch line stays its batch's
    # What the guard did before the call is known when it starts: the rebuilt row keeps it.
    assert requests["req_step2"].guard == "reroute; rerouted=pii-local"
    assert requests["req_step1"].guard == "flag; flagged=inj"  # through the outcome line
    assert requests["req_step1"].workflow_id == "wf-crash"
    assert requests["req_step1"].final_status == 200
    survivor.finish_recovery()
    survivor.close(durable_upto=0)


def test_a_journal_written_before_workflows_still_rebuilds(tmp_path: Path) -> None:
    """Segments name their intent fields in a header: one from a version without
    workflow_id decodes by name, and its crashed request simply has no workflow."""
    old_fields = [name for name in INTENT_FIELDS if name != "workflow_id"]
    values = dict(zip(INTENT_FIELDS, intent("att_old", "req_old")[2:], strict=True))
    header = {"h": {"r": [], "a": [], "i": old_fields}}
    line = ["i", "att_old", *(values[name] for name in old_fields)]
    segment = tmp_path / "journal-999999-1.jsonl"
    segment.write_bytes(orjson.dumps(header) + b"\n" + orjson.dumps(line) + b"\n")
    (tmp_path / "owner-999999.lock").write_bytes(b"")  # its process is gone: no one holds it
    survivor = Journal(tmp_path, fsync_ms=0)
    requests = [r for b in survivor.recover(price) for r in b[0]]
    assert [(r.id, r.error_class, r.workflow_id) for r in requests] == [("req_old", CRASHED, None)]
    survivor.finish_recovery()
    survivor.close(durable_upto=0)


def test_a_live_process_journal_is_left_alone(tmp_path: Path) -> None:
    alive = Journal(tmp_path, fsync_ms=0)
    alive.intent("att_1", intent("att_1", "req_1"))
    other = Journal(tmp_path, fsync_ms=0)
    assert other.recover(price) == []  # its owner still holds the lock
    other.close(durable_upto=0)
    alive.close(durable_upto=0)


def test_segments_are_dropped_once_durable_and_open_intents_carried_over(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync_ms=5, rotate_s=0)
    journal.intent("att_long", intent("att_long", "req_long"))  # a long stream, still open
    seq = 0
    for n in range(3):
        journal.intent(f"att_{n}", intent(f"att_{n}", f"req_{n}"))
        seq = journal.outcome(request_row(f"req_{n}"), [attempt_row(f"att_{n}", f"req_{n}")])
        journal.maintain(durable_upto=seq - 1)  # the writer is one request behind
    assert seq == 3
    segments = sorted(tmp_path.glob("journal-*.jsonl"))
    assert len(segments) == 2  # the one holding request 3 (not yet durable) and the current
    journal.maintain(durable_upto=3)
    assert len(sorted(tmp_path.glob("journal-*.jsonl"))) == 1
    # The open intent was copied forward, so the current segment alone still holds it.
    current = sorted(tmp_path.glob("journal-*.jsonl"))[0].read_bytes()
    assert b'"att_long"' in current
    journal.close(durable_upto=3)
    # Closed with an intent open: kept for the next start-up, which bills it as crashed.
    recovered = Journal(tmp_path, fsync_ms=0).recover(price)
    assert [a.id for _, attempts in recovered for a in attempts] == ["att_long"]


def test_rotations_take_the_prepared_spare_segment(tmp_path: Path) -> None:
    """A rotation renames the spare the journal's thread made ready (zeros written and
    synced, so appends take no filesystem work) into the next segment; a new spare follows,
    and close removes it."""
    journal = Journal(tmp_path, fsync_ms=0, rotate_s=0, segment_bytes=1 << 20)
    wait_until(lambda: journal.spare_ready, "a spare segment is ready")
    spare = next(tmp_path.glob("spare-*.tmp"))
    size = spare.stat().st_size
    journal.intent("att_1", intent("att_1", "req_1"))
    seq = journal.outcome(request_row("req_1"), [attempt_row("att_1", "req_1")])
    journal.maintain(durable_upto=0)  # rotate_s=0: a rotation now
    assert not spare.exists()
    newest = sorted(tmp_path.glob("journal-*.jsonl"))[-1]
    assert newest.stat().st_size == size  # the spare, renamed
    assert newest.read_bytes().startswith(b'{"h":')  # the segment header, written in it
    wait_until(lambda: journal.spare_ready, "the next spare is ready")
    journal.intent("att_2", intent("att_2", "req_2"))
    seq = journal.outcome(request_row("req_2"), [attempt_row("att_2", "req_2")])
    journal.close(durable_upto=seq)
    assert list(tmp_path.iterdir()) == []


def test_a_clean_close_leaves_nothing_behind(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync_ms=1)
    journal.intent("att_1", intent("att_1", "req_1"))
    journal.outcome(request_row("req_1"), [attempt_row("att_1", "req_1")])
    journal.close(durable_upto=1)
    assert list(tmp_path.iterdir()) == []


class HangingDatabase:
    """A sink whose writes never finish, like a frozen Postgres."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def write_batch(self, requests: list[RequestRow], attempts: list[AttemptRow]) -> None:
        self.started.set()
        await asyncio.Event().wait()

    async def ping(self) -> None:
        await asyncio.Event().wait()


def test_closing_while_the_database_hangs_spools_the_batch_being_written(tmp_path: Path) -> None:
    """SIGTERM with Postgres frozen lost 58 rows: the close timeout cancelled the batch in
    flight. Now it and everything queued goes to the spool."""

    async def scenario() -> list[str]:
        sink = HangingDatabase()
        journal = Journal(tmp_path / "journal", fsync_ms=0)
        writer = LedgerWriter(
            sink, Spool(tmp_path / "spool"), batch_rows=4, max_delay_s=0.01, journal=journal
        )
        writer.start()
        for n in range(10):
            writer.record(request_row(f"req_{n}"), [attempt_row(f"att_{n}", f"req_{n}")])
        await asyncio.wait_for(sink.started.wait(), 5)
        await writer.close(timeout_s=0.2)
        spooled = []
        for segment in Spool(tmp_path / "spool").pending():
            for requests, _ in Spool.read(segment):
                spooled.extend(r.id for r in requests)
        return spooled

    spooled = asyncio.run(scenario())
    assert sorted(spooled) == sorted(f"req_{n}" for n in range(10))
    # Everything is in the spool, so the journal had nothing left to keep.
    assert not list((tmp_path / "journal").glob("journal-*"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_attempt_ids_differ_in_a_forked_child() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.write(write, f"{new_attempt_id()} {new_request_id()}".encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_attempt, child_request = os.read(read, 200).decode().split()
    os.close(read)
    parent_attempt, parent_request = new_attempt_id(), new_request_id()
    assert child_attempt[:16] != parent_attempt[:16], (child_attempt, parent_attempt)
    assert child_request[:16] != parent_request[:16], (child_request, parent_request)


def test_a_half_copied_line_and_the_unused_tail_are_skipped(tmp_path: Path) -> None:
    """A process killed mid-copy can leave a line with NULs in it or no newline; the rest
    of a mapped segment reads as NULs. Readers take every complete line and nothing else."""
    journal = Journal(tmp_path, fsync_ms=0)
    journal.intent("att_1", intent("att_1", "req_1"))
    journal.intent("att_2", intent("att_2", "req_2"))
    journal.close(durable_upto=0)  # kept: two intents open
    segment = next(tmp_path.glob("journal-*.jsonl"))
    data = bytearray(segment.read_bytes())
    end = data.index(b"\x00")
    torn = b'["i","att_3","req_3"\x00\x00,1]\n'  # a copy that stopped half-way through
    data[end : end + len(torn)] = torn
    data[end + len(torn) : end + len(torn) + 9] = b'["i","att'  # no newline: cut short
    segment.write_bytes(bytes(data))
    assert open_calls(tmp_path) == {"att_1", "att_2"}
    batches = Journal(tmp_path, fsync_ms=0).recover(price)
    assert sorted(a.id for _, attempts in batches for a in attempts) == ["att_1", "att_2"]
