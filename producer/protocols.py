"""The seams between the pipeline's boxes, declared once.

Every box takes its collaborators through its constructor, typed by these protocols, so a box
can run against an in-memory stand-in (``producer.testing``) as well as the real thing. The
shared Literals (``Entity``, ``Status``, ``Version``, ``Op``, ``SyncMode``, ``DeleteReason``)
live with the values they type, in ``producer.model``.

Seams, with the real implementation and the in-memory one of ``producer.testing``:

- ``Source``: ``producer.client.OneRosterClient``; ``MemorySource``.
- ``Listing``: ``producer.client.Listing``; ``MemoryListing``.
- ``Sink``: ``producer.kafka.writer.TransactionalWriter``; ``MemorySink``.
- ``StateReader``: ``producer.state.StateStore``; ``MemoryState``.
- ``SyncObserver``: the metrics observer; ``RecordingObserver``.
- ``ClientObserver``: the metrics observer's ``client_event``; any callable.
- ``Clock``: ``datetime.now(UTC)``; a lambda.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from producer.model import Entity, RawPage, Version

if TYPE_CHECKING:
    from producer.events import Batch
    from producer.state import StoredDigest, StoredRecord
    from producer.sync import EntityResult

#: The producer's wall clock: an aware UTC datetime.
Clock = Callable[[], datetime]
#: A clock in seconds (``time.monotonic`` for intervals, ``time.time`` for schedules).
SecondsClock = Callable[[], float]
#: ``asyncio.sleep``, or a test's fake of it.
Sleep = Callable[[float], Awaitable[None]]


# -- source-client events (emitted by ``producer.retry.Requester`` and ``producer.client``) ---


@dataclass(frozen=True, slots=True)
class RequestRetried:
    """A request failed with a retriable error and is retried after ``delay`` seconds."""

    district_id: str
    entity: str
    attempt: int
    delay: float
    #: The error's class name (never its message).
    error: str
    #: HTTP status, 0 when there was none (a network error).
    status: int


@dataclass(frozen=True, slots=True)
class Reauthenticated:
    """A 401 led to one re-authentication."""

    district_id: str
    entity: str


@dataclass(frozen=True, slots=True)
class PageFetched:
    """A page arrived: its offset, record count and latency in seconds."""

    district_id: str
    entity: str
    offset: int
    records: int
    latency: float


@dataclass(frozen=True, slots=True)
class ListingDone:
    """A listing ended (``complete`` False when it was cut short)."""

    district_id: str
    entity: str
    records: int
    pages: int
    complete: bool
    seconds: float


ClientEvent = RequestRetried | Reauthenticated | PageFetched | ListingDone
#: Receives the source client's events (``producer.metrics.MetricsObserver.client_event``).
ClientObserver = Callable[[ClientEvent], None]


def ignore_events(event: ClientEvent) -> None:
    """The default client observer: drops every event."""


class Listing(Protocol):
    """One listing of one entity: pages, then whether it completed."""

    complete: bool
    incomplete_reason: str | None
    #: True when a delta listing returned records its filter excludes (``filters.filter_ignored``).
    filter_ignored: bool

    def __aiter__(self) -> AsyncIterator[RawPage]: ...


class Source(Protocol):
    """A district's OneRoster server, as the sync engine needs it."""

    @property
    def version(self) -> Version | None: ...

    async def resolve_version(self) -> Version: ...

    def listing(self, entity: Entity, *, since: datetime | None = None) -> Listing: ...

    async def fetch_one(self, entity: Entity, sourced_id: str) -> dict[str, Any] | None: ...


class Sink(Protocol):
    """Where batches go: one transaction each, after which the state store reflects it."""

    async def commit(self, batch: Batch) -> None: ...


class StateReader(Protocol):
    """What the sync engine reads of the state store (plus one cache hint it may write)."""

    def count(self, entity: str | None = None, district_id: str | None = None) -> int: ...

    def digests(
        self, entity: str, district_id: str, sourced_ids: Sequence[str]
    ) -> dict[str, StoredDigest]: ...

    def get(self, entity: str, district_id: str, sourced_id: str) -> StoredRecord | None: ...

    def get_many(
        self, entity: str, district_id: str, sourced_ids: Sequence[str]
    ) -> dict[str, StoredRecord]: ...

    def sourced_ids(self, entity: str, district_id: str) -> Iterator[str]: ...

    def remember_raw_digests(
        self, entity: str, district_id: str, pairs: Sequence[tuple[str, bytes]]
    ) -> None: ...

    def mark_seen(self, listing: str, pairs: Sequence[tuple[str, bytes]]) -> None: ...

    def seen_digests(self, listing: str, sourced_ids: Sequence[str]) -> dict[str, bytes]: ...

    def unseen(self, listing: str, entity: str, district_id: str) -> Iterator[str]: ...

    def forget_seen(self, listing: str | None = None) -> None: ...


class SyncObserver(Protocol):
    """Counts what a pass did (``producer.metrics.MetricsObserver``)."""

    def pass_done(self, result: EntityResult) -> None: ...

    def mass_delete_held(self, district_id: str, entity: str, count: int) -> None: ...
