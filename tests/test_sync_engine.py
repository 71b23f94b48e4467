"""The sync engine's rules, without a broker: ``DistrictSync`` against the in-memory seams of
``producer.testing`` (a real SQLite store in memory, a sink that keeps batches, a source held in
memory). The transactions themselves are proved end to end in ``tests/test_sync.py``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from producer import events
from producer.avro import Schemas
from producer.checkpoints import Checkpoint, CheckpointBook
from producer.config import SyncConfig
from producer.errors import BrokerUnavailable, ListingIncomplete
from producer.events import Encoder, OutRecord
from producer.kafka.topics import TopicNames
from producer.model import Entity, RawPage
from producer.state import StateStore
from producer.sync import DistrictSync, EntityResult
from producer.testing import (
    MemoryListing,
    MemorySink,
    MemorySource,
    RecordingObserver,
    memory_store,
)

SCHEMAS = Schemas.load(history=False)
TOPICS = TopicNames("t")
DISTRICT = "d1"
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def org(sid: str, *, at: datetime = T0, **fields: Any) -> dict[str, Any]:
    """A valid org record dated ``at``."""
    return {
        "sourcedId": sid,
        "status": "active",
        "dateLastModified": stamp(at),
        "name": f"Org {sid}",
        **fields,
    }


def orgs(n: int, *, at: datetime = T0) -> list[dict[str, Any]]:
    return [org(f"org-{i:03d}", at=at) for i in range(n)]


@dataclass
class Engine:
    """One district's engine wired to in-memory seams, with a settable clock."""

    source: MemorySource
    settings: SyncConfig = field(default_factory=SyncConfig)
    now: datetime = T0 + timedelta(hours=1)
    store: StateStore = field(default_factory=memory_store)
    book: CheckpointBook = field(default_factory=CheckpointBook)
    observer: RecordingObserver = field(default_factory=RecordingObserver)
    encoder: Encoder = field(default_factory=lambda: Encoder(SCHEMAS, TOPICS))
    make_sink: Callable[[StateStore], MemorySink] = MemorySink

    def __post_init__(self) -> None:
        self.sink = self.make_sink(self.store)
        self.sync = DistrictSync(
            district_id=DISTRICT,
            source=self.source,
            server="memory://sis",
            store=self.store,
            sink=self.sink,
            encoder=self.encoder,
            checkpoints=self.book,
            settings=self.settings,
            entities=list(self.source.records),
            observer=self.observer,
            clock=lambda: self.now,
        )

    async def run(self, entity: Entity = "orgs", **kwargs: Any) -> EntityResult:
        (result,) = await self.sync.sync(entities=[entity], **kwargs)
        return result

    def cp(self, entity: Entity = "orgs") -> Checkpoint:
        return self.book.get(DISTRICT, entity)

    def envelopes(self, since: int = 0) -> list[dict[str, Any]]:
        """Decoded change events committed in batches ``since`` onwards (no tombstones)."""
        return [
            SCHEMAS.decode(r.value).value
            for b in self.sink.batches[since:]
            for r in b.events
            if r.value is not None
        ]

    def letters(self) -> list[dict[str, Any]]:
        return [decode(r) for r in self.sink.deadletters]


def seen_rows(store: StateStore) -> int:
    """Seen-key marks left in the store (a finished pass leaves none)."""
    return int(store.db.execute("SELECT count(*) FROM seen").fetchone()[0])


def decode(record: OutRecord) -> dict[str, Any]:
    assert record.value is not None
    return dict(SCHEMAS.decode(record.value).value)


async def test_first_pass_is_full_and_commits_events_then_the_cursor() -> None:
    """With no cursor the pass is FULL; every record is CREATED once; the last transaction
    carries the checkpoint whose cursor is the highest dateLastModified seen."""
    records = [org("a", at=T0), org("b", at=T0 + timedelta(minutes=5)), org("c", at=T0)]
    engine = Engine(MemorySource({"orgs": records}, page_size=2))
    result = await engine.run()
    assert result.mode == "FULL"
    assert (result.fetched, result.created, result.updated, result.deleted) == (3, 3, 0, 0)
    assert [e["op"] for e in engine.envelopes()] == ["CREATED"] * 3
    assert engine.sink.batches[-1].checkpoint is not None
    assert decode(engine.sink.batches[-1].checkpoint)["cursor"] == "2024-05-01T10:05:00.000Z"
    assert engine.cp().cursor == "2024-05-01T10:05:00.000Z"
    assert engine.cp().record_count == 3
    assert engine.store.count("orgs", DISTRICT) == 3
    assert engine.source.listings == [("orgs", None)]


