"""The sharded layout (issue 12): the shard function, topic partition counts, where the writer
puts state records and checkpoints, per-shard SQLite files and the per-partition restore.

The shard function is checked against Kafka's own partitioner (aiokafka's ``DefaultPartitioner``
and Java's murmur2 values); everything else runs against the real broker.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from producer.avro import Schemas
from producer.checkpoints import Checkpoint
from producer.config import KafkaConfig
from producer.errors import NotShardedLayout, TopicMisconfigured
from producer.events import Batch, Encoder, OutRecord
from producer.kafka.reader import Message, TopicReader
from producer.kafka.restore import load_checkpoints, restore_from_kafka
from producer.kafka.shards import (
    SHARDS_HEADER,
    murmur2,
    partition_of,
    shard_of,
    transactional_id,
)
from producer.kafka.statetopic import state_key
from producer.kafka.topics import TopicNames, TopicSettings, ensure_topics
from producer.kafka.writer import TransactionalWriter
from producer.service import NotOwned, Service
from producer.simulator import DistrictSpec, Simulator
from producer.state import StateStore, StateWrite
from tests.conftest import ServeSimulator
from tests.harness import make_config

#: Kafka's Java ``Utils.murmur2`` of these bytes (the values of Kafka's own ``UtilsTest``).
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def ids_in_shards(shards: int, wanted: list[int], stem: str = "d") -> dict[int, str]:
    """A district id in each of the ``wanted`` shards (the first ``<stem><i>`` that falls in)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < len(wanted):
        candidate = f"{stem}{i}"
        shard = shard_of(candidate, shards)
        if shard in wanted and shard not in found:
            found[shard] = candidate
        i += 1
    return found


def sqlite_files(directory: Path) -> list[str]:
    """The names of the SQLite files in ``directory``."""
    return sorted(p.name for p in directory.glob("*.sqlite"))


# -- the shard function ---------------------------------------------------------------------


def test_shard_of_is_kafkas_default_partitioner_on_the_district_id() -> None:
    """For any district id and shard count, ``shard_of`` is the partition Kafka's default
    partitioner gives the UTF-8 id as a key, so any Kafka client computes the same shard."""
    rng = random.Random(12)
    ids = [
        "springfield-usd",
        "classlink-4123",
        "d12",
        "é-district-ü",
        "学区-7",
        *(f"classlink-{rng.randrange(10**9)}" for _ in range(300)),
        *(
            "".join(rng.choice("abcdefxyz0123-_.") for _ in range(rng.randrange(1, 40)))
            for _ in range(300)
        ),
    ]
    for shards in (1, 2, 3, 6, 7, 12, 1000):
        partitions = list(range(shards))
        for district_id in ids:
            expected = DefaultPartitioner()(district_id.encode(), partitions, partitions)
            assert shard_of(district_id, shards) == expected, (district_id, shards)


def test_shard_of_matches_javas_murmur2() -> None:
    """``toPositive(murmur2(bytes)) % n`` with Java's murmur2 values: what a Java tool (Kafka
    Streams, a consumer) computes for these ids."""
    for raw, java in JAVA_MURMUR2.items():
        for shards in (1, 6, 7, 1000):
            assert shard_of(raw.decode(), shards) == (java & 0x7FFFFFFF) % shards


def test_partition_of_is_kafkas_default_partitioner_on_event_keys() -> None:
    """The writer's partition of an event key (``partition_of``, our word-at-a-time murmur2) is
    the partition aiokafka's ``DefaultPartitioner`` gives it, on many random keys of every
    length and tail (0 to 3 bytes past a 4-byte word), ASCII and not (accents, CJK, emoji, a
    NUL), and on Java's reference values."""
    rng = random.Random(13)
    alphabet = "abcxyz0189-_./:" + "éüßø" + "学区生" + "\U0001f600\U00010348" + "\x00\x7f"
    keys = [b"", b"/", "é".encode(), "学".encode(), *JAVA_MURMUR2]
    for _ in range(3000):
        district = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 20)))
        sourced = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
        keys.append(f"{district}/{sourced}".encode())
    keys += [bytes(rng.randrange(256) for _ in range(n)) for n in range(200)]  # any bytes
    assert {len(k) % 4 for k in keys} == {0, 1, 2, 3}
    for raw, java in JAVA_MURMUR2.items():
        assert murmur2(raw) == java & 0xFFFFFFFF
    for key in keys:
        assert murmur2(key) == aiokafka_murmur2(key), key
        for count in (1, 2, 3, 6, 7, 12, 1000):
            partitions = list(range(count))
            expected = DefaultPartitioner()(key, partitions, partitions)
            assert partition_of(key, count) == expected, (key, count)


