"""``sync.workers``: the per-record work of pages in worker processes (``producer.workers``).

The engine tests run ``DistrictSync`` against the in-memory seams of ``producer.testing``
(a real SQLite store in memory, a sink that keeps batches) once in process and once with a
worker pool, and compare everything committed. The integration tests run the real service
against the broker: a worker killed mid-pass fails the pass without moving its cursor, and the
next pass leaves the stream exactly once by the independent checker (``tests/checker.py``).
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from producer.avro import Schemas
from producer.checkpoints import CheckpointBook
from producer.config import SyncConfig
from producer.errors import WorkerDied
from producer.events import Encoder, OutRecord
from producer.kafka.topics import TopicNames
from producer.model import ENTITIES, Entity, Secret, Version
from producer.privacy import PrivacyRules
from producer.service import Service
from producer.simulator import DistrictSpec, Simulator
from producer.simulator.quirks import apply as apply_quirks
from producer.state import StateStore
from producer.sync import DistrictSync
from producer.testing import MemorySink, MemorySource, memory_store
from producer.workers import WorkerPool, prepare, resolve_workers
from tests.checker import compare_with_truth, rebuild, state_mismatches, truth_snapshot
from tests.harness import config_document, make_config, write_config
from tests.reliability_helpers import eventually, run_cli

SCHEMAS = Schemas.load(history=False)
TOPICS = TopicNames("t")
DISTRICT = "d1"
NOW = datetime(2030, 1, 1, tzinfo=UTC)
RECORD_QUIRKS = frozenset(
    {"json_booleans", "empty_roles", "vendor_metadata", "date_space", "date_no_fraction"}
    | {"inactive_status", "missing_optional"}
)
PRIVACY = PrivacyRules.parse(
    ["users.email", "demographics.birthDate"], ["users.username"], Secret("k" * 32)
)


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    """A pool of one worker process, stopped at the end."""
    async with WorkerPool(1) as found:
        yield found


def district_records(version: Version, quirks: frozenset[str]) -> dict[Entity, list[Any]]:
    """Every record of a small simulated district as served with ``quirks``, with damage: a
    record without sourcedId, one with a bad status, a duplicate with other content, a
    non-object and a string with an unpaired surrogate (not JSON: cannot be sent as bytes)."""
    sim = Simulator([DistrictSpec(id="d", version=version, size="small", quirks=quirks)])
    store = sim.district("d").store
    records: dict[Entity, list[Any]] = {
        e: [apply_quirks(r, quirks) for r in store.iter_entity(e)] for e in ENTITIES
    }
    users = records["users"]
    users.insert(3, {k: v for k, v in users[0].items() if k != "sourcedId"})
    users.insert(5, {**users[1], "status": 7})
    users.insert(250, {**users[2], "givenName": "Changed in the same listing"})
    users.insert(7, ["not", "an", "object"])
    records["orgs"].append({**records["orgs"][0], "sourcedId": "org-x", "name": "bad \ud800"})
    return records


def mutated(records: dict[Entity, list[Any]]) -> dict[Entity, list[Any]]:
    """A later state of ``records``: updates, touches (date only), ``tobedeleted`` and hard
    deletes (records left out)."""
    out = copy.deepcopy(records)
    later = "2029-06-01T00:00:00.000Z"
    users = [u for u in out["users"] if isinstance(u, dict)]
    for user in users[10:40]:
        user["familyName"] = "Renamed"
        user["dateLastModified"] = later
    for user in users[40:60]:
        user["dateLastModified"] = later
    for user in users[60:70]:
        user["status"] = "tobedeleted"
        user["dateLastModified"] = later
    out["enrollments"] = out["enrollments"][25:]
    return out


class Run:
    """One district engine on in-memory seams, in process or with ``workers``."""

    def __init__(
        self, source: MemorySource, workers: WorkerPool | None, batch_size: int = 300
    ) -> None:
        self.store: StateStore = memory_store()
        self.sink = MemorySink(self.store)
        self.book = CheckpointBook()
        self.engine = DistrictSync(
            district_id=DISTRICT,
            source=source,
            server="memory://sis",
            store=self.store,
            sink=self.sink,
            encoder=Encoder(SCHEMAS, TOPICS),
            checkpoints=self.book,
            settings=SyncConfig(batch_size=batch_size, mass_delete_threshold=0.9),
            observer=None,
            clock=lambda: NOW,
            privacy=PRIVACY,
            workers=workers,
        )

    def committed(self) -> list[Any]:
        """Every committed record, decoded, batch by batch, without the random sync ids."""
        return [
            (
                [_plain(r) for r in b.events],
                [(w.entity, w.sourced_id, w.digest, w.value, w.raw_digest) for w in b.state],
                [_plain(r) for r in b.deadletters],
                _plain(b.checkpoint) if b.checkpoint is not None else None,
            )
            for b in self.sink.batches
        ]

    def stored(self) -> list[Any]:
        """The store's rows (the sync ids are not in it)."""
        rows = self.store.db.execute("SELECT * FROM records ORDER BY 1, 2, 3").fetchall()
        return [tuple(row) for row in rows]


