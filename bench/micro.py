"""Per-record CPU cost of each pipeline stage, and of the replacements proposed in
``docs/performance.md``, on simulator records (no network, no broker).

    .venv/bin/python -m bench.micro [--records 20000]

Prints CPU microseconds per record for: JSON parse share, normalise (the generated per-entity
normalisers and the reference path they replace), digest, diff, Avro encode,
the state store look-up, a raw-record fingerprint (the proposed no-change fast path),
``uuid5`` against a formatted SHA-1 (the proposed ``event_id``), Kafka's murmur2 (aiokafka's
and the writer's) and the writer's transaction without a broker: a record's event and state
message partitioned and appended to aiokafka's per-partition batch builders, which are then
built (zstd), as ``TransactionalWriter._transaction`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from producer import diff as differ
from producer.avro import Schemas
from producer.config import KafkaConfig
from producer.events import Batch, Encoder, SourceInfo, encode
from producer.kafka import shards
from producer.kafka.options import producer_options
from producer.kafka.topics import TopicNames
from producer.kafka.writer import TransactionalWriter
from producer.model import CanonicalRecord
from producer.normalise import normalise
from producer.simulator import DistrictSpec, Simulator
from producer.state import StateStore, StateWrite

#: Share of records per entity in a medium district (users + enrollments dominate).
MIX = {"users": 0.2, "enrollments": 0.67, "demographics": 0.1, "classes": 0.03}


def per_record(fn: Callable[[], Any], n: int, rounds: int = 5) -> float:
    """CPU microseconds per record of ``fn`` (which processes ``n`` records), best of
    ``rounds``. Process CPU time, not wall time: on a shared machine the wall clock also counts
    the time other processes held the core."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best / n * 1e6


def sha1_uuid(name: str) -> str:
    """A version-5-shaped UUID string from SHA-1, without ``uuid.UUID`` objects."""
    h = bytearray(hashlib.sha1(name.encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


class NoBroker:
    """Enough of a started ``AIOKafkaProducer`` for ``TransactionalWriter._transaction``: its
    batch builders are a real (unstarted) producer's, with the product's options; a sent batch
    is built (compressed) at once and acknowledged at offset 0, nothing leaves the process."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self.batches = 0

    async def begin_transaction(self) -> None:
        pass

    async def commit_transaction(self) -> None:
        pass

    async def abort_transaction(self) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(6))

    def create_batch(self) -> Any:
        return self._producer.create_batch()

    async def send_batch(self, builder: Any, topic: str, *, partition: int) -> Any:
        builder._build()  # what the producer's sender does with a batch
        self.batches += 1
        done = asyncio.get_running_loop().create_future()
        done.set_result(argparse.Namespace(partition=partition, offset=0))
        return done


def write_without_broker(batch: Batch, store: StateStore, topics: TopicNames) -> None:
    """One ``TransactionalWriter._transaction`` of ``batch`` against ``NoBroker``."""

    async def run() -> None:
        options = producer_options(KafkaConfig())
        producer = AIOKafkaProducer(**options, transactional_id="micro", enable_idempotence=True)
        writer = TransactionalWriter(
            producer_config=options,
            transactional_id="micro",
            state_topic=topics.state,
            checkpoints_topic=topics.checkpoints,
            shards=4,
            store=store,
        )
        try:
            await writer._transaction(NoBroker(producer), batch)
        finally:
            await producer.stop()

    asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    sim = Simulator([DistrictSpec(id="d", version="1.2", size="medium")])
    d = sim.district("d")
    raws: list[tuple[str, dict[str, Any]]] = []
    for entity, share in MIX.items():
        count = min(d.counts()[entity], int(args.records * share))
        raws += [(entity, d.store.get_index(entity, i)) for i in range(count)]  # type: ignore[misc, arg-type]
    n = len(raws)
    bodies = [orjson.dumps(r) for _, r in raws]
    schemas = Schemas.load()
    canon: list[CanonicalRecord] = []
    for entity, raw in raws:
        rec = normalise(entity, "d", raw)  # type: ignore[arg-type]
        assert isinstance(rec, CanonicalRecord)
        canon.append(rec)
    digests = [differ.digest(c.data) for c in canon]
    source = SourceInfo("1.2", "http://sim", "FULL", "s" * 32, datetime.now(UTC))
    changes = [differ.diff(c, None, new_digest=g) for c, g in zip(canon, digests, strict=True)]

    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "s.sqlite")
        store.apply(
            [
                StateWrite(c.entity, "d", c.sourced_id, g, b"x" * 300)
                for c, g in zip(canon, digests, strict=True)
            ],
            topic="t",
            offsets={},
        )
        by_entity: dict[str, list[str]] = {}
        for c in canon:
            by_entity.setdefault(c.entity, []).append(c.sourced_id)

        def lookups() -> None:
            for entity, sids in by_entity.items():
                for i in range(0, len(sids), 1000):
                    store.get_many(entity, "d", sids[i : i + 1000])

        topics = TopicNames("micro")
        encoder = Encoder(schemas, topics)
        batch = Batch()
        for ch in changes:
            if ch is not None:
                encoder.add_change(batch, ch, source, raw_digest=b"r" * 16)
        keys = [record.key for record in batch.events]

        rows = {
            "orjson.loads (parse, per record)": per_record(
                lambda: [orjson.loads(b) for b in bodies], n
            ),
            "normalise (generated per-entity normalisers)": per_record(
                lambda: [normalise(e, "d", r) for e, r in raws],  # type: ignore[arg-type]
                n,
            ),
            "normalise (reference path: the field list walked as data)": per_record(
                lambda: [normalise(e, "d", r, generic=True) for e, r in raws],  # type: ignore[arg-type]
                n,
            ),
            "digest (canonical, sorted JSON + BLAKE2b)": per_record(
                lambda: [differ.digest(c.data) for c in canon], n
            ),
            "store.get_many (pages of 1000)": per_record(lookups, n),
            "diff (new record)": per_record(
                lambda: [
                    differ.diff(c, None, new_digest=g) for c, g in zip(canon, digests, strict=True)
                ],
                n,
            ),
            "encode (record body + envelope)": per_record(
                lambda: [encode(schemas, ch, source) for ch in changes if ch], n
            ),
            "murmur2: aiokafka's (per event key)": per_record(
                lambda: [aiokafka_murmur2(k) for k in keys], n
            ),
            "murmur2: producer.kafka.shards (per event key)": per_record(
                lambda: [shards.murmur2(k) for k in keys], n
            ),
            "writer: event + state message -> built Kafka batches (no broker)": per_record(
                lambda: write_without_broker(batch, store, topics), n
            ),
            "proposed: raw fingerprint (orjson.dumps + BLAKE2b)": per_record(
                lambda: [
                    hashlib.blake2b(orjson.dumps(r), digest_size=16).digest() for _, r in raws
                ],
                n,
            ),
        }
        store.close()
    names = [
        f"d\x1fusers\x1f{c.sourced_id}\x1fCREATED\x1f\x1f{g.hex()}\x1fx"
        for c, g in zip(canon, digests, strict=True)
    ]
    ns = uuid.uuid4()
    rows["event_id: uuid.uuid5"] = per_record(lambda: [str(uuid.uuid5(ns, x)) for x in names], n)
    rows["proposed event_id: formatted SHA-1"] = per_record(
        lambda: [sha1_uuid(x) for x in names], n
    )
    print(f"{n} records ({', '.join(f'{e} {s:.0%}' for e, s in MIX.items())})")
    for name, us in rows.items():
        print(f"{us:8.1f} us/record  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
