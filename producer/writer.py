"""The transactional Kafka writer: one transaction per batch, then the local store advances.

A ``Batch`` is everything one unit of sync work writes: change events (a DELETED event is
followed by a tombstone on the same key), state records, dead letters and, at the end of an
entity pass, the checkpoint. ``TransactionalWriter.commit`` owns a batch from begin to the
local store's update; nothing else writes to Kafka while a batch is open.

The writer is keyed by shard (``transactional_id`` such as ``oneroster-cdc-shard-0``), not by
process, so the instance that owns a shard fences any older owner when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import IllegalOperation, KafkaError, ProducerFenced

from producer.errors import BrokerUnavailable, ClientClosed, Fenced
from producer.state import StateStore, StateWrite, state_key

log = structlog.get_logger(__name__)

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One Kafka record to write: topic, key, value (``None`` is a tombstone), headers."""

    topic: str
    key: bytes
    value: bytes | None
    headers: Headers = field(default_factory=list)


@dataclass(slots=True)
class Batch:
    """What one transaction writes. Order within each list is kept on the wire."""

    events: list[OutRecord] = field(default_factory=list)
    state: list[StateWrite] = field(default_factory=list)
    deadletters: list[OutRecord] = field(default_factory=list)
    checkpoint: OutRecord | None = None

    def __len__(self) -> int:
        return len(self.events) + len(self.state) + len(self.deadletters)

    @property
    def empty(self) -> bool:
        return not (self.events or self.state or self.deadletters or self.checkpoint)


def state_record(topic: str, write: StateWrite) -> OutRecord:
    """The state-topic record of a store write: the encoded canonical record, or a tombstone."""
    key = state_key(write.entity, write.district_id, write.sourced_id).encode()
    if write.value is None:
        return OutRecord(topic, key, None, [("entity", write.entity.encode())])
    assert write.digest is not None
    return OutRecord(
        topic, key, write.value, [("entity", write.entity.encode()), ("digest", write.digest)]
    )


class TransactionalWriter:
    """Writes batches in Kafka transactions and advances the local store after each commit."""

    def __init__(
        self,
        *,
        producer_config: dict[str, Any],
        transactional_id: str,
        state_topic: str,
        store: StateStore,
        batch_timeout: float = 120.0,
    ) -> None:
        self._config = producer_config
        self.transactional_id = transactional_id
        self._state_topic = state_topic
        self._store = store
        self._timeout = batch_timeout
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._closed = False

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
        producer = AIOKafkaProducer(
            **self._config,
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            acks="all",
        )
        try:
            await producer.start()
        except ProducerFenced as exc:
            await _quiet_stop(producer)
            raise Fenced(f"transactional_id {self.transactional_id!r} is fenced") from exc
        except (KafkaError, OSError) as exc:
            await _quiet_stop(producer)
            raise BrokerUnavailable(f"cannot start the Kafka producer: {exc}") from exc
        self._producer = producer

    async def close(self) -> None:
        """Abort an open transaction (if any) and stop; idempotent."""
        self._closed = True
        producer, self._producer = self._producer, None
        if producer is not None:
            await _quiet_stop(producer)

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
        raises ``BrokerUnavailable`` (retriable: redo the batch from committed state) or
        ``Fenced`` (stop: another instance owns this shard). The store is not touched.
        """
        if batch.empty:
            return
        async with self._lock:
            if self._closed:
                raise ClientClosed("the writer is closed")
            await self.start()
            producer = self._producer
            assert producer is not None
            try:
                async with asyncio.timeout(self._timeout):
                    offsets = await self._transaction(producer, batch)
            except (KafkaError, IllegalOperation, OSError, TimeoutError) as exc:
                fenced = isinstance(exc, ProducerFenced) or _fatal(producer)
                await self._reset()
                if fenced:
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
            futures: list[asyncio.Future[Any]] = []
            # 2.
            futures.extend([await _send(producer, r) for r in batch.events])
            # 3.
            state_futures = [
                await _send(producer, state_record(self._state_topic, w)) for w in batch.state
            ]
            # 4.
            futures.extend([await _send(producer, r) for r in batch.deadletters])
            # 5.
            if batch.checkpoint is not None:
                futures.append(await _send(producer, batch.checkpoint))
            # 6.
            await asyncio.gather(*futures)
            metadata = await asyncio.gather(*state_futures)
            await producer.commit_transaction()
        except BaseException:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await producer.abort_transaction()
            raise
        offsets: dict[int, int] = {}
        for md in metadata:
            offsets[md.partition] = max(offsets.get(md.partition, 0), md.offset + 1)
        return offsets

    async def _reset(self) -> None:
        """Drop a producer whose transaction state is unknown; the next batch starts afresh
        (and its start aborts whatever was left open)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await _quiet_stop(producer)

    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Write records that need no store update (e.g. schemas) in their own transaction."""
        await self.commit(Batch(events=list(records)))


async def _send(producer: AIOKafkaProducer, record: OutRecord) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = await producer.send(
        record.topic, record.value, key=record.key, headers=record.headers or None
    )
    return fut


def _fatal(producer: AIOKafkaProducer) -> bool:
    """True when the producer's transaction state is fatal: the broker fenced it (the fence can
    surface in the background sender, so a later call fails with another error)."""
    manager = getattr(producer, "_txn_manager", None)
    return bool(manager is not None and manager.is_fatal_error())


async def _quiet_stop(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(15):
            await producer.stop()
