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

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from fastavro import parse_schema, schemaless_reader

from producer.errors import BrokerUnavailable, ClientClosed, ConfigError, EncodingError
from producer.model import ENTITIES, Entity
from producer.state import topic_partitions
from producer.topics import TopicNames

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
        consumer = AIOKafkaConsumer(
            **self._options, isolation_level="read_committed", enable_auto_commit=False
        )
        try:
            await consumer.start()
            tps = await topic_partitions(consumer, self._topic)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            while any([await consumer.position(tp) < end[tp] for tp in tps]):
                batch = await consumer.getmany(*tps, timeout_ms=500)
                for messages in batch.values():
                    for m in messages:
                        if m.key is not None and m.value is not None:
                            self._add(m.key, m.value)
        except KafkaError as exc:
            raise BrokerUnavailable(f"reading {self._topic}: {exc}") from exc
        finally:
            await consumer.stop()

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
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        self._next: dict[TopicPartition, int] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pending_tombstones: OrderedDict[str, None] = OrderedDict()
        self._closed = False

    @classmethod
    def from_config(cls, config: Config, entities: Iterable[Entity] = ENTITIES, **kw: Any) -> Self:
        """A stream over the topics of a producer config (its ``[kafka]`` connection)."""
        from producer.kafka_options import consumer_options  # noqa: PLC0415 - config is optional

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
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            **self._options,
            group_id=self._group_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._consumer = consumer
        try:
            await consumer.start()
            for topic in self._entities:
                self._tps.extend(await topic_partitions(consumer, topic))
            consumer.assign(self._tps)
            await self._seek(consumer)
            await self._schemas.refresh()
        except KafkaError as exc:
            await self.close()
            raise BrokerUnavailable(f"consumer start: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    async def _seek(self, consumer: AIOKafkaConsumer) -> None:
        """Position every partition explicitly (offsets looked up now, not lazily reset)."""
        start = self._start
        tps = self._tps
        first = await consumer.beginning_offsets(tps)
        offsets: dict[TopicPartition, int | None]
        if start == "beginning":
            offsets = dict(first)
        elif start == "end":
            offsets = dict(await consumer.end_offsets(tps))
        elif isinstance(start, datetime):
            found = await consumer.offsets_for_times(
                dict.fromkeys(tps, int(start.timestamp() * 1000))
            )
            end = await consumer.end_offsets(tps)
            # No record at or after that time yet: start at the end.
            offsets = {tp: end[tp] if hit is None else hit.offset for tp, hit in found.items()}
        elif start == "committed":
            offsets = {tp: await consumer.committed(tp) for tp in tps}
        else:
            offsets = {tp: start.get((tp.topic, tp.partition)) for tp in tps}
        for tp in tps:
            offset = offsets.get(tp)
            consumer.seek(tp, first[tp] if offset is None else max(offset, first[tp]))

    async def close(self) -> None:
        """Leave the broker; idempotent. Commits nothing: call ``commit()`` first."""
        self._closed = True
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    # -- iteration -----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[ChangeEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ChangeEvent]:
        consumer = self._require()
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                raise BrokerUnavailable(f"consume: {exc}") from exc
            if not batch:
                if self._stop_at_end and await self._at_end(consumer):
                    return
                continue
            for tp, messages in batch.items():
                for m in messages:
                    event = await self._handle(tp, m)
                    self._next[tp] = m.offset + 1
                    if event is not None:
                        yield event

    async def _handle(self, tp: TopicPartition, m: Any) -> ChangeEvent | None:
        """The event a record stands for, or None when it is skipped."""
        key = (m.key or b"").decode("utf-8", "replace")
        entity = self._entities[tp.topic]
        if m.value is None:
            if key in self._pending_tombstones:
                del self._pending_tombstones[key]
                return None  # completes the DELETED event handed out before it
            return _tombstone(key, entity, tp.topic, tp.partition, m.offset)
        where = f"{tp.topic}[{tp.partition}]@{m.offset}"
        event = _event(await self._schemas.decode(m.value, where), tp.topic, tp.partition, m.offset)
        if event.op == "DELETED":
            _remember(self._pending_tombstones, key, _PENDING_TOMBSTONES)
        if self._window:
            if event.event_id in self._seen:
                self._seen.move_to_end(event.event_id)
                return None
            _remember(self._seen, event.event_id, self._window)
        return event

    async def _at_end(self, consumer: AIOKafkaConsumer) -> bool:
        try:
            end = await consumer.end_offsets(self._tps)
            return all([await consumer.position(tp) >= end[tp] for tp in self._tps])
        except KafkaError as exc:
            raise BrokerUnavailable(f"consume: {exc}") from exc

    # -- offsets -------------------------------------------------------------------------------

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset to read per ``(topic, partition)``, for records handed out so far."""
        return {(tp.topic, tp.partition): offset for tp, offset in self._next.items()}

    async def commit(self) -> None:
        """Commit ``positions()`` for the group: call it after the application's transaction."""
        consumer = self._require()
        if self._group_id is None:
            raise ConfigError("group_id", "commit() needs a group_id")
        if not self._next:
            return
        offsets = {tp: OffsetAndMetadata(offset, "") for tp, offset in self._next.items()}
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            raise BrokerUnavailable(f"commit offsets for group {self._group_id}: {exc}") from exc

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise ClientClosed("the ChangeStream is not started (use `async with`)")
        return self._consumer


def _remember(seen: OrderedDict[str, None], key: str, window: int) -> None:
    seen[key] = None
    seen.move_to_end(key)
    while len(seen) > window:
        seen.popitem(last=False)
