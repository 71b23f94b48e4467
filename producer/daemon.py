"""``oneroster-cdc run``: the long-lived daemon.

Start order (teardown runs in reverse, from one ``AsyncExitStack``):

1. The HTTP endpoints and the heartbeat, so ``/healthz`` answers and ``/readyz`` (and the
   status page at ``/``) say "not ready" while the rest starts.
2. The ``Service`` (topics, writer, schema publication, state restore, checkpoints). While the
   broker cannot be reached it is retried with a capped backoff; nothing is written meanwhile.
3. The scheduler, with the static districts and, when ``[classlink]`` is set, the discovered
   ones, refreshed every ``refresh_interval`` (added districts start polling, removed ones stop).

Shutdown: the first SIGTERM/SIGINT stops new polls, gives in-flight polls
``[sync] shutdown_grace`` seconds, cancels the rest (an open transaction is aborted, never
committed half-way), closes Kafka and HTTP and logs one summary line. A second signal exits at
once. A ``Fenced`` writer (another instance took over this shard) stops the daemon with exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import structlog

from producer.config import Config
from producer.errors import CdcError, Fenced, NotAuthorized
from producer.http_api import ChecksProbe, Health, Heartbeat, HttpServer
from producer.metrics import Metrics
from producer.scheduler import Scheduler
from producer.service import Service
from producer.status import district_row, iso

log = structlog.get_logger(__name__)


class _Runner:
    """The scheduler's ``DistrictRunner``: polls through the service; a fence, or a missing ACL
    (``NotAuthorized``: retrying cannot help), stops the daemon with exit code 1."""

    def __init__(self, service: Service, on_fenced: Callable[[], None]) -> None:
        self._service = service
        self._on_fenced = on_fenced

    async def poll(self, district_id: str, *, full: bool) -> None:
        try:
            await self._service.poll(district_id, full=full)
        except Fenced:
            log.error("daemon.fenced", district=district_id)
            self._on_fenced()
            raise
        except NotAuthorized as exc:
            log.error("daemon.not_authorized", district=district_id, error=str(exc))
            self._on_fenced()
            raise


class Daemon:
    """Runs until ``stop()`` (or a signal); ``run()`` returns the exit code."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.service = Service(config, metrics=self.metrics)
        self.http: HttpServer | None = None
        self._stop = asyncio.Event()
        self._fenced = False
        self._signals = 0
        self.started = asyncio.Event()
        self._scheduler: Scheduler | None = None
        self._health: Health | None = None

    def stop(self) -> None:
        """Ask the daemon to shut down gracefully."""
        self._stop.set()

    def _fence(self) -> None:
        self._fenced = True
        self._stop.set()

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("daemon.second_signal", signal=signal.Signals(signum).name)
            os._exit(130)
        log.info("daemon.signal", signal=signal.Signals(signum).name)
        self.stop()

    async def _readiness_broker(self) -> bool:
        return await self.service.broker_reachable()

    async def status(self) -> dict[str, Any]:
        """The status page's snapshot: readiness, and every district (static or discovered)
        with its entities' checkpoints and the scheduler's view (circuit, last error)."""
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
                "shard_count": kafka.shards,
                "shards": sorted(service.shards),
            },
            "readiness": {
                "ready": bool(checks) and all(c.ok for c in checks),
                "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
            },
            "districts": districts,
        }

    async def run(self, *, install_signals: bool = True) -> int:
        """Start, run until stopped, stop; the process exit code."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._on_signal, signum)
        started = time.monotonic()
        heartbeat = Heartbeat()
        probe = ChecksProbe(
            {"broker": self._readiness_broker, "state_restored": lambda: self.service.restored}
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
                _Runner(self.service, self._fence),
                self.config.sync,
                history=self.service,
                metrics=self.metrics,
            )
            self._scheduler = scheduler
            scheduler.set_districts(self.service.district_ids)
            if self.config.classlink is not None:
                refresher = asyncio.create_task(self._discovery(scheduler))
                stack.callback(refresher.cancel)
            self.started.set()
            await self._stop.wait()
            summary = await scheduler.stop()
            log.info(
                "daemon.stopped",
                finished_polls=summary.finished,
                cancelled_polls=summary.cancelled,
                uptime_seconds=round(time.monotonic() - started, 1),
                fenced=self._fenced,
            )
        # The signal handlers stay until the loop closes (asyncio removes them then): a signal
        # during the loop's own teardown still finds a handler.
        return 1 if self._fenced else 0

    async def _start_service(self, stack: AsyncExitStack) -> bool:
        """Start the service, retrying while the broker is unavailable; False if stopped."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                await self.service.start()
            except CdcError as exc:
                if not exc.retriable:
                    await self.service.close()
                    raise
                log.warning("daemon.start_retry", error=str(exc), retry_in=delay)
                await self.service.close()
                self.service = Service(self.config, metrics=self.metrics)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, 30.0)
                continue
            stack.push_async_callback(self.service.close)
            return True
        return False

    async def _discovery(self, scheduler: Scheduler) -> None:
        """Refresh ClassLink districts on a schedule; a failed refresh keeps the last list."""
        classlink = self.config.classlink
        assert classlink is not None
        while True:
            try:
                ids = await self.service.refresh_discovery(classlink)
                scheduler.set_districts(ids)
            except CdcError as exc:
                log.warning("daemon.discovery_failed", error=str(exc))
            await asyncio.sleep(classlink.refresh_interval)
