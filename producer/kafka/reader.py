"""Reading topics back: the one place that consumes Kafka (restore, checkpoints, tail, demo).

``TopicReader`` is a consumer without a group, assigned to every partition of its topics,
reading with ``isolation_level=read_committed`` (only what committed transactions wrote). Its
two ways of reading:

- ``to_end``: from the positions chosen with ``seek``/``seek_to_beginning`` up to the end
  offsets taken when it is called, as batches; a partition is done when its *position* reaches
  its end offset (the last record may be a transaction marker, so positions decide, not record
  offsets).
- ``poll``: what arrived since the last call (``tail`` and ``demo`` follow a topic this way).

Kafka errors leave as ``BrokerUnavailable`` with the caller's ``action`` in the message, or,
when the broker's authorizer refused, as ``NotAuthorized`` naming Read on the topic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Final, Protocol, Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from aiokafka.protocol.metadata import MetadataRequest

from producer.errors import BrokerUnavailable
from producer.kafka.authz import denied

Headers = Sequence[tuple[str, bytes]]


class Message(Protocol):
    """A record read from Kafka (aiokafka's ``ConsumerRecord`` has these attributes)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Headers: ...


@dataclass(frozen=True, slots=True)
class Chunk:
    """One batch read by ``TopicReader.to_end``: its records, and the next offset to read of
    every partition still being read (by partition number; for a single-topic reader)."""

    messages: list[Message]
    positions: dict[int, int]


def header(headers: Headers, name: str) -> bytes | None:
    """The value of the first header called ``name``, if any."""
    for key, value in headers:
        if key == name:
            return value
    return None


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic``, refreshing the consumer's metadata if it has none yet.

    Raises ``TopicAuthorizationFailedError`` when the broker hides the topic from this principal
    (no Read, Write or Describe ACL on it)."""
    parts = consumer.partitions_for_topic(topic)
    for _ in range(50):
        if parts:
            break
        # aiokafka has no public call that refreshes metadata for an unsubscribed topic; ask
        # for this topic's alone (a broker may hold thousands).
        parts = await _topic_metadata(consumer, topic)
        if not parts:
            await asyncio.sleep(0.1)
    if not parts:
        raise BrokerUnavailable(f"topic {topic!r} does not exist or has no partitions")
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def _topic_metadata(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """``topic``'s partitions, from metadata asked by name (never creating the topic). A
    listing of all topics silently leaves out those the principal may not see; a request by
    name says so (``TopicAuthorizationFailedError``)."""
    client = consumer._client
    request = MetadataRequest([topic], allow_auto_topic_creation=False)
    response = await client.send(client.get_random_node(), request)
    for entry in response.topics:
        if entry[1] == topic and entry[0] == TopicAuthorizationFailedError.errno:
            raise TopicAuthorizationFailedError(topic)
    cluster = ClusterMetadata()
    cluster.update_metadata(response)
    return cluster.partitions_for_topic(topic) or set()


@contextmanager
def kafka_errors(
    action: str, *, topics: Sequence[str] = (), options: Mapping[str, Any] | None = None
) -> Iterator[None]:
    """Turn a Kafka client error raised inside the block into ``BrokerUnavailable``, or into
    ``NotAuthorized`` (Read on ``topics``) when the broker refused it."""
    try:
        yield
    except KafkaError as exc:
        refused = denied(exc, operation="Read", topic=", ".join(topics) or None, options=options)
        if refused is not None:
            raise refused from exc
        raise BrokerUnavailable(f"{action}: {exc}") from exc


def _chosen(
    found: list[TopicPartition], only: frozenset[int] | None, action: str
) -> list[TopicPartition]:
    """The partitions of ``found`` numbered in ``only`` (all when None); one that the topic
    lacks is an error."""
    if only is None:
        return found
    missing = only - {tp.partition for tp in found}
    if missing:
        raise BrokerUnavailable(
            f"{action}: topic {found[0].topic!r} has no partition "
            f"{', '.join(map(str, sorted(missing)))} ({len(found)} partition(s))"
        )
    return [tp for tp in found if tp.partition in only]


#: Consumer options of a reader that reads up to the end and stops (restore, checkpoints,
#: layout checks, reshard). ``earliest``: a reset to "latest" still running when the reader
#: seeks could skip a partition. A short fetch wait: aiokafka handles a seek's offset reset only
#: after the fetch in flight returns, and on an empty partition the broker holds that fetch for
#: ``fetch_max_wait_ms`` (500 ms by default), which made every empty checkpoints partition cost
#: half a second at start.
READ_TO_END: Final[Mapping[str, Any]] = {"auto_offset_reset": "earliest", "fetch_max_wait_ms": 50}


class TopicReader:
    """A read_committed, group-less consumer of every partition of ``topics`` (or of those
    numbered in ``partitions``)."""

    def __init__(
        self,
        consumer_config: Mapping[str, Any],
        *topics: str,
        action: str,
        partitions: Sequence[int] | None = None,
        **options: Any,
    ) -> None:
        self._consumer = AIOKafkaConsumer(
            **consumer_config,
            isolation_level="read_committed",
            enable_auto_commit=False,
            **options,
        )
        self._topics = topics
        self._only = None if partitions is None else frozenset(partitions)
        self._action = action
        self._options = consumer_config
        self._tps: list[TopicPartition] = []

    def _errors(self) -> AbstractContextManager[None]:
        return kafka_errors(self._action, topics=self._topics, options=self._options)

    async def __aenter__(self) -> Self:
        try:
            with self._errors():
                await self._consumer.start()
                for topic in self._topics:
                    found = await topic_partitions(self._consumer, topic)
                    self._tps.extend(_chosen(found, self._only, self._action))
                self._consumer.assign(self._tps)
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    @property
    def partitions(self) -> list[int]:
        """Partition numbers (of a single-topic reader)."""
        return [tp.partition for tp in self._tps]

    async def end_offsets(self) -> dict[int, int]:
        """The end offset of every partition, now (of a single-topic reader)."""
        with self._errors():
            end = await self._consumer.end_offsets(self._tps)
        return {tp.partition: offset for tp, offset in end.items()}

    async def positions(self) -> dict[int, int]:
        """The next offset to read of every partition (of a single-topic reader)."""
        with self._errors():
            return {tp.partition: await self._consumer.position(tp) for tp in self._tps}

    async def seek_to_beginning(self) -> None:
        with self._errors():
            await self._consumer.seek_to_beginning(*self._tps)

    async def seek_to_end(self) -> None:
        with self._errors():
            await self._consumer.seek_to_end(*self._tps)

    async def seek(self, positions: Mapping[int, int]) -> None:
        """Each partition to its offset in ``positions``; the others to their beginning."""
        with self._errors():
            for tp in self._tps:
                if tp.partition in positions:
                    self._consumer.seek(tp, positions[tp.partition])
                else:
                    await self._consumer.seek_to_beginning(tp)

    async def to_end(
        self, *, until: Mapping[int, int] | None = None, max_records: int | None = None
    ) -> AsyncIterator[Chunk]:
        """Batches from the current positions up to ``until`` (end offsets by partition, of a
        single-topic reader), or the end offsets taken now."""
        consumer = self._consumer
        with self._errors():
            if until is None:
                end = await consumer.end_offsets(self._tps)
            else:
                end = {tp: until[tp.partition] for tp in self._tps}
            pending = {tp for tp in self._tps if (await consumer.position(tp)) < end[tp]}
        while pending:
            with self._errors():
                # Short: a tail that is only a commit marker yields no record, so the call
                # waits its whole timeout before the position is seen at the end.
                batch = await consumer.getmany(*pending, timeout_ms=100, max_records=max_records)
                positions: dict[int, int] = {}
                for tp in list(pending):
                    positions[tp.partition] = position = await consumer.position(tp)
                    if position >= end[tp]:
                        pending.discard(tp)
            messages: list[Message] = [m for part in batch.values() for m in part]
            yield Chunk(messages, positions)

    async def read_all(self) -> list[Message]:
        """Every committed record from the beginning to the current end, partition by
        partition."""
        await self.seek_to_beginning()
        out: dict[int, list[Message]] = {}
        async for chunk in self.to_end():
            for m in chunk.messages:
                out.setdefault(m.partition, []).append(m)
        return [m for p in sorted(out) for m in out[p]]

    async def poll(self, wait_ms: int) -> list[Message]:
        """The records that arrived since the last call (waits up to ``wait_ms``)."""
        with self._errors():
            batch = await self._consumer.getmany(timeout_ms=wait_ms)
        return [m for part in batch.values() for m in part]


async def read_compacted(
    consumer_config: Mapping[str, Any],
    topic: str,
    *,
    action: str,
    partitions: Sequence[int] | None = None,
) -> dict[bytes, bytes]:
    """The latest value of every key of a compacted topic, or of those of its ``partitions``
    (keys whose latest is a tombstone are left out)."""
    out: dict[bytes, bytes] = {}
    async with TopicReader(
        consumer_config, topic, action=action, partitions=partitions, **READ_TO_END
    ) as reader:
        for m in await reader.read_all():
            if m.key is None:
                continue
            if m.value is None:
                out.pop(m.key, None)
            else:
                out[m.key] = m.value
    return out


async def settled(
    consumer_config: Mapping[str, Any], topics: Sequence[str], *, seconds: float
) -> bool:
    """Wait until every transaction that had written to ``topics`` when this is called has its
    marker in each partition: the last stable offset (what read_committed readers read up to)
    reached the high watermark seen at the call. False if that took over ``seconds``.

    A commit (or the abort that fencing starts) returns once the transaction coordinator has
    logged it; the coordinator writes the markers to the data partitions after that, and until
    they land a read_committed reader sees the partition as it was before the transaction."""
    stable = AIOKafkaConsumer(**consumer_config, isolation_level="read_committed")
    latest = AIOKafkaConsumer(**consumer_config, isolation_level="read_uncommitted")
    action = f"reading the end offsets of {', '.join(topics)}"
    try:
        with kafka_errors(action, topics=topics, options=consumer_config):
            await stable.start()
            await latest.start()
            partitions = [tp for t in topics for tp in await topic_partitions(stable, t)]
            high = await latest.end_offsets(partitions)
            deadline = asyncio.get_running_loop().time() + seconds
            while True:
                lso = await stable.end_offsets(partitions)
                if all(lso[tp] >= high[tp] for tp in partitions):
                    return True
                if asyncio.get_running_loop().time() > deadline:
                    return False
                await asyncio.sleep(0.05)
    finally:
        for consumer in (stable, latest):
            with contextlib.suppress(Exception):
                await consumer.stop()
