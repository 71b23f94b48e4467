"""The consumer kit: typed change events from oneroster-cdc's topics, for Python services.

A downstream service iterates decoded change events and commits its Kafka offsets after its own
transaction::

    from producer.consume import ChangeStream

    async with ChangeStream(
        bootstrap_servers="127.0.0.1:9092",
        topic_prefix="oneroster",
        entities=("users", "classes", "enrollments"),
        group_id="provisioning",
        start="committed",                 # or "beginning", "end", or a timezone-aware datetime
    ) as stream:
        async for event in stream:         # ChangeEvent, frozen
            with db.transaction():
                apply(event)               # idempotently: a crash may replay it
            await stream.commit()          # everything handed out so far is done

What the kit does for the application:

- **read_committed**: only changes whose producer transaction committed are seen.
- **Decoding**: values are Avro single-object encoded (``C3 01`` + the writer schema's 8-byte
  CRC-64-AVRO fingerprint + body). The writer schema comes from ``<prefix>.schemas``, as any
  stock consumer would take it; a fingerprint not seen yet re-reads that topic once. The records
  in ``before``/``after`` are plain dicts in the writer schema's field names.
- **Start**: ``"beginning"`` (full replay), ``"end"`` (new events only), ``"committed"`` (the
  group's committed offsets; partitions without one start at the beginning), or a datetime (the
  first event at or after it, by Kafka record timestamp).
- **De-duplication** by ``event_id``: event ids are deterministic (same change, same id), so an
  event id seen among the last ``dedupe_window`` events is skipped. Replaying from the beginning
  into the same process therefore yields nothing twice; a new process relies on the
  application's own idempotence (an upsert keyed by ``(district_id, sourced_id)``).
- **Tombstones**: a DELETED event is followed by a tombstone (null value) on the same key; the
  tombstone completes that delete and is not handed out again. A tombstone whose DELETED event
  this stream did not hand out (it started between the two, or the delete was already applied
  and committed) is surfaced as a delete: a ``ChangeEvent`` with ``op == "DELETED"``,
  ``tombstone=True``, ``before``/``after`` None and an event id of ``tombstone:<key>``.
- **Commit**: ``commit()`` commits, for the group, the position after the last record the
  iterator handed out or skipped. Call it after the application's transaction; a crash before it
  replays at most the uncommitted events. ``positions()`` gives the same offsets for
  applications that store them in their own database instead (then start from ``start=`` a
  mapping ``{(topic, partition): offset}``).

Partitions are assigned, not subscribed: one stream reads every partition of its topics (a
group id only names where offsets are committed). Run one instance per group.

Public API::

    ChangeStream(..., bootstrap_servers, topic_prefix, entities, group_id=None, start="committed",
                 dedupe_window=100_000, stop_at_end=False, client_options=None)
    ChangeStream.from_config(config, entities, ...)       # connection from a [kafka] section
    ChangeEvent, ChangeSource, Start, WriterSchemas
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from fastavro import parse_schema, schemaless_reader

from producer.errors import ClientClosed, ConfigError, EncodingError
from producer.kafka.group import GroupReader, Partition
from producer.kafka.reader import Message, read_compacted
from producer.kafka.topics import TopicNames
from producer.model import ENTITIES, Entity

if TYPE_CHECKING:
    from producer.config import Config

#: The single-object magic: two bytes before the 8-byte fingerprint.
SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"

#: DELETED events whose tombstone is still awaited, at most (oldest forgotten first).
_PENDING_TOMBSTONES: Final = 100_000

Op = Literal["CREATED", "UPDATED", "DELETED"]
#: Where a stream starts: see the module docstring.
Start = Literal["beginning", "end", "committed"] | datetime | Mapping[tuple[str, int], int]


@dataclass(frozen=True, slots=True)
class ChangeSource:
    """Where and how the producer observed a change (the envelope's ``source``)."""

    version: str
    server: str | None
    date_last_modified: Any
    status: str
    sync_mode: str
    sync_id: str
    delete_reason: str | None

    @classmethod
    def from_avro(cls, value: Mapping[str, Any]) -> ChangeSource:
        return cls(
            version=value.get("version", ""),
            server=value.get("server"),
            date_last_modified=value.get("dateLastModified"),
            status=value.get("status", ""),
            sync_mode=value.get("sync_mode", ""),
            sync_id=value.get("sync_id", ""),
            delete_reason=value.get("delete_reason"),
        )


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One decoded change of one record, and where it was read."""

    event_id: str
    op: Op
    district_id: str
    entity: str
    sourced_id: str
    #: The record before the change (dict in the writer schema's field names), or None.
    before: Mapping[str, Any] | None
    #: The record after the change, or None for DELETED.
    after: Mapping[str, Any] | None
    changed_fields: tuple[str, ...]
    source: ChangeSource | None
    emitted_at: datetime | None
    topic: str
    partition: int
    offset: int
    #: True for a delete surfaced from a tombstone whose DELETED event was not handed out.
    tombstone: bool = False

    @property
    def key(self) -> str:
        """The Kafka key: ``<district_id>/<sourced_id>``."""
        return f"{self.district_id}/{self.sourced_id}"


class WriterSchemas:
    """Writer schemas by single-object fingerprint, read from ``<prefix>.schemas``."""

    def __init__(self, consumer_options: Mapping[str, Any], topic: str) -> None:
        self._options = dict(consumer_options)
        self._topic = topic
        self._parsed: dict[bytes, Any] = {}

    async def refresh(self) -> None:
        """Read the schemas topic from the beginning to its end."""
        found = await read_compacted(self._options, self._topic, action=f"reading {self._topic}")
        for key, value in found.items():
            self._add(key, value)

    def _add(self, key: bytes, value: bytes) -> None:
        try:
            fingerprint = bytes.fromhex(key.decode())
            self._parsed[fingerprint] = parse_schema(json.loads(value), {})
        except Exception as exc:  # fastavro and json raise several unrelated types
            raise EncodingError(f"{self._topic}: unreadable schema {key!r}: {exc}") from exc

    async def decode(self, value: bytes, where: str) -> dict[str, Any]:
        """Decode single-object bytes; an unknown fingerprint re-reads the topic once."""
        if value[:2] != SINGLE_OBJECT_MAGIC or len(value) < 10:
            raise EncodingError(f"{where}: not Avro single-object encoded (no C3 01 header)")
        fingerprint = bytes(value[2:10])
        if fingerprint not in self._parsed:
            await self.refresh()
        schema = self._parsed.get(fingerprint)
        if schema is None:
            raise EncodingError(
                f"{where}: writer schema {fingerprint.hex()} is not in {self._topic}"
            )
        try:
            decoded = schemaless_reader(io.BytesIO(value[10:]), schema, None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, ... on corrupt input
            raise EncodingError(f"{where}: cannot decode: {exc}") from exc
        if not isinstance(decoded, dict):
            raise EncodingError(f"{where}: not a record")
        return decoded


def _event(value: Mapping[str, Any], topic: str, partition: int, offset: int) -> ChangeEvent:
    source = value.get("source")
    return ChangeEvent(
        event_id=value["event_id"],
        op=value["op"],
        district_id=value["district_id"],
        entity=value["entity"],
        sourced_id=value["sourced_id"],
        before=value.get("before"),
        after=value.get("after"),
        changed_fields=tuple(value.get("changed_fields") or ()),
        source=ChangeSource.from_avro(source) if source is not None else None,
        emitted_at=value.get("emitted_at"),
        topic=topic,
        partition=partition,
        offset=offset,
    )


def _tombstone(key: str, entity: str, topic: str, partition: int, offset: int) -> ChangeEvent:
    district, _, sourced_id = key.partition("/")
    return ChangeEvent(
        event_id=f"tombstone:{key}",
        op="DELETED",
        district_id=district,
        entity=entity,
        sourced_id=sourced_id,
        before=None,
        after=None,
        changed_fields=(),
        source=None,
        emitted_at=None,
        topic=topic,
        partition=partition,
        offset=offset,
        tombstone=True,
    )


class ChangeStream:
    """An async iterator of ``ChangeEvent`` over some entities' event topics (read_committed)."""

    def __init__(
        self,
        *,
        bootstrap_servers: str | Sequence[str],
        topic_prefix: str,
        entities: Iterable[Entity] = ENTITIES,
        group_id: str | None = None,
        start: Start = "committed",
        dedupe_window: int = 100_000,
        stop_at_end: bool = False,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        """``client_options`` are extra ``AIOKafkaConsumer`` options (TLS, SASL, client_id).

        ``stop_at_end`` ends the iteration once every partition is read to its end (for batch
        jobs and tests); otherwise it waits for new events until cancelled."""
        if start == "committed" and group_id is None:
            raise ConfigError("group_id", 'start="committed" needs a group_id')
        if isinstance(start, datetime) and start.tzinfo is None:
            raise ConfigError("start", "a start time must be timezone-aware")
        if dedupe_window < 0:
            raise ConfigError("dedupe_window", "must be >= 0")
        names = TopicNames(topic_prefix)
        self._entities: dict[str, Entity] = {names.events(e): e for e in entities}
        if not self._entities:
            raise ConfigError("entities", "name at least one entity")
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            **(client_options or {}),
        }
        self._group_id = group_id
        self._start = start
        self._window = dedupe_window
        self._stop_at_end = stop_at_end
        self._schemas = WriterSchemas(self._options, names.schemas)
        self._reader: GroupReader | None = None
        self._next: dict[Partition, int] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pending_tombstones: OrderedDict[str, None] = OrderedDict()
        self._closed = False

    @classmethod
    def from_config(cls, config: Config, entities: Iterable[Entity] = ENTITIES, **kw: Any) -> Self:
        """A stream over the topics of a producer config (its ``[kafka]`` connection)."""
        from producer.kafka.options import consumer_options  # noqa: PLC0415 - config is optional

        options = consumer_options(config.kafka)
        return cls(
            bootstrap_servers=options.pop("bootstrap_servers"),
            topic_prefix=config.kafka.topic_prefix,
            entities=entities,
            client_options={**options, **kw.pop("client_options", {})},
            **kw,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect, assign every partition of the topics and seek to the start."""
        if self._closed:
            raise ClientClosed("this ChangeStream was closed; make a new one")
        if self._reader is not None:
            return
        reader = GroupReader(
            self._options, list(self._entities), group_id=self._group_id, action="consume"
        )
        await reader.__aenter__()
        self._reader = reader
        try:
            self._next = await self._start_offsets(reader)
            reader.seek_to(self._next)
            await self._schemas.refresh()
        except BaseException:
            await self.close()
            raise

    async def _start_offsets(self, reader: GroupReader) -> dict[Partition, int]:
        """Where every partition starts (looked up now, never a lazy reset)."""
        start = self._start
        first = await reader.first_offsets()
        offsets: Mapping[Partition, int | None]
        if start == "beginning":
            offsets = first
        elif start == "end":
            offsets = await reader.last_offsets()
        elif isinstance(start, datetime):
            found = await reader.offsets_at(int(start.timestamp() * 1000))
            end = await reader.last_offsets()
            # No record at or after that time yet: start at the end.
            offsets = {p: end[p] if hit is None else hit for p, hit in found.items()}
        elif start == "committed":
            offsets = await reader.committed()
        else:
            offsets = start
        out = {}
        for p, lowest in first.items():
            offset = offsets.get(p)
            out[p] = lowest if offset is None else max(offset, lowest)
        return out

    async def close(self) -> None:
        """Leave the broker; idempotent. Commits nothing: call ``commit()`` first."""
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.__aexit__(None, None, None)

    # -- iteration -----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[ChangeEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ChangeEvent]:
        reader = self._require()
        # A previous iteration may have stopped inside a fetched batch: resume after the last
        # record it handed out.
        reader.seek_to(self._next)
        while True:
            messages = await reader.poll(500)
            if not messages:
                if self._stop_at_end and await self._at_end(reader):
                    return
                continue
            for m in messages:
                event = await self._handle(m)
                self._next[(m.topic, m.partition)] = m.offset + 1
                if event is not None:
                    yield event

    async def _handle(self, m: Message) -> ChangeEvent | None:
        """The event a record stands for, or None when it is skipped."""
        key = (m.key or b"").decode("utf-8", "replace")
        entity = self._entities[m.topic]
        if m.value is None:
            if key in self._pending_tombstones:
                del self._pending_tombstones[key]
                return None  # completes the DELETED event handed out before it
            return _tombstone(key, entity, m.topic, m.partition, m.offset)
        where = f"{m.topic}[{m.partition}]@{m.offset}"
        event = _event(await self._schemas.decode(m.value, where), m.topic, m.partition, m.offset)
        if event.op == "DELETED":
            _remember(self._pending_tombstones, key, _PENDING_TOMBSTONES)
        if self._window:
            if event.event_id in self._seen:
                self._seen.move_to_end(event.event_id)
                return None
            _remember(self._seen, event.event_id, self._window)
        return event

    async def _at_end(self, reader: GroupReader) -> bool:
        end = await reader.last_offsets()
        positions = await reader.next_offsets()
        return all(positions[p] >= offset for p, offset in end.items())

    # -- offsets -------------------------------------------------------------------------------

    def positions(self) -> dict[Partition, int]:
        """The next offset to read per ``(topic, partition)``, after the records handed out (or
        skipped) so far; the start offsets before the first."""
        return dict(self._next)

    async def commit(self) -> None:
        """Commit ``positions()`` for the group: call it after the application's transaction."""
        reader = self._require()
        if self._group_id is None:
            raise ConfigError("group_id", "commit() needs a group_id")
        await reader.commit(self._next)

    def _require(self) -> GroupReader:
        if self._reader is None:
            raise ClientClosed("the ChangeStream is not started (use `async with`)")
        return self._reader


def _remember(seen: OrderedDict[str, None], key: str, window: int) -> None:
    seen[key] = None
    seen.move_to_end(key)
    while len(seen) > window:
        seen.popitem(last=False)