async def test_next_pass_is_a_delta_from_the_cursor_minus_the_overlap() -> None:
    """After a snapshot, a pass lists with ``since = cursor - overlap``; records re-read in the
    overlap emit nothing, a changed one is UPDATED with its changed fields."""
    source = MemorySource({"orgs": orgs(3)})
    engine = Engine(source, settings=SyncConfig(overlap=60))
    await engine.run()
    source.records["orgs"][1] = org("org-001", at=T0 + timedelta(minutes=1), name="Renamed")
    before = len(engine.sink.batches)
    result = await engine.run()
    assert result.mode == "DELTA"
    assert source.listings[-1] == ("orgs", T0 - timedelta(seconds=60))
    assert (result.created, result.updated, result.deleted) == (0, 1, 0)
    (changed,) = engine.envelopes(before)
    assert changed["op"] == "UPDATED"
    assert changed["changed_fields"] == ["name"]
    assert engine.cp().cursor == "2024-05-01T10:01:00.000Z"


async def test_malformed_records_become_dead_letters_and_the_rest_still_emit() -> None:
    """A record that cannot be normalised gets one dead letter with its reason and raw JSON;
    the valid records around it are CREATED; the checkpoint counts the rejections."""
    bad = [{"sourcedId": "no-status", "dateLastModified": stamp(T0), "name": "x"}, 42]
    engine = Engine(MemorySource({"orgs": [org("a"), *bad, org("b")]}))
    result = await engine.run()
    assert (result.created, result.rejected) == (2, 2)
    letters = engine.letters()
    assert [d["sourced_id"] for d in letters] == ["no-status", None]
    assert letters[0]["reason"] == "orgs[status]: missing"
    assert orjson.loads(letters[0]["raw"]) == bad[0]
    assert letters[1]["reason"] == "orgs: not a JSON object (int)"
    assert {r.key for r in engine.sink.deadletters} == {b"d1/no-status", b"d1/"}
    assert {r.topic for r in engine.sink.deadletters} == {"t.deadletter"}
    assert engine.cp().rejected_count == 2


async def test_a_change_too_large_to_write_is_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An encoded change over the size limit is not written: it becomes a dead letter that says
    so, and the other records are written."""
    monkeypatch.setattr(events, "MAX_VALUE_BYTES", 400)
    big = org("big", name="x" * 500)
    engine = Engine(MemorySource({"orgs": [org("a"), big]}))
    result = await engine.run()
    assert (result.created, result.rejected) == (1, 1)
    (letter,) = engine.letters()
    assert letter["sourced_id"] == "big"
    assert "exceeds 400" in letter["reason"]
    assert engine.store.get("orgs", DISTRICT, "big") is None


async def test_a_dead_letter_keeps_at_most_max_raw_bytes_of_the_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A raw record longer than the dead-letter limit is cut, and the reason says so."""
    monkeypatch.setattr(events, "MAX_RAW_BYTES", 50)
    engine = Engine(MemorySource({"orgs": [{"sourcedId": "no-status", "name": "y" * 200}]}))
    await engine.run()
    (letter,) = engine.letters()
    assert len(letter["raw"]) == 50
    assert letter["reason"].endswith("(raw cut from 235 to 50 bytes)")


