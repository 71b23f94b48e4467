"""The sync engine: one pass over a district's entities, from source pages to committed batches.

For each entity, in dependency order (orgs, academicSessions, courses, classes, users,
enrollments, demographics):

- **SyncMode.** FULL on first contact (no cursor), when asked (the schedule or an operator), or when
  the source was found not to honour the delta filter; otherwise DELTA with
  ``filter=dateLastModified>'<cursor - overlap>'`` and no status filter.
- **Pages -> batches.** Each record is normalised (a rejection becomes a dead letter) and diffed
  against the state store; a change becomes an event (DELETED followed by a tombstone) and a
  state write. Batches of ``batch_size`` records commit in their own transaction; a batch
  commits while the next records are processed, one batch in flight (``_flush``).
- **Cursor.** The highest ``dateLastModified`` seen is written, with the counts, in the
  checkpoint of the last transaction of the pass, and only when the listing completed (an idle
  delta that wrote nothing and left the cursor alone commits nothing, except to refresh
  ``last_delta_sync_at`` every 10 minutes): a cursor never runs ahead of committed data, and a
  failed pass is redone from the committed cursor (the differ makes the re-read idempotent).
  A record dated more than ``max(overlap, 10 min)`` past the local clock is processed but does
  not move the cursor (it is logged once per pass).
- **Hard deletes.** A FULL pass whose listing completed deletes the keys the store holds but the
  listing lacked (``absent_from_full_sync``), each confirmed first by a single-record GET that
  answers 404 (a record that slid out of an offset-paged listing while the source changed is
  still there: it is diffed, never deleted), unless they exceed both ``mass_delete_threshold``
  of the entity and ``mass_delete_min`` keys, or are every stored key (an emptied server): then
  nothing is deleted, the count is held in the checkpoint, an alert is logged and counted,
  until ``confirm-deletes`` runs the pass with the guard lifted.
- **Filter fallback.** A source that rejects the delta filter (400) is listed in full at once; one
  that ignores it (its listing says ``filter_ignored``: it returned records the filter excludes,
  ``filters.filter_ignored``), or that answers the first empty delta of an entity holding records
  with nothing even for a filter every record matches (it cannot parse the filter but says 200),
  is marked ``delta_supported = False`` and gets full listings from then on. Each case is logged
  as a warning.
- **Cadence.** An entity in ``sync.entity_intervals`` is visited by a scheduled delta poll only
  when its interval has come round since its last pass in this process (the first poll visits
  it); full syncs and passes over chosen entities visit it whatever its cadence. A skipped
  entity's cursor stays where it was, so its next pass reads every change since.
- **Demographics** answered with 403 (scope not granted) are skipped with a warning.
- **Privacy.** Every source record passes through the ``[privacy]`` rules (``producer.privacy``)
  as it enters, before its raw digest is taken or it is normalised or dead-lettered.
- **Workers.** The pure per-record work of a page (``producer.workers.prepare``) runs in the
  ``sync.workers`` pool when one is given: up to ``_PAGES_AHEAD`` pages are handed over while
  the event loop diffs, encodes and commits the oldest, whose results it takes in page order;
  store look-ups, diffs, envelopes and every write stay here. A worker that dies fails the
  pass (``WorkerDied``) before its cursor moves.
- **Logs** carry sourcedIds, counts and reasons (field and rule), never a record's content.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from producer import diff as differ
from producer.checkpoints import Checkpoint, CheckpointBook, format_cursor
from producer.config import SyncConfig
from producer.errors import FilterUnsupported, Forbidden, ListingIncomplete
from producer.events import Batch, Encoder, SourceInfo
from producer.model import ENTITIES, CanonicalRecord, Entity, RawPage, Rejection, SyncMode
from producer.normalise import dump_raw, normalise
from producer.privacy import NO_RULES, PrivacyRules
from producer.protocols import Clock, Sink, Source, StateReader, SyncObserver
from producer.state import StateWrite, StoredDigest
from producer.workers import Prepared, WorkerPool, prepare

log = structlog.get_logger(__name__)

#: A record may be dated this far past the local clock before it stops moving the cursor.
_FUTURE_ALLOWANCE = timedelta(minutes=10)
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)
#: An idle delta pass (nothing written, cursor unchanged) commits no checkpoint unless the last
#: one is older than this: a thousand quiet districts would otherwise commit a transaction per
#: entity per poll just to say so.
_IDLE_CHECKPOINT_EVERY = timedelta(minutes=10)
#: Concurrent single-record GETs that confirm a full sync's candidate deletes.
_VERIFY_CONCURRENCY = 4
#: With ``sync.workers``, pages handed to the workers before the event loop takes up the
#: oldest one's results (so the workers prepare while the loop diffs, encodes and commits).
_PAGES_AHEAD = 2


@dataclass(slots=True)
class _PageWork:
    """A page, what the store held for its keys when it was handed over, and its prepared
    records (``producer.workers``): a list, or an awaitable one from the worker pool."""

    page: RawPage
    sids: list[Any]
    keys: list[str]
    priors: Mapping[str, StoredDigest]
    prepared: list[Prepared] | Awaitable[list[Prepared]]


class _NoObserver:
    def pass_done(self, result: EntityResult) -> None:
        pass

    def mass_delete_held(self, district_id: str, entity: str, count: int) -> None:
        pass


@dataclass(slots=True)
class EntityResult:
    """What one entity pass did."""

    district_id: str
    entity: Entity
    mode: SyncMode
    sync_id: str
    fetched: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    rejected: int = 0
    held_deletes: int = 0
    skipped: str | None = None
    seconds: float = 0.0
    cursor: str | None = None


class _Seen:
    """The sourcedIds one listing has seen, each with the digest it was first seen with
    (duplicates, absences). The current page's are in a dict; earlier pages' are in the state
    store (``StateStore.mark_seen``), so a listing of a million records holds one page in
    memory, not a million keys."""

    __slots__ = ("_known", "_page", "_prefetched", "_store", "_stored", "listing")

    def __init__(self, store: StateReader) -> None:
        self._store = store
        self.listing = uuid.uuid4().hex  # unique to this pass: a retried pass starts afresh
        self._page: dict[str, bytes] = {}
        self._known: dict[str, bytes] = {}
        self._prefetched: set[str] = set()
        self._stored = False  # whether any page was written to the store

    def prefetch(self, sourced_ids: Sequence[str]) -> None:
        """Look up, in one query, which of a page's sourcedIds earlier pages saw."""
        if self._stored and sourced_ids:
            self._known = self._store.seen_digests(self.listing, sourced_ids)
            self._prefetched = set(sourced_ids)

    def get(self, sid: str) -> bytes | None:
        """The digest ``sid`` was first seen with in this listing, or None."""
        found = self._page.get(sid)
        if found is not None or not self._stored:
            return found
        if sid in self._prefetched:
            return self._known.get(sid)
        return self._store.seen_digests(self.listing, [sid]).get(sid)

    def add(self, sid: str, digest: bytes) -> None:
        """Note a sourcedId seen for the first time."""
        self._page[sid] = digest

    def flush(self) -> None:
        """The page is done: its sourcedIds go to the store."""
        if self._page:
            self._store.mark_seen(self.listing, list(self._page.items()))
            self._stored = True
        self._page, self._known, self._prefetched = {}, {}, set()

    def unseen(self, entity: Entity, district_id: str) -> list[str]:
        """The store's sourcedIds of a district and entity this listing has not seen."""
        self.flush()
        return list(self._store.unseen(self.listing, entity, district_id))

    def close(self) -> None:
        """The pass is over: forget what it saw."""
        if self._stored:
            self._store.forget_seen(self.listing)
            self._stored = False


