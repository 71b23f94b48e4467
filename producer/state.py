"""The local state store: an on-disk mirror of the compacted ``<prefix>.state`` topic.

The state topic is the truth; this store is a cache of it that the differ can query without a
network round trip. It lives in one SQLite file (stdlib ``sqlite3``, WAL mode) under
``[state] dir`` (directory 0700, files 0600 whatever the umask: ``producer.private``) and
holds, per key, the digest of the canonical record and the record's encoded value exactly as
it sits in the state topic (single-object Avro), so ``before`` images come from disk, not from
memory: the process's memory per key is a SQLite page-cache share, not a record.

Keys in the state topic are ``<entity>/<district_id>/<sourcedId>`` (entity and district ids never
contain ``/``; sourcedIds may). Each state record carries the headers ``entity`` and ``digest``
so a restore writes rows without decoding Avro.

Restore (``restore_from_kafka``): the store keeps, in the same SQLite transaction as the rows it
applied, the next offset to read of every state-topic partition. On start it reads the
partitions' end offsets, seeks to its stored offsets (or the beginning) and applies records with
a read_committed consumer until every partition's *position* reaches the end offset taken at the
start (the last record may be a transaction marker, so positions, not record offsets, decide).
A stored offset beyond the end means the topic was recreated: the store is wiped and rebuilt.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from aiokafka.protocol.metadata import MetadataRequest

from producer.errors import BrokerUnavailable, ClientClosed
from producer.kafka_authz import denied
from producer.private import Policy, private_sqlite, private_umask

log = structlog.get_logger(__name__)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS records (
    entity   TEXT NOT NULL,
    district TEXT NOT NULL,
    sid      TEXT NOT NULL,
    digest   BLOB NOT NULL,
    value    BLOB NOT NULL,
    raw      BLOB,
    PRIMARY KEY (entity, district, sid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    topic     TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next      INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""

#: SQLite caps bound parameters per statement; look-ups go in chunks of this many keys.
_CHUNK: Final = 500


def state_key(entity: str, district_id: str, sourced_id: str) -> str:
    """The key of a record in the state topic."""
    return f"{entity}/{district_id}/{sourced_id}"


def split_state_key(key: str) -> tuple[str, str, str]:
    """``(entity, district_id, sourcedId)`` of a state-topic key."""
    entity, district, sid = key.split("/", 2)
    return entity, district, sid


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """What the store knows of one key: the record's digest, its encoded state value, and the
    digest of the raw source JSON it came from (``diff.raw_digest``), when known."""

    digest: bytes
    value: bytes
    raw_digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class StoredDigest:
    """The digests the store holds for one key (``StoredRecord`` without the value)."""

    digest: bytes
    raw_digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class StateWrite:
    """One change to apply to the store: an upsert, or a delete when ``value`` is ``None``."""

    entity: str
    district_id: str
    sourced_id: str
    digest: bytes | None
    value: bytes | None
    raw_digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class RestoreStats:
    """How a restore went: records applied, seconds taken, and whether it started from zero."""

    records: int
    seconds: float
    cold: bool


class StateStore:
    """Key -> (digest, encoded record) on disk, plus the state-topic offsets applied so far."""

    def __init__(self, path: Path, *, permissions: Policy = "tighten") -> None:
        # The store holds student records: directory 0700, files 0600 (``producer.private``).
        private_sqlite(path, policy=permissions)
        self.path = path
        with private_umask():
            self._db: sqlite3.Connection | None = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA cache_size=-16000")  # 16 MB page cache, whatever the keys
            # Sorts and temporary indexes stay in memory: no temporary file holds a record.
            self._db.execute("PRAGMA temp_store=MEMORY")
            self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
        if "raw" not in columns:  # a store written by 0.1.0 before the raw digest existed
            self._db.execute("ALTER TABLE records ADD COLUMN raw BLOB")

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise ClientClosed("the state store is closed")
        return self._db

    def close(self) -> None:
        """Close the file; idempotent."""
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- reads -------------------------------------------------------------------------------

    def get_many(
        self, entity: str, district_id: str, sourced_ids: Sequence[str]
    ) -> dict[str, StoredRecord]:
        """The stored records of those sourcedIds that the store has."""
        out: dict[str, StoredRecord] = {}
        db = self.db
        for start in range(0, len(sourced_ids), _CHUNK):
            chunk = sourced_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT sid, digest, value, raw FROM records WHERE entity = ? AND district = ? AND sid IN ({marks})"  # noqa: S608, E501 - the f-string only inserts '?' marks
            rows = db.execute(query, (entity, district_id, *chunk))
            for sid, digest, value, raw in rows:
                out[sid] = StoredRecord(digest, value, raw)
        return out

    def digests(
        self, entity: str, district_id: str, sourced_ids: Sequence[str]
    ) -> dict[str, StoredDigest]:
        """Digest and raw digest of those sourcedIds that the store has, without the encoded
        records (a re-read compares digests; only a changed record needs its value)."""
        out: dict[str, StoredDigest] = {}
        db = self.db
        for start in range(0, len(sourced_ids), _CHUNK):
            chunk = sourced_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT sid, digest, raw FROM records WHERE entity = ? AND district = ? AND sid IN ({marks})"  # noqa: S608, E501 - the f-string only inserts '?' marks
            for sid, digest, raw in db.execute(query, (entity, district_id, *chunk)):
                out[sid] = StoredDigest(digest, raw)
        return out

    def get(self, entity: str, district_id: str, sourced_id: str) -> StoredRecord | None:
        """The stored record of one key, if any."""
        return self.get_many(entity, district_id, [sourced_id]).get(sourced_id)

    def sourced_ids(self, entity: str, district_id: str) -> Iterator[str]:
        """Every sourcedId the store holds for a district and entity, in sorted order."""
        cursor = self.db.execute(
            "SELECT sid FROM records WHERE entity = ? AND district = ? ORDER BY sid",
            (entity, district_id),
        )
        for (sid,) in cursor:
            yield sid

    def count(self, entity: str | None = None, district_id: str | None = None) -> int:
        """How many keys the store holds, overall or for one district and entity."""
        if entity is None:
            return int(self.db.execute("SELECT count(*) FROM records").fetchone()[0])
        return int(
            self.db.execute(
                "SELECT count(*) FROM records WHERE entity = ? AND district = ?",
                (entity, district_id),
            ).fetchone()[0]
        )

    def offsets(self, topic: str) -> dict[int, int]:
        """Next state-topic offset to read, per partition, as applied so far."""
        rows = self.db.execute("SELECT partition, next FROM offsets WHERE topic = ?", (topic,))
        return {int(p): int(n) for p, n in rows}

    # -- writes ------------------------------------------------------------------------------

    def apply(self, writes: Iterable[StateWrite], *, topic: str, offsets: dict[int, int]) -> None:
        """Apply writes and record the offsets they reach, in one SQLite transaction."""
        db = self.db
        upserts: list[tuple[str, str, str, bytes, bytes, bytes | None]] = []
        deletes: list[tuple[str, str, str]] = []
        for w in writes:
            if w.value is None:
                deletes.append((w.entity, w.district_id, w.sourced_id))
            else:
                assert w.digest is not None
                upserts.append(
                    (w.entity, w.district_id, w.sourced_id, w.digest, w.value, w.raw_digest)
                )
        db.execute("BEGIN")
        try:
            if upserts:
                db.executemany(
                    "INSERT OR REPLACE INTO records (entity, district, sid, digest, value, raw) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    upserts,
                )
            if deletes:
                db.executemany(
                    "DELETE FROM records WHERE entity = ? AND district = ? AND sid = ?", deletes
                )
            if offsets:
                db.executemany(
                    "INSERT INTO offsets (topic, partition, next) VALUES (?, ?, ?) "
                    "ON CONFLICT (topic, partition) DO UPDATE SET next = max(next, excluded.next)",
                    [(topic, p, n) for p, n in offsets.items()],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def remember_raw_digests(
        self, entity: str, district_id: str, pairs: Sequence[tuple[str, bytes]]
    ) -> None:
        """Note the raw digest of records found unchanged. A local cache hint only (it never
        changes what the store says a record *is*), so it needs no Kafka commit."""
        if not pairs:
            return
        self.db.executemany(
            "UPDATE records SET raw = ? WHERE entity = ? AND district = ? AND sid = ?",
            [(raw, entity, district_id, sid) for sid, raw in pairs],
        )

    def wipe(self) -> None:
        """Forget everything (the state topic was recreated, or a cold restore was asked for)."""
        db = self.db
        db.execute("BEGIN")
        db.execute("DELETE FROM records")
        db.execute("DELETE FROM offsets")
        db.execute("COMMIT")


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic``, refreshing the consumer's metadata if it has none yet.

    Raises ``TopicAuthorizationFailedError`` when the broker hides the topic from this principal
    (no Describe, Read or Write ACL on it)."""
    parts = consumer.partitions_for_topic(topic)
    for attempt in range(50):
        if parts:
            break
        if attempt == 0:
            await _check_topic_access(consumer, topic)
        # aiokafka has no public call that refreshes metadata for an unsubscribed topic.
        cluster = await consumer._client.fetch_all_metadata()
        parts = cluster.partitions_for_topic(topic)
        if not parts:
            await asyncio.sleep(0.1)
    if not parts:
        raise BrokerUnavailable(f"topic {topic!r} does not exist or has no partitions")
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def _check_topic_access(consumer: AIOKafkaConsumer, topic: str) -> None:
    """Ask for ``topic``'s metadata by name: a listing of all topics silently leaves out those
    the principal may not see, a request by name says so (``TopicAuthorizationFailedError``)."""
    client = consumer._client
    request = MetadataRequest([topic], allow_auto_topic_creation=False)
    response = await client.send(client.get_random_node(), request)
    for entry in response.topics:
        if entry[1] == topic and entry[0] == TopicAuthorizationFailedError.errno:
            raise TopicAuthorizationFailedError(topic)


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def write_from_message(key: bytes, value: bytes | None, headers: Any) -> StateWrite:
    """The store write a state-topic record stands for."""
    entity, district, sid = split_state_key(key.decode())
    if value is None:
        return StateWrite(entity, district, sid, None, None)
    digest = _header(headers, "digest")
    if digest is None:
        raise ValueError(f"state record {key!r} has no digest header")
    return StateWrite(entity, district, sid, digest, value, _header(headers, "raw-digest"))