def test_shard_of_refuses_no_shards_and_names_transactional_ids() -> None:
    """Zero shards is an error; shard n's producer is ``<client_id>-shard-<n>``."""
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("d1", 0)
    assert transactional_id("cdc-a", 4) == "cdc-a-shard-4"


# -- topics ---------------------------------------------------------------------------------


@pytest.mark.integration
async def test_state_and_checkpoints_topics_have_one_partition_per_shard(
    kafka_bootstrap: str, unique_prefix: str
) -> None:
    """``kafka.shards`` partitions for state and checkpoints, ``kafka.partitions`` for events
    and dead letters, one for schemas."""
    names = TopicNames(unique_prefix)
    settings = TopicSettings.from_config(KafkaConfig(partitions=2, shards=5))
    await ensure_topics({"bootstrap_servers": kafka_bootstrap}, names, settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names.all())
    finally:
        await admin.close()
    counts = {t["topic"]: len(t["partitions"]) for t in described}
    assert counts[names.state] == counts[names.checkpoints] == 5
    assert counts[names.events("users")] == counts[names.deadletter] == 2
    assert counts[names.schemas] == 1


@pytest.mark.integration
@pytest.mark.parametrize("topic", ["state", "checkpoints"])
async def test_a_topic_with_another_partition_count_is_refused(
    kafka_bootstrap: str, unique_prefix: str, topic: str
) -> None:
    """An existing state or checkpoints topic whose partition count is not ``kafka.shards``
    stops the start with a message naming the topic, ``kafka.shards`` and the reshard command
    (a 0.1.0 deployment's one-partition checkpoints topic is such a case)."""
    names = TopicNames(unique_prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    f"{unique_prefix}.{topic}", 1, 1, topic_configs={"cleanup.policy": "compact"}
                )
            ]
        )
    finally:
        await admin.close()
    settings = TopicSettings.from_config(KafkaConfig(shards=6))
    with pytest.raises(TopicMisconfigured) as caught:
        await ensure_topics({"bootstrap_servers": kafka_bootstrap}, names, settings)
    message = str(caught.value)
    assert f"{unique_prefix}.{topic}" in message
    assert "kafka.shards" in message
    assert "oneroster-cdc reshard --shards 6" in message
    # The reshard command itself creates and grows topics without the check.
    await ensure_topics({"bootstrap_servers": kafka_bootstrap}, names, settings, check_shards=False)


# -- the writer -----------------------------------------------------------------------------


async def _messages(
    bootstrap: str, topic: str, partitions: list[int] | None = None
) -> list[Message]:
    reader = TopicReader(
        {"bootstrap_servers": bootstrap}, topic, action="test", partitions=partitions
    )
    async with reader:
        return await reader.read_all()


def _writer(
    bootstrap: str, names: TopicNames, store: StateStore, shards: int, shard: int | None, tid: str
) -> TransactionalWriter:
    return TransactionalWriter(
        producer_config={"bootstrap_servers": bootstrap},
        transactional_id=tid,
        state_topic=names.state,
        checkpoints_topic=names.checkpoints,
        shards=shards,
        shard=shard,
        store=store,
    )


def _state_batch(names: TopicNames, district: str, n: int, *, start: int = 0) -> Batch:
    batch = Batch()
    for i in range(start, start + n):
        batch.state.append(StateWrite("users", district, f"u{i}", b"digest%d" % i, b"value%d" % i))
    batch.checkpoint = OutRecord(
        names.checkpoints, f"{district}/users".encode(), b"cp-" + district.encode()
    )
    return batch


@pytest.fixture
async def topics(kafka_bootstrap: str, unique_prefix: str) -> TopicNames:
    """The topics of a 4-shard deployment under a fresh prefix."""
    names = TopicNames(unique_prefix)
    settings = TopicSettings.from_config(KafkaConfig(partitions=3, shards=4))
    await ensure_topics({"bootstrap_servers": kafka_bootstrap}, names, settings)
    return names