@pytest.mark.parametrize("page_size", [1, 2, 10])
async def test_duplicates_in_one_listing_keep_the_first(page_size: int) -> None:
    """A sourcedId listed twice with different content: the first is kept, the second is a dead
    letter; listed twice identically: one event and no dead letter. Whether the twins share a
    page (held in memory) or not (the earlier page's keys are in the store)."""
    records = [
        org("dup", name="First"),
        org("same"),
        org("dup", name="Second"),
        org("same"),
    ]
    engine = Engine(MemorySource({"orgs": records}, page_size=page_size))
    result = await engine.run()
    assert (result.created, result.rejected) == (2, 1)
    assert {e["sourced_id"]: e["after"]["name"] for e in engine.envelopes()} == {
        "dup": "First",
        "same": "Org same",
    }
    (letter,) = engine.letters()
    assert "appears twice in one listing with different content" in letter["reason"]
    assert orjson.loads(letter["raw"])["name"] == "Second"
    assert seen_rows(engine.store) == 0


@pytest.mark.parametrize("page_size", [3, 1000])
async def test_mass_delete_is_held_then_confirmed_once(page_size: int) -> None:
    """A full listing missing more than the threshold (and more than ``mass_delete_min``) of the
    stored keys deletes nothing, holds
    the count in the checkpoint and alerts; confirm_deletes then deletes each once, with its
    tombstone and the reason absent_from_full_sync. The listing's seen keys go through the store
    (pages of 3) or stay in one page; either way none is left behind."""
    source = MemorySource({"orgs": orgs(20)}, page_size=page_size)
    engine = Engine(source)
    await engine.run()
    gone = source.records["orgs"][:6]
    del source.records["orgs"][:6]

    held = await engine.run(full=True)
    assert (held.deleted, held.held_deletes) == (0, 6)
    assert engine.observer.held == [(DISTRICT, "orgs", 6)]
    assert engine.cp().held_deletes == 6
    assert engine.store.count("orgs", DISTRICT) == 20

    before = len(engine.sink.batches)
    confirmed = await engine.run(confirm_deletes=True)
    assert (confirmed.mode, confirmed.deleted, confirmed.held_deletes) == ("FULL", 6, 0)
    deleted = engine.envelopes(before)
    assert sorted(e["sourced_id"] for e in deleted) == sorted(r["sourcedId"] for r in gone)
    assert {e["source"]["delete_reason"] for e in deleted} == {"absent_from_full_sync"}
    tombstones = [r for b in engine.sink.batches[before:] for r in b.events if r.value is None]
    assert len(tombstones) == 6
    assert engine.cp().held_deletes == 0
    assert engine.store.count("orgs", DISTRICT) == 14
    assert (await engine.run(full=True)).deleted == 0
    assert seen_rows(engine.store) == 0


async def test_deletes_under_the_threshold_apply_at_once() -> None:
    """Missing keys within the threshold are deleted by the full pass itself."""
    source = MemorySource({"orgs": orgs(20)})
    engine = Engine(source)
    await engine.run()
    del source.records["orgs"][0]
    result = await engine.run(full=True)
    assert (result.deleted, result.held_deletes) == (1, 0)
    assert engine.observer.held == []


async def test_deletes_under_the_floor_apply_but_an_emptied_entity_is_held() -> None:
    """Five of ten keys missing (over the share, not over ``mass_delete_min``) are deleted; an
    entity whose every key is missing is held however few keys it had."""
    source = MemorySource({"orgs": orgs(10)})
    engine = Engine(source)
    await engine.run()
    del source.records["orgs"][:5]
    result = await engine.run(full=True)
    assert (result.deleted, result.held_deletes) == (5, 0)

    small = MemorySource({"orgs": orgs(2)})
    emptied = Engine(small)
    await emptied.run()
    small.records["orgs"].clear()
    result = await emptied.run(full=True)
    assert (result.deleted, result.held_deletes) == (0, 2)


async def test_an_empty_list_for_the_delta_filter_switches_to_full_listings() -> None:
    """A source that answers the delta filter with an empty list (it cannot parse it) is
    noticed when a filter every record matches returns nothing too: that pass lists in full,
    catching the change, and so do later ones."""
    source = MemorySource({"orgs": orgs(3)}, delta_filter="empty")
    engine = Engine(source)
    await engine.run()
    source.records["orgs"][0] = org("org-000", at=T0 + timedelta(minutes=1), name="Renamed")
    result = await engine.run()
    assert (result.mode, result.updated) == ("FULL", 1)
    assert engine.cp().delta_supported is False
    assert (await engine.run()).mode == "FULL"


