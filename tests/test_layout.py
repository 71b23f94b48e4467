"""The sharded layout check (``producer.kafka.layout``) and the group description
(``producer.kafka.fleet``), against the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from producer.config import KafkaConfig
from producer.errors import GroupLive, NotShardedLayout
from producer.kafka.fleet import Fleet, describe_fleet, require_no_live_group
from producer.kafka.layout import (
    Latest,
    check_layout,
    current_checkpoints,
    inspect_layout,
    partition_counts,
)
from producer.kafka.shards import SHARDS_HEADER, shard_of
from producer.kafka.topics import TopicNames
from producer.reshard import checkpoint_district, placed, plan_moves


def kafka_config(bootstrap: str, prefix: str, shards: int = 3) -> KafkaConfig:
    """A ``[kafka]`` section for ``prefix`` (its client id, so its group, is the prefix too)."""
    return KafkaConfig.model_validate(
        {
            "bootstrap_servers": bootstrap,
            "topic_prefix": prefix,
            "client_id": prefix,
            "shards": shards,
            "replication_factor": 1,
        }
    )


async def create(bootstrap: str, prefix: str, *, state: int, checkpoints: int) -> None:
    """The state and checkpoints topics of ``prefix`` with these partition counts."""
    names = TopicNames(prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(names.state, state, 1, topic_configs={"cleanup.policy": "compact"}),
                NewTopic(
                    names.checkpoints, checkpoints, 1, topic_configs={"cleanup.policy": "compact"}
                ),
            ]
        )
    finally:
        await admin.close()
    # A created topic's metadata reaches the broker's cache a moment later (until then a
    # request by name answers UNKNOWN_TOPIC_OR_PARTITION): wait for both, as a deployment's
    # later start would find them.
    options = {"bootstrap_servers": bootstrap}
    for _ in range(100):
        if len(await partition_counts(options, [names.state, names.checkpoints])) == 2:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{names.state} and {names.checkpoints} never showed in the metadata")


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A plain producer (the records these tests write need no transaction)."""
    out = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await out.start()
    yield out
    await out.stop()


def districts_of(shard: int, shards: int, count: int = 1) -> list[str]:
    """``count`` district ids whose shard is ``shard``."""
    found = [d for d in (f"d{i}" for i in range(1000)) if shard_of(d, shards) == shard]
    return found[:count]


async def put_checkpoint(
    producer: AIOKafkaProducer,
    topic: str,
    district: str,
    *,
    partition: int,
    shards: int | None,
    value: bytes | None = b"cp",
) -> None:
    """A checkpoint record of ``district``/users in ``partition`` (with a ``shards`` header
    when given; the value is not decoded by the check)."""
    headers = [] if shards is None else [(SHARDS_HEADER, str(shards).encode())]
    await producer.send_and_wait(
        topic, value, key=f"{district}/users".encode(), partition=partition, headers=headers
    )


@pytest.mark.integration
async def test_missing_or_empty_topics_are_a_fresh_layout(
    kafka_bootstrap: str, unique_prefix: str
) -> None:
    """No topics at all, then empty topics with ``shards`` partitions: both pass the check."""
    cfg = kafka_config(kafka_bootstrap, unique_prefix)
    none = await check_layout(cfg)
    assert (none.state_partitions, none.checkpoint_partitions, none.checkpoints) == (None, None, 0)
    await create(kafka_bootstrap, unique_prefix, state=3, checkpoints=3)
    empty = await check_layout(cfg)
    assert (empty.state_partitions, empty.checkpoint_partitions, empty.checkpoints) == (3, 3, 0)


