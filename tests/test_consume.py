"""The consumer kit (``producer.consume``) against the real broker and a real sync's topics.

Every test syncs a small simulated district with the producer (a snapshot, then a pass with
creates, updates, a soft delete and a hard delete), then reads the committed topics with
``ChangeStream`` and compares what it hands out with the independent checker's replay.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from producer.config import Config
from producer.consume import ChangeEvent, ChangeStream
from producer.errors import ClientClosed, ConfigError, EncodingError
from producer.model import Entity
from producer.service import Service
from producer.simulator import DistrictSpec, Simulator
from tests.checker import read_all, rebuild, truth_snapshot
from tests.harness import make_config

ENTITIES: tuple[Entity, ...] = ("users", "classes", "enrollments")


@dataclass
class Synced:
    """A prefix whose topics hold two committed sync passes, and the moment between them."""

    bootstrap: str
    prefix: str
    sim: Simulator
    between: datetime
    config: Config


@pytest.fixture
async def synced(kafka_bootstrap: str, unique_prefix: str, tmp_path: Path) -> AsyncIterator[Synced]:
    """Snapshot of district ``k``; then 2 creates, 2 updates, a soft and a hard delete."""
    sim = Simulator([DistrictSpec(id="k", version="1.2", size=8, seed=21)])
    async with sim.serve():
        config = make_config(
            sim,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            state_dir=tmp_path / "state",
            district_overrides={"entities": list(ENTITIES)},
        )
        async with Service(config) as service:
            await service.sync("k")
            await asyncio.sleep(0.05)
            between = datetime.now(UTC)
            await asyncio.sleep(0.05)
            sim.advance_clock(60)
            d = sim.district("k")
            users = sorted(d.truth_state("users"))
            for i in range(2):
                d.create("users", {"givenName": f"New{i}"})
            for sid in users[:2]:
                d.update("users", sid, familyName="Renamed")
            d.mark_tobedeleted("users", users[2])
            d.hard_delete("enrollments", sorted(d.truth_state("enrollments"))[0])
            await service.sync("k", full=True)
        yield Synced(kafka_bootstrap, unique_prefix, sim, between, config)


def stream(s: Synced, **kw: object) -> ChangeStream:
    options: dict[str, object] = {"entities": ENTITIES, "stop_at_end": True, **kw}
    return ChangeStream(bootstrap_servers=s.bootstrap, topic_prefix=s.prefix, **options)  # type: ignore[arg-type]


async def collect(s: ChangeStream, limit: int | None = None) -> list[ChangeEvent]:
    out: list[ChangeEvent] = []
    async for event in s:
        out.append(event)
        if limit is not None and len(out) >= limit:
            break
    return out


pytestmark = pytest.mark.integration


async def test_replay_from_the_beginning_hands_out_every_committed_event_once_typed(
    synced: Synced,
) -> None:
    """From the beginning, the kit hands out exactly the checker's events (same ids), as frozen
    typed values; applying them rebuilds the simulator's truth; tombstones are not handed out
    again after their DELETED event."""
    async with stream(synced, start="beginning") as s:
        events = await collect(s)
    checked = await rebuild(synced.bootstrap, synced.prefix)
    wanted = {env["event_id"] for env in checked.envelopes if env["entity"] in ENTITIES}
    assert sorted(e.event_id for e in events) == sorted(wanted)
    assert {e.op for e in events} == {"CREATED", "UPDATED", "DELETED"}
    assert not any(e.tombstone for e in events)
    first = events[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.op = "DELETED"  # type: ignore[misc]
    assert first.emitted_at is not None
    assert first.emitted_at.tzinfo is not None
    assert first.source is not None
    assert first.source.sync_mode in ("FULL", "DELTA")
    assert first.key == f"{first.district_id}/{first.sourced_id}"
    assert first.topic == f"{synced.prefix}.{first.entity}"
    deleted = [e for e in events if e.op == "DELETED"]
    assert {e.entity for e in deleted} == {"users", "enrollments"}
    assert all(e.after is None and e.before is not None for e in deleted)

    state: dict[str, dict[str, dict[str, Any]]] = {e: {} for e in ENTITIES}
    for e in events:
        if e.op == "DELETED":
            state[e.entity].pop(e.key)
        else:
            assert e.after is not None
            state[e.entity][e.key] = dict(e.after)
    truth = truth_snapshot(synced.sim, ENTITIES)
    for entity in ENTITIES:
        assert set(state[entity]) == set(truth[entity])
        for key, record in truth[entity].items():
            assert state[entity][key]["dateLastModified"] == record["dateLastModified"]


async def test_committed_offsets_resume_where_the_group_committed(synced: Synced) -> None:
    """A group that committed after 10 events resumes with the 11th: the two runs together hand
    out every event once. A second loop over one stream resumes where the first stopped. Without
    a commit, a restart hands everything out again."""
    async with stream(synced, start="beginning") as s:
        everything = [e.event_id for e in await collect(s)]
    async with stream(synced, group_id="g-commit", start="committed") as s:
        head = await collect(s, limit=10)
        await s.commit()
        assert s.positions()
    async with stream(synced, group_id="g-commit", start="committed") as s:
        tail = await collect(s)
    assert sorted(e.event_id for e in head + tail) == sorted(everything)
    assert len(head) == 10

    async with stream(synced, group_id="g-nocommit", start="committed") as s:
        first = await collect(s, limit=10)
        rest = await collect(s)  # iterating again resumes after the last event handed out
    assert sorted(e.event_id for e in first + rest) == sorted(everything)
    async with stream(synced, group_id="g-nocommit", start="committed") as s:
        again = await collect(s)
    assert sorted(e.event_id for e in again) == sorted(everything)


async def test_start_from_a_timestamp_hands_out_only_later_events(synced: Synced) -> None:
    """Starting at a moment between the two sync passes hands out exactly the second pass's
    changes: the creates, updates and deletes, no snapshot CREATED (the stream built from the
    producer's config)."""
    from_config = ChangeStream.from_config(
        synced.config, ENTITIES, start=synced.between, stop_at_end=True
    )
    async with from_config as s:
        later = await collect(s)
    assert later
    early = [e for e in later if e.emitted_at is None or e.emitted_at < synced.between]
    assert early == []
    ops = sorted((e.entity, e.op) for e in later)
    assert ops.count(("users", "CREATED")) == 2
    assert ops.count(("users", "UPDATED")) == 2
    assert ops.count(("users", "DELETED")) == 1
    assert ops.count(("enrollments", "DELETED")) == 1
    assert len(later) == 6


async def test_a_republished_event_is_handed_out_once_by_event_id(synced: Synced) -> None:
    """The same event written again (same bytes, same key) is skipped by its event id; with
    de-duplication off (``dedupe_window=0``) it is handed out twice."""
    async with stream(synced, start="beginning") as s:
        first_ids = [e.event_id for e in await collect(s)]
    async with stream(synced, start="beginning") as s:
        original = next(e for e in await collect(s) if e.entity == "users")
    topic = f"{synced.prefix}.users"
    value = next(  # the first record of the key is the event handed out first
        v for k, v, _ in await read_all(synced.bootstrap, topic) if k == original.key.encode()
    )
    producer = AIOKafkaProducer(bootstrap_servers=synced.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=original.key.encode())
    finally:
        await producer.stop()
    async with stream(synced, start="beginning") as s:
        ids = [e.event_id for e in await collect(s)]
    async with stream(synced, start="beginning", dedupe_window=0) as s:
        raw_ids = [e.event_id for e in await collect(s)]
    assert sorted(ids) == sorted(first_ids)
    assert [i for i in set(raw_ids) if raw_ids.count(i) > 1] == [original.event_id]
    assert len(raw_ids) == len(ids) + 1


async def test_a_tombstone_without_its_deleted_event_is_surfaced_as_a_delete(
    synced: Synced,
) -> None:
    """A stream that starts right after a DELETED event (at its tombstone) hands the tombstone
    out as a delete of that key, marked ``tombstone=True``."""
    async with stream(synced, start="beginning") as s:
        deleted = next(e for e in await collect(s) if e.op == "DELETED" and e.entity == "users")
    start = {(deleted.topic, deleted.partition): deleted.offset + 1}
    async with ChangeStream(
        bootstrap_servers=synced.bootstrap,
        topic_prefix=synced.prefix,
        entities=("users",),
        start=start,
        stop_at_end=True,
    ) as s:
        events = [e for e in await collect(s) if e.partition == deleted.partition]
    assert events[0].tombstone
    assert events[0].op == "DELETED"
    assert events[0].key == deleted.key
    assert events[0].before is None


async def test_a_value_that_is_not_avro_fails_naming_where_it_is(
    synced: Synced, kafka_bootstrap: str
) -> None:
    """A value without the single-object header raises ``EncodingError`` naming topic,
    partition and offset, instead of being skipped."""
    topic = f"{synced.prefix}.classes"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b"{not avro}", key=b"k/x", partition=0)
    finally:
        await producer.stop()
    async with stream(synced, start="beginning") as s:
        with pytest.raises(EncodingError, match=rf"{topic}\[0\]@{meta.offset}"):
            await collect(s)


def test_bad_options_name_the_setting() -> None:
    """Starting from committed offsets without a group, a naive start time, and no entities
    are refused with the option's name; an unstarted stream refuses to commit."""
    with pytest.raises(ConfigError, match="group_id"):
        ChangeStream(bootstrap_servers="x:1", topic_prefix="p", start="committed")
    with pytest.raises(ConfigError, match="start"):
        ChangeStream(
            bootstrap_servers="x:1",
            topic_prefix="p",
            start=datetime(2026, 1, 1),  # noqa: DTZ001 - the naive time under test
        )
    with pytest.raises(ConfigError, match="entities"):
        ChangeStream(bootstrap_servers="x:1", topic_prefix="p", entities=(), start="end")
    unstarted = ChangeStream(bootstrap_servers="x:1", topic_prefix="p", start="end")
    with pytest.raises(ClientClosed):
        asyncio.run(unstarted.commit())
