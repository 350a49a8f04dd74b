"""The batch runner: each replica claims batches from the database and runs them.

A batch's state is in the database, never only in a replica's memory: a replica claims an
active batch for `batch.lease_s` and renews the claim while it runs; killed, it stops
renewing and another replica (or itself, restarted) claims the batch and resumes it. Lines
that have a `batch_lines` row are done and are skipped; the rest run. The order of a run:
`validating` → `in_progress` → lines (per path) → `finalizing` (output and error files) →
`completed`, or `expired` at the end of its completion window / `cancelled` after a cancel,
both with the answers they have and the other lines in the error file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from gateway.batch.admission import admit_line
from gateway.batch.finalize import finalize
from gateway.batch.guard import Guard, Stop
from gateway.batch.lines import Committer, HeldRows, Line, call_line, refused_line, unrun_line
from gateway.batch.objects import ENDPOINTS
from gateway.batch.ports import BatchState
from gateway.batch.principal import load
from gateway.batch.provider_path import run_provider_batch
from gateway.batch.slots import BatchTracker, FillSlots, FixedSlots, Slots
from gateway.batch.store import scan_lines
from gateway.core.metering import Meter
from gateway.errors import GatewayError
from gateway.runtime.background import Background
from routing.batch_paths import DEDICATED_FILL, PROVIDER_BATCH, batch_plan
from routing.model import Plan

log = logging.getLogger("farebox.batch")

# How long a line waits before asking again for a free slot on a busy GPU.
_SLOT_WAIT_S = 0.02


class BatchRunner:
    def __init__(self, state: Callable[[], BatchState | None], owner: str | None = None) -> None:
        self.state = state
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}:{os.urandom(3).hex()}"
        self._background = Background()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self.closing = False
        # Batch lines in flight per deployment, across this process's batches.
        self.tracker = BatchTracker()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop claiming; running batches stop starting lines, let those in flight finish
        (within `grace_s`), save them and give their claim back for another replica."""
        self.closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=grace_s)
        await self._background.cancel()

    async def _loop(self) -> None:
        while not self.closing:
            state = self.state()
            interval = 0.5
            if state is not None and state.batches is not None:
                interval = state.config.batch.poll_interval_s
                try:
                    await self._claim(state)
                except Exception as exc:  # database trouble: try again next interval
                    log.warning("batch runner could not claim work (%s)", type(exc).__name__)
            await asyncio.sleep(interval)

    async def _claim(self, state: BatchState) -> None:
        assert state.batches is not None
        settings = state.config.batch
        while len(self._running) < settings.max_running and not self.closing:
            now = datetime.now(UTC)
            row = await state.batches.repository.claim(
                self.owner, now, now + timedelta(seconds=settings.lease_s)
            )
            if row is None:
                return
            task = self._background.spawn(self._run(row))
            self._running[row["id"]] = task
            task.add_done_callback(_forget(self._running, row["id"]))

    # -- one batch -------------------------------------------------------------------

    async def _run(self, row: dict[str, Any]) -> None:
        state = self.state()
        assert state is not None and state.batches is not None and state.files is not None
        repository = state.batches.repository
        batch_id = row["id"]
        try:
            reason = await self._lines(state, row)
            fresh = await repository.fetch(batch_id, any_key=True)
            if fresh is not None:
                await finalize(state, fresh, reason)
        except Exception:
            log.exception("batch %s: run failed; another pass will resume it", batch_id)
        finally:
            with contextlib.suppress(Exception):
                await repository.release(batch_id, self.owner)

    async def _lines(self, state: BatchState, row: dict[str, Any]) -> str | None:
        """Run what is left of the batch; the reason it stopped early (None: all lines ran)."""
        assert state.batches is not None and state.files is not None
        repository = state.batches.repository
        if row["status"] == "validating":
            now = datetime.now(UTC)
            await repository.update(row["id"], {"status": "in_progress", "in_progress_at": now})
            row["status"], row["in_progress_at"] = "in_progress", now
        guard = Guard(
            repository,
            row,
            owner=self.owner,
            closing=lambda: self.closing,
            lease_s=state.config.batch.lease_s,
        )
        if row["status"] == "finalizing":
            return None
        plan = _plan(state, row)
        if plan is None:
            return "failed"
        journal = state.writer.journal if state.writer is not None else None
        committer = Committer(repository, row["id"], journal)
        committer.start()
        try:
            if row["path"] == PROVIDER_BATCH:
                return await run_provider_batch(state, row, plan, committer, guard)
            return await self._run_lines(state, row, plan, committer, guard)
        finally:
            await committer.close()

    async def _run_lines(
        self,
        state: BatchState,
        row: dict[str, Any],
        plan: Plan,
        committer: Committer,
        guard: Guard,
    ) -> str | None:
        assert state.batches is not None and state.files is not None
        files = state.files
        done = await state.batches.repository.done_lines(row["id"])
        held = HeldRows()
        files_prices = state.service.meter.prices
        meter = Meter(files_prices, held, committer.journal)
        service = state.service.with_meter(meter, self.tracker)
        slots = self._slots(state, row, plan)
        endpoint = ENDPOINTS[row["endpoint"]]
        running: set[asyncio.Task[None]] = set()
        stopped: str | None = None
        source = await files.get(row["input_file_id"], row["key_id"])
        line_no = 0
        pending: list[tuple[int, str]] = []

        guards = state.guards.get(plan.route)
        guarded = None if guards is None else (guards, state.index)
        principal = load(row.get("principal"))
        limiter = state.limiter
        reserve = state.config.limits.reserve_output_tokens

        async def one(line: Line) -> None:
            try:
                admission = await admit_line(
                    limiter,
                    principal,
                    plan,
                    line.body,
                    line.size,
                    files_prices,
                    reserve,
                    guard.check,
                )
            except Stop as stop:
                if stop.reason in _UNRUN:
                    committer.add(
                        unrun_line(
                            line.line_no,
                            line.custom_id,
                            f"batch_{stop.reason}",
                            _UNRUN[stop.reason],
                        )
                    )
                return
            except GatewayError as exc:  # the key's budget is spent
                committer.add(refused_line(line, exc))
                return
            finished = await call_line(
                service,
                held,
                batch_id=row["id"],
                key_id=row["key_id"],
                endpoint=endpoint,
                plan=plan,
                line=line,
                admission=admission,
                guarded=guarded,
            )
            committer.add(finished)

        async for _number, raw in scan_lines(files.content(source)):
            line_no += 1
            if line_no in done:
                continue
            body = orjson.loads(raw)
            custom_id = str(body.get("custom_id"))
            if stopped is not None:
                pending.append((line_no, custom_id))
                continue
            try:
                while slots.free(len(running)) <= 0:
                    guard.check()
                    if running:
                        await asyncio.wait(running, timeout=_SLOT_WAIT_S)
                    else:
                        await asyncio.sleep(_SLOT_WAIT_S)
                guard.check()
            except Stop as stop:
                stopped = stop.reason
                pending.append((line_no, custom_id))
                continue
            task = asyncio.get_running_loop().create_task(
                one(Line(line_no, custom_id, body["body"], len(raw)))
            )
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        if stopped in ("cancelled", "expired"):
            for number, custom_id in pending:
                committer.add(unrun_line(number, custom_id, f"batch_{stopped}", _UNRUN[stopped]))
        return stopped

    def _slots(self, state: BatchState, row: dict[str, Any], plan: Plan) -> Slots:
        settings = state.config.batch
        dep = plan.attempts[0].deployment
        if row["path"] == DEDICATED_FILL and dep.max_concurrency:
            live = state.live

            def load() -> Any:
                return None if live is None else live.loads.get(dep.id)

            return FillSlots(
                dep.max_concurrency,
                settings.fill_headroom,
                load,
                lambda: self.tracker.in_flight.get(dep.id, 0),
                hold_s=settings.fill_hold_s,
            )
        return FixedSlots(settings.serverless_concurrency)


_UNRUN = {
    "cancelled": "The batch was cancelled before this request ran.",
    "expired": "The batch's completion window ended before this request ran.",
}


def _forget(
    running: dict[str, asyncio.Task[None]], batch_id: str
) -> Callable[[asyncio.Task[Any]], None]:
    def done(_task: asyncio.Task[Any]) -> None:
        running.pop(batch_id, None)

    return done


def _plan(state: BatchState, row: dict[str, Any]) -> Plan | None:
    """The batch's plan on today's configuration: its route's plan with the chosen
    deployment first (in role batch). None when the route or deployment is gone."""
    plan = state.index.plan(row["model"])
    if plan is None:
        return None
    first = next(
        (a.deployment for a in plan.attempts if a.deployment.id == row["deployment"]), None
    )
    if first is None:
        first = plan.attempts[0].deployment
    return batch_plan(plan, first)
