"""Reading the committed state back at start: the state store and the checkpoints.

State (``restore_from_kafka``): the store keeps, in the same SQLite transaction as the rows it
applied, the next offset to read of every state-topic partition. On start it reads the
partitions' end offsets, seeks to its stored offsets (or the beginning) and applies records
until every partition's *position* reaches the end offset taken at the start. A stored offset
beyond the end means the topic was recreated: the store is wiped and rebuilt.

A cold restore (an empty store) writes without syncing (``synchronous=OFF``) in larger batches,
under a mark that is cleared only once it completed and its writes are durable: a start that
finds the mark (the process or machine died mid-restore) wipes the store and restores it from
zero again. Rows are built straight from the messages (``statetopic.rows_from_messages``).

Checkpoints (``load_checkpoints``): the compacted ``<prefix>.checkpoints`` topic holds one
record per key, read whole into memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from producer.checkpoints import Checkpoint, split_checkpoint_key
from producer.errors import BrokerUnavailable
from producer.events import Encoder
from producer.kafka.reader import TopicReader, read_compacted
from producer.kafka.statetopic import rows_from_messages
from producer.state import StateStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RestoreStats:
    """How a restore went: records applied, seconds taken, and whether it started from zero."""

    records: int
    seconds: float
    cold: bool


async def restore_from_kafka(
    store: StateStore,
    *,
    topic: str,
    consumer_config: Mapping[str, Any],
    batch_records: int = 20000,
    cold_batch_records: int = 50000,
    max_seconds: float = 600.0,
) -> RestoreStats:
    """Bring ``store`` up to the committed end of ``topic``; return what was applied.

    1. Read the end offsets of every partition (taken once: the restore target).
    2. Wipe the store if any stored offset is beyond its partition's end (topic recreated), or
       if a cold restore was interrupted; an empty store restores cold (see the module doc).
    3. Seek each partition to its stored next offset, or to the beginning.
    4. Apply records in SQLite transactions that also store the offsets reached, until every
       partition's position has reached its target.
    """
    started = time.monotonic()
    applied = 0
    cold = cold_done = False
    writing: asyncio.Future[None] | None = None
    reader = TopicReader(
        consumer_config,
        topic,
        action=f"state restore from {topic} failed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    try:
        async with reader, asyncio.timeout(max_seconds):
            end = await reader.end_offsets()  # 1.
            stored = store.offsets(topic)
            if any(stored.get(p, 0) > target for p, target in end.items()):  # 2.
                log.warning("state_topic_recreated", topic=topic, stored=stored)
                store.wipe()
                stored = {}
            elif store.cold_restore_interrupted():
                log.warning("state_cold_restore_interrupted", topic=topic, action="rebuild")
                store.wipe()
                stored = {}
            cold = not stored and store.count() == 0
            if cold:
                store.begin_cold_restore()
            await reader.seek(stored)  # 3.
            # While one batch is written to SQLite (in a thread), the next is fetched.
            size = cold_batch_records if cold else batch_records
            async for chunk in reader.to_end(until=end, max_records=size):  # 4.
                upserts, deletes = rows_from_messages(
                    (m.key, m.value, m.headers) for m in chunk.messages
                )
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(
                    asyncio.to_thread(
                        store.apply_rows, upserts, deletes, topic=topic, offsets=chunk.positions
                    )
                )
                applied += sum(m.key is not None for m in chunk.messages)
            if writing is not None:
                await writing
            if cold:
                store.end_cold_restore()
                cold_done = True
    except TimeoutError as exc:
        raise BrokerUnavailable(f"state restore from {topic} took over {max_seconds}s") from exc
    finally:
        if writing is not None and not writing.done():
            # Never leave a write running against a store the caller may close next.
            await asyncio.gather(writing, return_exceptions=True)
        if cold and not cold_done and store.is_open:
            store.abandon_cold_restore()
    stats = RestoreStats(applied, time.monotonic() - started, cold)
    log.info("state_restored", topic=topic, records=applied, seconds=round(stats.seconds, 3))
    return stats


async def load_checkpoints(
    encoder: Encoder, *, topic: str, consumer_config: Mapping[str, Any]
) -> dict[tuple[str, str], Checkpoint]:
    """Every committed checkpoint, by (district_id, entity)."""
    values = await read_compacted(
        consumer_config, topic, action=f"reading checkpoints from {topic} failed"
    )
    out = {
        split_checkpoint_key(key.decode()): encoder.decode_checkpoint(value)
        for key, value in values.items()
    }
    log.info("checkpoints_loaded", topic=topic, count=len(out))
    return out
