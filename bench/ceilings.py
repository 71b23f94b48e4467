"""Ceilings: what the hardware, the simulator and the Kafka clients allow without our code.

* ``http_ceiling``: every page of a district with aiohttp + orjson at the producer's page size
  and concurrency, the same URLs the client sends, no processing.
* ``read_topics``: raw read_committed consume of topics (the consume ceiling), optionally
  keeping the messages so the produce ceilings can replay exactly what the snapshot wrote.
* ``aiokafka_produce`` / ``librdkafka_produce``: transactional produce of those messages, in
  transactions of the same size as the snapshot's, to fresh topics.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.sim import SimDistrict
from producer.kafka.reader import topic_partitions
from producer.simulator.auth import ALL_SCOPES

Message = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]
"""(partition, key, value, headers) of one consumed record."""


@dataclass(slots=True)
class Figure:
    """One measured throughput: ``count`` units in ``seconds``."""

    count: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


async def _token(session: aiohttp.ClientSession, district: SimDistrict) -> str:
    async with session.post(
        district.token_url,
        data={"grant_type": "client_credentials", "scope": " ".join(ALL_SCOPES)},
        auth=aiohttp.BasicAuth(district.client_id, district.client_secret),
    ) as resp:
        resp.raise_for_status()
        return str((await resp.json())["access_token"])


async def http_ceiling(
    district: SimDistrict, *, entities: list[str], page_size: int, concurrency: int
) -> Figure:
    """Fetch and parse every page of every entity; no normalising, no Kafka."""
    assert district.auth == "oauth2", "the HTTP ceiling speaks OAuth 2.0 (use a 1.2 district)"
    records = 0
    pages = 0
    connector = aiohttp.TCPConnector(limit=max(8, 2 * concurrency))
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = {"Authorization": f"Bearer {await _token(session, district)}"}

        async def get(entity: str, offset: int) -> tuple[int, int | None]:
            nonlocal pages
            url = (
                f"{district.oneroster_url}/{entity}?limit={page_size}&offset={offset}"
                "&sort=sourcedId&orderBy=asc"
            )
            async with session.get(url, headers=headers) as resp:
                body = await resp.read()
                total = resp.headers.get("X-Total-Count")
            data = orjson.loads(body)
            pages += 1
            return len(next(v for v in data.values() if isinstance(v, list))), (
                int(total) if total is not None else None
            )

        started, cpu = time.monotonic(), time.process_time()
        for entity in entities:
            n, total = await get(entity, 0)
            records += n
            assert total is not None
            offsets = iter(range(n, total, page_size))

            async def worker(entity: str = entity, offsets: Any = offsets) -> int:
                got = 0
                for offset in offsets:
                    got += (await get(entity, offset))[0]
                return got

            records += sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
        seconds = time.monotonic() - started
        cpu = time.process_time() - cpu
    return Figure(records, seconds, {"pages": pages, "cpu_share": cpu / seconds})


async def partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic`` (the product's helper)."""
    return await topic_partitions(consumer, topic)


