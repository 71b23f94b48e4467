"""The transactional writer, topic setup and state restore, against the real broker."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from producer.config import KafkaConfig
from producer.errors import Fenced, TopicMisconfigured
from producer.events import Batch, OutRecord
from producer.kafka.restore import restore_from_kafka
from producer.kafka.topics import TopicNames, TopicSettings, ensure_topics
from producer.kafka.writer import TransactionalWriter
from producer.state import StateStore, StateWrite
from tests.checker import read_all

pytestmark = pytest.mark.integration


@pytest.fixture
async def env(kafka_bootstrap: str, unique_prefix: str, tmp_path: Path):
    """Topics under a fresh prefix, a store and a started writer; all closed afterwards."""
    names = TopicNames(unique_prefix)
    await ensure_topics(
        {"bootstrap_servers": kafka_bootstrap},
        names,
        TopicSettings.from_config(KafkaConfig(partitions=3)),
    )
    store = StateStore(tmp_path / "state.sqlite")
    writer = TransactionalWriter(
        producer_config={"bootstrap_servers": kafka_bootstrap},
        transactional_id=f"{unique_prefix}-shard-0",
        state_topic=names.state,
        checkpoints_topic=names.checkpoints,
        shards=6,
        store=store,
    )
    await writer.start()
    yield names, store, writer
    await writer.close()
    store.close()


def _batch(names: TopicNames, n: int, *, start: int = 0, checkpoint: bool = True) -> Batch:
    batch = Batch()
    for i in range(start, start + n):
        key = f"d1/u{i}".encode()
        batch.events.append(OutRecord(names.events("users"), key, f"event{i}".encode()))
        batch.state.append(StateWrite("users", "d1", f"u{i}", b"digest%d" % i, b"value%d" % i))
    if checkpoint:
        batch.checkpoint = OutRecord(names.checkpoints, b"d1/users", b"cursor")
    return batch


async def test_ensure_topics_creates_every_topic_with_its_policy(
    kafka_bootstrap: str, unique_prefix: str
) -> None:
    """Missing topics are created: state and checkpoints compacted, events kept forever; a
    second call creates nothing."""
    names = TopicNames(unique_prefix)
    created = await ensure_topics(
        {"bootstrap_servers": kafka_bootstrap}, names, TopicSettings.from_config(KafkaConfig())
    )
    assert sorted(created) == sorted(names.all())
    again = await ensure_topics(
        {"bootstrap_servers": kafka_bootstrap}, names, TopicSettings.from_config(KafkaConfig())
    )
    assert again == []


async def test_ensure_topics_refuses_a_state_topic_that_is_not_compacted(
    kafka_bootstrap: str, unique_prefix: str
) -> None:
    """An existing state topic with cleanup.policy=delete stops the start with a message that
    names the topic and the fix."""
    names = TopicNames(unique_prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics(
        [NewTopic(names.state, 1, 1, topic_configs={"cleanup.policy": "delete"})]
    )
    await admin.close()
    with pytest.raises(TopicMisconfigured, match=r"\.state.*compact"):
        await ensure_topics(
            {"bootstrap_servers": kafka_bootstrap}, names, TopicSettings.from_config(KafkaConfig())
        )


async def test_commit_writes_everything_then_advances_the_store(env, kafka_bootstrap: str) -> None:
    """A committed batch is visible to read_committed readers (events, state with digest
    headers, checkpoint) and only then is in the local store, with the offsets it reached."""
    names, store, writer = env
    await writer.commit(_batch(names, 10))
    events = await read_all(kafka_bootstrap, names.events("users"))
    assert sorted(v or b"" for _, v, _ in events) == sorted(f"event{i}".encode() for i in range(10))
    state = await read_all(kafka_bootstrap, names.state)
    assert {k: h["digest"] for k, _, h in state} == {
        f"users/d1/u{i}".encode(): b"digest%d" % i for i in range(10)
    }
    assert [v for _, v, _ in await read_all(kafka_bootstrap, names.checkpoints)] == [b"cursor"]
    assert store.count("users", "d1") == 10
    assert sum(store.offsets(names.state).values()) == 10


class PausingWriter(TransactionalWriter):
    """A writer whose first transaction stops after its records are sent and before its commit
    (``sent`` is set then), until the task is cancelled: the phase a cancel must be tested in."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent = asyncio.Event()

    async def _send_grouped(self, producer: Any, records: Any) -> Any:
        sent = await super()._send_grouped(producer, records)
        if not self.sent.is_set():
            self.sent.set()
            await asyncio.Event().wait()  # held open until cancelled
        return sent