async def test_a_record_absent_from_the_listing_but_still_served_is_never_deleted() -> None:
    """A key missing from a full listing whose single-record GET still answers is diffed, not
    deleted (offset paging can skip a record while the source changes)."""
    source = MemorySource({"orgs": orgs(20)})
    engine = Engine(source)
    await engine.run()
    source.unlisted = {"org-003"}
    source.records["orgs"][3] = org("org-003", at=T0 + timedelta(minutes=1), name="Moved")
    result = await engine.run(full=True)
    assert (result.deleted, result.updated) == (0, 1)
    assert engine.store.get("orgs", DISTRICT, "org-003") is not None


async def test_a_rejected_delta_filter_falls_back_to_full_listings() -> None:
    """A source answering 400 to the delta filter is listed in full at once, and from then on
    (the checkpoint says delta_supported = False)."""
    source = MemorySource({"orgs": orgs(3)}, delta_filter="reject")
    engine = Engine(source)
    await engine.run()
    result = await engine.run()
    assert result.mode == "FULL"
    assert source.listings[1][1] is not None
    assert source.listings[2] == ("orgs", None)
    assert engine.cp().delta_supported is False
    await engine.run()
    assert source.listings[3] == ("orgs", None)


async def test_an_ignored_delta_filter_switches_to_full_listings() -> None:
    """A delta listing that returns records older than its filter (beyond a second) marks the
    source as ignoring it; the next pass lists in full."""
    source = MemorySource({"orgs": orgs(3, at=T0 - timedelta(days=1))}, delta_filter="ignore")
    engine = Engine(source, settings=SyncConfig(overlap=60))
    await engine.run()
    source.records["orgs"].append(org("late", at=T0))
    result = await engine.run()
    assert result.mode == "DELTA"
    assert engine.cp().delta_supported is True  # the cursor moved to T0 in this pass ...
    source.records["orgs"].append(org("later", at=T0 + timedelta(minutes=30)))
    result = await engine.run()
    assert result.mode == "DELTA"
    assert engine.cp().delta_supported is False  # ... and the day-old records are now older
    assert (await engine.run()).mode == "FULL"
    assert source.listings[-1] == ("orgs", None)


async def test_an_incomplete_listing_raises_and_keeps_the_cursor() -> None:
    """A listing cut short raises ListingIncomplete; what it brought may be committed, but the
    cursor and sync times stay as they were."""
    source = MemorySource({"orgs": orgs(3)}, page_size=1)
    engine = Engine(source)
    await engine.run()
    before = engine.cp()
    source.records["orgs"].append(org("new", at=T0 + timedelta(minutes=20)))
    source.cut_after = {"orgs": 0}
    with pytest.raises(ListingIncomplete, match="incomplete"):
        await engine.run(full=True)
    assert engine.cp().cursor == before.cursor
    assert engine.cp().last_full_sync_at == before.last_full_sync_at


async def test_a_failed_commit_leaves_the_cursor_and_the_redo_emits_the_same_events() -> None:
    """A batch that fails to commit changes neither the store nor the checkpoint; the pass
    redone from the committed cursor emits the same event ids."""
    source = MemorySource({"orgs": orgs(3)})
    engine = Engine(source)
    engine.sink.fail_next = True
    with pytest.raises(BrokerUnavailable):
        await engine.run()
    assert engine.cp().cursor is None
    assert engine.store.count("orgs", DISTRICT) == 0
    await engine.run()
    ids = [e["event_id"] for e in engine.envelopes()]
    again = Engine(MemorySource({"orgs": orgs(3)}))
    await again.run()
    assert ids == [e["event_id"] for e in again.envelopes()]


async def test_a_future_dated_record_is_written_but_does_not_move_the_cursor() -> None:
    """A record dated beyond the clock plus max(overlap, 10 min) is processed but leaves the
    cursor at the newest sane date."""
    engine = Engine(MemorySource({"orgs": [org("a"), org("future", at=T0 + timedelta(days=30))]}))
    result = await engine.run()
    assert result.created == 2
    assert engine.cp().cursor == "2024-05-01T10:00:00.000Z"


