"""Reading the committed state back at start: the state store and the checkpoints.

State (``restore_from_kafka``): the store keeps, in the same SQLite transaction as the rows it
applied, the next offset to read of every state-topic partition. On start it reads the
partitions' end offsets, seeks to its stored offsets (or the beginning) and applies records
until every partition's *position* reaches the end offset taken at the start. A stored offset
beyond the end means the topic was recreated: the store is wiped and rebuilt.

A cold restore (an empty store) writes without syncing (``synchronous=OFF``), under a mark
that is cleared only once it completed and its writes are durable: a start that finds the mark
(the process or machine died mid-restore) wipes the store and restores it from zero again. Rows
are built straight from the messages (``statetopic.rows_from_messages``).

Per shard: shard n restores from partition n of the state topic alone (its changelog) and
loads partition n of the checkpoints topic alone; a record there whose district is in another
shard (a leftover of an older layout) is read past and not applied. The stats, and the
``state_restored`` log event, name the partitions and the offset ranges read.

Checkpoints (``load_checkpoints``): the compacted ``<prefix>.checkpoints`` topic holds one
record per key, read whole (or one partition) into memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from producer.checkpoints import Checkpoint, split_checkpoint_key
from producer.errors import BrokerUnavailable
from producer.events import Encoder
from producer.kafka.reader import READ_TO_END, Message, TopicReader, read_compacted
from producer.kafka.shards import shard_of
from producer.kafka.statetopic import rows_from_messages
from producer.state import StateStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RestoreStats:
    """How a restore went: records applied, seconds taken, whether it started from zero, the
    partitions read and, per partition, the offsets the read started at and reached (the
    restore target), and records read past because their district is in another shard."""

    records: int
    seconds: float
    cold: bool
    partitions: tuple[int, ...] = ()
    from_offsets: dict[int, int] = field(default_factory=dict)
    to_offsets: dict[int, int] = field(default_factory=dict)
    ignored: int = 0


def in_shard(shard: int, shards: int) -> Callable[[str], bool]:
    """Whether a district is in ``shard``."""

    def keep(district_id: str) -> bool:
        return shard_of(district_id, shards) == shard

    return keep


def _own(messages: list[Message], keep: Callable[[str], bool] | None) -> tuple[list[Message], int]:
    """The keyed messages whose district is kept (all with ``keep`` None), and how many keyed
    messages were left out. The district is the second part of a state-topic key
    (``<entity>/<district_id>/<sourcedId>``)."""
    keyed = [m for m in messages if m.key is not None]
    if keep is None:
        return keyed, 0
    own = [m for m in keyed if keep(m.key.split(b"/", 2)[1].decode())]  # type: ignore[union-attr]
    return own, len(keyed) - len(own)


def _trusted_offsets(store: StateStore, topic: str, end: Mapping[int, int]) -> dict[int, int]:
    """The store's offsets to resume from, or none after wiping the store: when a stored offset
    is beyond its partition's end (the topic was recreated), or a cold restore was
    interrupted."""
    stored = store.offsets(topic)
    if any(stored.get(p, 0) > target for p, target in end.items()):
        log.warning("state_topic_recreated", topic=topic, stored=stored)
        store.wipe()
        return {}
    if store.cold_restore_interrupted():
        log.warning("state_cold_restore_interrupted", topic=topic, action="rebuild")
        store.wipe()
        return {}
    return stored


async def restore_from_kafka(
    store: StateStore,
    *,
    topic: str,
    consumer_config: Mapping[str, Any],
    shard: int | None = None,
    shards: int = 1,
    batch_records: int = 5000,
    max_seconds: float = 600.0,
) -> RestoreStats:
    """Bring ``store`` up to the committed end of ``topic`` (of its partition ``shard`` only,
    applying only the records of that shard's districts, when ``shard`` is given); return what
    was applied.

    1. Read the end offsets of every partition (taken once: the restore target).
    2. Wipe the store if any stored offset is beyond its partition's end (topic recreated), or
       if a cold restore was interrupted; an empty store restores cold (see the module doc).
    3. Seek each partition to its stored next offset, or to the beginning.
    4. Apply records in SQLite transactions that also store the offsets reached, until every
       partition's position has reached its target.
    """
    started = time.monotonic()
    applied = ignored = 0
    cold = cold_done = False
    keep = None if shard is None else in_shard(shard, shards)
    writing: asyncio.Future[None] | None = None
    first: dict[int, int] = {}
    end: dict[int, int] = {}
    reader = TopicReader(
        consumer_config,
        topic,
        action=f"state restore from {topic} failed",
        partitions=None if shard is None else [shard],
        **READ_TO_END,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    try:
        async with reader, asyncio.timeout(max_seconds):
            end = await reader.end_offsets()  # 1.
            stored = _trusted_offsets(store, topic, end)  # 2.
            cold = not stored and store.count() == 0
            if cold:
                store.begin_cold_restore()
            await reader.seek(stored)  # 3.
            first = await reader.positions()
            # While one batch is written to SQLite (in a thread), the next is fetched. Batches
            # of 5,000 restore 1.25M keys as fast as batches of 50,000 and keep the peak RSS
            # 150 MB lower (two batches of messages and rows are alive at once).
            async for chunk in reader.to_end(until=end, max_records=batch_records):  # 4.
                messages, others = _own(chunk.messages, keep)
                ignored += others
                upserts, deletes = rows_from_messages((m.key, m.value, m.headers) for m in messages)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(
                    asyncio.to_thread(
                        store.apply_rows, upserts, deletes, topic=topic, offsets=chunk.positions
                    )
                )
                applied += len(messages)
            if writing is not None:
                await writing
            if cold:
                store.end_cold_restore()
                cold_done = True
            store.mark_synced()
    except TimeoutError as exc:
        raise BrokerUnavailable(f"state restore from {topic} took over {max_seconds}s") from exc
    finally:
        if writing is not None and not writing.done():
            # Never leave a write running against a store the caller may close next.
            await asyncio.gather(writing, return_exceptions=True)
        if cold and not cold_done and store.is_open:
            store.abandon_cold_restore()
    stats = RestoreStats(
        applied,
        time.monotonic() - started,
        cold,
        partitions=tuple(sorted(end)),
        from_offsets=first,
        to_offsets=end,
        ignored=ignored,
    )
    log.info(
        "state_restored",
        topic=topic,
        shard=shard,
        partitions=list(stats.partitions),
        from_offsets=_named(first),
        to_offsets=_named(end),
        records=stats.records,
        ignored=ignored,
        cold=cold,
        seconds=round(stats.seconds, 3),
    )
    return stats


def _named(offsets: Mapping[int, int]) -> dict[str, int]:
    """Offsets by partition with string keys (a JSON log line's object keys are strings)."""
    return {str(p): o for p, o in sorted(offsets.items())}


async def load_checkpoints(
    encoder: Encoder,
    *,
    topic: str,
    consumer_config: Mapping[str, Any],
    shard: int | None = None,
    shards: int = 1,
) -> dict[tuple[str, str], Checkpoint]:
    """Every committed checkpoint, by (district_id, entity); with ``shard``, those of partition
    ``shard`` whose district is in that shard."""
    values = await read_compacted(
        consumer_config,
        topic,
        action=f"reading checkpoints from {topic} failed",
        partitions=None if shard is None else [shard],
    )
    keep = None if shard is None else in_shard(shard, shards)
    out = {}
    for key, value in values.items():
        district, entity = split_checkpoint_key(key.decode())
        if keep is None or keep(district):
            out[district, entity] = encoder.decode_checkpoint(value)
    log.info("checkpoints_loaded", topic=topic, shard=shard, count=len(out))
    return out