@pytest.mark.integration
async def test_checkpoints_in_their_shard_with_the_header_pass_and_every_misfit_is_named(
    kafka_bootstrap: str, unique_prefix: str, producer: AIOKafkaProducer
) -> None:
    """Checkpoints in their shard's partition with ``shards: 3`` pass; one without the header,
    one written for 6 shards and one in another partition each make the check raise
    ``NotShardedLayout`` naming the key and ``oneroster-cdc reshard``; a misplaced key whose
    latest record is a tombstone is not live and passes."""
    cfg = kafka_config(kafka_bootstrap, unique_prefix)
    topic = TopicNames(unique_prefix).checkpoints
    await create(kafka_bootstrap, unique_prefix, state=3, checkpoints=3)
    good = [d for s in range(3) for d in districts_of(s, 3, 2)]
    for district in good:
        await put_checkpoint(producer, topic, district, partition=shard_of(district, 3), shards=3)
    # Moved away: a live record then a tombstone in the old partition.
    moved = good[0]
    away = (shard_of(moved, 3) + 1) % 3
    await put_checkpoint(producer, topic, moved, partition=away, shards=None)
    await put_checkpoint(producer, topic, moved, partition=away, shards=None, value=None)
    layout = await check_layout(cfg)
    assert layout.checkpoints == len(good)
    assert layout.ok

    headerless, other_count, elsewhere = districts_of(0, 3, 6)[3:6]
    await put_checkpoint(producer, topic, headerless, partition=0, shards=None)
    await put_checkpoint(producer, topic, other_count, partition=0, shards=6)
    await put_checkpoint(producer, topic, elsewhere, partition=1, shards=3)
    with pytest.raises(NotShardedLayout) as raised:
        await check_layout(cfg)
    message = str(raised.value)
    assert "oneroster-cdc reshard --shards 3" in message
    assert f"'{headerless}/users' has no 'shards' header" in message
    assert f"'{other_count}/users' was written for 6 shards" in message
    assert f"'{elsewhere}/users' is in partition 1, its shard is 0" in message
    assert "3 of 9 checkpoint(s)" in message
    assert not raised.value.retriable


@pytest.mark.integration
async def test_a_partition_count_other_than_kafka_shards_is_refused(
    kafka_bootstrap: str, unique_prefix: str
) -> None:
    """The 0.1.0 layout (state with ``kafka.partitions``, checkpoints with 1 partition) is
    refused naming ``kafka.shards`` and reshard, even with no checkpoint in it; more partitions
    than shards says that shards cannot shrink."""
    await create(kafka_bootstrap, unique_prefix, state=6, checkpoints=1)
    with pytest.raises(NotShardedLayout) as raised:
        await check_layout(kafka_config(kafka_bootstrap, unique_prefix, shards=3))
    message = str(raised.value)
    assert f"topic '{unique_prefix}.checkpoints' has 1 partition(s), kafka.shards = 3" in message
    assert "more than kafka.shards = 3" in message
    assert "use a new kafka.topic_prefix" in message
    assert "oneroster-cdc reshard" in message
    six = await inspect_layout(kafka_config(kafka_bootstrap, unique_prefix, shards=6))
    assert six.problems == [
        f"topic '{unique_prefix}.checkpoints' has 1 partition(s), kafka.shards = 6"
    ]


async def wait_for(fleet_ok: object, cfg: KafkaConfig, seconds: float = 60.0) -> Fleet:
    """The fleet once ``fleet_ok(fleet)`` holds (the group settles after a join)."""
    assert callable(fleet_ok)
    async with asyncio.timeout(seconds):
        while True:
            fleet = await describe_fleet(cfg)
            if fleet_ok(fleet):
                return fleet
            await asyncio.sleep(0.2)


@pytest.mark.integration
async def test_describe_fleet_names_members_hosts_and_their_assigned_shards(
    kafka_bootstrap: str, unique_prefix: str
) -> None:
    """Before anyone joined the group is not live (``Dead``); one consumer subscribed to the
    checkpoints topic with the group id owns all three shards; a second one takes some of them
    (together they own each exactly once); ``require_no_live_group`` refuses naming both
    members; after both leave the group is ``Empty`` and not live."""
    cfg = kafka_config(kafka_bootstrap, unique_prefix)
    await create(kafka_bootstrap, unique_prefix, state=3, checkpoints=3)
    before = await describe_fleet(cfg)
    assert (before.group, before.state, before.live) == (unique_prefix, "Dead", False)

    def member(n: int) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            TopicNames(unique_prefix).checkpoints,
            bootstrap_servers=kafka_bootstrap,
            group_id=unique_prefix,
            client_id=f"{unique_prefix}@host-{n}:{100 + n}",
            enable_auto_commit=False,
            heartbeat_interval_ms=300,
            session_timeout_ms=10_000,
        )

    first, second = member(1), member(2)
    await first.start()
    try:
        await first.getmany(timeout_ms=100)  # joins the group
        alone = await wait_for(
            lambda f: f.state == "Stable" and len(f.members) == 1 and f.members[0].shards, cfg
        )
        (only,) = alone.members
        assert only.client_id == f"{unique_prefix}@host-1:101"
        assert only.host.endswith("127.0.0.1")
        assert only.shards == (0, 1, 2)
        assert alone.owner(1) == only

        await second.start()
        poll = asyncio.ensure_future(_keep_polling(first, second))
        try:
            both = await wait_for(
                lambda f: (
                    f.state == "Stable" and len(f.members) == 2 and all(m.shards for m in f.members)
                ),
                cfg,
            )
        finally:
            poll.cancel()
        owned = sorted(s for m in both.members for s in m.shards)
        assert owned == [0, 1, 2]
        assert {m.client_id for m in both.members} == {
            f"{unique_prefix}@host-1:101",
            f"{unique_prefix}@host-2:102",
        }
        with pytest.raises(GroupLive) as raised:
            await require_no_live_group(cfg, "oneroster-cdc sync")
        message = str(raised.value)
        assert f"{unique_prefix}@host-1:101" in message
        assert f"{unique_prefix}@host-2:102" in message
        assert "Stop the daemons" in message
    finally:
        await second.stop()
        await first.stop()
    after = await wait_for(lambda f: not f.live, cfg)
    assert after.state == "Empty"
    assert (await require_no_live_group(cfg, "oneroster-cdc sync")).state == "Empty"