async def test_an_idle_delta_commits_nothing_until_its_checkpoint_is_ten_minutes_old() -> None:
    """A delta pass that writes nothing and leaves the cursor alone commits no transaction;
    once the last delta checkpoint is 10 minutes old, it commits one to record the time."""
    engine = Engine(MemorySource({"orgs": orgs(3)}))
    await engine.run()
    await engine.run()  # the first delta records last_delta_sync_at
    committed = len(engine.sink.batches)
    engine.now += timedelta(minutes=5)
    assert (await engine.run()).mode == "DELTA"
    assert len(engine.sink.batches) == committed
    engine.now += timedelta(minutes=6)
    await engine.run()
    assert len(engine.sink.batches) == committed + 1
    assert engine.sink.batches[-1].events == []
    assert engine.cp().last_delta_sync_at == engine.now


async def test_forbidden_demographics_are_skipped() -> None:
    """Demographics answered with 403 are skipped with the reason; other entities still sync."""
    source = MemorySource(
        {"orgs": orgs(2), "demographics": []}, forbidden=frozenset({"demographics"})
    )
    engine = Engine(source)
    results = await engine.sync.sync()
    by_entity = {r.entity: r for r in results}
    assert by_entity["orgs"].created == 2
    assert by_entity["demographics"].skipped is not None
    assert "403" in by_entity["demographics"].skipped
    assert [r.entity for r in engine.observer.results] == ["orgs", "demographics"]


async def test_a_deleted_record_emits_an_event_then_its_tombstone() -> None:
    """A tobedeleted record with a prior is DELETED on its entity topic, followed by a
    tombstone on the same key; the state write removes the key."""
    source = MemorySource({"orgs": orgs(2)})
    engine = Engine(source)
    await engine.run()
    source.records["orgs"][0] = org("org-000", at=T0 + timedelta(minutes=1), status="tobedeleted")
    before = len(engine.sink.batches)
    await engine.run()
    written = [r for b in engine.sink.batches[before:] for r in b.events]
    assert [(r.topic, r.key, r.value is None) for r in written] == [
        ("t.orgs", b"d1/org-000", False),
        ("t.orgs", b"d1/org-000", True),
    ]
    assert written[1].headers == [("op", b"TOMBSTONE")]
    assert engine.store.get("orgs", DISTRICT, "org-000") is None


async def test_entity_intervals_put_off_slow_entities_without_losing_their_changes() -> None:
    """With ``entity_intervals = {orgs = "10m"}`` and a 60 s poll, scheduled delta polls visit
    orgs only every ten minutes (users at every poll); an org changed meanwhile is emitted
    once its cadence comes round, from the cursor where it stayed; a full sync and a pass over
    chosen entities visit orgs whatever the cadence."""
    source = MemorySource({"orgs": [org("o1")], "users": [org("u1")]})
    settings = SyncConfig(poll_interval=60.0, entity_intervals={"orgs": 600.0})
    engine = Engine(source, settings=settings)

    async def poll(**kwargs: Any) -> list[str]:
        return [r.entity for r in await engine.sync.sync(**kwargs)]

    assert await poll() == ["orgs", "users"]  # the first poll visits everything
    visited_at = engine.now
    source.records["orgs"] = [org("o1", at=T0 + timedelta(minutes=30), name="Renamed")]
    for minute in range(1, 10):
        engine.now = visited_at + timedelta(minutes=minute)
        assert await poll() == ["users"], f"orgs visited {minute} min after its last pass"
    assert not [e for e in engine.envelopes() if e["entity"] == "orgs" and e["op"] == "UPDATED"]
    engine.now = visited_at + timedelta(minutes=10) - timedelta(seconds=20)  # a poll a bit early
    assert await poll() == ["orgs", "users"]
    updated = [e for e in engine.envelopes() if e["op"] == "UPDATED"]
    assert [(e["entity"], e["sourced_id"]) for e in updated] == [("orgs", "o1")]
    engine.now += timedelta(minutes=1)
    assert await poll() == ["users"]
    assert await poll(full=True) == ["orgs", "users"]
    engine.now += timedelta(minutes=1)
    assert await poll(entities=["orgs"]) == ["orgs"]
    assert await poll() == ["users"]


