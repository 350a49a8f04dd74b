"""Failover drills on the live path: every replica applies the same running drills.

Drills live in the `drills` table. Each replica re-reads the running ones every
`poll_s`, and at once when another replica or the CLI announces a change on the Redis
channel `farebox:drills`. A request on a drilled route is in the cohort by a hash of its
id (routing.drills.in_cohort), so replicas agree without talking to each other.

Outcomes of drill attempts are counted per drill in Redis (`farebox:drill:<id>`, written in
the background, never awaited by a request) or in process without Redis; they decide when
a failing drill aborts itself. At the end, exactly one replica (a conditional UPDATE decides
which) waits for the ledger to catch up and writes the verdict from the ledger's attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge

from gateway.drills.spec import Tally, spec_of
from gateway.drills.verdict_report import render, side_dict, trial_verdict
from gateway.ledger.drills_records import FINAL, FINISHING, RUNNING, STOPPING
from gateway.ledger_rows import AttemptRow
from gateway.runtime.background import Background
from gateway.runtime.redis import Sharing, publish, redis_client, subscriber
from gateway.runtime.redis_health import REDIS_ERRORS
from routing import drills
from routing.drills import DRILL, DrillSpec, Thresholds
from routing.model import DeploymentSpec, Plan

if TYPE_CHECKING:  # SQLAlchemy; a serving worker on Postgres passes ServingDrills
    from gateway.ledger.drills_repository import DrillsRepository

log = logging.getLogger("farebox.drills")

CHANNEL = "farebox:drills"
VERDICT = Gauge(
    "farebox_drill_last_verdict",
    "1 if the route's last drill passed, 0 if not",
    ["route"],
    multiprocess_mode="mostrecent",
)
ACTIVE = Gauge(
    "farebox_drills_active",
    "Drills this replica is applying right now",
    multiprocess_mode="livemax",
)
ABORTED = PromCounter("farebox_drills_aborted_total", "Drills that aborted themselves", ["route"])
DRILL_ATTEMPTS = PromCounter(
    "farebox_drill_attempts_total", "Attempts sent to drill targets", ["route", "outcome"]
)

# Primary answers kept per drill as the reference shapes for conformance.
_MAX_REFERENCES = 32
# One primary answer in this many is parsed for its shape (they all look alike).
_REFERENCE_EVERY = 20
_TOO_MANY_ERRORS = "failed past the drill's error budget"
# How long the finishing replica waits for every replica's ledger writer to flush.
_LEDGER_SETTLE_S = 2.0


class DrillBoard:
    def __init__(
        self,
        repository: DrillsRepository | None,
        redis_url: str | None,
        deployments: Mapping[str, DeploymentSpec],
        primaries: Mapping[str, str],
        *,
        poll_s: float = 1.0,
        thresholds: Thresholds | None = None,
        clock: Any = time.time,
        breaker_open: Callable[[], Mapping[str, bool]] | None = None,
    ) -> None:
        self._repo = repository
        self._deployments = deployments
        self._primaries = primaries
        self._poll_s = poll_s
        self.thresholds = thresholds or Thresholds()
        self._clock = clock
        self._breaker_open = breaker_open
        # route -> the drill running on it (read on the hot path: a dict lookup).
        self.active: dict[str, DrillSpec] = {}
        self._tallies: dict[str, Tally] = {}
        self._aborting: set[str] = set()
        self._tasks = Background()
        self._loop_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._healthy = True  # the database poll (Redis has `_sharing`)
        self._redis = redis_client(redis_url) if redis_url else None
        # Redis down means: counts stay in process, the database poll finds changes.
        self._sharing = Sharing(
            log,
            component="drills",
            up="drills shared through Redis",
            down="Redis unreachable for drills (%s); counting in process, polling the database",
            reconnect_max_s=1.0,
        )

    @property
    def repository(self) -> DrillsRepository | None:
        return self._repo

    # -- the hot path -------------------------------------------------------------------

    def apply(self, plan: Plan, request_id: str) -> tuple[Plan, str | None]:
        """The request's plan, rewritten when it falls in a running drill's cohort."""
        spec = self.active.get(plan.route)
        if spec is None or spec.id in self._aborting or self._clock() >= spec.ends_at:
            return plan, None
        if not drills.in_cohort(spec.id, request_id, spec.percent):
            return plan, None
        if not spec.target:  # a guard trial only: the cohort keeps its plan
            return plan, spec.id
        target = self._deployments.get(spec.target)
        if target is None:
            return plan, None
        if self._breaker_open is not None and self._breaker_open().get(target.id, False):
            # The gateway already judged the target down: drilling on would only add
            # latency to the cohort, and the verdict is known.
            self._aborting.add(spec.id)
            self._spawn(self._abort(spec, "its circuit breaker opened", marked=True))
            return plan, None
        return drills.drill_plan(plan, target, spec.simulate_outage), spec.id

    def observe(self, drill_id: str, attempts: Iterable[AttemptRow]) -> None:
        """A cohort request's attempts (from its ledger rows): count the drill target's."""
        spec = self._spec(drill_id)
        if spec is None:
            return
        tally = self._tallies.setdefault(drill_id, Tally())
        fields: Counter[str] = Counter()
        for row in attempts:
            if row.role != DRILL:
                continue
            tally.attempts += 1
            fields["attempts"] += 1
            DRILL_ATTEMPTS.labels(spec.route, "error" if row.error_class else "ok").inc()
            if row.error_class is not None:
                tally.errors[row.error_class] += 1
                fields["errors"] += 1
                fields[f"err:{row.error_class}"] += 1
        if not fields:
            return
        if self._redis is not None:
            self._spawn(self._count_shared(spec, fields))
        elif drills.should_abort(spec, tally.attempts, sum(tally.errors.values())):
            self._spawn(self._abort(spec, _TOO_MANY_ERRORS))

    def observe_answer(
        self, route: str, drill_id: str | None, deployment: str, body: bytes
    ) -> None:
        """Shape of a non-stream answer on a drilled route: drill answers are checked
        against the primary's (one in `_REFERENCE_EVERY` of which is sampled)."""
        spec = self.active.get(route)
        if spec is None:
            return
        tally = self._tallies.setdefault(spec.id, Tally())
        if drill_id is None:
            tally.seen += 1
            if len(tally.references) >= _MAX_REFERENCES or tally.seen % _REFERENCE_EVERY != 1:
                return
            with contextlib.suppress(orjson.JSONDecodeError):
                answer = orjson.loads(body)
                if isinstance(answer, dict):
                    tally.references.add(drills.shape_of(answer))
            return
        if deployment != spec.target:
            return  # the drill target failed and the primary answered: counted as an error
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        ok, why = (
            drills.conforms(drills.shape_of(answer), tally.references)
            if isinstance(answer, dict)
            else (False, "not a JSON object")
        )
        tally.checked += 1
        fields = {"checked": 1}
        if ok:
            tally.conforming += 1
            fields["conforming"] = 1
        else:
            tally.mismatches[why] += 1
        if self._redis is not None:
            self._spawn(self._count_shared(spec, Counter(fields)))

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._repo is None:
            return
        await self._sync_or_warn()
        await self.restore_verdicts()
        self._loop_task = asyncio.create_task(self._run(), name="farebox-drills")
        if self._redis is not None:
            self._listen_task = asyncio.create_task(
                self._sharing.supervise(self._follow, self._sharing.lost),
                name="farebox-drills-listen",
            )

    async def restore_verdicts(self) -> None:
        """Set `farebox_drill_last_verdict` from the database at start-up, so a restarted
        replica exports the last verdict of each route instead of nothing until the next."""
        if self._repo is None:
            return
        try:
            rows = await self._repo.recent(limit=1000, statuses=FINAL)
        except Exception as exc:  # the database is away: the gauge fills in as drills end
            log.warning("could not read past drill verdicts (%s)", type(exc).__name__)
            return
        seen: set[str] = set()
        for row in rows:  # newest first: the first verdict per route is its last
            if row.result is None or row.route in seen:
                continue
            seen.add(row.route)
            VERDICT.labels(row.route).set(1 if row.result == "PASS" else 0)

    async def close(self) -> None:
        for task in (self._loop_task, self._listen_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._tasks.wait(5)
        if self._redis is not None:
            await self._redis.aclose()
        if self._repo is not None:
            await self._repo.close()  # after the scheduler, which shares it (state.close)

    async def announce(self) -> None:
        """Tell every replica to re-read the drills now (after a start, stop or abort)."""
        self._wake.set()
        if self._redis is not None:
            try:
                await publish(self._redis, CHANNEL, b"changed")
            except REDIS_ERRORS as exc:  # the other replicas' poll finds the change
                self._sharing.lost(exc)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            self._wake.clear()
            await self._sync_or_warn()

    async def _sync_or_warn(self) -> None:
        try:
            await self._sync()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database is away: keep the drills we know
            if self._healthy:
                log.warning("could not read drills (%s); retrying", type(exc).__name__)
            self._healthy = False
        else:
            self._healthy = True

    async def _follow(self) -> None:
        """Wake the poll on every announcement until Redis fails (the poll carries on)."""
        assert self._redis is not None
        async with await subscriber(self._redis, CHANNEL) as pubsub:
            await pubsub.subscribe(CHANNEL)
            self._sharing.connected = True
            self._sharing.set(True)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    self._wake.set()

    async def _sync(self) -> None:
        assert self._repo is not None
        rows = await self._repo.unfinished()
        now = self._clock()
        active: dict[str, DrillSpec] = {}
        for row in rows:
            spec = spec_of(row)
            if row.status == RUNNING and now < spec.ends_at:
                if spec.id in self._aborting:
                    # Our abort is finishing it: finishing it as "completed" here would race
                    # that abort for the row (and won, now and then, under load).
                    continue
                if spec.target and spec.target not in self._deployments:
                    log.warning("drill %s targets unknown deployment %s", spec.id, spec.target)
                    continue
                active[spec.route] = spec
            elif row.status == RUNNING:
                self._spawn(self._finish(spec, (RUNNING,), "completed"))
            elif row.status == STOPPING:
                self._spawn(self._finish(spec, (STOPPING,), "stopped"))
        self.active = active
        ACTIVE.set(len(active))

    # -- shared counters, abort and verdict -----------------------------------------------

    async def _count_shared(self, spec: DrillSpec, fields: Counter[str]) -> None:
        assert self._redis is not None
        key = f"farebox:drill:{spec.id}"
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, n in fields.items():
                    pipe.hincrby(key, name, n)
                pipe.expire(key, 7 * 24 * 3600)
                pipe.hmget(key, ["attempts", "errors"])
                results = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._sharing.lost(exc)
            tally = self._tallies.get(spec.id)
            if tally is not None and drills.should_abort(
                spec, tally.attempts, sum(tally.errors.values())
            ):
                await self._abort(spec, _TOO_MANY_ERRORS)
            return
        self._sharing.set(True)
        attempts, errors = (int(v or 0) for v in results[-1])
        if drills.should_abort(spec, attempts, errors):
            await self._abort(spec, _TOO_MANY_ERRORS)

    async def _abort(self, spec: DrillSpec, why: str, *, marked: bool = False) -> None:
        if spec.id in self._aborting and not marked:
            return
        self._aborting.add(spec.id)  # this replica stops sending the cohort at once
        self.active.pop(spec.route, None)
        log.error("drill %s on %s aborted: %s %s", spec.id, spec.route, spec.target, why)
        if await self._finish(spec, (RUNNING,), "aborted", why):
            ABORTED.labels(spec.route).inc()

    async def _finish(
        self, spec: DrillSpec, from_statuses: tuple[str, ...], final: str, why: str | None = None
    ) -> bool:
        if self._repo is None or not await self._repo.move(spec.id, from_statuses, FINISHING):
            return False
        await self.announce()
        await asyncio.sleep(_LEDGER_SETTLE_S)
        try:
            result = await self.verdict(spec, aborted=why)
            await self._repo.finish(spec.id, final, result["result"], result, render(spec, result))
            VERDICT.labels(spec.route).set(1 if result["result"] == "PASS" else 0)
            log.warning("drill %s on %s: %s", spec.id, spec.route, result["result"])
        except Exception:  # the drill must still move on to its final status
            log.exception("could not write the verdict of drill %s", spec.id)
            await self._repo.move(spec.id, (FINISHING,), final)
        await self.announce()
        return True

    async def verdict(self, spec: DrillSpec, *, aborted: str | None = None) -> dict[str, Any]:
        assert self._repo is not None
        since = datetime.fromtimestamp(spec.started_at, UTC)
        until = datetime.fromtimestamp(max(spec.started_at, min(self._clock(), spec.ends_at)), UTC)
        trial = None
        if spec.guard:
            trial = await self._repo.guard_trial(spec.id, since=since, until=until)
            if not spec.target:
                return trial_verdict(spec, trial, since, until, aborted)
        drill_side = await self._repo.side(
            drill_id=spec.id, deployment=spec.target, role=DRILL, since=since, until=until
        )
        primary_side = await self._repo.side(
            drill_id=None,
            deployment=self._primaries.get(spec.route),
            role="primary",
            since=since,
            until=until,
            route=spec.route,
        )
        checked, conforming, mismatches = await self._conformance(spec)
        outcome = drills.verdict(
            drill_side,
            primary_side,
            conforming,
            checked,
            aborted=aborted,
            thresholds=self.thresholds,
        )
        result = outcome.as_dict()
        result.update(
            drill_id=spec.id,
            route=spec.route,
            target=spec.target,
            primary=self._primaries.get(spec.route),
            percent=spec.percent,
            simulate_outage=spec.simulate_outage,
            window={"since": since.isoformat(), "until": until.isoformat()},
            drill_side=side_dict(drill_side),
            primary_side=side_dict(primary_side),
            conformance_checked=checked,
            conformance_mismatches=mismatches,
        )
        if trial is not None:
            result["guard_trial"] = trial.as_dict()
        return result

    async def _conformance(self, spec: DrillSpec) -> tuple[int, int, dict[str, int]]:
        tally = self._tallies.get(spec.id) or Tally()
        mismatches = dict(tally.mismatches)
        if self._redis is None:
            return tally.checked, tally.conforming, mismatches
        try:
            checked, conforming = await self._redis.hmget(
                f"farebox:drill:{spec.id}", ["checked", "conforming"]
            )
        except REDIS_ERRORS as exc:
            self._sharing.lost(exc)
            return tally.checked, tally.conforming, mismatches
        return int(checked or 0), int(conforming or 0), mismatches

    def _spec(self, drill_id: str) -> DrillSpec | None:
        for spec in self.active.values():
            if spec.id == drill_id:
                return spec
        return None

    def _spawn(self, work: Any) -> None:
        self._tasks.spawn(work)
