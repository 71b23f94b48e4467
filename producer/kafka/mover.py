"""The Kafka operations of ``oneroster-cdc reshard``: fencing old writers, growing topics and
writing records to chosen partitions in transactions.

``Mover`` is a transactional producer under ``<client_id>-shard-0``, the transactional id of
the 0.1.0 writer: its start fences that writer (a zombie of it can no longer commit) and aborts
what it, or an interrupted reshard, left open, so what reshard reads next is only committed
data. Each ``Mover.commit`` is one transaction: all of its records, or none.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.errors import IllegalOperation, KafkaError, ProducerFenced

from producer.errors import BrokerUnavailable, Fenced, SinkError
from producer.kafka.authz import denied
from producer.kafka.reader import Headers
from producer.kafka.writer import quiet_abort, quiet_stop, transactional_producer


@dataclass(frozen=True, slots=True)
class Placed:
    """A record to write to one partition (``value`` None: a tombstone)."""

    topic: str
    partition: int
    key: bytes
    value: bytes | None
    headers: Headers


def _failure(
    exc: BaseException, transactional_id: str, options: Mapping[str, Any], doing: str
) -> SinkError:
    """What a failed producer call becomes: ``NotAuthorized`` when the broker's authorizer
    refused (naming the ACL), else ``BrokerUnavailable`` (run reshard again)."""
    refused = denied(exc, operation="Write", transactional_id=transactional_id, options=options)
    return refused if refused is not None else BrokerUnavailable(f"{doing}: {exc!r}")


async def grow_partitions(options: Mapping[str, Any], topic: str, count: int) -> None:
    """Give ``topic`` ``count`` partitions (it has fewer)."""
    admin = AIOKafkaAdminClient(**options)
    try:
        await admin.start()
        await admin.create_partitions({topic: NewPartitions(count)})
    except KafkaError as exc:
        refused = denied(exc, operation="Alter", topic=topic, options=options)
        if refused is not None:
            raise refused from exc
        raise BrokerUnavailable(f"adding partitions to {topic!r}: {exc}") from exc
    finally:
        await admin.close()


async def fence(options: Mapping[str, Any], transactional_ids: Sequence[str]) -> None:
    """Start and stop a transactional producer under each id: the broker bumps the id's epoch,
    so a process still writing under it is fenced and its open transaction aborted."""
    for tid in transactional_ids:
        producer = AIOKafkaProducer(**options, transactional_id=tid, enable_idempotence=True)
        try:
            await producer.start()
        except KafkaError as exc:
            raise _failure(exc, tid, options, f"fencing transactional id {tid!r}") from exc
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()


class Mover:
    """Transactions of placed records under one transactional id."""

    def __init__(self, options: Mapping[str, Any], transactional_id: str) -> None:
        self._options = options
        self.transactional_id = transactional_id
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> Mover:
        producer = transactional_producer(self._options, self.transactional_id)
        try:
            await producer.start()
        except KafkaError as exc:
            await quiet_stop(producer)
            raise _failure(
                exc, self.transactional_id, self._options, "starting the reshard writer"
            ) from exc
        self._producer = producer
        return self

    async def __aexit__(self, *exc: object) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await quiet_stop(producer)

    async def await_partitions(self, topic: str, count: int, seconds: float = 30.0) -> None:
        """Wait until the producer's metadata knows ``count`` partitions of ``topic`` (right
        after growing a topic it may still know fewer)."""
        producer = self._producer
        assert producer is not None
        async with asyncio.timeout(seconds):
            while len(await producer.partitions_for(topic)) < count:
                await producer.client.force_metadata_update()
                await asyncio.sleep(0.1)

    async def commit(self, records: Sequence[Placed]) -> None:
        """Write ``records`` in one transaction.

        Raises:
            Fenced: another process started with this transactional id.
            BrokerUnavailable: the transaction was aborted; nothing of it is visible.
        """
        producer = self._producer
        assert producer is not None
        if not records:
            return
        try:
            await producer.begin_transaction()
            try:
                sent = [
                    await producer.send(
                        r.topic, r.value, key=r.key, partition=r.partition, headers=list(r.headers)
                    )
                    for r in records
                ]
                await asyncio.gather(*sent)
                await producer.commit_transaction()
            except BaseException:
                await quiet_abort(producer)
                raise
        except ProducerFenced as exc:
            raise Fenced(
                f"transactional id {self.transactional_id!r} was taken over while resharding: "
                "is another reshard or an instance running?"
            ) from exc
        except (KafkaError, IllegalOperation, OSError, TimeoutError) as exc:
            raise _failure(
                exc, self.transactional_id, self._options, "reshard transaction aborted"
            ) from exc
