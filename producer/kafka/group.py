"""Reading event topics for a downstream application, with offsets kept for a consumer group.

``GroupReader`` is the Kafka side of the consumer kit (``producer.consume``): a read_committed
consumer assigned to every partition of its topics (not a group subscription: the group id only
names where offsets are committed), positioned explicitly at start, and committing the offsets
the application says it has finished. Partitions are named ``(topic, partition)`` throughout.

Kafka errors leave as ``BrokerUnavailable`` with the caller's ``action`` in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from producer.kafka.reader import TopicReader, kafka_errors

#: A partition as the application sees it.
Partition = tuple[str, int]


class GroupReader(TopicReader):
    """A ``TopicReader`` over several topics whose offsets are committed for ``group_id``.

    Partitions are ``(topic, partition)`` here; ``poll`` and the context manager are inherited.
    """

    def __init__(
        self,
        consumer_config: Mapping[str, Any],
        topics: list[str],
        *,
        group_id: str | None,
        action: str,
    ) -> None:
        super().__init__(
            consumer_config, *topics, action=action, group_id=group_id, auto_offset_reset="earliest"
        )
        self._group_action = f"{action} (group {group_id})"

    def _keyed(self, found: Mapping[TopicPartition, int]) -> dict[Partition, int]:
        return {(tp.topic, tp.partition): offset for tp, offset in found.items()}

    async def first_offsets(self) -> dict[Partition, int]:
        """The first offset still held, per partition."""
        with kafka_errors(self._action):
            return self._keyed(await self._consumer.beginning_offsets(self._tps))

    async def last_offsets(self) -> dict[Partition, int]:
        """The last stable offsets now (read_committed: open transactions end before them)."""
        with kafka_errors(self._action):
            return self._keyed(await self._consumer.end_offsets(self._tps))

    async def offsets_at(self, millis: int) -> dict[Partition, int | None]:
        """The first offset at or after ``millis`` (record time) per partition; None if none."""
        with kafka_errors(self._action):
            found = await self._consumer.offsets_for_times(dict.fromkeys(self._tps, millis))
        return {
            (tp.topic, tp.partition): None if hit is None else hit.offset
            for tp, hit in found.items()
        }

    async def committed(self) -> dict[Partition, int | None]:
        """The group's committed offset per partition; None where it has none."""
        consumer = self._consumer
        with kafka_errors(self._group_action):
            return {(tp.topic, tp.partition): await consumer.committed(tp) for tp in self._tps}

    def seek_to(self, positions: Mapping[Partition, int]) -> None:
        """Each partition named in ``positions`` to that offset."""
        for tp in self._tps:
            offset = positions.get((tp.topic, tp.partition))
            if offset is not None:
                self._consumer.seek(tp, offset)

    async def next_offsets(self) -> dict[Partition, int]:
        """The next offset the consumer will fetch, per partition."""
        consumer = self._consumer
        with kafka_errors(self._action):
            return {(tp.topic, tp.partition): await consumer.position(tp) for tp in self._tps}

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit ``offsets`` (the next offset to read, per partition) for the group."""
        with kafka_errors(self._group_action):
            await self._consumer.commit(
                {TopicPartition(t, p): OffsetAndMetadata(o, "") for (t, p), o in offsets.items()}
            )
