"""Smoke tests: the broker is a real Kafka and behaves as the product relies on.

Transactions with read_committed isolation, fencing by transactional_id, log compaction with
tombstones, and end offsets: each is observed on the broker, not assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced

from tests.conftest import TopicFactory

pytestmark = pytest.mark.integration


async def _read_all(
    bootstrap: str, topic: str, *, isolation: str = "read_committed", idle: float = 1.5
) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of ``topic`` from the beginning, until the end offset is reached."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or {0})
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=int(idle * 1000))
            for msgs in batch.values():
                out.extend((m.key, m.value) for m in msgs)
            positions = [await consumer.position(tp) for tp in partitions]
            if all(pos >= end[tp] for pos, tp in zip(positions, partitions, strict=True)):
                break
        return out
    finally:
        await consumer.stop()


async def test_read_committed_sees_only_committed_transactions(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """A committed transaction is visible to read_committed consumers; an aborted one is not,
    although a read_uncommitted consumer proves its records were really written."""
    topic = await topic_factory("txn")
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"smoke-{uuid.uuid4().hex}"
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed-1", key=b"a")
            await producer.send_and_wait(topic, b"committed-2", key=b"b")
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted", key=b"c")
        await producer.abort_transaction()
    finally:
        await producer.stop()

    committed = await _read_all(kafka_bootstrap, topic)
    assert [v for _, v in committed] == [b"committed-1", b"committed-2"]
    uncommitted = await _read_all(kafka_bootstrap, topic, isolation="read_uncommitted")
    assert b"aborted" in [v for _, v in uncommitted]


async def test_same_transactional_id_fences_the_older_producer(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """Starting a second producer with the same transactional_id fences the first: its next
    transaction fails with ProducerFenced and nothing it sent becomes visible."""
    topic = await topic_factory("fence")
    txn_id = f"smoke-fence-{uuid.uuid4().hex}"
    old = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=txn_id)
    await old.start()
    new = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=txn_id)
    await new.start()
    try:
        await old.begin_transaction()
        with pytest.raises(ProducerFenced):  # noqa: PT012 - the fence may surface at send or commit
            await old.send_and_wait(topic, b"zombie", key=b"z")
            await old.commit_transaction()
        async with new.transaction():
            await new.send_and_wait(topic, b"owner", key=b"o")
    finally:
        await new.stop()
        with contextlib.suppress(ProducerFenced):
            await old.stop()
    assert [v for _, v in await _read_all(kafka_bootstrap, topic)] == [b"owner"]


async def test_compaction_keeps_latest_value_and_drops_tombstoned_key(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """On a compacted topic the cleaner leaves only the newest value of an overwritten key and
    removes a tombstoned key entirely, within a bounded wait."""
    topic = await topic_factory(
        "compact",
        configs={
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.001",
            "delete.retention.ms": "100",
            "min.compaction.lag.ms": "0",
            "max.compaction.lag.ms": "200",
        },
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"v1", key=b"kept")
        await producer.send_and_wait(topic, b"v1", key=b"gone")
        await producer.send_and_wait(topic, b"v2", key=b"kept")
        await producer.send_and_wait(topic, None, key=b"gone")
        deadline = time.monotonic() + 90
        records: list[tuple[bytes | None, bytes | None]] = []
        while time.monotonic() < deadline:
            # Records after segment.ms roll the active segment so the cleaner can reach ours.
            await asyncio.sleep(0.3)
            await producer.send_and_wait(topic, b"x", key=b"filler")
            records = [
                r for r in await _read_all(kafka_bootstrap, topic, idle=0.3) if r[0] != b"filler"
            ]
            if records == [(b"kept", b"v2")]:
                break
    finally:
        await producer.stop()
    assert records == [(b"kept", b"v2")]


async def test_end_offsets_equal_records_written(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """After N non-transactional sends per partition, the end offset of each partition is N."""
    topic = await topic_factory("offsets", partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for partition, count in enumerate((5, 0, 12)):
            for i in range(count):
                await producer.send(topic, f"{i}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    assert [ends[tp] for tp in tps] == [5, 0, 12]
