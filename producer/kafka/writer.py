"""The transactional Kafka writer: one transaction per batch, then the local store advances.

A ``Batch`` (built by ``producer.events``) is everything one unit of sync work writes: change
events (a DELETED event is followed by a tombstone on the same key), state records, dead
letters and, at the end of an entity pass, the checkpoint. ``TransactionalWriter.commit`` owns
a batch from begin to the local store's update; nothing else writes to Kafka while a batch is open.

The writer is keyed by shard (``transactional_id`` such as ``oneroster-cdc-shard-0``), not by
process, so the instance that owns a shard fences any older owner when it starts.

Partitions: the state records and checkpoints of district d go to partition ``shard_of(d)`` of
the state and checkpoints topics (those topics have one partition per shard), and every
checkpoint record carries the ``shards`` header (the shard count, decimal ASCII); a shard's
writer refuses a district of another shard (a bug: it would write outside its fence). Events,
dead letters and schemas keep Kafka's default partitioner on the key.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Self

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import IllegalOperation, KafkaError, ProducerFenced

from producer.checkpoints import split_checkpoint_key
from producer.errors import BrokerUnavailable, ClientClosed, Fenced
from producer.events import Batch, OutRecord
from producer.kafka.authz import denied
from producer.kafka.shards import SHARDS_HEADER, partition_of, shard_of
from producer.kafka.statetopic import Message, split_state_key, state_message
from producer.state import StateStore

log = structlog.get_logger(__name__)

#: A transaction's messages by (topic, partition), in the order they are written.
Groups = dict[tuple[str, int], list[Message]]


class TransactionalWriter:
    """Writes batches in Kafka transactions and advances the local store after each commit."""

    def __init__(
        self,
        *,
        producer_config: Mapping[str, Any],
        transactional_id: str,
        state_topic: str,
        checkpoints_topic: str,
        shards: int,
        store: StateStore,
        shard: int | None = None,
        batch_timeout: float = 120.0,
    ) -> None:
        """``shards``: the deployment's shard count (``kafka.shards``); ``shard``: the one shard
        this writer may write (None: any, e.g. a tool outside the sharded service)."""
        self._config = producer_config
        self.transactional_id = transactional_id
        self._state_topic = state_topic
        self._checkpoints_topic = checkpoints_topic
        self.shards = shards
        self.shard = shard
        self._shards_header = (SHARDS_HEADER, str(shards).encode())
        self._store = store
        self._timeout = batch_timeout
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._closed = False
        #: Once fenced, never start another producer: it would fence the newer owner back.
        self._fenced = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the producer; this fences any older instance with our transactional_id and
        aborts the transaction it left open."""
        if self._closed:
            raise ClientClosed("the writer is closed")
        if self._producer is not None:
            return
        producer = transactional_producer(self._config, self.transactional_id)
        try:
            await producer.start()
        except ProducerFenced as exc:
            await quiet_stop(producer)
            self._fenced = True
            raise Fenced(f"transactional_id {self.transactional_id!r} is fenced") from exc
        except (KafkaError, OSError) as exc:
            await quiet_stop(producer)
            refused = denied(
                exc, operation="Write", transactional_id=self.transactional_id, options=self._config
            )
            if refused is not None:
                raise refused from exc
            raise BrokerUnavailable(f"cannot start the Kafka producer: {exc}") from exc
        self._producer = producer

    async def close(self) -> None:
        """Abort an open transaction (if any) and stop; idempotent."""
        self._closed = True
        producer, self._producer = self._producer, None
        if producer is not None:
            await quiet_stop(producer)

    async def commit(self, batch: Batch) -> None:
        """Write ``batch`` in one transaction, then advance the local store.

        1. Begin a transaction.
        2. Produce the change events (each DELETED event followed by its tombstone).
        3. Produce the state records (tombstones for deletes).
        4. Produce the dead letters.
        5. Produce the checkpoint, if the batch ends an entity pass.
        6. Wait for every send, then commit the transaction.
        7. Only after the commit: apply the state writes, with the offsets they reached, to the
           local store.
        Any failure aborts the transaction (or leaves it to be aborted by the next start) and
        raises ``BrokerUnavailable`` (retriable: redo the batch from committed state),
        ``NotAuthorized`` (stop: an ACL is missing; names it) or ``Fenced`` (stop: another
        instance owns this shard). The store is not touched.
        """
        if batch.empty:
            return
        async with self._lock:
            if self._closed:
                raise ClientClosed("the writer is closed")
            if self._fenced:
                # Starting a new producer would fence the instance that fenced us in turn.
                raise Fenced(
                    f"transactional_id {self.transactional_id!r} was taken over by another "
                    "instance; this writer no longer writes"
                )
            await self.start()
            producer = self._producer
            assert producer is not None
            try:
                async with asyncio.timeout(self._timeout):
                    offsets = await self._transaction(producer, batch)
            except (KafkaError, IllegalOperation, OSError, TimeoutError) as exc:
                fenced = isinstance(exc, ProducerFenced) or _fatal(producer)
                await self._reset()
                refused = denied(
                    exc,
                    operation="Write",
                    transactional_id=self.transactional_id,
                    options=self._config,
                )
                if refused is not None:
                    raise refused from exc
                if fenced:
                    self._fenced = True
                    raise Fenced(
                        f"transactional_id {self.transactional_id!r} was taken over by another "
                        "instance; this one stops writing"
                    ) from exc
                raise BrokerUnavailable(f"transaction aborted: {exc!r}") from exc
            # 7.
            self._store.apply(batch.state, topic=self._state_topic, offsets=offsets)

    async def _transaction(self, producer: AIOKafkaProducer, batch: Batch) -> dict[int, int]:
        # 1.
        await producer.begin_transaction()
        try:
            # 2. - 5. in this order: each record becomes its (key, value, headers) once, in its
            # partition's group; each group goes out as one Kafka batch (more when one fills),
            # which keeps each partition's order and costs far less than a send() per record.
            sent = await self._send_grouped(producer, await self._grouped(producer, batch))
            # 6.
            metadata = await asyncio.gather(*(fut for _topic, _count, fut in sent))
            await producer.commit_transaction()
        except BaseException:
            await quiet_abort(producer)
            raise
        offsets: dict[int, int] = {}
        for (topic, count, _fut), md in zip(sent, metadata, strict=True):
            if topic == self._state_topic:
                offsets[md.partition] = max(offsets.get(md.partition, 0), md.offset + count)
        return offsets

    async def _grouped(self, producer: AIOKafkaProducer, batch: Batch) -> Groups:
        """The messages of ``batch`` by topic and partition, in the commit order (events, state
        records, dead letters, checkpoint). State records and checkpoints go to their
        district's shard (``_shard_of``, ``_sharded``); other partitions are chosen as Kafka's
        default partitioner does (murmur2 of the key), so keys land where any other producer
        would put them."""
        groups: Groups = {}
        await self._group(producer, groups, batch.events)
        topic = self._state_topic
        for write in batch.state:
            partition = self._shard_of(write.district_id)
            groups.setdefault((topic, partition), []).append(state_message(write))
        await self._group(producer, groups, batch.deadletters)
        if batch.checkpoint is not None:
            await self._group(producer, groups, [batch.checkpoint])
        return groups

    async def _group(
        self, producer: AIOKafkaProducer, groups: Groups, records: Sequence[OutRecord]
    ) -> None:
        """Add ``records`` to their partitions' groups (see ``_grouped``)."""
        counts: dict[str, int] = {}
        sharded = (self._state_topic, self._checkpoints_topic)
        for given in records:
            topic = given.topic
            if topic in sharded:
                record, partition = self._sharded(given)
            else:
                record, count = given, counts.get(topic)
                if count is None:
                    count = counts[topic] = await self._partition_count(producer, topic)
                partition = partition_of(record.key, count)
            message = (record.key, record.value, record.headers)
            groups.setdefault((topic, partition), []).append(message)

    async def _send_grouped(
        self, producer: AIOKafkaProducer, groups: Groups
    ) -> list[tuple[str, int, asyncio.Future[Any]]]:
        """Send each group as one batch to its topic-partition (more when a batch fills);
        returns (topic, records in the batch, delivery future) per batch."""
        sent: list[tuple[str, int, asyncio.Future[Any]]] = []
        for (topic, partition), messages in groups.items():
            builder = producer.create_batch()
            count = 0
            for key, value, headers in messages:
                if (
                    builder.append(key=key, value=value, timestamp=None, headers=headers) is None
                ):  # full: send it, start another (the first record always fits)
                    fut = await producer.send_batch(builder, topic, partition=partition)
                    sent.append((topic, count, fut))
                    builder, count = producer.create_batch(), 0
                    builder.append(key=key, value=value, timestamp=None, headers=headers)
                count += 1
            fut = await producer.send_batch(builder, topic, partition=partition)
            sent.append((topic, count, fut))
        return sent

    def _sharded(self, record: OutRecord) -> tuple[OutRecord, int]:
        """A state or checkpoint record and its partition, its district's shard; a checkpoint
        gains the ``shards`` header."""
        key = record.key.decode()
        if record.topic == self._state_topic:
            district = split_state_key(key)[1]
        else:
            district = split_checkpoint_key(key)[0]
            if all(name != SHARDS_HEADER for name, _ in record.headers):
                record = OutRecord(
                    record.topic, record.key, record.value, [*record.headers, self._shards_header]
                )
        return record, self._shard_of(district)

    def _shard_of(self, district: str) -> int:
        """The shard of a district, which must be this writer's when it has one."""
        shard = shard_of(district, self.shards)
        if self.shard is not None and shard != self.shard:
            raise ValueError(
                f"district {district!r} is in shard {shard}, not in this writer's shard "
                f"{self.shard} ({self.transactional_id})"
            )
        return shard

    async def _partition_count(self, producer: AIOKafkaProducer, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = len(await producer.partitions_for(topic))
            self._partitions[topic] = count
        return count

    async def _reset(self) -> None:
        """Drop a producer whose transaction state is unknown; the next batch starts afresh
        (and its start aborts whatever was left open)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await quiet_stop(producer)

    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Write records that need no store update (e.g. schemas) in their own transaction."""
        await self.commit(Batch(events=list(records)))


def _fatal(producer: AIOKafkaProducer) -> bool:
    """True when the producer's transaction state is fatal: the broker fenced it (the fence can
    surface in the background sender, so a later call fails with another error)."""
    manager = getattr(producer, "_txn_manager", None)
    return bool(manager is not None and manager.is_fatal_error())


def transactional_producer(options: Mapping[str, Any], transactional_id: str) -> AIOKafkaProducer:
    """An (unstarted) idempotent transactional producer: its start fences any older producer
    with ``transactional_id`` and aborts the transaction it left open."""
    return AIOKafkaProducer(
        **options, transactional_id=transactional_id, enable_idempotence=True, acks="all"
    )


async def quiet_abort(producer: AIOKafkaProducer) -> None:
    """Abort the producer's open transaction, ignoring errors, within 10 s (a failed abort
    leaves it to the next start of the transactional id)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(10):
            await producer.abort_transaction()


async def quiet_stop(producer: AIOKafkaProducer) -> None:
    """Stop a producer (aborting its open transaction), ignoring errors, within 15 s."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(15):
            await producer.stop()