def _plain(record: OutRecord) -> tuple[Any, ...]:
    """An output record with its value decoded and any sync id blanked."""
    value = None if record.value is None else SCHEMAS.decode(record.value).value
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in ("sync_id", "last_sync_id")}
        if isinstance(value.get("source"), dict):
            value["source"] = {k: v for k, v in value["source"].items() if k != "sync_id"}
    return (record.topic, record.key, value, record.headers)


@pytest.mark.parametrize(("version", "quirks"), [("1.1", RECORD_QUIRKS), ("1.2", frozenset())])
async def test_worker_processes_give_the_in_process_events_and_state(
    pool: WorkerPool, version: Version, quirks: frozenset[str]
) -> None:
    """A small district with record quirks, damaged records, a duplicate and privacy rules,
    listed in full, then again after updates, touches, tobedeleted records and hard deletes,
    then as a delta: the pool commits exactly the in-process batches (events, state writes,
    dead letters, checkpoints, in the same order) and leaves the same store."""
    first = district_records(version, quirks)
    source_a = MemorySource(records=first, version="1.2", page_size=100)
    source_b = MemorySource(records=copy.deepcopy(first), version="1.2", page_size=100)
    alone, pooled = Run(source_a, None), Run(source_b, pool)
    for step in ("snapshot", "full", "delta"):
        if step == "full":
            source_a.records = mutated(source_a.records)
            source_b.records = mutated(source_b.records)
        await alone.engine.sync(full=step != "delta")
        await pooled.engine.sync(full=step != "delta")
        assert pooled.committed() == alone.committed(), step
        assert pooled.stored() == alone.stored(), step
    assert pool.pids()
    kinds = {r[2]["op"] for b in alone.committed() for r in b[0] if r[2] is not None}
    assert kinds == {"CREATED", "UPDATED", "DELETED"}
    assert len(alone.sink.deadletters) >= 4


def test_prepare_takes_the_fast_path_only_for_a_stored_raw_digest() -> None:
    """``prepare`` normalises a record unless its raw digest equals the stored one and its date
    parses; then it gives only the date."""
    raw = {
        "sourcedId": "o1",
        "status": "active",
        "dateLastModified": "2024-05-01T10:00:00.000Z",
        "name": "Org",
        "type": "school",
    }
    ((digest, moment, outcome, canonical, body),) = prepare(
        "orgs", DISTRICT, [raw], [None], PRIVACY
    )
    assert moment is None
    assert outcome is not None
    assert canonical is not None
    assert body is None
    ((again, moment, outcome, _, _),) = prepare(
        "orgs", DISTRICT, [{**raw, "dateLastModified": "2024-06-01T00:00:00Z"}], [digest], PRIVACY
    )
    assert again == digest
    assert outcome is None
    assert moment == datetime(2024, 6, 1, tzinfo=UTC)
    ((_, moment, outcome, _, body),) = prepare(
        "orgs", DISTRICT, [{**raw, "name": "Other"}], [digest], PRIVACY, encode=True
    )
    assert moment is None
    assert outcome is not None
    assert body is not None