# -- pipelined commits: batch N commits while the next pages are processed -------------------


@dataclass
class Pace:
    """How far the listing of a ``PacedSource`` has got."""

    served: int = 0
    active: bool = False


@dataclass
class PacedListing(MemoryListing):
    """A ``MemoryListing`` that gives the event loop a turn before each page, as a network
    fetch does, and counts the pages it hands out."""

    pace: Pace = field(default_factory=Pace)

    async def _pages(self) -> AsyncIterator[RawPage]:
        self.pace.active = True
        try:
            async for page in super()._pages():
                await asyncio.sleep(0)
                self.pace.served += 1
                yield page
        finally:
            self.pace.active = False


@dataclass
class PacedSource(MemorySource):
    """A ``MemorySource`` whose listings are ``PacedListing``s sharing one ``Pace``."""

    pace: Pace = field(default_factory=Pace)

    def listing(self, entity: Entity, *, since: datetime | None = None) -> MemoryListing:
        plain = super().listing(entity, since=since)
        fields = {f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)}
        return PacedListing(**fields, pace=self.pace)


class HeldSink(MemorySink):
    """Once ``hold`` is set, a sink whose commit waits (up to 1 s) until the listing has handed
    out another page, so the pass processes the next page while the batch is in flight;
    ``overlapped`` counts the commits that saw it. ``fail`` (the index of a held commit): that
    commit fails after the wait."""

    def __init__(self, store: StateStore, pace: Pace) -> None:
        super().__init__(store)
        self.pace = pace
        self.hold = False
        self.fail: int | None = None
        self.overlapped = 0
        self.calls = 0

    async def commit(self, batch: events.Batch) -> None:
        if not self.hold:
            await super().commit(batch)
            return
        call, self.calls = self.calls, self.calls + 1
        served = self.pace.served
        for _ in range(1000):
            if not self.pace.active or self.pace.served > served:
                break
            await asyncio.sleep(0.001)
        if self.pace.served > served:
            self.overlapped += 1
        if call == self.fail:
            raise BrokerUnavailable("transaction aborted: injected by HeldSink")
        await super().commit(batch)


def _second_pass_records() -> list[dict[str, Any]]:
    """A full listing, in pages of two, after a snapshot of a..f: a and b changed in page 1;
    a again in page 2 with other content (a duplicate: dead-lettered, the first kept) beside an
    unchanged c; d, e unchanged; g new; f gone (deleted by the full pass)."""
    later = T0 + timedelta(minutes=5)
    return [
        org("a", at=later, name="A1"),
        org("b", at=later, name="B1"),
        org("a", at=later, name="A2"),
        org("c"),
        org("d"),
        org("e"),
        org("g", at=later),
    ]


async def _two_passes(source: MemorySource, *, hold: bool) -> Engine:
    """A snapshot of orgs a..f, then a full pass over ``_second_pass_records``, in batches of
    two, pages of two; the second pass's commits are held (``HeldSink``) when ``hold``."""
    source.records["orgs"] = [org(sid) for sid in "abcdef"]
    source.page_size = 2
    engine = Engine(source, settings=SyncConfig(batch_size=2), make_sink=_held_sink(source))
    await engine.run()
    assert isinstance(engine.sink, HeldSink)
    engine.sink.hold, engine.sink.batches = hold, []
    engine.now += timedelta(hours=1)
    source.records["orgs"] = _second_pass_records()
    await engine.run(full=True)
    return engine


def _held_sink(source: MemorySource) -> Callable[[StateStore], MemorySink]:
    pace = source.pace if isinstance(source, PacedSource) else Pace()
    return lambda store: HeldSink(store, pace)