@dataclass(slots=True)
class _Pass:
    """Mutable state of one entity pass."""

    result: EntityResult
    since: datetime | None
    cursor: datetime | None
    #: sourcedId -> digest of every record seen in this listing (duplicates, absences).
    seen: _Seen
    batch: Batch = field(default_factory=Batch)
    pending: int = 0
    #: The checkpoint as last committed in this pass (or before it): progress counters advance
    #: with every batch, the cursor only with the last.
    cp: Checkpoint | None = None
    #: Keys of this district and entity in the store as of the last commit (counted once at
    #: the start of the pass, then moved by each batch's net effect).
    keys: int = 0
    #: (created, updated, deleted, rejected) already counted in a committed checkpoint.
    counted: tuple[int, int, int, int] = (0, 0, 0, 0)
    #: Records dated after this do not move the cursor (see ``_run``).
    ceiling: datetime = field(default_factory=lambda: _LATEST)
    future_warned: bool = False
    #: The commit of the last batch cut, while it runs (``_flush``).
    inflight: asyncio.Task[None] | None = None


class DistrictSync:
    """Runs sync passes for one district: source -> normaliser -> differ -> sink."""

    def __init__(
        self,
        *,
        district_id: str,
        source: Source,
        server: str | None,
        store: StateReader,
        sink: Sink,
        encoder: Encoder,
        checkpoints: CheckpointBook,
        settings: SyncConfig,
        entities: Sequence[Entity] = ENTITIES,
        observer: SyncObserver | None = None,
        clock: Clock = lambda: datetime.now(UTC),
        privacy: PrivacyRules = NO_RULES,
        workers: WorkerPool | None = None,
    ) -> None:
        self.district_id = district_id
        self._privacy = privacy
        self._workers = workers
        self._source = source
        self._server = server
        self._store = store
        self._sink = sink
        self._encoder = encoder
        self._book = checkpoints
        self._settings = settings
        self._overlap = timedelta(seconds=settings.overlap)
        self._entities = [e for e in ENTITIES if e in entities]
        self._observer: SyncObserver = observer or _NoObserver()
        self._clock = clock
        #: Entities whose delta filter was probed (``_filter_unanswered``).
        self._filter_probed: set[Entity] = set()
        #: When each entity's last pass ended (``sync.entity_intervals``).
        self._visited: dict[Entity, datetime] = {}

    async def sync(
        self,
        *,
        full: bool = False,
        entities: Sequence[Entity] | None = None,
        confirm_deletes: bool = False,
        progress: list[EntityResult] | None = None,
    ) -> list[EntityResult]:
        """One pass over the chosen entities, in dependency order. Raises on the first entity
        that fails (its cursor stays where it was); earlier entities stay committed, and their
        results are in ``progress`` (appended to as each entity finishes) when one is given."""
        sync_id = uuid.uuid4().hex
        chosen = self.chosen(entities)
        if entities is None and not full and not confirm_deletes:
            chosen = [e for e in chosen if self._due(e)]
        results = progress if progress is not None else []
        with structlog.contextvars.bound_contextvars(district=self.district_id, sync_id=sync_id):
            for entity in chosen:
                with structlog.contextvars.bound_contextvars(entity=entity):
                    results.append(
                        await self.sync_entity(
                            entity, full=full, sync_id=sync_id, confirm_deletes=confirm_deletes
                        )
                    )
                self._visited[entity] = self._clock()
        return results

    def _due(self, entity: Entity) -> bool:
        """Whether a scheduled delta poll visits ``entity``: always, unless
        ``sync.entity_intervals`` gives it a cadence that has not come round since its last pass
        (within half a poll interval, so that a poll arriving a moment early does not put the
        entity off by a whole poll)."""
        interval = self._settings.entity_intervals.get(entity)
        last = self._visited.get(entity)
        if interval is None or last is None:
            return True
        slack = self._settings.poll_interval / 2
        return (self._clock() - last).total_seconds() + slack >= interval

    def chosen(self, entities: Sequence[Entity] | None = None) -> list[Entity]:
        """The entities a pass over ``entities`` (None: all of the district's) visits, in order."""
        return [e for e in self._entities if entities is None or e in entities]

    async def sync_entity(
        self, entity: Entity, *, full: bool, sync_id: str, confirm_deletes: bool = False
    ) -> EntityResult:
        """One pass over one entity (see the module docstring)."""
        started = time.monotonic()
        cp = self._book.get(self.district_id, entity)
        mode: SyncMode = "FULL" if full or confirm_deletes or not cp.delta_supported else "DELTA"
        if cp.cursor is None:
            mode = "FULL"
        try:
            result = await self._run(entity, cp, mode, sync_id, confirm_deletes)
            if await self._filter_unanswered(entity, result):
                cp = self._book.get(self.district_id, entity).replace(delta_supported=False)
                result = await self._run(entity, cp, "FULL", sync_id, confirm_deletes)
        except FilterUnsupported as exc:
            log.warning("sync.delta_filter_rejected", reason=str(exc), fallback="FULL")
            cp = cp.replace(delta_supported=False)
            result = await self._run(entity, cp, "FULL", sync_id, confirm_deletes)
        except Forbidden as exc:
            if entity != "demographics":
                raise
            log.warning("sync.demographics_forbidden", reason=str(exc))
            result = EntityResult(self.district_id, entity, mode, sync_id, skipped=str(exc))
        result.seconds = time.monotonic() - started
        self._observer.pass_done(result)
        log.info(
            "sync.entity_done",
            mode=result.mode,
            fetched=result.fetched,
            created=result.created,
            updated=result.updated,
            deleted=result.deleted,
            rejected=result.rejected,
            held_deletes=result.held_deletes,
            seconds=round(result.seconds, 3),
        )
        return result

    async def _filter_unanswered(self, entity: Entity, result: EntityResult) -> bool:
        """After the first empty delta of an entity that holds records: whether the server
        answers a filter every record matches with nothing (it cannot parse the filter but says
        200 with an empty list, not 400). Asked once per entity and process."""
        if result.mode != "DELTA" or result.fetched or entity in self._filter_probed:
            return False
        if not self._store.count(entity, self.district_id):
            return False
        self._filter_probed.add(entity)
        if await self._source.filter_answers(entity):
            return False
        log.warning(
            "sync.delta_filter_unanswered",
            reason="a filter every record matches returned no record",
            fallback="FULL from now on",
        )
        return True

    async def _run(
        self, entity: Entity, cp: Checkpoint, mode: SyncMode, sync_id: str, confirm_deletes: bool
    ) -> EntityResult:
        await self._source.resolve_version()
        cursor = cp.cursor_time()
        since = None
        if mode == "DELTA" and cursor is not None:
            since = max(cursor, _EARLIEST + self._overlap) - self._overlap
        # A record dated past the local clock plus this allowance does not move the cursor: one
        # data-entry or clock error would otherwise blind every later delta.
        ceiling = self._clock() + max(self._overlap, _FUTURE_ALLOWANCE)
        state = _Pass(
            EntityResult(self.district_id, entity, mode, sync_id),
            since,
            cursor,
            _Seen(self._store),
            ceiling=ceiling,
            cp=cp,
            keys=self._store.count(entity, self.district_id),
        )
        ahead: deque[_PageWork] = deque()
        depth = _PAGES_AHEAD if self._workers is not None else 0
        try:
            listing = self._source.listing(entity, since=since)
            async for page in listing:
                ahead.append(self._hand_over(entity, page))
                if len(ahead) > depth:
                    await self._page(entity, ahead.popleft(), state, mode)
            while ahead:
                await self._page(entity, ahead.popleft(), state, mode)
            await self._landed(state)
            if not listing.complete:
                raise ListingIncomplete(  # noqa: TRY301 - the handler below must see it too
                    f"{entity} listing of district {self.district_id!r} is incomplete: "
                    f"{listing.incomplete_reason}; its cursor stays at {cp.cursor}"
                )
            if mode == "FULL":
                await self._absent(entity, state, cp, confirm_deletes)
        except BaseException as exc:
            await self._abandon(state, exc)
            raise
        finally:
            await _drop(ahead)
            state.seen.close()
        if mode == "DELTA" and listing.filter_ignored:
            log.warning("sync.delta_filter_ignored", since=str(since), fallback="FULL from now on")
            cp = cp.replace(delta_supported=False)
        await self._finish(entity, state, cp, mode)
        return state.result

    def _hand_over(self, entity: Entity, page: RawPage) -> _PageWork:
        """Look up what the store holds for a page's keys, and start its pure per-record work
        (``producer.workers.prepare``): at once in this process, or in the worker pool.

        Looking up ahead of the pages still being processed is safe: the only keys those pages
        write are keys this listing has seen, and a seen key's stored state is never consulted
        again in the listing (``_Seen``)."""
        records = page.records
        sids = [raw.get("sourcedId") if type(raw) is dict else None for raw in records]
        keys = [sid for sid in sids if isinstance(sid, str)]
        priors = self._store.digests(entity, self.district_id, keys)
        stored_raw = [
            found.raw_digest
            if (found := priors.get(sid) if isinstance(sid, str) else None)
            else None
            for sid in sids
        ]
        prepared: list[Prepared] | Awaitable[list[Prepared]]
        if self._workers is None:
            prepared = prepare(entity, self.district_id, records, stored_raw, self._privacy)
        else:
            prepared = asyncio.ensure_future(
                self._workers.prepare(entity, self.district_id, records, stored_raw, self._privacy)
            )
        return _PageWork(page, sids, keys, priors, prepared)

    async def _page(self, entity: Entity, work: _PageWork, state: _Pass, mode: SyncMode) -> None:
        """Diff and batch one prepared page.

        Fast path: a record whose raw digest (its source JSON without ``dateLastModified``)
        equals the one stored with its key is the record already stored, at most touched: only
        its date is read (for the cursor) and the normaliser is skipped (unless the listing
        already saw its key: it is then normalised here, to be judged as a duplicate).
        """
        prepared = work.prepared if isinstance(work.prepared, list) else await work.prepared
        records, priors = work.page.records, work.priors
        state.result.fetched += len(records)
        state.seen.prefetch(work.keys)
        received: list[tuple[CanonicalRecord, bytes | None, bytes | None, bytes | None]] = []
        touched: list[tuple[str, bytes]] = []
        for raw, sid, (raw_digest, moment, result, new_digest, body) in zip(
            records, work.sids, prepared, strict=True
        ):
            outcome = result
            if moment is not None:
                if state.seen.get(sid) is None:
                    state.seen.add(sid, priors[sid].digest)
                    self._observe_date(state, sid, moment, mode)
                    continue
                outcome = normalise(entity, self.district_id, self._privacy.apply(entity, raw))
            if isinstance(outcome, Rejection):
                self._dead_letter(state, outcome)
            elif outcome is not None:
                received.append((outcome, raw_digest, new_digest, body))
        for record, raw_digest, new_digest, body in received:
            self._record(
                record,
                priors,
                state,
                mode,
                raw_digest=raw_digest,
                touched=touched,
                new_digest=new_digest,
                after_body=body,
            )
            if state.pending >= self._settings.batch_size:
                await self._flush(state)
        state.seen.flush()
        self._store.remember_raw_digests(entity, self.district_id, touched)

    def _observe_date(self, state: _Pass, sid: str, moment: datetime, mode: SyncMode) -> None:
        """Move the cursor (unless the date is in the future)."""
        if moment > state.ceiling:
            if not state.future_warned:
                state.future_warned = True
                log.warning(
                    "sync.future_dated_record",
                    sourced_id=sid,
                    date_last_modified=moment.isoformat(),
                    note="future-dated records do not move the delta cursor",
                )
        elif state.cursor is None or moment > state.cursor:
            state.cursor = moment

    def _record(
        self,
        record: CanonicalRecord,
        priors: Mapping[str, StoredDigest],
        state: _Pass,
        mode: SyncMode,
        *,
        raw_digest: bytes | None = None,
        touched: list[tuple[str, bytes]] | None = None,
        new_digest: bytes | None = None,
        after_body: bytes | None = None,
    ) -> None:
        if new_digest is None:
            new_digest = differ.digest(record.data)
        sid = record.sourced_id
        seen = state.seen.get(sid)
        if seen is not None:
            if seen != new_digest:
                self._dead_letter(
                    state,
                    Rejection(
                        record.entity,
                        self.district_id,
                        f"{record.entity}[sourcedId]: {sid!r} appears twice in one listing "
                        "with different content; the first was kept",
                        dump_raw(record.data),
                        sid,
                    ),
                )
            return
        state.seen.add(sid, new_digest)
        self._observe_date(state, sid, record.date_last_modified, mode)
        stored = priors.get(sid)
        if stored is not None and stored.digest == new_digest:
            # Unchanged (at most touched): nothing to write; remember its raw form.
            if raw_digest is not None and touched is not None and stored.raw_digest != raw_digest:
                touched.append((sid, raw_digest))
            return
        prior: differ.Prior | None = None
        before_body = None
        full = self._store.get(record.entity, self.district_id, sid) if stored else None
        if full is not None:
            data, before_body = self._encoder.prior(full.value)
            prior = (full.digest, data)
        change = differ.diff(record, prior, new_digest=new_digest)
        if change is None:
            return
        self._emit(state, change, mode, before_body, raw_digest, after_body=after_body)

    def _emit(
        self,
        state: _Pass,
        change: differ.Change,
        mode: SyncMode,
        before_body: bytes | None,
        raw_digest: bytes | None = None,
        *,
        after_body: bytes | None = None,
    ) -> None:
        source = SourceInfo(
            version=self._source.version or "",
            server=self._server,
            sync_mode=mode,
            sync_id=state.result.sync_id,
            emitted_at=self._clock(),
        )
        rejected = self._encoder.add_change(
            state.batch,
            change,
            source,
            before_body=before_body,
            raw_digest=raw_digest,
            after_body=after_body,
        )
        if rejected is not None:
            self._reject_change(state, change, rejected)
            return
        if change.op == "DELETED":
            state.result.deleted += 1
        elif change.op == "CREATED":
            state.result.created += 1
        else:
            state.result.updated += 1
        state.pending += 1

    def _reject_change(self, state: _Pass, change: differ.Change, reason: str) -> None:
        raw = dump_raw(change.after if change.after is not None else change.before)
        self._dead_letter(
            state, Rejection(change.entity, self.district_id, reason, raw, change.sourced_id)
        )

    def _dead_letter(self, state: _Pass, rejection: Rejection) -> None:
        self._encoder.add_dead_letter(
            state.batch, rejection, received_at=self._clock(), sync_id=state.result.sync_id
        )
        state.result.rejected += 1
        state.pending += 1
        log.warning(
            "sync.record_rejected", sourced_id=rejection.sourced_id, reason=rejection.reason
        )

    async def _flush(self, state: _Pass, **final: Any) -> None:
        """Cut the pending batch and commit it with a checkpoint that counts what it holds (the
        cursor and sync times change only through ``final``, in the pass's last batch); once it
        has committed, record that checkpoint as committed.

        The commit runs as a task while the pass goes on with the next records, one batch in
        flight: the next cut, the end of the listing and a failure of the pass wait for it
        first (``_landed``, ``_abandon``), so batches commit in order, each checkpoint counts
        from the one committed before it, a failed commit fails the pass, and the cursor (in
        the last batch) follows every batch before it. While a batch is in flight the pass
        reads the store only for sourcedIds this listing has not seen, and the batch writes only
        ones it has (``_Seen``: a sourcedId seen again is decided without the store), so no
        decision depends on whether the batch has reached the store yet. The last batch
        (``final``) returns once committed; ``_landed`` waits for any other."""
        batch, state.batch, state.pending = state.batch, Batch(), 0
        await self._landed(state)
        assert state.cp is not None
        r = state.result
        done = (r.created, r.updated, r.deleted, r.rejected)
        created, updated, deleted, rejected = (
            a - b for a, b in zip(done, state.counted, strict=True)
        )
        if batch.empty and not final:
            return
        keys = state.keys + _net_new(self._store, r.entity, self.district_id, batch.state)
        cp = state.cp.replace(
            record_count=keys,
            created_count=state.cp.created_count + created,
            updated_count=state.cp.updated_count + updated,
            deleted_count=state.cp.deleted_count + deleted,
            rejected_count=state.cp.rejected_count + rejected,
            last_sync_id=r.sync_id,
            **final,
        )
        batch.checkpoint = self._encoder.checkpoint(cp)
        state.inflight = asyncio.ensure_future(self._commit(state, batch, cp, done, keys))
        if final:
            await self._landed(state)

    async def _commit(
        self,
        state: _Pass,
        batch: Batch,
        cp: Checkpoint,
        done: tuple[int, int, int, int],
        keys: int,
    ) -> None:
        """Commit a batch cut by ``_flush``, then record its checkpoint as committed."""
        await self._sink.commit(batch)
        state.cp, state.counted, state.keys = cp, done, keys
        self._book.put(cp)

    async def _landed(self, state: _Pass) -> None:
        """Wait until the batch in flight (if any) has committed; its failure is raised here."""
        task, state.inflight = state.inflight, None
        if task is not None:
            await task

    async def _abandon(self, state: _Pass, error: BaseException) -> None:
        """The pass fails with ``error`` while a batch may be in flight: the batch commits or
        fails as it would have before the error came (its failure is raised instead); when the
        pass is cancelled, the batch is cancelled with it (its transaction is aborted)."""
        task, state.inflight = state.inflight, None
        if task is None:
            return
        if isinstance(error, Exception):
            await task
            return
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: the pass raises its cancellation, not this

    async def _absent(
        self, entity: Entity, state: _Pass, cp: Checkpoint, confirm_deletes: bool
    ) -> None:
        # Commit what the listing brought first, so the store reflects it.
        await self._flush(state)
        await self._landed(state)
        total = state.keys
        missing = state.seen.unseen(entity, self.district_id)
        if not missing:
            return
        if not confirm_deletes and self._mass_delete(len(missing), total):
            state.result.held_deletes = len(missing)
            self._observer.mass_delete_held(self.district_id, entity, len(missing))
            log.error(
                "sync.mass_delete_held",
                missing=len(missing),
                total=total,
                threshold=self._settings.mass_delete_threshold,
                minimum=self._settings.mass_delete_min,
                action=f"oneroster-cdc confirm-deletes --district {self.district_id} "
                f"--entity {entity}",
            )
            return
        for start in range(0, len(missing), self._settings.batch_size):
            chunk = missing[start : start + self._settings.batch_size]
            current = await self._verify(entity, chunk)
            stored = self._store.get_many(entity, self.district_id, chunk)
            present: list[CanonicalRecord] = []
            for sid in chunk:
                prior = stored.get(sid)
                if prior is None:
                    continue
                raw = self._privacy.apply(entity, current[sid])
                if raw is not None:
                    # The listing missed a record that still exists (offsets shifted while it
                    # paged): never a delete; diff what the server holds now instead.
                    log.warning("sync.absent_but_present", sourced_id=sid)
                    outcome = normalise(entity, self.district_id, raw)
                    if isinstance(outcome, Rejection):
                        self._dead_letter(state, outcome)
                    else:
                        present.append(outcome)
                    continue
                data, body = self._encoder.prior(prior.value)
                change = differ.absent(entity, self.district_id, sid, (prior.digest, data))
                self._emit(state, change, "FULL", body)
            known = self._store.digests(entity, self.district_id, [r.sourced_id for r in present])
            state.seen.prefetch([r.sourced_id for r in present])
            for record in present:
                self._record(record, known, state, "FULL")
            state.seen.flush()
            await self._flush(state)
        await self._landed(state)

    def _mass_delete(self, missing: int, total: int) -> bool:
        """Whether ``missing`` absent keys out of ``total`` stored ones trip the guard: more than
        the share and more than the floor, or every stored key (an emptied or wiped server)."""
        if missing >= total:
            return True
        settings = self._settings
        share = settings.mass_delete_threshold * total
        return missing > share and missing > settings.mass_delete_min

    async def _verify(self, entity: Entity, sourced_ids: Sequence[str]) -> dict[str, Any]:
        """What the server holds now for each candidate delete: its record, or None (404)."""
        gate = asyncio.Semaphore(_VERIFY_CONCURRENCY)

        async def one(sid: str) -> tuple[str, Any]:
            async with gate:
                return sid, await self._source.fetch_one(entity, sid)

        return dict(await asyncio.gather(*(one(sid) for sid in sourced_ids)))

    async def _finish(self, entity: Entity, state: _Pass, cp: Checkpoint, mode: SyncMode) -> None:
        """The pass's last transaction: whatever is pending, plus the checkpoint with the new
        cursor and sync time."""
        result = state.result
        now = self._clock()
        cursor = format_cursor(state.cursor) if state.cursor is not None else cp.cursor
        result.cursor = cursor
        if (
            mode == "DELTA"
            and state.batch.empty
            and cursor == cp.cursor
            and state.cp == cp
            and cp.last_delta_sync_at is not None
            and now - cp.last_delta_sync_at < _IDLE_CHECKPOINT_EVERY
        ):
            return  # an idle delta: nothing to commit (its time is recorded every few minutes)
        await self._flush(
            state,
            cursor=cursor,
            held_deletes=result.held_deletes if mode == "FULL" else cp.held_deletes,
            delta_supported=cp.delta_supported,
            **({"last_full_sync_at": now} if mode == "FULL" else {"last_delta_sync_at": now}),
        )


async def _drop(ahead: deque[_PageWork]) -> None:
    """Cancel the page work still in flight when a pass ends early, and wait for it."""
    pending = [w.prepared for w in ahead if isinstance(w.prepared, asyncio.Future)]
    ahead.clear()
    for future in pending:
        future.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _net_new(
    store: StateReader, entity: str, district_id: str, writes: Sequence[StateWrite]
) -> int:
    """How the key count changes when ``writes`` are applied: upserts of unknown keys add one,
    deletes of known keys remove one."""
    if not writes:
        return 0
    known = store.get_many(entity, district_id, [w.sourced_id for w in writes])
    change = 0
    for w in writes:
        if w.value is None and w.sourced_id in known:
            change -= 1
        elif w.value is not None and w.sourced_id not in known:
            change += 1
    return change