def test_workers_default_to_in_process_and_auto_is_cores_minus_one() -> None:
    """``sync.workers`` is 0 (in process) unless set; ``"auto"`` is cores - 1, at least 1; a
    number is taken as it is."""
    assert SyncConfig().workers == 0
    assert resolve_workers(SyncConfig().workers) == 0
    assert resolve_workers("auto", cores=1) == 1
    assert resolve_workers("auto", cores=2) == 1
    assert resolve_workers("auto", cores=8) == 7
    assert resolve_workers(3, cores=2) == 3


async def test_a_pool_starts_with_its_first_page_and_close_stops_its_workers() -> None:
    """No process before the first page; ``close`` ends the workers (idempotent) and a closed
    pool refuses work."""
    pool = WorkerPool(2)
    assert pool.pids() == []
    raw = {"sourcedId": "o1", "status": "active", "dateLastModified": "2024-05-01", "name": "O"}
    await pool.prepare("orgs", DISTRICT, [raw], [None], PRIVACY)
    pids = pool.pids()
    assert pids
    await pool.close()
    await pool.close()
    await eventually(lambda: not any(_alive(pid) for pid in pids), within=10, interval=0.1)
    with pytest.raises(Exception, match="closed"):
        await pool.prepare("orgs", DISTRICT, [raw], [None], PRIVACY)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


_ORPHAN_SCRIPT = """
import asyncio, sys
from producer.privacy import NO_RULES
from producer.workers import WorkerPool

async def main():
    pool = WorkerPool(2)
    raw = [{"sourcedId": "o", "status": "active"}] * 20_000
    await asyncio.gather(*(pool.prepare("orgs", "d", raw, [None] * len(raw), NO_RULES)
                           for _ in range(2)))
    print(" ".join(map(str, pool.pids())), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_workers_of_a_killed_parent_exit() -> None:
    """A process killed outright (SIGKILL) with a running pool leaves no worker behind: the
    workers notice their parent is gone and exit (a Ctrl-C, SIGINT, is left to the parent)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ORPHAN_SCRIPT, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = b""
    while not line.replace(b" ", b"").strip().isdigit():  # past the pool's log line
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
    pids = [int(p) for p in line.split()]
    assert len(pids) == 2
    for pid in pids:
        os.kill(pid, signal.SIGINT)  # ignored: the parent decides
    await asyncio.sleep(0.3)
    assert all(_alive(pid) for pid in pids)
    proc.kill()
    await proc.wait()
    await eventually(lambda: not any(_alive(pid) for pid in pids), within=10, interval=0.1)


class KillingSource(MemorySource):
    """A memory source whose ``kill_at``-th page, when it is handed over, first kills the
    pool's workers (SIGKILL)."""

    pool: WorkerPool | None = None
    kill_at: int | None = None

    def listing(self, entity: Entity, *, since: datetime | None = None) -> Any:
        inner = super().listing(entity, since=since)
        outer = self

        class Killing:
            complete = property(lambda _self: inner.complete)
            incomplete_reason = property(lambda _self: inner.incomplete_reason)
            filter_ignored = property(lambda _self: inner.filter_ignored)

            def __aiter__(self) -> Any:
                return self._pages()

            async def _pages(self) -> AsyncIterator[Any]:
                number = 0
                async for page in inner:
                    number += 1
                    if outer.kill_at == number and outer.pool is not None:
                        outer.kill_at = None
                        for pid in outer.pool.pids():
                            os.kill(pid, signal.SIGKILL)
                        await asyncio.sleep(0.5)
                    yield page

        return Killing()


