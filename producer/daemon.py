"""``oneroster-cdc run``: the long-lived daemon, one member of its deployment's group.

Start order (teardown runs in reverse, from one ``AsyncExitStack``):

1. The HTTP endpoints and the heartbeat, so ``/healthz`` answers and ``/readyz`` (and the
   status page at ``/``) say "not ready" while the rest starts.
2. The ``Service``'s shared parts (topics, layout check, schemas), owning no shard yet. While
   the broker cannot be reached it is retried with a capped backoff; nothing is written
   meanwhile.
3. The scheduler, with no district yet, and the ClassLink refresh when ``[classlink]`` is set
   (every ``refresh_interval``).
4. The group membership (``producer.kafka.ownership``): the group ``<client_id>`` assigns this
   instance its shards.

Shards (eager rebalances, see ``producer.kafka.ownership``):

- Revoked: their districts stop polling (a running poll gets ``[sync] shutdown_grace`` seconds,
  then is cancelled and its open transaction aborted), then their writers close. The SQLite
  files stay for the next warm restore. Logged as ``shards.revoked``.
- Assigned (logged as ``shards.assigned``): in a task of their own, each shard's writer starts
  (fencing any older owner, aborting what it left open), its store restores from its state
  partition and its checkpoints load; then the scheduler polls the districts (static and
  discovered) of the shards this instance owns. A failed start is retried with a backoff while
  the shard stays assigned.
- ``/readyz`` is ready once the first assignment arrived and every owned shard is restored.
- A ``Fenced`` commit (a paused instance woke after the group moved its shards on) closes that
  shard only: its polls stop, it commits nothing, and the daemon rejoins the group (the
  heartbeat usually notices first; otherwise the daemon asks to rejoin after a session
  timeout). A missing ACL (``NotAuthorized``) stops the daemon with exit 1.

Shutdown: the first SIGTERM/SIGINT stops new polls, gives in-flight polls ``shutdown_grace``
seconds, cancels the rest (an open transaction is aborted, never committed half-way), closes the
shards, leaves the group (its shards move to the others at once), closes Kafka and HTTP and logs
one summary line. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import signal
import time
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import structlog

from producer.config import Config
from producer.errors import CdcError, Fenced, NotAuthorized
from producer.http_api import ChecksProbe, Health, Heartbeat, HttpServer
from producer.kafka.ownership import Ownership
from producer.metrics import Metrics
from producer.scheduler import Scheduler
from producer.service import Service
from producer.status import district_row, iso

log = structlog.get_logger(__name__)


class _Runner:
    """The scheduler's ``DistrictRunner``: polls through the service. A fence closes the
    district's shard (``on_fenced``); a missing ACL (``NotAuthorized``: retrying cannot help)
    stops the daemon with exit code 1 (``on_denied``)."""

    def __init__(
        self,
        service: Service,
        on_fenced: Callable[[str], None],
        on_denied: Callable[[], None],
    ) -> None:
        self._service = service
        self._on_fenced = on_fenced
        self._on_denied = on_denied

    async def poll(self, district_id: str, *, full: bool) -> None:
        try:
            await self._service.poll(district_id, full=full)
        except Fenced:
            log.error(
                "daemon.fenced",
                district=district_id,
                shard=self._service.shard_number(district_id),
            )
            self._on_fenced(district_id)
            raise
        except NotAuthorized as exc:
            log.error("daemon.not_authorized", district=district_id, error=str(exc))
            self._on_denied()
            raise


class Daemon:
    """Runs until ``stop()`` (or a signal); ``run()`` returns the exit code."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.service = Service(config, metrics=self.metrics, own_all=False)
        self.http: HttpServer | None = None
        self.ownership: Ownership | None = None
        self._stop = asyncio.Event()
        self._failed = False
        self._signals = 0
        self.started = asyncio.Event()
        self._scheduler: Scheduler | None = None
        self._health: Health | None = None
        #: Shards whose districts may be scheduled (started, not revoked or fenced).
        self._active: frozenset[int] = frozenset()
        #: Shards assigned and still starting.
        self._pending: frozenset[int] = frozenset()
        self._assigned_once = False
        self._taking: asyncio.Task[None] | None = None
        #: Fenced shards being closed.
        self._fenced_shards: set[int] = set()
        #: Tasks that close fenced shards or wait to rejoin (cancelled at shutdown).
        self._background: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        """Ask the daemon to shut down gracefully."""
        self._stop.set()

    def _fail(self) -> None:
        self._failed = True
        self._stop.set()

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("daemon.second_signal", signal=signal.Signals(signum).name)
            os._exit(130)
        log.info("daemon.signal", signal=signal.Signals(signum).name)
        self.stop()

    # -- readiness and status ------------------------------------------------------------------

    async def _readiness_broker(self) -> bool:
        return await self.service.broker_reachable()

    @property
    def polled_districts(self) -> tuple[str, ...]:
        """The districts the scheduler polls now (those of the active shards)."""
        return self._scheduler.district_ids if self._scheduler is not None else ()

    @property
    def _member(self) -> str | None:
        return self.ownership.member if self.ownership is not None else None

    def shards_restored(self) -> bool:
        """The group assigned this instance its shards and every one of them is started and
        restored (a fenced shard, closed until the group gives it again, is not)."""
        owned = self.ownership.owned if self.ownership is not None else frozenset()
        return (
            self._assigned_once
            and not self._pending
            and self.service.restored
            and owned == frozenset(self.service.shards)
        )

    async def status(self) -> dict[str, Any]:
        """The status page's snapshot: readiness, the owned shards, and every district (static
        or discovered) with its shard; an owned district also with its entities' checkpoints
        and the scheduler's view (circuit, last error)."""
        now = datetime.now(UTC)
        checks = await self._health.readiness() if self._health is not None else []
        scheduled = self._scheduler.status() if self._scheduler is not None else {}
        service = self.service
        districts = []
        for district_id in service.district_ids:
            source = service.districts.get(district_id)
            known = scheduled.get(district_id)
            shard = service.shard_number(district_id)
            owner = service.shards.get(shard)
            districts.append(
                district_row(
                    district_id,
                    origin="classlink" if source.discovered is not None else "config",
                    version=source.config.version,
                    checkpoints=[owner.book.get(district_id, e) for e in source.entities]
                    if owner is not None
                    else [],
                    now=now,
                    circuit_open=known.circuit_open if known else False,
                    consecutive_failures=known.consecutive_failures if known else 0,
                    running=known.running if known else False,
                    last_error=known.last_error_detail or known.last_error if known else None,
                    last_success=known.last_success if known else None,
                    shard=shard,
                    owned=owner is not None,
                )
            )
        kafka = self.config.kafka
        return {
            "generated_at": iso(now),
            "instance": {
                "topic_prefix": kafka.topic_prefix,
                "member": self.ownership.member if self.ownership is not None else None,
                "shard_count": kafka.shards,
                "shards": sorted(service.shards),
            },
            "readiness": {
                "ready": bool(checks) and all(c.ok for c in checks),
                "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
            },
            "districts": districts,
        }

    # -- run -----------------------------------------------------------------------------------

    async def run(self, *, install_signals: bool = True) -> int:
        """Start, run until stopped, stop; the process exit code."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._on_signal, signum)
        started = time.monotonic()
        heartbeat = Heartbeat()
        probe = ChecksProbe(
            {"broker": self._readiness_broker, "state_restored": self.shards_restored}
        )
        self._health = Health(heartbeat, probe)
        async with AsyncExitStack() as stack:
            # 1.
            if self.config.http.enabled:
                self.http = HttpServer(
                    self.config.http.listen, self.metrics, self._health, status=self.status
                )
                await stack.enter_async_context(self.http)
                log.info("daemon.http", url=self.http.url)
            beating = asyncio.create_task(heartbeat.run(1.0))
            stack.callback(beating.cancel)
            # 2.
            if not await self._start_service(stack):
                return 0
            # 3.
            scheduler = Scheduler(
                _Runner(self.service, self._shard_fenced, self._fail),
                self.config.sync,
                history=self.service,
                metrics=self.metrics,
            )
            self._scheduler = scheduler
            if self.config.classlink is not None:
                refresher = asyncio.create_task(self._discovery())
                stack.callback(refresher.cancel)
            # 4.
            if not await self._join(stack):
                return 0
            self.started.set()
            await self._stop.wait()
            summary = await scheduler.stop()
            await self._settle()
            await self.service.release(list(self.service.shards))
            log.info(
                "daemon.stopped",
                finished_polls=summary.finished,
                cancelled_polls=summary.cancelled,
                uptime_seconds=round(time.monotonic() - started, 1),
                failed=self._failed,
            )
        # The signal handlers stay until the loop closes (asyncio removes them then): a signal
        # during the loop's own teardown still finds a handler.
        return 1 if self._failed else 0

    async def _settle(self) -> None:
        """Cancel the shard starts and fence handling still running (shutting down)."""
        tasks = [t for t in (self._taking, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _retrying(self, what: str, start: Callable[[], Any], undo: Callable[[], Any]) -> bool:
        """Run ``start`` until it succeeds, retrying (after ``undo``) with a capped backoff
        while the broker is unavailable; False if the daemon was stopped meanwhile."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                await start()
            except CdcError as exc:
                await undo()
                if not exc.retriable:
                    raise
                log.warning("daemon.start_retry", step=what, error=str(exc), retry_in=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, 30.0)
                continue
            return True
        return False

    async def _start_service(self, stack: AsyncExitStack) -> bool:
        """Start the service's shared parts, retrying while the broker is unavailable."""

        async def undo() -> None:
            await self.service.close()
            self.service = Service(self.config, metrics=self.metrics, own_all=False)

        async def start() -> None:
            await self.service.start()  # the current one: ``undo`` replaces it

        if not await self._retrying("service", start, undo):
            return False
        stack.push_async_callback(self.service.close)
        return True

    async def _join(self, stack: AsyncExitStack) -> bool:
        """Join the group ``<client_id>`` (its assignments arrive in the background)."""
        sync = self.config.sync
        # A revoke may wait shutdown_grace for running polls, then close writers: the group
        # waits that long (and a margin) for this member to rejoin.
        self.ownership = Ownership(
            self.config.kafka,
            self.service.topics.checkpoints,
            self,
            rebalance_timeout=sync.shutdown_grace + 30.0,
        )

        async def undo() -> None:
            assert self.ownership is not None
            await self.ownership.close()

        if not await self._retrying("group", self.ownership.start, undo):
            return False
        stack.push_async_callback(self.ownership.close)
        return True

    # -- the group's calls (producer.kafka.ownership.ShardListener) ------------------------------

    def shards_assigned(self, shards: frozenset[int]) -> None:
        """Start the assigned shards in a task (the group's callback must not block)."""
        self.metrics.rebalance()
        log.info("shards.assigned", shards=sorted(shards), member=self._member)
        if self._stop.is_set():
            return
        self._pending = shards
        self._taking = asyncio.create_task(
            self._take(shards), name="shards:assign", context=contextvars.Context()
        )

    def group_failed(self, error: NotAuthorized) -> None:
        """The group refused this instance (a missing ACL): stop with exit 1."""
        log.error("daemon.not_authorized", error=str(error))
        self._fail()

    async def shards_revoked(self, shards: frozenset[int]) -> None:
        """Stop the revoked shards' polls (within ``shutdown_grace``), then close them."""
        if shards or self.service.shards:  # the first join revokes nothing
            log.info("shards.revoked", shards=sorted(shards), member=self._member)
        if self._taking is not None:
            self._taking.cancel()
            await asyncio.gather(self._taking, return_exceptions=True)
            self._taking = None
        self._pending = frozenset()
        await self._close_shards(shards | frozenset(self.service.shards), grace=None)

    async def _close_shards(self, shards: frozenset[int], *, grace: float | None) -> None:
        """Unschedule the districts of ``shards`` (running polls get ``grace``, default
        ``shutdown_grace``), then close the shards."""
        self._active -= shards
        if self._scheduler is not None:
            leaving = [
                d for d in self._scheduler.district_ids if self.service.shard_number(d) in shards
            ]
            summary = await self._scheduler.drop(leaving, grace)
            if leaving:
                log.info(
                    "shards.polls_stopped",
                    shards=sorted(shards),
                    districts=len(leaving),
                    finished=summary.finished,
                    cancelled=summary.cancelled,
                )
        await self.service.release(shards)

    async def _take(self, shards: frozenset[int]) -> None:
        """Start the shards (retried with a backoff while the broker is unavailable), then
        poll their districts. A shard whose start is fenced (another instance started it since)
        is left to the next rebalance."""
        delay = 1.0
        while True:
            try:
                started = await self.service.assign(shards)
                break
            except Fenced as exc:
                log.error("shards.start_fenced", shards=sorted(shards), error=str(exc))
                self._request_rejoin_later()
                return
            except CdcError as exc:
                if not exc.retriable:
                    log.error("shards.start_failed", shards=sorted(shards), error=str(exc))
                    self._fail()
                    return
                log.warning("shards.start_retry", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            except Exception as exc:  # a bug: say so loudly and stop, never hang unready
                log.exception("shards.start_crashed", shards=sorted(shards), error=repr(exc))
                self._fail()
                return
        self._active |= shards
        self._pending = frozenset()
        self._assigned_once = True
        self._schedule()
        log.info(
            "shards.ready",
            shards=sorted(self.service.shards),
            started=[s.number for s in started],
            districts=len(self._scheduler.district_ids) if self._scheduler else 0,
            restore_seconds={str(s.number): round(s.restore_seconds, 3) for s in started},
        )

    def _schedule(self) -> None:
        """Poll exactly the districts (static and discovered) of the active shards."""
        if self._scheduler is None or self._stop.is_set():
            return
        service = self.service
        self._scheduler.set_districts(
            d for d in service.district_ids if service.shard_number(d) in self._active
        )

    # -- fences --------------------------------------------------------------------------------

    def _shard_fenced(self, district_id: str) -> None:
        """A commit of this district's shard was fenced: close the shard (in a task: the
        caller is one of its polls) and make sure the daemon rejoins the group."""
        shard = self.service.shard_number(district_id)
        if shard in self._fenced_shards or shard not in self._active:
            return
        self._active -= {shard}
        self._fenced_shards.add(shard)
        self._in_background(self._fenced(shard))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        # A context of its own: not the fenced poll's (its district would be bound to every line).
        task = asyncio.create_task(work, context=contextvars.Context())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _fenced(self, shard: int) -> None:
        try:
            log.error("shard.fenced", shard=shard, action="closing it; rejoining the group")
            revocations = self.ownership.revocations if self.ownership else 0
            await self._close_shards(frozenset({shard}), grace=0.0)
        finally:
            self._fenced_shards.discard(shard)
        await self._rejoin_unless_rebalanced(revocations)

    def _request_rejoin_later(self) -> None:
        revocations = self.ownership.revocations if self.ownership else 0
        self._in_background(self._rejoin_unless_rebalanced(revocations))

    async def _rejoin_unless_rebalanced(self, revocations: int) -> None:
        """Wait a session timeout for the group to notice (a heartbeat learns of the new
        generation and revokes); if nothing happened, ask to rejoin."""
        kafka = self.config.kafka
        await asyncio.sleep(kafka.session_timeout + kafka.heartbeat_interval)
        ownership = self.ownership
        if ownership is not None and ownership.revocations == revocations:
            ownership.request_rejoin()

    # -- discovery -----------------------------------------------------------------------------

    async def _discovery(self) -> None:
        """Refresh ClassLink districts on a schedule; a failed refresh keeps the last list."""
        classlink = self.config.classlink
        assert classlink is not None
        while True:
            try:
                await self.service.refresh_discovery(classlink)
                self._schedule()
            except CdcError as exc:
                log.warning("daemon.discovery_failed", error=str(exc))
            await asyncio.sleep(classlink.refresh_interval)