async def test_cancelled_batch_leaves_nothing_visible_and_store_untouched(
    env, kafka_bootstrap: str, unique_prefix: str
) -> None:
    """A batch whose task is cancelled inside its open transaction (records sent, commit not
    reached) leaves no committed record and no store change; the next batch commits
    normally."""
    names, store, _writer = env
    writer = PausingWriter(
        producer_config={"bootstrap_servers": kafka_bootstrap},
        transactional_id=f"{unique_prefix}-shard-paused",
        state_topic=names.state,
        checkpoints_topic=names.checkpoints,
        shards=6,
        store=store,
    )
    try:
        task = asyncio.create_task(writer.commit(_batch(names, 2000)))
        await asyncio.wait_for(writer.sent.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert store.count("users", "d1") == 0
        assert await read_all(kafka_bootstrap, names.events("users")) == []
        await writer.commit(_batch(names, 3, start=5000))
        assert len(await read_all(kafka_bootstrap, names.events("users"))) == 3
        assert store.count("users", "d1") == 3
    finally:
        await writer.close()


async def test_restart_with_same_transactional_id_fences_the_old_writer(
    env, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A second writer with the same transactional_id fences the first: the old one's next
    batches raise Fenced and commit nothing, and it never starts a producer again (which would
    fence the newer writer back): the newer one still commits."""
    names, store, writer = env
    other_store = StateStore(tmp_path / "other.sqlite")
    newer = TransactionalWriter(
        producer_config={"bootstrap_servers": kafka_bootstrap},
        transactional_id=writer.transactional_id,
        state_topic=names.state,
        checkpoints_topic=names.checkpoints,
        shards=6,
        store=other_store,
    )
    await newer.start()
    try:
        with pytest.raises(Fenced):
            await writer.commit(_batch(names, 1))
        with pytest.raises(Fenced):
            await writer.commit(_batch(names, 1, start=50))
        await newer.commit(_batch(names, 2, start=100))
    finally:
        await newer.close()
        other_store.close()
    events = await read_all(kafka_bootstrap, names.events("users"))
    assert sorted(v or b"" for _, v, _ in events) == [b"event100", b"event101"]
    assert store.count("users", "d1") == 0


async def test_cold_and_warm_restore_rebuild_the_same_store(
    env, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A cold restore (empty store) rebuilds every key with its digest and value, deletes
    included; a warm restore later replays only the records written since."""
    names, store, writer = env
    await writer.commit(_batch(names, 50))
    deletes = Batch(state=[StateWrite("users", "d1", f"u{i}", None, None) for i in range(10)])
    await writer.commit(deletes)
    assert store.count("users", "d1") == 40

    config = {"bootstrap_servers": kafka_bootstrap}
    fresh = StateStore(tmp_path / "restored.sqlite")
    try:
        stats = await restore_from_kafka(fresh, topic=names.state, consumer_config=config)
        assert stats.cold
        assert stats.records == 60
        assert list(fresh.sourced_ids("users", "d1")) == list(store.sourced_ids("users", "d1"))
        assert fresh.get("users", "d1", "u42") == store.get("users", "d1", "u42")

        await writer.commit(_batch(names, 5, start=1000))
        warm = await restore_from_kafka(fresh, topic=names.state, consumer_config=config)
        assert not warm.cold
        assert warm.records == 5
        assert fresh.count("users", "d1") == 45
    finally:
        fresh.close()


async def test_restore_wipes_a_store_ahead_of_a_recreated_topic(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Stored offsets beyond the topic's end mean the topic was recreated: the store is
    wiped and rebuilt from what the topic holds now."""
    names = TopicNames(f"re{uuid.uuid4().hex[:8]}")
    await ensure_topics(
        {"bootstrap_servers": kafka_bootstrap},
        names,
        TopicSettings.from_config(KafkaConfig(partitions=1)),
    )
    store = StateStore(tmp_path / "s.sqlite")
    try:
        store.apply(
            [StateWrite("users", "d1", "stale", b"d", b"v")], topic=names.state, offsets={0: 99}
        )
        stats = await restore_from_kafka(
            store, topic=names.state, consumer_config={"bootstrap_servers": kafka_bootstrap}
        )
        assert stats.records == 0
        assert store.count() == 0
    finally:
        store.close()


class _CrashingStore(StateStore):
    """A store whose process "dies" (an exception out of the restore) on its nth apply."""

    def __init__(self, path: Path, *, crash_at: int) -> None:
        super().__init__(path)
        self.calls = 0
        self.crash_at = crash_at

    def apply_rows(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("simulated crash mid-restore")
        super().apply_rows(*args, **kwargs)


async def _visible(bootstrap: str, topic: str, n: int) -> None:
    """Wait until ``n`` records of ``topic`` are readable read_committed (a commit returns
    before its markers reach every partition)."""
    for _ in range(100):
        if len(await read_all(bootstrap, topic)) >= n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{topic} never showed {n} committed records")


def _synchronous(store: StateStore) -> int:
    return int(store.db.execute("PRAGMA synchronous").fetchone()[0])


async def test_a_cold_restore_that_dies_midway_is_rebuilt_from_zero(
    env, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A cold restore writes unsynced under a mark; one that dies after applying part of the
    topic leaves the mark on disk, so the next start distrusts the partial store, wipes it and
    restores from zero, ending with every key, no mark and normal durability."""
    names, store, writer = env
    for start in (0, 40, 80):
        await writer.commit(_batch(names, 40, start=start))
    await writer.commit(
        Batch(state=[StateWrite("users", "d1", f"u{i}", None, None) for i in range(5)])
    )
    await _visible(kafka_bootstrap, names.state, 125)
    config = {"bootstrap_servers": kafka_bootstrap}
    path = tmp_path / "cold.sqlite"
    crashing = _CrashingStore(path, crash_at=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        await restore_from_kafka(
            crashing, topic=names.state, consumer_config=config, batch_records=10
        )
    crashing.close()

    reopened = StateStore(path)
    try:
        assert reopened.cold_restore_interrupted()
        assert 0 < reopened.count() < 115  # part of the topic, with offsets that look valid
        assert reopened.offsets(names.state)
        stats = await restore_from_kafka(reopened, topic=names.state, consumer_config=config)
        assert stats.cold
        assert stats.records == 125
        assert list(reopened.sourced_ids("users", "d1")) == list(store.sourced_ids("users", "d1"))
        assert reopened.count() == 115
        assert not reopened.cold_restore_interrupted()
        assert _synchronous(reopened) == 1  # NORMAL again
        # A warm restore over a completed cold one keeps the store and reads only the tail.
        await writer.commit(_batch(names, 3, start=500))
        await _visible(kafka_bootstrap, names.state, 128)
        warm = await restore_from_kafka(reopened, topic=names.state, consumer_config=config)
        assert (warm.cold, warm.records, reopened.count()) == (False, 3, 118)
    finally:
        reopened.close()


async def test_a_key_deleted_and_written_again_in_one_restore_batch_is_kept(
    env, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Within one restore batch the latest record of a key wins: written, deleted, then
    written again restores the last value (never the delete)."""
    names, store, writer = env
    await writer.commit(Batch(state=[StateWrite("users", "d1", "again", b"d1", b"first")]))
    await writer.commit(Batch(state=[StateWrite("users", "d1", "again", None, None)]))
    await writer.commit(Batch(state=[StateWrite("users", "d1", "again", b"d3", b"third")]))
    await writer.commit(Batch(state=[StateWrite("users", "d1", "gone", b"d", b"v")]))
    await writer.commit(Batch(state=[StateWrite("users", "d1", "gone", None, None)]))
    await _visible(kafka_bootstrap, names.state, 5)
    fresh = StateStore(tmp_path / "again.sqlite")
    try:
        await restore_from_kafka(
            fresh, topic=names.state, consumer_config={"bootstrap_servers": kafka_bootstrap}
        )
        assert fresh.get("users", "d1", "again") == store.get("users", "d1", "again")
        assert fresh.get("users", "d1", "again") is not None
        assert fresh.get("users", "d1", "gone") is None
    finally:
        fresh.close()
