"""The local state store: an on-disk mirror of the compacted ``<prefix>.state`` topic.

The state topic is the truth; this store is a cache of it that the differ can query without a
network round trip. It lives in one SQLite file (stdlib ``sqlite3``, WAL mode) under
``[state] dir`` (directory 0700, files 0600 whatever the umask: ``producer.private``) and
holds, per key, the digest of the canonical record and the record's encoded value exactly as
it sits in the state topic (single-object Avro), so ``before`` images come from disk, not from
memory: the process's memory per key is a SQLite page-cache share, not a record.

One file per shard (``<client_id>-shard-<n>.sqlite``): it mirrors partition n of the state
topic only. Its ``meta`` says which layout it was written for (``shards`` and ``shard``) and
when it was last brought up to date with the topic (``synced_at``); ``claim`` wipes a file of
another layout, or one too old to trust its deletes, so the restore rebuilds it.

The state-topic record format is ``producer.kafka.statetopic``; bringing the store up to the
topic's end at start is ``producer.kafka.restore``. This module is SQLite alone.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from producer.errors import ClientClosed
from producer.private import Policy, private_sqlite, private_umask

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
CREATE TABLE IF NOT EXISTS seen (
    listing  TEXT NOT NULL,
    sid      TEXT NOT NULL,
    digest   BLOB NOT NULL,
    PRIMARY KEY (listing, sid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value NOT NULL
);
CREATE TABLE IF NOT EXISTS offsets (
    topic     TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next      INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""

#: SQLite caps bound parameters per statement; look-ups go in chunks of this many keys.
_CHUNK: Final = 500
#: ``meta`` row present while a cold restore runs (cleared, durably, only when it completed).
_COLD_RESTORE: Final = "cold_restore"
#: ``meta`` row holding the number of keys in ``records``, moved by every write (a count(*)
#: of a million-key store is a full scan); absent in a store written before it existed.
_KEYS: Final = "keys"
#: ``meta`` rows of the layout the file was written for: the shard count and its shard.
_SHARDS: Final = "shards"
_SHARD: Final = "shard"
#: ``meta`` row: epoch seconds when the store last matched the state topic (a write or a
#: completed restore).
_SYNCED_AT: Final = "synced_at"

#: A row to upsert: (entity, district, sid, digest, value, raw digest).
Row = tuple[str, str, str, bytes, bytes, bytes | None]
#: A key to delete: (entity, district, sid).
Key = tuple[str, str, str]


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


IN_MEMORY = ":memory:"  # SQLite's name for a database that lives in memory only


class StateStore:
    """Key -> (digest, encoded record) on disk, plus the state-topic offsets applied so far."""

    def __init__(self, path: Path, *, permissions: Policy = "tighten") -> None:
        # The store holds student records: directory 0700, files 0600 (``producer.private``).
        # SQLite's in-memory database has no file and no directory to protect: ``:memory:`` is a
        # name, not a path, and its "parent" would be the working directory.
        if str(path) != IN_MEMORY:
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
        if self._db.execute("SELECT 1 FROM records LIMIT 1").fetchone() is None:
            self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES (?, 0)", (_KEYS,))

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise ClientClosed("the state store is closed")
        return self._db

    @property
    def is_open(self) -> bool:
        return self._db is not None

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
        rows = self._select("sid, digest, value, raw", entity, district_id, sourced_ids)
        return {sid: StoredRecord(digest, value, raw) for sid, digest, value, raw in rows}

    def digests(
        self, entity: str, district_id: str, sourced_ids: Sequence[str]
    ) -> dict[str, StoredDigest]:
        """Digest and raw digest of those sourcedIds that the store has, without the encoded
        records (a re-read compares digests; only a changed record needs its value)."""
        rows = self._select("sid, digest, raw", entity, district_id, sourced_ids)
        return {sid: StoredDigest(digest, raw) for sid, digest, raw in rows}

    def _select(
        self, columns: str, entity: str, district_id: str, sourced_ids: Sequence[str]
    ) -> Iterator[tuple[Any, ...]]:
        """``columns`` of the rows of those sourcedIds, queried in chunks of ``_CHUNK`` keys
        (SQLite caps bound parameters per statement)."""
        db = self.db
        for start in range(0, len(sourced_ids), _CHUNK):
            chunk = sourced_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT {columns} FROM records WHERE entity = ? AND district = ? AND sid IN ({marks})"  # noqa: S608, E501 - only fixed column names and '?' marks are inserted
            yield from db.execute(query, (entity, district_id, *chunk))

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
            row = self.db.execute("SELECT value FROM meta WHERE name = ?", (_KEYS,)).fetchone()
            if row is not None:
                return int(row[0])
            # A store from before the kept count: count once, then keep it.
            total = int(self.db.execute("SELECT count(*) FROM records").fetchone()[0])
            self.db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)", (_KEYS, total)
            )
            return total
        return int(
            self.db.execute(
                "SELECT count(*) FROM records WHERE entity = ? AND district = ?",
                (entity, district_id),
            ).fetchone()[0]
        )

    # -- the sourcedIds a listing has seen -----------------------------------------------------
    # A listing's seen keys live on disk, not in a Python set, so a listing of a million
    # records costs page cache, not memory. ``listing`` is a token unique to one pass.

    def mark_seen(self, listing: str, pairs: Sequence[tuple[str, bytes]]) -> None:
        """Note that ``listing`` has seen these (sourcedId, digest) pairs; a sourcedId it has
        seen already keeps its first digest."""
        if not pairs:
            return
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR IGNORE INTO seen (listing, sid, digest) VALUES (?, ?, ?)",
                [(listing, sid, digest) for sid, digest in pairs],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def seen_digests(self, listing: str, sourced_ids: Sequence[str]) -> dict[str, bytes]:
        """The digest ``listing`` first saw of each of those sourcedIds it has seen."""
        db = self.db
        out: dict[str, bytes] = {}
        for start in range(0, len(sourced_ids), _CHUNK):
            chunk = sourced_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT sid, digest FROM seen WHERE listing = ? AND sid IN ({marks})"  # noqa: S608 - only '?' marks are inserted
            out.update(db.execute(query, (listing, *chunk)))
        return out

    def unseen(self, listing: str, entity: str, district_id: str) -> Iterator[str]:
        """The sourcedIds the store holds for a district and entity that ``listing`` has not
        seen, in sorted order (a full listing's absences)."""
        cursor = self.db.execute(
            "SELECT r.sid FROM records AS r WHERE r.entity = ? AND r.district = ? AND NOT EXISTS "
            "(SELECT 1 FROM seen AS s WHERE s.listing = ? AND s.sid = r.sid) ORDER BY r.sid",
            (entity, district_id, listing),
        )
        for (sid,) in cursor:
            yield sid

    def forget_seen(self, listing: str | None = None) -> None:
        """Drop what ``listing`` has seen (its pass is over), or every listing's."""
        if listing is None:
            self.db.execute("DELETE FROM seen")
        else:
            self.db.execute("DELETE FROM seen WHERE listing = ?", (listing,))

    def offsets(self, topic: str) -> dict[int, int]:
        """Next state-topic offset to read, per partition, as applied so far."""
        rows = self.db.execute("SELECT partition, next FROM offsets WHERE topic = ?", (topic,))
        return {int(p): int(n) for p, n in rows}

    # -- writes ------------------------------------------------------------------------------

    def apply(self, writes: Iterable[StateWrite], *, topic: str, offsets: dict[int, int]) -> None:
        """Apply writes and record the offsets they reach, in one SQLite transaction."""
        upserts: list[Row] = []
        deletes: list[Key] = []
        for w in writes:
            if w.value is None:
                deletes.append((w.entity, w.district_id, w.sourced_id))
            else:
                assert w.digest is not None
                upserts.append(
                    (w.entity, w.district_id, w.sourced_id, w.digest, w.value, w.raw_digest)
                )
        self.apply_rows(upserts, deletes, topic=topic, offsets=offsets)

    def apply_rows(
        self, upserts: Sequence[Row], deletes: Sequence[Key], *, topic: str, offsets: dict[int, int]
    ) -> None:
        """``apply`` of rows already built (the restore builds them straight from the
        messages): the upserts, then the deletes (so a key must not be in both), and the
        offsets they reach, in one SQLite transaction. The kept key count moves by the keys
        inserted (new) less the keys deleted (present)."""
        db = self.db
        db.execute("BEGIN")
        try:
            moved = 0
            if upserts:
                added = db.executemany(
                    "INSERT OR IGNORE INTO records (entity, district, sid, digest, value, raw) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    upserts,
                ).rowcount
                if added < len(upserts):  # some keys were there already (or twice here)
                    db.executemany(
                        "UPDATE records SET digest = ?, value = ?, raw = ? "
                        "WHERE entity = ? AND district = ? AND sid = ?",
                        [(d, v, r, e, di, s) for e, di, s, d, v, r in upserts],
                    )
                moved += added
            if deletes:
                moved -= db.executemany(
                    "DELETE FROM records WHERE entity = ? AND district = ? AND sid = ?", deletes
                ).rowcount
            if moved:
                db.execute("UPDATE meta SET value = value + ? WHERE name = ?", (moved, _KEYS))
            db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (_SYNCED_AT, time.time())
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

    # -- layout --------------------------------------------------------------------------------

    def claim(
        self, *, shards: int, shard: int, max_age: float, now: float | None = None
    ) -> str | None:
        """Make this file shard ``shard`` of ``shards``: wipe it (and say why) when it was written
        for another layout (or by a release without shards), or when its data is older than
        ``max_age`` seconds (the topic's tombstones of that time may be compacted away, so a
        warm restore could miss deletes). Returns the reason it was wiped, or None."""
        meta = dict(self.db.execute("SELECT name, value FROM meta"))
        layout = (meta.get(_SHARDS), meta.get(_SHARD))
        has_data = bool(self.offsets_any() or self.count())
        reason: str | None = None
        if layout != (shards, shard) and (has_data or layout != (None, None)):
            found = "no layout" if layout == (None, None) else f"shard {layout[1]} of {layout[0]}"
            reason = f"written for {found}, not shard {shard} of {shards}"
        elif has_data:
            synced = meta.get(_SYNCED_AT)
            age = None if synced is None else (time.time() if now is None else now) - float(synced)
            if age is None or age > max_age:
                reason = (
                    "no record of when it was last synced"
                    if age is None
                    else f"last synced {age:.0f}s ago, more than {max_age:.0f}s"
                )
        if reason is not None:
            self.wipe()
        db = self.db
        db.executemany(
            "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
            [(_SHARDS, shards), (_SHARD, shard)],
        )
        return reason

    def layout(self) -> tuple[int, int] | None:
        """``(shards, shard)`` this file was claimed for, if any."""
        meta = dict(self.db.execute("SELECT name, value FROM meta"))
        if meta.get(_SHARDS) is None or meta.get(_SHARD) is None:
            return None
        return int(meta[_SHARDS]), int(meta[_SHARD])

    def mark_synced(self, now: float | None = None) -> None:
        """The store matches the state topic now (a restore reached its end)."""
        self.db.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
            (_SYNCED_AT, time.time() if now is None else now),
        )

    def offsets_any(self) -> bool:
        """Whether any state-topic offset is stored (the store has followed a topic)."""
        return self.db.execute("SELECT 1 FROM offsets LIMIT 1").fetchone() is not None

    # -- cold restore --------------------------------------------------------------------------

    def begin_cold_restore(self) -> None:
        """The store is about to be rebuilt from zero: mark it (durably) as being rebuilt, then
        write without syncing (``synchronous=OFF``). The store is a cache of the state topic:
        if the process or the machine dies before ``end_cold_restore``, the mark is still there
        and the next start wipes the store and rebuilds it (``cold_restore_interrupted``)."""
        db = self.db
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES (?, 'running')", (_COLD_RESTORE,)
        )
        db.execute("PRAGMA synchronous=OFF")

    def end_cold_restore(self) -> None:
        """The cold restore completed: make everything it wrote durable (back to
        ``synchronous=NORMAL``, a checkpoint that syncs the database file), then clear the
        mark."""
        db = self.db
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_checkpoint(FULL)")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("DELETE FROM meta WHERE name = ?", (_COLD_RESTORE,))
        db.execute("PRAGMA synchronous=NORMAL")

    def abandon_cold_restore(self) -> None:
        """The cold restore failed: back to normal durability, the mark left in place (the
        next restore starts from zero again)."""
        self.db.execute("PRAGMA synchronous=NORMAL")

    def cold_restore_interrupted(self) -> bool:
        """Whether a cold restore began and never completed (the store is not to be trusted)."""
        row = self.db.execute("SELECT 1 FROM meta WHERE name = ?", (_COLD_RESTORE,)).fetchone()
        return row is not None

    def wipe(self) -> None:
        """Forget everything (the state topic was recreated, or a cold restore was asked for)."""
        db = self.db
        db.execute("BEGIN")
        db.execute("DELETE FROM records")
        db.execute("DELETE FROM offsets")
        db.execute("DELETE FROM seen")
        db.execute("DELETE FROM meta WHERE name = ?", (_SYNCED_AT,))
        db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, 0)", (_KEYS,))
        db.execute("COMMIT")
