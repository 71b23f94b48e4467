"""Crash safety: the daemon killed with SIGKILL at seeded random points, restarted each time.

The daemon (``oneroster-cdc run``) runs as a subprocess against simulated districts served by
this test process. Across a snapshot and two delta rounds (with updates, creations,
``tobedeleted`` records and hard deletes that only full syncs see) it is killed at least 20
times, at random moments drawn from a seeded generator: some while it starts (restoring its
state, fencing its previous incarnation), most while it syncs. After each round the test waits
until the committed state equals the truth, snapshots the truth, and mutates again; at the end
the independent checker (``tests/checker.py``) compares the committed events with the changes
the snapshots imply.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from producer.service import Service
from producer.simulator import DistrictSpec, Faults, Simulator
from tests.checker import (
    ENTITIES,
    TruthSnapshot,
    compare_with_truth,
    read_checkpoints,
    rebuild,
    state_mismatches,
    truth_snapshot,
)
from tests.conftest import ServeSimulator
from tests.harness import config_document, make_config, write_config
from tests.reliability_helpers import DaemonProcess, eventually

pytestmark = pytest.mark.integration

SEED = 20261128
#: SIGKILLs per round: the snapshot, then two delta rounds with mutations.
KILLS_PER_ROUND = (8, 6, 6)


@pytest.fixture
async def sim(serve_simulator: ServeSimulator) -> Simulator:
    """A 1.2 (OAuth2) district of 30 students and a tiny 1.1 (OAuth1) one; every answer is
    delayed (100 ms, a remote server's round trip) so that a snapshot spans several seconds of
    paging and an idle delta poll lasts long enough for kills to land inside it."""
    slow = Faults(rate=1.0, kinds=("latency",), latency=0.1, seed=1)
    return await serve_simulator(
        [
            DistrictSpec(id="crash12", version="1.2", size=30, seed=11, faults=slow),
            DistrictSpec(id="crash11", version="1.1", size="tiny", seed=12, faults=slow),
        ]
    )


def mutate(sim: Simulator, rng: random.Random, round_no: int) -> None:
    """One round of changes, applied atomically with respect to the simulator's answers.

    Creations and hard deletes are kept in different entities: offset paging cannot see a
    delete and a create that cancel out in the total (see test_reliability_source).
    """
    sim.advance_clock(10)
    for district_id in ("crash12", "crash11"):
        d = sim.district(district_id)
        users = sorted(d.truth_state("users"))
        picked = rng.sample(users, 9)
        for sid in picked[:6]:
            d.update("users", sid, familyName=f"Crash{round_no}-{sid[-4:]}")
        for sid in picked[6:8]:
            d.mark_tobedeleted("users", sid)
        for n in range(3):
            d.create("users", {"givenName": f"New{round_no}x{n}"})
        for sid in rng.sample(sorted(d.truth_state("enrollments")), 3):
            d.hard_delete("enrollments", sid)
        for sid in rng.sample(sorted(d.truth_state("classes")), 2):
            d.update("classes", sid, title=f"Class r{round_no}")


def polling(daemon: DaemonProcess) -> bool:
    """Whether the current incarnation is inside a poll (started, not finished or failed)."""
    state = False
    for line in daemon.lines():
        if line.get("event") == "poll.started":
            state = True
        elif line.get("event") in ("poll.finished", "poll.failed", "poll.timeout"):
            state = False
    return state


async def caught_up(bootstrap: str, prefix: str, sim: Simulator) -> bool:
    """True when the committed state equals the simulator's truth now."""
    rebuilt = await rebuild(bootstrap, prefix)
    return not state_mismatches(rebuilt, truth_snapshot(sim)) and not rebuilt.violations


@pytest.mark.timeout(600)
async def test_sigkill_at_random_points_loses_nothing_and_duplicates_nothing(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """20 SIGKILLs at seeded random points of a snapshot and two delta rounds
    (restart after each): the committed events hold every truth change exactly once, nothing
    spurious, no protocol violation, and the final committed state equals the truth."""
    rng = random.Random(SEED)
    doc = config_document(
        sim,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        state_dir=tmp_path / "state",
        sync={
            "batch_size": 8,
            "full_sync_interval": "3s",  # most first polls after a restart are full listings
            "mass_delete_threshold": 0.5,
        },
        district_overrides={"page_size": 10, "concurrency": 2, "max_retries": 3},
    )
    config = write_config(tmp_path / "crash.toml", doc)
    daemon = DaemonProcess(config, tmp_path / "logs")
    snapshots: list[TruthSnapshot] = []
    kill_points: list[str] = []
    try:
        daemon.start()
        for round_no, kills in enumerate(KILLS_PER_ROUND):
            if round_no:
                mutate(sim, rng, round_no)
            for _ in range(kills):
                spawned = time.monotonic()
                if rng.random() < 0.2:
                    # While starting: restore, fencing, schema publication.
                    delay = rng.uniform(0.3, 2.0)
                    await asyncio.sleep(max(0.0, spawned + delay - time.monotonic()))
                    where = "starting"
                else:
                    # Inside a poll: the first one of this incarnation, at a random moment.
                    await daemon.wait_log("poll.started", within=90)
                    delay = rng.uniform(0.0, 1.0)
                    await asyncio.sleep(delay)
                    where = "running"
                assert daemon.running(), (
                    f"the daemon died on its own before kill {daemon.kills + 1}: "
                    + daemon.err_path.read_text(errors="replace")[-3000:]
                )
                busy = polling(daemon)
                daemon.kill()
                mark = ":mid-poll" if busy else ""
                kill_points.append(f"r{round_no}:{where}{mark}:{delay:.2f}s")
                daemon.start()
            await eventually(
                lambda: caught_up(kafka_bootstrap, unique_prefix, sim),
                within=120,
                interval=1.5,
                message=f"round {round_no} did not converge after kills {kill_points}",
            )
            snapshots.append(truth_snapshot(sim))
        assert await daemon.terminate() == 0
    finally:
        daemon.close()

    assert daemon.kills == sum(KILLS_PER_ROUND) >= 20
    mid_poll = [k for k in kill_points if "mid-poll" in k]
    assert len(mid_poll) >= 6, f"too few kills landed inside a poll: {kill_points}"
    rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
    result = compare_with_truth(rebuilt, snapshots)
    assert result.clean, result.describe()
    assert result.expected == result.observed > 0
    assert rebuilt.ops["DELETED"] > 0
    assert rebuilt.ops["UPDATED"] > 0


@pytest.mark.timeout(120)
async def test_checkpoint_counts_match_committed_events_after_an_interrupted_pass(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A snapshot interrupted in the middle of the enrollments pass (some batches committed)
    and redone by a new instance: every checkpoint's ``created_count`` equals the CREATED
    events committed for its entity, and ``record_count`` the entity's live records."""
    simulator = Simulator([DistrictSpec(id="counts", version="1.2", size=40, seed=13)])
    async with simulator.serve():
        config = make_config(
            simulator,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            state_dir=tmp_path,
            sync={"batch_size": 20},
        )
        async with Service(config) as service:
            task = asyncio.create_task(service.sync("counts"))
            # orgs..users hold 121 records: past 150 the enrollments pass has committed batches
            await eventually(lambda: service.state_keys() >= 150, within=60, interval=0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        async with Service(config) as again:
            await again.sync("counts")
        rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
        checkpoints = await read_checkpoints(kafka_bootstrap, unique_prefix)
        truth = {e: len(simulator.district("counts").truth_state(e)) for e in ENTITIES}
    created = {
        e: sum(n for (ent, _, op), n in rebuilt.events.items() if ent == e and op == "CREATED")
        for e in ENTITIES
    }
    assert created == truth
    assert {e: checkpoints[f"counts/{e}"]["record_count"] for e in ENTITIES} == truth
    assert {e: checkpoints[f"counts/{e}"]["created_count"] for e in ENTITIES} == created