@pytest.mark.integration
async def test_state_records_and_checkpoints_go_to_the_districts_shard(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    """Every state record and checkpoint of district d lands in partition ``shard_of(d)`` (not
    where its key would hash), each checkpoint carries ``shards: 4``, and events keep the
    default partitioner on their key."""
    districts = list(ids_in_shards(4, [0, 1, 2, 3]).values())
    store = StateStore(tmp_path / "all.sqlite")
    writer = _writer(kafka_bootstrap, topics, store, 4, None, f"{topics.prefix}-any")
    await writer.start()
    try:
        for district in districts:
            batch = _state_batch(topics, district, 20)
            batch.events = [
                OutRecord(topics.events("users"), f"{district}/u{i}".encode(), b"e")
                for i in range(20)
            ]
            await writer.commit(batch)
    finally:
        await writer.close()
        store.close()
    state = await _messages(kafka_bootstrap, topics.state)
    assert len(state) == 80
    for m in state:
        assert m.key is not None
        assert m.partition == shard_of(m.key.decode().split("/")[1], 4)
    # The keys alone would not have put them there: the placement is the district's.
    assert any(
        DefaultPartitioner()(m.key, [0, 1, 2, 3], [0, 1, 2, 3]) != m.partition for m in state
    )
    checkpoints = await _messages(kafka_bootstrap, topics.checkpoints)
    assert sorted((m.key, m.partition) for m in checkpoints) == sorted(
        (f"{d}/users".encode(), shard_of(d, 4)) for d in districts
    )
    assert all(dict(m.headers)[SHARDS_HEADER] == b"4" for m in checkpoints)
    events = await _messages(kafka_bootstrap, topics.events("users"))
    assert all(m.partition == DefaultPartitioner()(m.key, [0, 1, 2], [0, 1, 2]) for m in events)


@pytest.mark.integration
async def test_a_shards_writer_refuses_a_district_of_another_shard(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    """The writer of shard 1 raises on a district of shard 2 and commits nothing of that batch
    (it would write outside its fence); its own districts still commit."""
    ids = ids_in_shards(4, [1, 2])
    store = StateStore(tmp_path / "s1.sqlite")
    writer = _writer(kafka_bootstrap, topics, store, 4, 1, transactional_id(topics.prefix, 1))
    await writer.start()
    try:
        with pytest.raises(ValueError, match="shard 2"):
            await writer.commit(_state_batch(topics, ids[2], 3))
        await writer.commit(_state_batch(topics, ids[1], 3))
    finally:
        await writer.close()
        store.close()
    state = await _messages(kafka_bootstrap, topics.state)
    assert {m.key.decode().split("/")[1] for m in state if m.key} == {ids[1]}


# -- per-partition restore and checkpoints --------------------------------------------------


@pytest.mark.integration
async def test_restoring_a_shard_reads_only_its_partition_and_applies_only_its_districts(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    """Shard 1's restore reads partition 1 of the state topic alone (the offsets read are
    reported), reads past a leftover record of a shard-2 district sitting in partition 1 (an
    old layout's) without applying it, and a warm restore later starts where the last ended."""
    ids = ids_in_shards(4, [1, 2])
    store = StateStore(tmp_path / "writer.sqlite")
    writer = _writer(kafka_bootstrap, topics, store, 4, None, f"{topics.prefix}-any")
    await writer.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await writer.commit(_state_batch(topics, ids[1], 30))
        await writer.commit(_state_batch(topics, ids[2], 50))
        leftover = state_key("users", ids[2], "left-over").encode()
        await producer.send_and_wait(
            topics.state, b"value", key=leftover, partition=1, headers=[("digest", b"d")]
        )
        await producer.send_and_wait(
            topics.checkpoints, b"old", key=f"{ids[2]}/users".encode(), partition=1
        )

        config = {"bootstrap_servers": kafka_bootstrap}
        restored = StateStore(tmp_path / "shard-1.sqlite")
        stats = await restore_from_kafka(
            restored, topic=topics.state, consumer_config=config, shard=1, shards=4
        )
        assert stats.partitions == (1,)
        # 30 records, a commit marker, the leftover: partition 1 was read from 0 to its end.
        assert stats.from_offsets == {1: 0}
        assert stats.to_offsets == {1: 32}
        assert (stats.records, stats.ignored, stats.cold) == (30, 1, True)
        assert restored.count() == restored.count("users", ids[1]) == 30
        assert restored.offsets(topics.state) == {1: 32}

        await writer.commit(_state_batch(topics, ids[1], 5, start=100))
        await writer.commit(_state_batch(topics, ids[2], 7, start=100))
        warm = await restore_from_kafka(
            restored, topic=topics.state, consumer_config=config, shard=1, shards=4
        )
        assert warm.from_offsets == {1: 32}
        assert warm.to_offsets == {1: 38}
        assert (warm.records, warm.ignored, warm.cold) == (5, 0, False)
        assert restored.count() == 35
        restored.close()

        encoder = Encoder(Schemas.load(), topics)
        await writer.commit(_checkpoint_batch(encoder, ids[1]))
        book = await load_checkpoints(
            encoder, topic=topics.checkpoints, consumer_config=config, shard=1, shards=4
        )
        assert list(book) == [(ids[1], "users")]
        assert book[ids[1], "users"].cursor == "2026-12-01T10:00:00.000Z"
    finally:
        await producer.stop()
        await writer.close()
        store.close()


def _checkpoint_batch(encoder: Encoder, district: str) -> Batch:
    cp = Checkpoint(district_id=district, entity="users", cursor="2026-12-01T10:00:00.000Z")
    return Batch(checkpoint=encoder.checkpoint(cp))


# -- the service ----------------------------------------------------------------------------


@pytest.mark.integration
async def test_service_keeps_one_store_and_writer_per_shard(
    serve_simulator: ServeSimulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """``Service(config)`` owns every shard: one SQLite file per shard named after its
    transactional id, each district's records only in its shard's store; a restart restores
    each shard from its own partition (warm: nothing to read)."""
    ids = ids_in_shards(3, [0, 2], stem="dist-")
    sim: Simulator = await serve_simulator(
        [
            DistrictSpec(id=ids[0], version="1.2", size="tiny", seed=1),
            DistrictSpec(id=ids[2], version="1.1", size="tiny", seed=2),
        ]
    )
    config = make_config(
        sim,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        state_dir=tmp_path,
        kafka={"shards": 3},
    )
    async with Service(config) as service:
        assert sorted(service.shards) == [0, 1, 2]
        for district in ids.values():
            await service.sync(district)
        assert service.store_for(ids[0]).count("users", ids[2]) == 0
        assert service.store_for(ids[2]).count("users", ids[2]) > 0
        assert service.shards[1].store.count() == 0
        assert service.state_keys() == sum(s.store.count() for s in service.shards.values())
        assert {w.transactional_id for w in (s.writer for s in service.shards.values())} == {
            f"{unique_prefix}-shard-{n}" for n in range(3)
        }
        keys = {n: s.store.count() for n, s in service.shards.items()}
    assert sqlite_files(tmp_path) == [f"{unique_prefix}-shard-{n}.sqlite" for n in range(3)]
    async with Service(config) as again:
        assert {n: s.store.count() for n, s in again.shards.items()} == keys
        for n, shard in again.shards.items():
            assert shard.restore_stats is not None
            assert shard.restore_stats.partitions == (n,)
            assert shard.restore_stats.records == 0  # warm: from the stored offsets
            # From the stored offset (past the last record) to the end: the commit marker.
            first, last = shard.restore_stats.from_offsets[n], shard.restore_stats.to_offsets[n]
            assert last - first <= 1
        assert again.checkpoint(ids[2], "users").record_count > 0


@pytest.mark.integration
async def test_a_service_owning_some_shards_refuses_the_others_districts(
    serve_simulator: ServeSimulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A service that owns only shard 0 (as a group member may) restores only that shard and
    refuses to sync a district of shard 1 with ``NotOwned``, naming the shard."""
    ids = ids_in_shards(2, [0, 1])
    sim: Simulator = await serve_simulator(
        [DistrictSpec(id=d, version="1.2", size="tiny", seed=i) for i, d in enumerate(ids.values())]
    )
    config = make_config(
        sim,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        state_dir=tmp_path,
        kafka={"shards": 2},
    )
    async with Service(config, own_all=False) as service:
        assert service.shards == {}
        assert not service.owned_district_ids
        await service.assign([0])
        assert service.owned_district_ids == [ids[0]]
        await service.sync(ids[0])
        with pytest.raises(NotOwned, match="shard 1"):
            await service.sync(ids[1])
        await service.release([0])
        assert service.shards == {}
    assert sqlite_files(tmp_path) == [f"{unique_prefix}-shard-0.sqlite"]


@pytest.mark.integration
async def test_service_refuses_checkpoints_not_in_the_sharded_layout(
    serve_simulator: ServeSimulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A checkpoint without the ``shards`` header (as 0.1.0 wrote them) stops the start before
    any writer fences or writes: ``NotShardedLayout`` names ``oneroster-cdc reshard``."""
    sim: Simulator = await serve_simulator([DistrictSpec(id="old", version="1.2", size="tiny")])
    config = make_config(sim, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path)
    names = TopicNames(unique_prefix)
    await ensure_topics(
        {"bootstrap_servers": kafka_bootstrap}, names, TopicSettings.from_config(config.kafka)
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            names.checkpoints, b"cp", key=b"old/users", partition=shard_of("old", 6)
        )
    finally:
        await producer.stop()
    with pytest.raises(NotShardedLayout, match="oneroster-cdc reshard"):
        async with Service(config):
            pass
    assert sqlite_files(tmp_path) == []