async def read_topics(
    bootstrap: str, topics: list[str], *, keep: int = 0
) -> tuple[Figure, dict[str, list[Message]]]:
    """Raw read_committed consume of ``topics`` from the beginning to their end offsets.

    Keeps up to ``keep`` messages per topic (for the produce ceilings); the rate is measured
    with the keeping included (appending a tuple: negligible beside the fetch).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    kept: dict[str, list[Message]] = {t: [] for t in topics}
    count = 0
    await consumer.start()
    try:
        tps = [tp for t in topics for tp in await partitions(consumer, t)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        started = time.monotonic()
        await consumer.seek_to_beginning(*tps)
        pending = {tp for tp in tps if await consumer.position(tp) < end[tp]}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
            for tp, messages in batch.items():
                count += len(messages)
                room = keep - len(kept[tp.topic])
                if room > 0:
                    kept[tp.topic].extend(
                        (tp.partition, m.key, m.value, list(m.headers)) for m in messages[:room]
                    )
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
        seconds = time.monotonic() - started
    finally:
        await consumer.stop()
    return Figure(count, seconds), kept


async def create_topics(bootstrap: str, names: dict[str, int], *, compact: set[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    n,
                    num_partitions=p,
                    replication_factor=1,
                    topic_configs={"cleanup.policy": "compact"} if n in compact else {},
                )
                for n, p in names.items()
            ]
        )
    finally:
        await admin.close()
    await asyncio.sleep(3)  # let the new partitions elect their leaders before producing


def plan(
    messages: dict[str, list[Message]], *, total: int, per_txn: int, prefix: str
) -> list[list[tuple[str, Message]]]:
    """Transactions of ``per_txn`` messages, ``total`` in all, cycling through the kept
    messages of each source topic in proportion (events and state interleave as in a batch)."""
    flat: list[tuple[str, Message]] = []
    sources = [(t, m) for t, m in messages.items() if m]
    kept = sum(len(m) for _, m in sources)
    for topic, msgs in sources:
        share = round(total * len(msgs) / kept)
        flat.extend((f"{prefix}.{topic}", msgs[i % len(msgs)]) for i in range(share))
    return [flat[i : i + per_txn] for i in range(0, len(flat), per_txn)]


async def aiokafka_produce(
    bootstrap: str, txns: list[list[tuple[str, Message]]], options: dict[str, Any]
) -> Figure:
    """Raw aiokafka transactional produce (the writer's producer options, no store)."""
    producer = AIOKafkaProducer(
        **options,
        transactional_id=f"bench-ceiling-{uuid.uuid4().hex[:8]}",
        enable_idempotence=True,
        acks="all",
    )
    await producer.start()
    count = 0
    try:
        started = time.monotonic()
        for txn in txns:
            await producer.begin_transaction()
            futures = [
                await producer.send(t, v, key=k, partition=p, headers=h or None)
                for t, (p, k, v, h) in txn
            ]
            await asyncio.gather(*futures)
            await producer.commit_transaction()
            count += len(txn)
        seconds = time.monotonic() - started
    finally:
        await producer.stop()
    return Figure(count, seconds)


async def aiokafka_batch_produce(
    bootstrap: str, txns: list[list[tuple[str, Message]]], options: dict[str, Any]
) -> Figure:
    """The same transactions through aiokafka's batch API (``create_batch``/``send_batch``,
    one builder per partition): what the writer would gain by skipping per-message ``send``."""
    producer = AIOKafkaProducer(
        **options,
        transactional_id=f"bench-batch-{uuid.uuid4().hex[:8]}",
        enable_idempotence=True,
        acks="all",
    )
    await producer.start()
    count = 0
    try:
        started = time.monotonic()
        for txn in txns:
            await producer.begin_transaction()
            builders: dict[tuple[str, int], Any] = {}
            futures = []
            for t, (p, k, v, h) in txn:
                builder = builders.get((t, p))
                if builder is None:
                    builder = builders[(t, p)] = producer.create_batch()
                if builder.append(key=k, value=v, timestamp=None, headers=h) is None:
                    futures.append(await producer.send_batch(builder, t, partition=p))
                    builder = builders[(t, p)] = producer.create_batch()
                    builder.append(key=k, value=v, timestamp=None, headers=h)
            for (t, p), builder in builders.items():
                futures.append(await producer.send_batch(builder, t, partition=p))
            await asyncio.gather(*futures)
            await producer.commit_transaction()
            count += len(txn)
        seconds = time.monotonic() - started
    finally:
        await producer.stop()
    return Figure(count, seconds)


def librdkafka_produce(
    bootstrap: str, txns: list[list[tuple[str, Message]]], compression: str | None
) -> Figure:
    """The same transactions through confluent-kafka (librdkafka), the ecosystem's reference."""
    from confluent_kafka import Producer  # noqa: PLC0415 - optional dependency (bench extra)

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"bench-rdk-{uuid.uuid4().hex[:8]}",
            "linger.ms": 5,
            "compression.type": compression or "none",
        }
    )
    producer.init_transactions(30)
    count = 0
    started = time.monotonic()
    for txn in txns:
        producer.begin_transaction()
        for t, (p, k, v, h) in txn:
            while True:
                try:
                    producer.produce(t, value=v, key=k, partition=p, headers=h or None)
                    break
                except BufferError:
                    producer.poll(0.01)
            producer.poll(0)
        producer.commit_transaction(60)
        count += len(txn)
    seconds = time.monotonic() - started
    return Figure(count, seconds, {"librdkafka": __import__("confluent_kafka").libversion()[0]})