async def _keep_polling(*consumers: AIOKafkaConsumer) -> None:
    """Keep the consumers polling, so a rebalance completes."""
    while True:
        for consumer in consumers:
            await consumer.getmany(timeout_ms=100)


def latest(partition: int, key: str, value: bytes | None, shards: int | None, ts: int) -> Latest:
    """A checkpoint's latest record in one partition."""
    headers = [] if shards is None else [(SHARDS_HEADER, str(shards).encode())]
    return Latest(partition, ts, key.encode(), value, headers, ts)


def test_plan_moves_and_current_checkpoints_follow_the_sharded_layout() -> None:
    """Per key: a checkpoint in its shard with the header needs nothing; one elsewhere is copied
    to its shard and its stray tombstoned; one in its shard without the header is rewritten in
    place; when its shard already holds the key (live or a tombstone), that record stands and
    only the stray is tombstoned; a key whose latest records are all tombstones needs nothing.
    ``current_checkpoints`` gives the record that stands, live only."""
    home_of = {d: shard_of(d, 3) for d in ("d1", "d2", "d3", "d4", "d5", "d6")}
    away = {d: (s + 1) % 3 for d, s in home_of.items()}
    records = [
        latest(home_of["d1"], "d1/users", b"in place", 3, 1),
        latest(away["d2"], "d2/users", b"elsewhere", None, 2),
        latest(home_of["d3"], "d3/users", b"no header", None, 3),
        latest(home_of["d4"], "d4/users", b"new", 3, 9),
        latest(away["d4"], "d4/users", b"old stray", None, 4),
        latest(home_of["d5"], "d5/users", None, None, 9),
        latest(away["d5"], "d5/users", b"deleted since", None, 5),
        latest(away["d6"], "d6/users", None, None, 6),
    ]
    moves = {
        m.key.decode(): m
        for m in plan_moves(records, 3, district_of=checkpoint_district, stamp=True)
    }
    assert sorted(moves) == ["d2/users", "d3/users", "d4/users", "d5/users"]
    d2 = moves["d2/users"]
    assert d2.copy is not None
    assert (d2.shard, d2.copy.value) == (home_of["d2"], b"elsewhere")
    assert [s.partition for s in d2.strays] == [away["d2"]]
    copied = placed(d2, "t", 3, stamp=True)
    assert [(p.partition, p.value, dict(p.headers).get(SHARDS_HEADER)) for p in copied] == [
        (home_of["d2"], b"elsewhere", b"3"),
        (away["d2"], None, None),
    ]
    d3 = moves["d3/users"]
    assert d3.copy is not None
    assert (d3.copy.partition, d3.strays) == (home_of["d3"], ())
    for standing_key in ("d4/users", "d5/users"):
        assert moves[standing_key].copy is None
        assert len(moves[standing_key].strays) == 1
    current = current_checkpoints(records, 3)
    assert {k.decode(): r.value for k, r in current.items()} == {
        "d1/users": b"in place",
        "d2/users": b"elsewhere",
        "d3/users": b"no header",
        "d4/users": b"new",
    }
