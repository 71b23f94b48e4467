"""``sync.workers``: the pure per-record work of a page, in process or in worker processes.

The sync engine (``producer.sync``) hands each page to ``prepare``: for every raw record, in
page order, the ``[privacy]`` rules, the raw digest, the raw-digest fast path (a record whose
raw digest equals the one stored with its key needs only its ``dateLastModified``), and
otherwise the normaliser and the canonical digest. With worker processes it also encodes the
Avro body of the new record (the body the encoder splices into ``after`` and frames as the state
value). The event loop keeps everything that touches the store, the listing and Kafka: store
look-ups, the fast-path decision (which needs the listing's seen keys), the diff, the envelope,
batching and every write. So ordering and exactly-once are those of the in-process path: a
page's results are the in-process results, and the engine consumes them in page order.

Public API::

    Prepared                                      # one record's result (a tuple, see below)
    prepare(entity, district_id, records, stored_raw, privacy, *, encode=False)
        -> list[Prepared]
    resolve_workers(setting: int | "auto") -> int  # 0: in process; N: N worker processes
    WorkerPool(workers)                            # .prepare(...) (awaitable), .pids(), .close()

``sync.workers``: ``0`` (the default, chosen by measurement: docs/performance.md) runs the work
in the event loop's process, no pool; ``N >= 1`` runs it in N worker processes (``1`` is one
separate process beside the event loop, not in process); ``"auto"`` is cores - 1, at least 1.

The pool is an async context manager started lazily (no process exists until the first page is
prepared), once per process, and shut down by ``close`` (idempotent; the service closes it on
shutdown). Processes are started with ``spawn`` (never ``fork`` from a process that runs an
event loop and threads). A worker that dies (killed, out of memory) fails the page with
``WorkerDied``, so the pass fails before its cursor moves; the pool is replaced, so the next
pass starts new workers.

What crosses the process boundary is kept small: the page goes out as the JSON bytes of its
records (``orjson``; cheaper to write and read than a pickle of the parsed objects) with the
stored raw digests, and comes back as compact tuples.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from functools import cache
from typing import Any, Final, Literal, Self

import orjson
import structlog

from producer import diff as differ
from producer.avro import RECORD_NAMES, Schemas
from producer.config import MAX_WORKERS
from producer.errors import ClientClosed, EncodingError, WorkerDied
from producer.model import CanonicalRecord, Entity, Rejection, Status
from producer.normalise import normalise
from producer.privacy import PrivacyRules
from producer.timestamps import parse_timestamp

log = structlog.get_logger(__name__)

#: One record's result, in page order: ``(raw_digest, moment, outcome, digest, body)``.
#: Fast path (the raw digest equals the stored one and the date parses): ``moment`` is the
#: record's ``dateLastModified`` and the rest is None. Otherwise ``moment`` is None, ``outcome``
#: is the normaliser's (a ``CanonicalRecord`` or a ``Rejection``), and for a canonical record
#: ``digest`` is its canonical digest and ``body`` its Avro body when asked for (None also when
#: it does not fit the schema: the encoder then says why, in the event loop).
Prepared = tuple[
    bytes | None, datetime | None, CanonicalRecord | Rejection | None, bytes | None, bytes | None
]

WorkersSetting = int | Literal["auto"]


def prepare(
    entity: Entity,
    district_id: str,
    records: Sequence[Any],
    stored_raw: Sequence[bytes | None],
    privacy: PrivacyRules,
    *,
    encode: bool = False,
) -> list[Prepared]:
    """The pure work of one page (see the module docstring); ``stored_raw[i]`` is the raw
    digest stored with the key of ``records[i]`` (None when unknown)."""
    schemas = _schemas() if encode else None
    name = RECORD_NAMES[entity]
    active = privacy.active
    out: list[Prepared] = []
    for received, stored in zip(records, stored_raw, strict=True):
        # [privacy]: before anything reads, digests or keeps a record
        raw = privacy.apply(entity, received) if active else received
        raw_digest = differ.raw_digest(raw)
        if raw_digest is not None and stored == raw_digest:
            text = raw.get("dateLastModified")
            moment = parse_timestamp(text) if isinstance(text, str) else None
            if moment is not None:
                out.append((raw_digest, moment, None, None, None))
                continue
        outcome = normalise(entity, district_id, raw)
        if isinstance(outcome, Rejection):
            out.append((raw_digest, None, outcome, None, None))
            continue
        body = None
        if schemas is not None:
            try:
                body = schemas.encode_body(name, outcome.data)
            except EncodingError:
                body = None
        out.append((raw_digest, None, outcome, differ.digest(outcome.data), body))
    return out


@cache
def _schemas() -> Schemas:
    """The current schemas, parsed once per process (a worker's first page)."""
    return Schemas.load(history=False)


#: A canonical record as it crosses back from a worker: ``(sourcedId, status,
#: dateLastModified, the data as JSON bytes)``. Unpickling a ``CanonicalRecord`` with its dict
#: cost the event loop ~12 µs per user; these tuples and one ``orjson.loads`` cost ~3.
_Compact = tuple[str, Status, datetime, bytes]
_Sent = tuple[
    bytes | None, datetime | None, Rejection | _Compact | None, bytes | None, bytes | None
]


def _prepare_in_worker(
    entity: Entity,
    district_id: str,
    page: bytes | list[Any],
    stored_raw: Sequence[bytes | None],
    privacy: PrivacyRules,
) -> list[_Sent]:
    """``prepare`` in a worker: the page arrives as JSON bytes (or, when its records are not
    JSON, as the pickled list); canonical records go back compact."""
    records = orjson.loads(page) if isinstance(page, bytes) else page
    out: list[_Sent] = []
    for raw_digest, moment, outcome, digest, body in prepare(
        entity, district_id, records, stored_raw, privacy, encode=True
    ):
        if isinstance(outcome, CanonicalRecord):
            compact = (
                outcome.sourced_id,
                outcome.status,
                outcome.date_last_modified,
                orjson.dumps(outcome.data),
            )
            out.append((raw_digest, moment, compact, digest, body))
        else:
            out.append((raw_digest, moment, outcome, digest, body))
    return out


def _received(entity: Entity, district_id: str, sent: list[_Sent]) -> list[Prepared]:
    """A worker's results as ``prepare`` gives them (in the event loop)."""
    out: list[Prepared] = []
    for raw_digest, moment, outcome, digest, body in sent:
        if isinstance(outcome, tuple):
            sid, status, dlm, data = outcome
            record = CanonicalRecord(entity, district_id, sid, status, dlm, orjson.loads(data))
            out.append((raw_digest, moment, record, digest, body))
        else:
            out.append((raw_digest, moment, outcome, digest, body))
    return out


#: How often a worker checks that its parent is alive.
_ORPHAN_CHECK_S: Final = 0.5


def _worker_started() -> None:
    """In a new worker: leave SIGINT to the parent, and exit when the parent is gone.

    A Ctrl-C in a terminal reaches the whole process group; the parent then shuts down
    gracefully and stops its workers itself. (SIGTERM keeps its default: ``concurrent.futures``
    ends the survivors of a broken pool with it, and a service manager that signals the whole
    group ends the workers at once; the passes in flight then fail before their cursors move.)
    A parent that is killed outright (SIGKILL, OOM) cannot stop its workers: a worker blocked on
    its queue would never learn of it, so a thread watches the parent's pid and ends the
    worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_ORPHAN_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_workers(setting: WorkersSetting, cores: int | None = None) -> int:
    """The worker processes ``sync.workers`` asks for: a number as it is; ``"auto"`` is cores - 1,
    at least 1. (The default is 0, in process: on the 2-core machine measured, a worker moved
    11 µs per record off the event loop and cost 30 µs more CPU per record in all, for no
    gain in records/s; docs/performance.md.)"""
    if setting != "auto":
        return setting
    cores = available_cores() if cores is None else cores
    return max(1, cores - 1)


class WorkerPool:
    """``workers`` worker processes for ``prepare`` (see the module docstring)."""

    def __init__(self, workers: int) -> None:
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 1 to {MAX_WORKERS}, not {workers}")
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"WorkerPool(workers={self.workers})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _pool(self) -> ProcessPoolExecutor:
        if self._closed:
            raise ClientClosed("the worker pool of sync.workers is closed")
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_started,
            )
            log.info("workers.started", workers=self.workers)
        return self._executor

    async def prepare(
        self,
        entity: Entity,
        district_id: str,
        records: Sequence[Any],
        stored_raw: Sequence[bytes | None],
        privacy: PrivacyRules,
    ) -> list[Prepared]:
        """``prepare`` (with the Avro bodies) in a worker; ``WorkerDied`` when the worker dies
        (the pool is then replaced for the work that follows)."""
        page: bytes | list[Any]
        try:
            page = orjson.dumps(records)
        except (orjson.JSONEncodeError, TypeError):  # e.g. an unpaired surrogate: pickle it
            page = list(records)
        executor = self._pool()
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(
                executor, _prepare_in_worker, entity, district_id, page, list(stored_raw), privacy
            )
            sent = await _watched(future, executor)
        except BrokenProcessPool as exc:
            if self._executor is executor:
                self._executor = None
                _stop(executor)
                log.error("workers.died", workers=self.workers)
            raise WorkerDied(
                f"a worker process of sync.workers died while preparing a page of {entity} "
                f"(killed, or out of memory?): the pass fails and its cursor stays; new workers "
                f"start for the next pass"
            ) from exc
        return _received(entity, district_id, sent)

    def pids(self) -> list[int]:
        """The process ids of the running workers (none before the first page)."""
        return sorted(_processes(self._executor))

    async def close(self) -> None:
        """Stop the workers (pending pages are cancelled), waiting at most ``_STOP_S`` for
        them to finish their page before they are killed; idempotent."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        stopping = asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        try:
            await asyncio.wait_for(stopping, _STOP_S)
        except TimeoutError:
            log.warning("workers.killed", workers=self.workers, after_seconds=_STOP_S)
            _stop(executor)
        log.info("workers.stopped", workers=self.workers)


#: How often a page's wait checks that the workers are alive (the executor notices a dead
#: worker by itself; this bounds the wait if it does not).
_LIVENESS_S: Final = 1.0
#: How long ``close`` waits for the workers to finish before killing them.
_STOP_S: Final = 10.0


def _processes(executor: ProcessPoolExecutor | None) -> dict[int, Any]:
    """The executor's worker processes by pid (``concurrent.futures`` keeps them private)."""
    found: dict[int, Any] | None = getattr(executor, "_processes", None)
    return dict(found or {})


async def _watched(future: asyncio.Future[list[_Sent]], executor: ProcessPoolExecutor) -> Any:
    """The result of ``future``; ``BrokenProcessPool`` as soon as a worker is found dead."""
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=_LIVENESS_S)
            if done:
                return future.result()
            if any(p.exitcode is not None for p in _processes(executor).values()):
                raise BrokenProcessPool("a worker process of sync.workers exited")
    finally:
        future.cancel()  # a no-op once done; else nobody waits for it any more


def _stop(executor: ProcessPoolExecutor) -> None:
    """Stop a broken or stuck pool at once: its workers are killed."""
    processes = _processes(executor)
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes.values():
        if process.exitcode is None:
            process.kill()
