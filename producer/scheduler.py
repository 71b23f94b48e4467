"""The daemon's scheduler: one task per district, polling on a drift-free schedule.

It knows nothing of OneRoster or Kafka: a ``DistrictRunner`` does the work of one poll. Per
district, the loop:

1. waits for the next slot of its grid ``origin + k * poll_interval`` (drift-free: a slot is
   computed from the grid, never as "now + interval"; slots missed while a poll overran are
   skipped, not run in a burst), plus a random jitter in ``[0, jitter]``;
2. takes one of ``max_concurrent_districts`` global slots (a semaphore);
3. polls, full when ``full_sync_interval`` has passed since the last successful full sync
   (asked of a ``FullSyncHistory`` at start, then tracked), bounded by ``poll_timeout`` or
   ``full_sync_timeout``;
4. on failure (exception or timeout) backs off exponentially, capped at ``failure_backoff_max``;
   from ``circuit_breaker_threshold`` consecutive failures the district's circuit is open and it
   waits the cap. Other districts are never delayed and an error never stops the daemon.

``set_districts`` starts and stops district tasks at runtime. ``drop(ids, grace)`` stops some
districts now (the daemon's revoked shards): idle ones at once, in-flight polls after ``grace``
seconds. ``stop(grace)`` stops starting polls, gives in-flight polls ``grace`` seconds, then
cancels them. Clock and sleep are injected so
tests run on fake time.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol, Self

import structlog

from producer.config import SyncConfig
from producer.logs import redact_text
from producer.metrics import Metrics
from producer.protocols import SecondsClock, Sleep

log = structlog.get_logger(__name__)


class DistrictRunner(Protocol):
    """Does one poll of one district (every configured entity), raising when it fails."""

    async def poll(self, district_id: str, *, full: bool) -> None: ...


class FullSyncHistory(Protocol):
    """When the last complete full sync of a district ended (the checkpoint knows), in clock time.

    ``None`` means never: the district's first poll is then a full sync.
    """

    async def last_full_sync(self, district_id: str) -> float | None: ...


@dataclass(frozen=True, slots=True)
class DistrictStatus:
    """What the scheduler knows about one district (a snapshot)."""

    district_id: str
    next_run: float | None = None
    last_full_sync: float | None = None
    last_success: float | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    #: The last failure's message, redacted (for the status page; cleared by a success).
    last_error_detail: str | None = None
    running: bool = False
    circuit_open: bool = False


@dataclass(frozen=True, slots=True)
class StopSummary:
    """How ``stop`` ended: polls that finished within the grace, and polls it cancelled."""

    finished: int
    cancelled: int


@dataclass(slots=True)
class _District:
    status: DistrictStatus
    task: asyncio.Task[None] | None = None
    removed: bool = False


class Scheduler:
    """Runs ``runner.poll`` for each district on its schedule; see the module docstring."""

    def __init__(
        self,
        runner: DistrictRunner,
        sync: SyncConfig,
        *,
        history: FullSyncHistory | None = None,
        metrics: Metrics | None = None,
        clock: SecondsClock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._runner = runner
        self._sync = sync
        self._history = history
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 jitter, not cryptography
        self._slots = asyncio.Semaphore(sync.max_concurrent_districts)
        self._districts: dict[str, _District] = {}
        self._stopping = False

    # ------------------------------------------------------------------ public

    @property
    def district_ids(self) -> tuple[str, ...]:
        """Districts being scheduled (removed ones finishing a poll excluded)."""
        return tuple(d for d, s in self._districts.items() if not s.removed)

    def status(self) -> dict[str, DistrictStatus]:
        """A snapshot per district, e.g. for ``status`` or logs."""
        return {d: s.status for d, s in self._districts.items() if not s.removed}

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (0 after none)."""
        if failures <= 0:
            return 0.0
        if failures >= self._sync.circuit_breaker_threshold:
            return self._sync.failure_backoff_max
        exponent = min(failures - 1, 64)
        delay = self._sync.failure_backoff * self._sync.failure_backoff_multiplier**exponent
        return min(delay, self._sync.failure_backoff_max)

    def set_districts(self, district_ids: Iterable[str]) -> None:
        """Schedule exactly these districts: start new ones, stop removed ones.

        A removed district that is mid-poll finishes that poll, then stops.
        """
        if self._stopping:
            raise RuntimeError("the scheduler is stopping; build a new one")
        wanted = list(dict.fromkeys(district_ids))
        for district_id in wanted:
            entry = self._districts.get(district_id)
            if entry is not None and entry.task is not None and entry.task.done():
                entry = None  # dropped; its task ended and is being forgotten
            if entry is not None:
                if entry.removed:
                    entry.removed = False
                    log.info("district.restored", district=district_id)
                continue
            entry = _District(DistrictStatus(district_id))
            self._districts[district_id] = entry
            entry.task = asyncio.create_task(self._run(district_id), name=f"district:{district_id}")
            entry.task.add_done_callback(functools.partial(self._forget, district_id))
            log.info("district.added", district=district_id)
        for district_id, entry in list(self._districts.items()):
            if district_id not in wanted and not entry.removed:
                entry.removed = True
                log.info("district.removed", district=district_id, running=entry.status.running)
                if not entry.status.running and entry.task is not None:
                    entry.task.cancel()

    async def stop(self, grace: float | None = None) -> StopSummary:
        """Start no more polls; wait up to ``grace`` (default ``shutdown_grace``), then cancel."""
        self._stopping = True
        grace = self._sync.shutdown_grace if grace is None else grace
        entries = list(self._districts.values())
        log.info(
            "scheduler.stopping", in_flight=sum(e.status.running for e in entries), grace=grace
        )
        summary = await self._end(entries, grace)
        log.info("scheduler.stopped", finished=summary.finished, cancelled=summary.cancelled)
        return summary

    async def drop(self, district_ids: Iterable[str], grace: float | None = None) -> StopSummary:
        """Stop scheduling these districts now (others go on): an idle one at once, a running
        poll given up to ``grace`` seconds (default ``shutdown_grace``) to finish, then
        cancelled (an open transaction is aborted). Returns once all of them ended."""
        grace = self._sync.shutdown_grace if grace is None else grace
        entries = []
        for district_id in dict.fromkeys(district_ids):
            entry = self._districts.get(district_id)
            if entry is not None:
                entry.removed = True
                entries.append(entry)
        return await self._end(entries, grace)

    async def _end(self, entries: list[_District], grace: float) -> StopSummary:
        """End the tasks of ``entries``: idle ones cancelled at once, running polls after up
        to ``grace`` seconds."""
        busy: set[asyncio.Task[None]] = set()
        for entry in entries:
            if entry.task is None or entry.task.done():
                continue
            if entry.status.running:
                busy.add(entry.task)
            else:
                entry.task.cancel()
        if busy and grace > 0:
            waiter = asyncio.ensure_future(asyncio.wait(busy))
            timer = asyncio.ensure_future(self._sleep(grace))
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
            timer.cancel()
            waiter.cancel()
        late = {t for t in busy if not t.done()}
        for task in late:
            task.cancel()
        await asyncio.gather(
            *(e.task for e in entries if e.task is not None), return_exceptions=True
        )
        return StopSummary(finished=len(busy) - len(late), cancelled=len(late))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._stopping:
            await self.stop()

    # ------------------------------------------------------------------ internals

    def _forget(self, district_id: str, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            # A bug, not a poll failure (those are caught): say so loudly, never silently.
            log.error("district.crashed", district=district_id, error=repr(exc))
        entry = self._districts.get(district_id)
        if entry is not None and entry.task is not None and entry.task.done():
            del self._districts[district_id]
            if entry.removed and self._metrics is not None:
                self._metrics.forget_district(district_id)

    def _update(self, district_id: str, **changes: object) -> None:
        entry = self._districts[district_id]
        entry.status = replace(entry.status, **changes)  # type: ignore[arg-type]

    def _done(self, district_id: str) -> bool:
        return self._stopping or self._districts[district_id].removed

    def _jitter(self) -> float:
        limit = min(self._sync.jitter, self._sync.poll_interval)
        return self._rng.uniform(0.0, limit) if limit > 0 else 0.0

    async def _sleep_until(self, when: float) -> None:
        delay = when - self._clock()
        if delay > 0:
            await self._sleep(delay)

    async def _initial_full_sync(self, district_id: str) -> float | None:
        if self._history is None:
            # Nothing to ask: count from now (the runner does a full snapshot on first contact).
            return self._clock()
        try:
            return await self._history.last_full_sync(district_id)
        except Exception as exc:  # noqa: BLE001 a broken history must not stop the district
            log.warning("district.history_failed", district=district_id, error=repr(exc))
            return self._clock()

    async def _run(self, district_id: str) -> None:
        structlog.contextvars.bind_contextvars(district=district_id)
        last_full = await self._initial_full_sync(district_id)
        self._update(district_id, last_full_sync=last_full)
        interval = self._sync.poll_interval
        origin = self._clock()
        next_at = origin + self._jitter()
        while True:
            self._update(district_id, next_run=next_at)
            await self._sleep_until(next_at)
            if self._done(district_id):
                return
            async with self._slots:
                if self._done(district_id):
                    return
                started = self._clock()
                status = self._districts[district_id].status
                due = status.last_full_sync is None
                full = (
                    due or started - (status.last_full_sync or 0.0) >= self._sync.full_sync_interval
                )
                ok = await self._poll_once(district_id, full=full)
            if self._done(district_id):
                return
            now = self._clock()
            if ok:
                slot = origin + (math.floor((now - origin) / interval) + 1) * interval
                next_at = slot + self._jitter()
                if full:
                    self._update(district_id, last_full_sync=started)
            else:
                next_at = now + self.backoff(
                    self._districts[district_id].status.consecutive_failures
                )

    async def _poll_once(self, district_id: str, *, full: bool) -> bool:
        """One poll bounded by its timeout; True when it succeeded. Never raises but cancel."""
        timeout = self._sync.full_sync_timeout if full else self._sync.poll_timeout
        self._update(district_id, running=True)
        started = self._clock()
        log.info("poll.started", full=full)
        poll = asyncio.create_task(
            self._runner.poll(district_id, full=full), name=f"poll:{district_id}"
        )
        timer = asyncio.ensure_future(self._sleep(timeout))
        try:
            await asyncio.wait({poll, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not poll.done():
                poll.cancel()
            # Retrieved even when this task is cancelled (a dropped district) as the poll ends.
            await asyncio.gather(poll, return_exceptions=True)
            self._update(district_id, running=False)
        elapsed = self._clock() - started
        error: str | None = None
        detail = ""
        if poll.cancelled():
            error = "PollTimeout"
            detail = f"the poll ran past its {timeout:g} s timeout and was cancelled"
            log.warning("poll.timeout", full=full, timeout=timeout)
        elif (exc := poll.exception()) is not None:
            error = type(exc).__name__
            detail = str(exc)
            log.warning("poll.failed", full=full, seconds=elapsed, error=error, message=detail)
        if error is None:
            self._succeeded(district_id, full=full, elapsed=elapsed)
            return True
        self._failed(district_id, error, redact_text(detail))
        return False

    def _succeeded(self, district_id: str, *, full: bool, elapsed: float) -> None:
        status = self._districts[district_id].status
        if status.consecutive_failures:
            log.info("district.recovered", after_failures=status.consecutive_failures)
        self._update(
            district_id,
            consecutive_failures=0,
            circuit_open=False,
            last_error=None,
            last_error_detail=None,
            last_success=self._clock(),
        )
        log.info("poll.finished", full=full, seconds=elapsed)

    def _failed(self, district_id: str, error: str, detail: str = "") -> None:
        failures = self._districts[district_id].status.consecutive_failures + 1
        circuit_open = failures >= self._sync.circuit_breaker_threshold
        if circuit_open and not self._districts[district_id].status.circuit_open:
            log.error("district.circuit_open", failures=failures, error=error)
        self._update(
            district_id,
            consecutive_failures=failures,
            circuit_open=circuit_open,
            last_error=error,
            last_error_detail=detail or None,
        )
        if self._metrics is not None:
            self._metrics.error(district_id, error)
        log.info("district.backoff", failures=failures, seconds=self.backoff(failures))
