"""A provisioning service built on the consumer kit: users, classes and enrollments into
PostgreSQL, kept equal to the roster across replays and crashes.

    python examples/provision/provision.py --bootstrap 127.0.0.1:9092 --prefix oneroster \\
        --dsn postgresql://app@127.0.0.1/roster --group provisioning [--start committed]

How it stays correct:

1. ``ChangeStream`` hands out decoded change events (read_committed, de-duplicated by event id;
   a tombstone whose DELETED event was not handed out comes as a delete).
2. Each event is applied in ONE database transaction: an upsert (CREATED, UPDATED) or a delete
   (DELETED) of the row keyed by ``(district_id, sourced_id)``, plus the event's offset in
   ``applied_events`` (one row per Kafka key).
3. After that transaction commits, the Kafka offset is committed for the group.

A crash between 2 and 3 replays that event on restart; a replay from the beginning replays
everything. Both are harmless: all events of one key live in one partition, in order, so an
event whose offset is not past the key's ``applied_events.last_offset`` was applied already and is
skipped. The database therefore never steps back in time (a replay does not resurrect a deleted
account), and applying an event twice changes nothing.

Tables have no foreign keys: users, classes and enrollments are separate topics with no order
between them, so an enrollment may arrive before its user.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
import psycopg

from producer.consume import ChangeEvent, ChangeStream, Start
from producer.model import Entity

ENTITIES: tuple[Entity, ...] = ("users", "classes", "enrollments")

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    district_id text NOT NULL,
    sourced_id text NOT NULL,
    status text NOT NULL,
    username text,
    given_name text,
    family_name text,
    email text,
    role text,
    date_last_modified timestamptz NOT NULL,
    PRIMARY KEY (district_id, sourced_id)
);
CREATE TABLE IF NOT EXISTS classes (
    district_id text NOT NULL,
    sourced_id text NOT NULL,
    status text NOT NULL,
    title text,
    class_code text,
    course_sourced_id text,
    school_sourced_id text,
    date_last_modified timestamptz NOT NULL,
    PRIMARY KEY (district_id, sourced_id)
);
CREATE TABLE IF NOT EXISTS enrollments (
    district_id text NOT NULL,
    sourced_id text NOT NULL,
    status text NOT NULL,
    user_sourced_id text,
    class_sourced_id text,
    role text,
    date_last_modified timestamptz NOT NULL,
    PRIMARY KEY (district_id, sourced_id)
);
CREATE TABLE IF NOT EXISTS applied_events (
    topic text NOT NULL,
    key text NOT NULL,
    last_offset bigint NOT NULL,
    PRIMARY KEY (topic, key)
);
"""


def _ref(record: Mapping[str, Any], *names: str) -> str | None:
    """The sourcedId of the first GUIDRef field present (names differ across schema versions)."""
    for name in names:
        ref = record.get(name)
        if isinstance(ref, Mapping):
            return str(ref["sourcedId"])
    return None


def _stamp(value: Any) -> str | datetime:
    """``dateLastModified`` as PostgreSQL takes it (an ISO string or a datetime)."""
    return value if isinstance(value, datetime) else str(value)


def _primary_role(record: Mapping[str, Any]) -> str | None:
    roles = list(record.get("roles") or ())
    primary = [r for r in roles if r.get("roleType") == "primary"] or roles
    return str(primary[0]["role"]) if primary else None


def row(entity: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of one canonical record (beyond the key)."""
    common = {
        "status": str(record["status"]),
        "date_last_modified": _stamp(record["dateLastModified"]),
    }
    if entity == "users":
        return {
            **common,
            "username": record.get("username"),
            "given_name": record.get("givenName"),
            "family_name": record.get("familyName"),
            "email": record.get("email"),
            "role": _primary_role(record),
        }
    if entity == "classes":
        return {
            **common,
            "title": record.get("title"),
            "class_code": record.get("classCode"),
            "course_sourced_id": _ref(record, "course"),
            "school_sourced_id": _ref(record, "school"),
        }
    return {
        **common,
        "user_sourced_id": _ref(record, "user"),
        "class_sourced_id": _ref(record, "schoolClass", "class"),
        "role": record.get("role"),
    }


async def apply(conn: psycopg.AsyncConnection[Any], event: ChangeEvent) -> bool:
    """Apply one event in one transaction; False when it was applied before (skipped)."""
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT last_offset FROM applied_events WHERE topic = %s AND key = %s FOR UPDATE",
            (event.topic, event.key),
        )
        seen = await cursor.fetchone()
        if seen is not None and event.offset <= seen[0]:
            return False
        table = event.entity  # one of ENTITIES: the stream reads only those topics
        if event.op == "DELETED":
            await conn.execute(
                f"DELETE FROM {table} WHERE district_id = %s AND sourced_id = %s",  # noqa: S608 - fixed table names
                (event.district_id, event.sourced_id),
            )
        else:
            assert event.after is not None
            values = row(event.entity, event.after)
            columns = ", ".join(values)
            updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in values)
            placeholders = ", ".join(["%s"] * (len(values) + 2))
            await conn.execute(
                f"INSERT INTO {table} (district_id, sourced_id, {columns}) "  # noqa: S608 - fixed table and column names
                f"VALUES ({placeholders}) "
                f"ON CONFLICT (district_id, sourced_id) DO UPDATE SET {updates}",
                (event.district_id, event.sourced_id, *values.values()),
            )
        await conn.execute(
            "INSERT INTO applied_events (topic, key, last_offset) VALUES (%s, %s, %s) "
            "ON CONFLICT (topic, key) DO UPDATE SET last_offset = EXCLUDED.last_offset",
            (event.topic, event.key, event.offset),
        )
    return True


async def run(args: argparse.Namespace) -> dict[str, int]:
    """Consume until cancelled (or, with ``--stop-at-end``, until caught up)."""
    counts = {"applied": 0, "skipped": 0}
    start: Start = args.start
    async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as conn:
        await conn.execute(SCHEMA)
        async with ChangeStream(
            bootstrap_servers=args.bootstrap,
            topic_prefix=args.prefix,
            entities=ENTITIES,
            group_id=args.group,
            start=start,
            stop_at_end=args.stop_at_end,
        ) as stream:
            async for event in stream:
                counts["applied" if await apply(conn, event) else "skipped"] += 1  # 1. and 2.
                await stream.commit()  # 3.
                if args.pause:
                    await asyncio.sleep(args.pause)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--prefix", default="oneroster", help="the producer's topic_prefix")
    parser.add_argument("--dsn", required=True, help="PostgreSQL connection string")
    parser.add_argument("--group", default="provisioning", help="Kafka group for the offsets")
    parser.add_argument(
        "--start",
        choices=("committed", "beginning", "end"),
        default="committed",
        help="where to start: the group's committed offsets (default), or a full replay",
    )
    parser.add_argument("--stop-at-end", action="store_true", help="exit once caught up")
    parser.add_argument(
        "--pause", type=float, default=0.0, help="seconds to wait after each event (demos)"
    )
    args = parser.parse_args(argv)
    counts = asyncio.run(run(args))
    sys.stdout.write(orjson.dumps(counts).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
