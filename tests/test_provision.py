"""The provisioning example (``examples/provision``) against a real broker and a real PostgreSQL.

The producer syncs a simulated district (snapshot, then creates, updates, soft and hard
deletes); the example runs as a subprocess, as a deployment would, and its database is compared
with the simulator's truth after a full replay, after a SIGKILL mid-stream and a restart from
the group's committed offsets, and after a second replay that also meets new changes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from producer.service import Service
from producer.simulator import DistrictSpec, Simulator
from tests import postgres
from tests.checker import truth_snapshot
from tests.harness import make_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "provision" / "provision.py"
ENTITIES = ("users", "classes", "enrollments")
DISTRICT = "prov"
#: Options of a full replay that exits once caught up.
REPLAY = ("--start", "beginning", "--stop-at-end")


@pytest.fixture
def pg() -> Iterator[str]:
    """A DSN of a throwaway PostgreSQL server (see tests/postgres.py)."""
    with postgres.server() as dsn:
        yield dsn


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """One 1.2 district of 30 students."""
    simulator = Simulator([DistrictSpec(id=DISTRICT, version="1.2", size=30, seed=77)])
    async with simulator.serve():
        yield simulator


def mutate(sim: Simulator, round_: int) -> None:
    """Creates, updates, a soft delete and hard deletes of users and enrollments, and a class
    retitled."""
    sim.advance_clock(60)
    d = sim.district(DISTRICT)
    users = sorted(d.truth_state("users"))
    for i in range(3):
        d.create("users", {"givenName": f"Round{round_}-{i}"})
    for sid in users[:3]:
        d.update("users", sid, familyName=f"Renamed{round_}")
    d.mark_tobedeleted("users", users[3])
    d.hard_delete("users", users[4])
    for sid in sorted(d.truth_state("enrollments"))[:2]:
        d.hard_delete("enrollments", sid)
    d.update("classes", sorted(d.truth_state("classes"))[0], title=f"Retitled {round_}")


def expected(sim: Simulator) -> dict[str, dict[tuple[str, str], tuple[Any, ...]]]:
    """The truth in the shape of the example's tables."""
    out: dict[str, dict[tuple[str, str], tuple[Any, ...]]] = {}
    for entity, records in truth_snapshot(sim, ENTITIES).items():
        rows = {}
        for key, r in records.items():
            district, _, sid = key.partition("/")
            stamp = datetime.fromisoformat(str(r["dateLastModified"]))
            if entity == "users":
                detail: tuple[Any, ...] = (r.get("givenName"), r.get("familyName"))
            elif entity == "classes":
                detail = (r.get("title"),)
            else:
                detail = (r["user"]["sourcedId"], r["class"]["sourcedId"])
            rows[(district, sid)] = (r["status"], stamp, *detail)
        out[entity] = rows
    return out


COLUMNS = {
    "users": "given_name, family_name",
    "classes": "title",
    "enrollments": "user_sourced_id, class_sourced_id",
}


def database(dsn: str) -> dict[str, dict[tuple[str, str], tuple[Any, ...]]]:
    """The example's tables, in the shape of ``expected``."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for entity, columns in COLUMNS.items():
            rows = conn.execute(
                f"SELECT district_id, sourced_id, status, date_last_modified, {columns} "
                f"FROM {entity}"
            ).fetchall()
            out[entity] = {(r[0], r[1]): tuple(r[2:]) for r in rows}
    return out


def assert_equal_to_truth(dsn: str, sim: Simulator) -> None:
    """Every table holds exactly the truth's active records, with their compared fields."""
    truth, db = expected(sim), database(dsn)
    for entity in ENTITIES:
        assert set(db[entity]) == set(truth[entity]), entity
        wrong = {k: (db[entity][k], v) for k, v in truth[entity].items() if db[entity][k] != v}
        assert wrong == {}, entity


def example(dsn: str, bootstrap: str, prefix: str, group: str, *extra: str) -> list[str]:
    """The example's command line for ``group``, plus ``extra`` options."""
    common = ["--bootstrap", bootstrap, "--prefix", prefix, "--dsn", dsn, "--group", group]
    return [sys.executable, str(EXAMPLE), *common, *extra]


async def run_example(cmd: list[str]) -> dict[str, int]:
    """Run the example to completion; its summary line (applied and skipped counts)."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode == 0, err.decode()[-3000:]
    counts: dict[str, int] = orjson.loads(out.decode().strip().splitlines()[-1])
    return counts


def applied_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM applied_events").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    assert row is not None
    return int(row[0])


@pytest.mark.timeout(300)
async def test_database_equals_the_truth_after_replay_crash_and_second_replay(
    sim: Simulator, pg: str, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A full replay fills the database with the truth; a consumer SIGKILLed mid-stream and
    restarted from its group's committed offsets resumes (it does not start over) and ends equal
    to the truth; a second full replay over that database, after more changes, applies only the
    new events and ends equal to the new truth."""
    config = make_config(
        sim,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        state_dir=tmp_path / "state",
        district_overrides={"entities": list(ENTITIES)},
    )
    async with Service(config) as service:
        await service.sync(DISTRICT)
        mutate(sim, 1)
        await service.sync(DISTRICT, full=True)

    # 1. A full replay from the beginning into an empty database.
    replay = await run_example(example(pg, kafka_bootstrap, unique_prefix, "g1", *REPLAY))
    total = replay["applied"]
    assert replay["skipped"] == 0
    assert total > 100
    assert_equal_to_truth(pg, sim)

    # 2. A fresh database and group; SIGKILL after some events, restart from committed offsets.
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute("DROP TABLE users, classes, enrollments, applied_events")
    slow = subprocess.Popen(  # noqa: ASYNC220 - killed below, never awaited
        example(pg, kafka_bootstrap, unique_prefix, "g2", "--pause", "0.05"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        for _ in range(1200):
            if applied_rows(pg) >= 20:
                break
            await asyncio.sleep(0.05)
        os.kill(slow.pid, signal.SIGKILL)
        assert slow.wait(timeout=30) == -signal.SIGKILL
    finally:
        if slow.poll() is None:
            slow.kill()
    partial = applied_rows(pg)
    assert 20 <= partial < total
    # Killed mid-stream: the database then held only part of the truth.
    rows_at_kill = sum(len(rows) for rows in database(pg).values())
    assert rows_at_kill < sum(len(rows) for rows in expected(sim).values())
    resumed = await run_example(example(pg, kafka_bootstrap, unique_prefix, "g2", "--stop-at-end"))
    # Resumed after the committed offset: at most the one event between DB and Kafka commit
    # is handed out again (and skipped).
    assert resumed["skipped"] <= 1
    assert resumed["applied"] + resumed["skipped"] < total
    assert_equal_to_truth(pg, sim)

    # 3. More changes, then a second full replay over the same database.
    async with Service(config) as service:
        mutate(sim, 2)
        await service.sync(DISTRICT, full=True)
    again = await run_example(example(pg, kafka_bootstrap, unique_prefix, "g2", *REPLAY))
    assert again["skipped"] == total
    assert again["applied"] > 0
    assert_equal_to_truth(pg, sim)