async def test_a_killed_worker_fails_the_pass_without_moving_its_cursor(
    pool: WorkerPool,
) -> None:
    """Workers killed in the middle of a listing: the pass raises ``WorkerDied`` (what was
    committed before stays, the cursor stays unset), and the next pass runs on new workers and
    ends where an undisturbed pass ends."""
    records: dict[Entity, list[Any]] = {"orgs": [_org(i) for i in range(1_000)]}
    source = KillingSource(records=records, version="1.2", page_size=50)
    source.pool, source.kill_at = pool, 8
    run = Run(source, pool, batch_size=100)  # pages 1-5 are committed when page 8 comes
    await pool.prepare("orgs", DISTRICT, [], [], PRIVACY)  # the workers exist before the pass
    old = pool.pids()
    with pytest.raises(WorkerDied, match=r"sync\.workers"):
        await run.engine.sync()
    assert run.book.get(DISTRICT, "orgs").cursor is None
    assert 200 <= run.store.count("orgs", DISTRICT) < 1_000
    await run.engine.sync()
    assert not set(pool.pids()) & set(old)
    assert run.store.count("orgs", DISTRICT) == 1_000
    assert run.book.get(DISTRICT, "orgs").cursor is not None
    alone = Run(
        MemorySource(records=copy.deepcopy(records), version="1.2", page_size=50), None, 100
    )
    await alone.engine.sync()
    assert run.stored() == alone.stored()


def _org(i: int) -> dict[str, Any]:
    moment = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
    return {
        "sourcedId": f"org-{i:05d}",
        "status": "active",
        "dateLastModified": moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "name": f"Org {i}",
        "type": "school",
    }


def test_a_bad_workers_value_exits_2_naming_the_key(tmp_path: Path) -> None:
    """``check-config`` on ``sync.workers = -1`` (or text that is no number) exits 2 and names
    ``sync.workers``."""
    for value in ("-1", '"many"', "65"):
        bad = tmp_path / "bad.toml"
        text = Path("config/demo.toml").read_text(encoding="utf-8")
        bad.write_text(text.replace("[sync]", f"[sync]\nworkers = {value}", 1), encoding="utf-8")
        assert f"workers = {value}" in bad.read_text(encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "producer", "--config", str(bad), "check-config"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "sync.workers" in done.stdout + done.stderr


@pytest.mark.integration
async def test_a_killed_worker_then_the_next_pass_is_exactly_once(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """The real service with one worker process: its worker is SIGKILLed while the snapshot
    runs; that pass fails with ``WorkerDied`` and no cursor of the entity it was in moves; the
    next pass (new workers, same service) completes, and the checker finds every change once
    and the state equal to the truth."""
    simulator = Simulator([DistrictSpec(id="wk", version="1.2", size=40, seed=17)])
    async with simulator.serve():
        config = make_config(
            simulator,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            state_dir=tmp_path,
            sync={"batch_size": 20, "workers": 1},
            district_overrides={"page_size": 20},
        )
        async with Service(config) as service:
            assert service.workers is not None
            pool = service.workers
            task = asyncio.create_task(service.sync("wk"))
            await eventually(lambda: service.state_keys() >= 150, within=60, interval=0.005)
            for pid in pool.pids():
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(WorkerDied):
                await task
            cursors = {e: service.checkpoint("wk", e).cursor for e in ENTITIES}
            assert None in cursors.values()
            await service.sync("wk")
        rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
        truth = truth_snapshot(simulator)
    comparison = compare_with_truth(rebuilt, [truth])
    assert comparison.clean, comparison.describe()
    assert state_mismatches(rebuilt, truth) == []


@pytest.mark.integration
async def test_a_one_shot_sync_with_workers_exits_and_is_exactly_once(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """``oneroster-cdc sync --all`` with ``sync.workers = 2`` runs its pass in worker
    processes, exits 0 (the pool stops, nothing hangs), and a second run writes nothing new."""
    simulator = Simulator([DistrictSpec(id="one", version="1.1", size="tiny", seed=3)])
    async with simulator.serve():
        document = config_document(
            simulator,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            state_dir=tmp_path / "state",
            sync={"workers": 2},
        )
        path = write_config(tmp_path / "c.toml", document)
        for _ in range(2):
            done = await run_cli(path, "sync", "--all", logs=tmp_path / "logs", within=120)
            assert done.returncode == 0, done.stderr[-2000:]
            assert '"workers.stopped"' in done.stdout + done.stderr
        rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
        truth = truth_snapshot(simulator)
    comparison = compare_with_truth(rebuilt, [truth])
    assert comparison.clean, comparison.describe()
