"""Reading event topics for a downstream application, with offsets kept for a consumer group.

``GroupReader`` is the Kafka side of the consumer kit (``producer.consume``): a read_committed
consumer assigned to every partition of its topics (not a group subscription: the group id only
names where offsets are committed), positioned explicitly at start, and committing the offsets
the application says it has finished. Partitions are named ``(topic, partition)`` throughout.

Kafka errors leave as ``BrokerUnavailable`` with the caller's ``action`` in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from producer.kafka.reader import Message, kafka_errors, topic_partitions

#: A partition as the application sees it.
Partition = tuple[str, int]


class GroupReader:
    """A read_committed consumer of every partition of ``topics``, committing for ``group_id``."""

    def __init__(
        self,
        consumer_config: Mapping[str, Any],
        topics: list[str],
        *,
        group_id: str | None,
        action: str,
    ) -> None:
        self._consumer = AIOKafkaConsumer(
            **consumer_config,
            group_id=group_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._topics = topics
        self._action = action
        self._tps: list[TopicPartition] = []

    async def __aenter__(self) -> Self:
        try:
            with kafka_errors(self._action):
                await self._consumer.start()
                for topic in self._topics:
                    self._tps.extend(await topic_partitions(self._consumer, topic))
                self._consumer.assign(self._tps)
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._consumer.stop()

    @property
    def partitions(self) -> list[Partition]:
        return [(tp.topic, tp.partition) for tp in self._tps]

    async def beginning_offsets(self) -> dict[Partition, int]:
        with kafka_errors(self._action):
            found = await self._consumer.beginning_offsets(self._tps)
        return {(tp.topic, tp.partition): offset for tp, offset in found.items()}

    async def end_offsets(self) -> dict[Partition, int]:
        """The last stable offsets now (read_committed: open transactions end before them)."""
        with kafka_errors(self._action):
            found = await self._consumer.end_offsets(self._tps)
        return {(tp.topic, tp.partition): offset for tp, offset in found.items()}

    async def offsets_for_time(self, millis: int) -> dict[Partition, int | None]:
        """The first offset at or after ``millis`` (record time) per partition; None if none."""
        with kafka_errors(self._action):
            found = await self._consumer.offsets_for_times(dict.fromkeys(self._tps, millis))
        return {
            (tp.topic, tp.partition): None if hit is None else hit.offset
            for tp, hit in found.items()
        }

    async def committed(self) -> dict[Partition, int | None]:
        """The group's committed offset per partition; None where it has none."""
        with kafka_errors(self._action):
            return {
                (tp.topic, tp.partition): await self._consumer.committed(tp) for tp in self._tps
            }

    def seek(self, positions: Mapping[Partition, int]) -> None:
        """Each partition named in ``positions`` to that offset."""
        for tp in self._tps:
            offset = positions.get((tp.topic, tp.partition))
            if offset is not None:
                self._consumer.seek(tp, offset)

    async def positions(self) -> dict[Partition, int]:
        """The next offset the consumer will fetch, per partition."""
        with kafka_errors(self._action):
            return {(tp.topic, tp.partition): await self._consumer.position(tp) for tp in self._tps}

    async def poll(self, wait_ms: int) -> list[Message]:
        """The records that arrived since the last call (waits up to ``wait_ms``), in partition
        order within each partition."""
        with kafka_errors(self._action):
            batch = await self._consumer.getmany(timeout_ms=wait_ms)
        return [m for part in batch.values() for m in part]

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit ``offsets`` (the next offset to read, per partition) for the group."""
        with kafka_errors(self._action):
            await self._consumer.commit(
                {TopicPartition(t, p): OffsetAndMetadata(o, "") for (t, p), o in offsets.items()}
            )