def _outcome(engine: Engine) -> tuple[Any, ...]:
    """What a pass leaves: events (key, op), dead letters (sourcedId), the store's rows and the
    checkpoint's cursor and counts."""
    cp = engine.cp()
    return (
        [(r.key, dict(r.headers).get("op")) for b in engine.sink.batches for r in b.events],
        [decode(r)["sourced_id"] for r in engine.sink.deadletters],
        sorted(engine.store.digests("orgs", DISTRICT, list("abcdefg")).items()),
        (cp.cursor, cp.record_count, cp.created_count, cp.updated_count, cp.deleted_count),
        cp.rejected_count,
    )


async def test_a_batch_in_flight_while_the_next_pages_are_processed_changes_nothing() -> None:
    """The pass cuts a batch and goes on with the next pages while it commits (one batch in
    flight); a key written by that batch and listed again in the next page, absences, counts
    and the cursor come out exactly as when every commit had finished before the next page:
    a changed once (UPDATED, then the duplicate dead-lettered), b UPDATED, g CREATED, f
    DELETED with its tombstone, record_count 6."""
    reference = await _two_passes(MemorySource(), hold=False)
    held = await _two_passes(PacedSource(), hold=True)
    assert isinstance(held.sink, HeldSink)
    assert held.sink.overlapped >= 1  # a page was processed while a batch was in flight
    assert _outcome(held) == _outcome(reference)
    events_, letters, _rows, counts, rejected = _outcome(held)
    assert events_ == [
        (b"d1/a", b"UPDATED"),
        (b"d1/b", b"UPDATED"),
        (b"d1/g", b"CREATED"),
        (b"d1/f", b"DELETED"),
        (b"d1/f", b"TOMBSTONE"),
    ]
    assert letters == ["a"]
    assert counts == ("2024-05-01T10:05:00.000Z", 6, 7, 2, 1)
    assert rejected == 1
    assert seen_rows(held.store) == 0


async def test_a_failed_commit_in_flight_fails_the_pass_and_commits_nothing_after_it() -> None:
    """When the batch in flight fails, the pass fails with its error; no later batch and no
    cursor are committed, the store and checkpoint stay as before the pass; the next pass
    writes everything."""
    source = PacedSource({"orgs": [org(sid) for sid in "abcdef"]}, page_size=2)
    engine = Engine(source, settings=SyncConfig(batch_size=2), make_sink=_held_sink(source))
    await engine.run()
    held = engine.sink
    assert isinstance(held, HeldSink)
    before = (engine.cp(), sorted(engine.store.digests("orgs", DISTRICT, list("abcdef")).items()))
    held.hold, held.fail, held.batches = True, 0, []
    source.records["orgs"] = _second_pass_records()
    with pytest.raises(BrokerUnavailable, match="HeldSink"):
        await engine.run(full=True)
    assert held.overlapped == 1
    assert held.calls == 1
    assert held.batches == []
    assert (
        engine.cp(),
        sorted(engine.store.digests("orgs", DISTRICT, list("abcdef")).items()),
    ) == before
    held.fail = None
    await engine.run(full=True)
    assert [r.key for b in held.batches for r in b.events] == [
        b"d1/a",
        b"d1/b",
        b"d1/g",
        b"d1/f",
        b"d1/f",
    ]
    assert engine.cp().record_count == 6


async def test_a_cancelled_pass_cancels_the_batch_in_flight() -> None:
    """Cancelling a pass while its batch is in flight cancels that commit too: nothing is
    committed or applied afterwards, and no task is left running."""
    entered = asyncio.Event()

    class StuckSink(MemorySink):
        """Commits normally until ``stuck``; then never returns."""

        stuck = False

        async def commit(self, batch: events.Batch) -> None:
            if not self.stuck:
                await super().commit(batch)
                return
            entered.set()
            await asyncio.Event().wait()

    source = PacedSource({"orgs": [org(sid) for sid in "abcdef"]}, page_size=2)
    engine = Engine(source, settings=SyncConfig(batch_size=2), make_sink=StuckSink)
    await engine.run()
    before = engine.cp()
    stuck = engine.sink
    assert isinstance(stuck, StuckSink)
    stuck.stuck, stuck.batches = True, []
    source.records["orgs"] = _second_pass_records()
    others = asyncio.all_tasks()
    task = asyncio.create_task(engine.run(full=True))
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == others
    assert stuck.batches == []
    assert engine.cp() == before
