"""The state store's operations on the product's tuned SQLite store against LMDB (bench only).

    .venv/bin/python -m bench.store [--keys 300000] [--rounds 3]

Needs the ``lmdb`` package (the ``bench`` extra). The product keeps SQLite (``StateStore``);
this measures what a switch would buy, on the operations the product runs:

1. cold restore: an empty store loaded with ``--keys`` state rows (~300-byte values) in batches
   of 50,000, as ``restore_from_kafka`` does: ``StateStore`` under its cold-restore mode
   (``synchronous=OFF``, one transaction per batch, a synced checkpoint at the end) against LMDB
   written without syncs and synced once at the end;
2. digest look-ups, pages of 1,000 keys (a no-change re-read): ``StateStore.digests`` against
   one LMDB read transaction per page;
3. durable upserts, batches of 1,000 rows with their offsets (a snapshot's commits):
   ``StateStore.apply_rows`` (WAL, ``synchronous=NORMAL``) against LMDB committing with a
   data sync (``sync=True``, LMDB's default) and with ``metasync=False`` (the last
   transactions may be lost in an OS crash, like SQLite's WAL at ``NORMAL``);
4. warm open: opening the store and reading its key count;
5. the size on disk.

CPU time (user + system of this process) per key is the figure; wall time is printed beside it
(it also counts waits for the disk). Each figure is the best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from producer.state import StateStore

BATCH = 50_000
PAGE = 1_000
ENTITY, DISTRICT = "users", "bench"
SEP = b"\x1f"


def rows(n: int) -> Iterator[tuple[str, str, str, bytes, bytes, bytes]]:
    """``n`` state rows: sourcedIds in a stable order, 16-byte digests, ~300-byte values."""
    for i in range(n):
        sid = f"usr-{i * 7919 % n:09d}"
        digest = i.to_bytes(16, "big")
        yield ENTITY, DISTRICT, sid, digest, (sid.encode() * 24)[:300], digest[::-1]


def lmdb_key(entity: str, district: str, sid: str) -> bytes:
    # LMDB keys are at most 511 bytes by default: a sourcedId may be 1,024 characters
    # (MAX_ID_CHARS), so a real LMDB store would hash long keys (not needed for these ids).
    return entity.encode() + SEP + district.encode() + SEP + sid.encode()


def lmdb_value(digest: bytes, value: bytes, raw: bytes) -> bytes:
    return struct.pack("16s16s", digest, raw) + value


def timed(
    fn: Callable[[], Any], rounds: int, setup: Callable[[], Any] = lambda: None
) -> tuple[float, float]:
    """Best (CPU seconds, wall seconds) of ``rounds`` runs of ``fn``, each after ``setup``."""
    best_cpu = best_wall = float("inf")
    for _ in range(rounds):
        setup()
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Sqlite:
    """The product's ``StateStore``."""

    name = "SQLite (StateStore, tuned)"

    def __init__(self, root: Path) -> None:
        self.dir = root / "sqlite"
        self.store: StateStore | None = None

    def reset(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.store = StateStore(self.dir / "state.sqlite")

    def cold_restore(self, n: int) -> None:
        store = self.store
        assert store is not None
        store.begin_cold_restore()
        batch: list[Any] = []
        for offset, row in enumerate(rows(n)):
            batch.append(row)
            if len(batch) == BATCH:
                store.apply_rows(batch, [], topic="t", offsets={0: offset + 1})
                batch = []
        if batch:
            store.apply_rows(batch, [], topic="t", offsets={0: n})
        store.end_cold_restore()

    def lookups(self, sids: list[str]) -> int:
        store = self.store
        assert store is not None
        found = 0
        for i in range(0, len(sids), PAGE):
            found += len(store.digests(ENTITY, DISTRICT, sids[i : i + PAGE]))
        return found

    def upserts(self, batches: list[list[Any]]) -> None:
        store = self.store
        assert store is not None
        for i, batch in enumerate(batches):
            store.apply_rows(batch, [], topic="t", offsets={0: i})

    def warm_open(self) -> int:
        assert self.store is not None
        self.store.close()
        self.store = StateStore(self.dir / "state.sqlite")
        return self.store.count()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


class Lmdb:
    """The same operations on LMDB: one environment, a records and an offsets database."""

    def __init__(self, root: Path, *, metasync: bool = True) -> None:
        import lmdb  # noqa: PLC0415 - optional, bench only

        self._lmdb = lmdb
        self.metasync = metasync
        self.name = "LMDB" + ("" if metasync else " (metasync=False)")
        self.dir = root / ("lmdb" if metasync else "lmdb-nometa")
        self.env: Any = None

    def _open(self) -> None:
        self.env = self._lmdb.open(
            str(self.dir), map_size=1 << 34, max_dbs=4, metasync=self.metasync, readahead=False
        )
        self.records = self.env.open_db(b"records")
        self.offsets = self.env.open_db(b"offsets")

    def reset(self) -> None:
        if self.env is not None:
            self.env.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self._open()

    def cold_restore(self, n: int) -> None:
        env = self.env
        env.set_mapsize(1 << 34)
        batch: list[tuple[bytes, bytes]] = []

        def commit(offset: int) -> None:
            with env.begin(write=True) as txn:
                txn.cursor(self.records).putmulti(batch)
                txn.put(b"t\x1f0", offset.to_bytes(8, "big"), db=self.offsets)

        # Writes without syncs while the store is being rebuilt, one sync at the end.
        self.env.close()
        self.env = env = self._lmdb.open(
            str(self.dir), map_size=1 << 34, max_dbs=4, sync=False, metasync=False
        )
        self.records = env.open_db(b"records")
        self.offsets = env.open_db(b"offsets")
        for offset, (e, d, s, dg, v, r) in enumerate(rows(n)):
            batch.append((lmdb_key(e, d, s), lmdb_value(dg, v, r)))
            if len(batch) == BATCH:
                commit(offset + 1)
                batch = []
        if batch:
            commit(n)
        env.sync(True)
        env.close()
        self._open()

    def lookups(self, sids: list[str]) -> int:
        found = 0
        prefix = ENTITY.encode() + SEP + DISTRICT.encode() + SEP
        for i in range(0, len(sids), PAGE):
            with self.env.begin(db=self.records) as txn:
                get = txn.get
                out = {}
                for sid in sids[i : i + PAGE]:
                    v = get(prefix + sid.encode())
                    if v is not None:
                        out[sid] = (v[:16], v[16:32])
            found += len(out)
        return found

    def upserts(self, batches: list[list[Any]]) -> None:
        for i, batch in enumerate(batches):
            with self.env.begin(write=True) as txn:
                cursor = txn.cursor(self.records)
                cursor.putmulti(
                    [(lmdb_key(e, d, s), lmdb_value(dg, v, r)) for e, d, s, dg, v, r in batch]
                )
                txn.put(b"t\x1f0", i.to_bytes(8, "big"), db=self.offsets)

    def warm_open(self) -> int:
        self.env.close()
        self._open()
        with self.env.begin() as txn:
            return int(txn.stat(self.records)["entries"])

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go (a tmp dir)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    n = args.keys
    load = os.getloadavg()
    sids = [f"usr-{i:09d}" for i in range(0, n, 3)]  # a third of the keys, in sourcedId order
    updates = [
        [(e, d, s, dg[::-1], v, r) for e, d, s, dg, v, r in rows(n)][i : i + PAGE]
        for i in range(0, min(n, 100 * PAGE), PAGE)
    ]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        stores = [Sqlite(root), Lmdb(root), Lmdb(root, metasync=False)]
        figures: dict[str, dict[str, tuple[float, float]]] = {}
        sizes: dict[str, int] = {}
        for store in stores:
            f = figures[store.name] = {}
            f["cold restore"] = timed(lambda s=store: s.cold_restore(n), args.rounds, store.reset)
            sizes[store.name] = size_of(store.dir)
            f["digest look-ups"] = timed(lambda s=store: s.lookups(sids), args.rounds)
            f["durable upserts"] = timed(lambda s=store: s.upserts(updates), args.rounds)
            f["warm open + count"] = timed(store.warm_open, args.rounds)
            store.close()
    per = {
        "cold restore": n,
        "digest look-ups": len(sids),
        "durable upserts": sum(len(b) for b in updates),
        "warm open + count": 1,
    }
    print(
        f"{n:,} keys of ~330 bytes; {os.cpu_count()} cores; load average {load[0]:.2f} -> "
        f"{os.getloadavg()[0]:.2f}; best of {args.rounds}"
    )
    base = stores[0].name
    for op, count in per.items():
        unit = "ms" if count == 1 else "us/key"
        scale = 1e3 if count == 1 else 1e6 / count
        print(f"{op}:")
        for name, f in figures.items():
            cpu, wall = f[op]
            ratio = figures[base][op][0] / cpu if cpu else float("inf")
            print(
                f"  {name:32s} CPU {cpu * scale:8.2f} {unit}  wall {wall * scale:8.2f} {unit}"
                f"  (SQLite CPU / this: {ratio:.2f})"
            )
    print("size on disk after the restore:")
    for name, size in sizes.items():
        print(f"  {name:32s} {size / 1e6:8.1f} MB  ({size / n:.0f} B/key)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
