"""In-memory stand-ins for the sync engine's seams, so ``DistrictSync`` runs without a broker.

- ``memory_store()``: the real ``StateStore`` on an in-memory SQLite database.
- ``MemorySink``: commits a batch by keeping it and applying its state writes to the store, as
  the transactional writer does after a Kafka commit; ``fail_next`` makes the next commit fail
  the way a broker outage does (nothing kept, the store untouched).
- ``MemorySource`` / ``MemoryListing``: a OneRoster server as lists of raw records per entity,
  paged, with a delta filter it honours, rejects (400) or ignores, forbidden entities (403) and
  listings cut short.
- ``RecordingObserver``: keeps every pass result and held mass delete.

The real transactions are proved end to end against a broker (``tests/test_sync.py``,
``tests/test_writer.py``); these stand-ins serve the engine's rule tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from producer.errors import BrokerUnavailable, FilterUnsupported, Forbidden
from producer.events import Batch, OutRecord
from producer.filters import filter_ignored
from producer.model import Entity, RawPage, Version
from producer.state import IN_MEMORY, StateStore
from producer.sync import EntityResult
from producer.timestamps import parse_timestamp

FilterBehaviour = Literal["honour", "reject", "ignore"]


def memory_store() -> StateStore:
    """A ``StateStore`` whose SQLite database lives in memory."""
    return StateStore(Path(IN_MEMORY))


class MemorySink:
    """Keeps committed batches and advances ``store`` after each, like the writer."""

    def __init__(self, store: StateStore, *, state_topic: str = "memory.state") -> None:
        self.store = store
        self.batches: list[Batch] = []
        self.fail_next = False
        self._state_topic = state_topic

    async def commit(self, batch: Batch) -> None:
        if batch.empty:
            return
        if self.fail_next:
            self.fail_next = False
            raise BrokerUnavailable("transaction aborted: injected by MemorySink.fail_next")
        self.batches.append(batch)
        self.store.apply(batch.state, topic=self._state_topic, offsets={})

    @property
    def events(self) -> list[OutRecord]:
        """Every committed event record (tombstones included), in commit order."""
        return [r for b in self.batches for r in b.events]

    @property
    def deadletters(self) -> list[OutRecord]:
        return [r for b in self.batches for r in b.deadletters]

    @property
    def checkpoints(self) -> list[OutRecord]:
        return [b.checkpoint for b in self.batches if b.checkpoint is not None]


@dataclass
class MemoryListing:
    """Pages of one entity; ``complete`` once iterated to the end."""

    entity: Entity
    records: list[Any]
    page_size: int
    error: Exception | None = None
    #: Stop after this many pages, leaving the listing incomplete.
    cut_after: int | None = None
    #: The delta filter's cursor, when one was sent.
    since: datetime | None = None
    complete: bool = False
    incomplete_reason: str | None = None
    filter_ignored: bool = False

    async def _pages(self) -> AsyncIterator[RawPage]:
        if self.error is not None:
            raise self.error
        for n, start in enumerate(range(0, len(self.records), self.page_size)):
            if self.cut_after is not None and n >= self.cut_after:
                self.incomplete_reason = f"cut after {self.cut_after} pages"
                return
            chunk = self.records[start : start + self.page_size]
            if self.since is not None and filter_ignored(chunk, self.since, inclusive=False):
                self.filter_ignored = True
            yield RawPage(self.entity, start, chunk, len(self.records))
        self.complete = True

    def __aiter__(self) -> AsyncIterator[RawPage]:
        return self._pages()


@dataclass
class MemorySource:
    """A OneRoster server held in memory: raw records per entity, listed in pages."""

    records: dict[Entity, list[Any]] = field(default_factory=dict)
    version: Version | None = "1.2"
    page_size: int = 100
    #: What the server does with ``filter=dateLastModified>...``.
    delta_filter: FilterBehaviour = "honour"
    forbidden: frozenset[Entity] = frozenset()
    #: Entities whose listings stop after this many pages.
    cut_after: Mapping[Entity, int] = field(default_factory=dict)
    #: sourcedIds left out of every listing but still answered by ``fetch_one`` (a record that
    #: slid out of an offset-paged listing while the source changed).
    unlisted: set[str] = field(default_factory=set)
    #: ``since`` of every listing asked for, in order.
    listings: list[tuple[Entity, datetime | None]] = field(default_factory=list)

    async def resolve_version(self) -> Version:
        assert self.version is not None
        return self.version

    def listing(self, entity: Entity, *, since: datetime | None = None) -> MemoryListing:
        self.listings.append((entity, since))
        records = [r for r in self.records.get(entity, []) if _sid(r) not in self.unlisted]
        error: Exception | None = None
        if entity in self.forbidden:
            error = Forbidden(f"{entity}: 403 Forbidden (scope not granted)", status=403)
        elif since is not None and self.delta_filter == "reject":
            error = FilterUnsupported("filter=dateLastModified>... answered 400", status=400)
        elif since is not None and self.delta_filter == "honour":
            records = [r for r in records if _newer(r, since)]
        return MemoryListing(
            entity,
            records,
            self.page_size,
            error=error,
            cut_after=self.cut_after.get(entity),
            since=since,
        )

    async def fetch_one(self, entity: Entity, sourced_id: str) -> dict[str, Any] | None:
        for record in self.records.get(entity, []):
            if _sid(record) == sourced_id:
                assert isinstance(record, dict)
                return record
        return None


def _sid(record: Any) -> Any:
    return record.get("sourcedId") if isinstance(record, dict) else None


def _newer(record: Any, since: datetime) -> bool:
    text = record.get("dateLastModified") if isinstance(record, dict) else None
    moment = parse_timestamp(text) if isinstance(text, str) else None
    return moment is None or moment > since


@dataclass
class RecordingObserver:
    """Keeps what the engine reports."""

    results: list[EntityResult] = field(default_factory=list)
    held: list[tuple[str, str, int]] = field(default_factory=list)

    def pass_done(self, result: EntityResult) -> None:
        self.results.append(result)

    def mass_delete_held(self, district_id: str, entity: str, count: int) -> None:
        self.held.append((district_id, entity, count))


def records_by_key(batches: Sequence[Batch]) -> dict[bytes, list[OutRecord]]:
    """Committed event records grouped by Kafka key, in commit order."""
    out: dict[bytes, list[OutRecord]] = {}
    for batch in batches:
        for record in batch.events:
            out.setdefault(record.key, []).append(record)
    return out