async def restore_from_kafka(
    store: StateStore,
    *,
    topic: str,
    consumer_config: dict[str, Any],
    batch_records: int = 20000,
    max_seconds: float = 600.0,
) -> RestoreStats:
    """Bring ``store`` up to the committed end of ``topic``; return what was applied.

    1. Read the end offsets of every partition (taken once: the restore target).
    2. Wipe the store if any stored offset is beyond its partition's end (topic recreated).
    3. Seek each partition to its stored next offset, or to the beginning.
    4. Apply records in SQLite transactions that also store the offsets reached, until every
       partition's position has reached its target.
    """
    started = time.monotonic()
    consumer = AIOKafkaConsumer(
        **consumer_config,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    applied = 0
    writing: asyncio.Future[None] | None = None
    try:
        await consumer.start()
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)  # 1.
        cold = await _seek(consumer, store, topic, end)  # 2. and 3.
        pending = {tp for tp in tps if (await consumer.position(tp)) < end[tp]}
        # While one batch is written to SQLite (in a thread), the next is fetched.
        async with asyncio.timeout(max_seconds):
            while pending:  # 4.
                batch = await consumer.getmany(*pending, timeout_ms=500, max_records=batch_records)
                writes = [
                    write_from_message(m.key, m.value, m.headers)
                    for messages in batch.values()
                    for m in messages
                    if m.key is not None
                ]
                offsets: dict[int, int] = {}
                for tp in list(pending):
                    offsets[tp.partition] = position = await consumer.position(tp)
                    if position >= end[tp]:
                        pending.discard(tp)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(
                    asyncio.to_thread(store.apply, writes, topic=topic, offsets=offsets)
                )
                applied += len(writes)
            if writing is not None:
                await writing
    except TimeoutError as exc:
        raise BrokerUnavailable(f"state restore from {topic} took over {max_seconds}s") from exc
    except KafkaError as exc:
        refused = denied(exc, operation="Read", topic=topic, options=consumer_config)
        if refused is not None:
            raise refused from exc
        raise BrokerUnavailable(f"state restore from {topic} failed: {exc}") from exc
    finally:
        if writing is not None and not writing.done():
            # Never leave a write running against a store the caller may close next.
            await asyncio.gather(writing, return_exceptions=True)
        await consumer.stop()
    stats = RestoreStats(applied, time.monotonic() - started, cold)
    log.info("state_restored", topic=topic, records=applied, seconds=round(stats.seconds, 3))
    return stats


async def _seek(
    consumer: AIOKafkaConsumer, store: StateStore, topic: str, end: dict[TopicPartition, int]
) -> bool:
    """Position every partition at the store's next offset; True when starting from zero."""
    stored = store.offsets(topic)
    if any(stored.get(tp.partition, 0) > target for tp, target in end.items()):
        log.warning("state_topic_recreated", topic=topic, stored=stored)
        store.wipe()
        stored = {}
    for tp in end:
        if tp.partition in stored:
            consumer.seek(tp, stored[tp.partition])
        else:
            await consumer.seek_to_beginning(tp)
    return not stored and store.count() == 0
