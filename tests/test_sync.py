"""End to end: simulator -> client -> normaliser -> differ -> transactional writer -> Kafka.

An independent checker (tests/checker.py) rebuilds the state from the committed event topics
and compares it with the simulator's ground truth.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from producer.checkpoints import Checkpoint
from producer.config import ClassLinkConfig
from producer.model import Secret
from producer.service import Service
from producer.simulator import DistrictSpec, Faults, Simulator
from tests.checker import ENTITIES, read_all, rebuild
from tests.conftest import ServeSimulator
from tests.harness import make_config

pytestmark = pytest.mark.integration


@pytest.fixture
async def sim(serve_simulator: ServeSimulator) -> Simulator:
    """A 1.2 (OAuth2) and a 1.1 (OAuth1) tiny district, served on loopback."""
    return await serve_simulator(
        [
            DistrictSpec(id="d12", version="1.2", size="tiny", seed=3),
            DistrictSpec(id="d11", version="1.1", size="tiny", seed=4),
        ]
    )


def truth_keys(sim: Simulator, district: str, entity: str) -> set[str]:
    return set(sim.district(district).truth_state(entity))


async def assert_matches_truth(bootstrap: str, prefix: str, sim: Simulator) -> None:
    """The rebuilt state equals the simulator's truth for every district and entity."""
    rebuilt = await rebuild(bootstrap, prefix)
    assert rebuilt.violations == []
    for d in sim.districts:
        for entity in ENTITIES:
            assert rebuilt.keys(entity, d.spec.id) == truth_keys(sim, d.spec.id, entity), entity


async def test_snapshot_deltas_and_full_sync_match_the_truth_exactly_once(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A snapshot, a delta with creates/updates/tobedeleted, an idle delta and a full sync
    that finds a hard delete: each truth change appears exactly once, and the rebuilt state
    equals the truth after every step."""
    config = make_config(sim, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path)
    d12 = sim.district("d12")
    async with Service(config) as service:
        for district in ("d12", "d11"):
            await service.sync(district)
        await assert_matches_truth(kafka_bootstrap, unique_prefix, sim)
        first = await rebuild(kafka_bootstrap, unique_prefix)
        initial = sum(len(truth_keys(sim, d, e)) for d in ("d12", "d11") for e in ENTITIES)
        assert first.ops == {"CREATED": initial}

        sim.advance_clock(60)
        users = sorted(truth_keys(sim, "d12", "users"))
        created = [d12.create("users", {"givenName": f"New{i}"})["sourcedId"] for i in range(2)]
        for sid in users[:2]:
            d12.update("users", sid, familyName="Renamed")
        d12.mark_tobedeleted("users", users[2])
        enrollment = sorted(truth_keys(sim, "d12", "enrollments"))[0]
        d12.hard_delete("enrollments", enrollment)

        results = await service.sync("d12")
        assert {r.mode for r in results} == {"DELTA"}
        after_delta = await rebuild(kafka_bootstrap, unique_prefix)
        assert after_delta.violations == []
        assert after_delta.ops - first.ops == {"CREATED": 2, "UPDATED": 2, "DELETED": 1}
        for sid in created:
            assert after_delta.events[("users", f"d12/{sid}", "CREATED")] == 1
        assert after_delta.record("users", "d12", users[0])["familyName"] == "Renamed"
        assert after_delta.keys("enrollments", "d12") - {enrollment} == truth_keys(
            sim, "d12", "enrollments"
        )

        checkpoints = f"{unique_prefix}.checkpoints"
        written = len(await read_all(kafka_bootstrap, checkpoints))
        await service.sync("d12")  # nothing changed: the overlap re-reads, nothing is emitted
        idle = await rebuild(kafka_bootstrap, unique_prefix)
        assert idle.ops == after_delta.ops
        # ... and an idle delta commits no checkpoint either (the last one is minutes old).
        assert len(await read_all(kafka_bootstrap, checkpoints)) == written

        results = await service.sync("d12", full=True)
        assert {r.mode for r in results} == {"FULL"}
        final = await rebuild(kafka_bootstrap, unique_prefix)
        assert final.ops - after_delta.ops == {"DELETED": 1}
        assert final.events[("enrollments", f"d12/{enrollment}", "DELETED")] == 1
        deletes = [
            e
            for e in final.envelopes
            if e["sourced_id"] == enrollment and e["district_id"] == "d12"
        ]
        assert deletes[-1]["source"]["delete_reason"] == "absent_from_full_sync"
    await assert_matches_truth(kafka_bootstrap, unique_prefix, sim)


async def test_restarts_warm_and_cold_emit_nothing_new(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """After a restart with the local store kept (warm) or lost (cold, rebuilt from the state
    topic), the same syncs produce no event at all; checkpoints survive the restart."""
    config = make_config(sim, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path)
    async with Service(config) as service:
        await service.sync("d12")
        cursors = {c.entity: c.cursor for c in service.checkpoints() if c.district_id == "d12"}
    before = await rebuild(kafka_bootstrap, unique_prefix)

    async with Service(config) as warm:
        assert {c.entity: c.cursor for c in warm.checkpoints()} == cursors
        assert all(r.mode == "DELTA" for r in await warm.sync("d12"))
        assert all(r.mode == "FULL" for r in await warm.sync("d12", full=True))
        keys = warm.state_keys()

    cold_config = make_config(
        sim, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path / "cold"
    )
    async with Service(cold_config) as cold:
        assert cold.state_keys() == keys > 0
        await cold.sync("d12", full=True)
    after = await rebuild(kafka_bootstrap, unique_prefix)
    assert after.ops == before.ops
    assert after.violations == []


async def test_interrupted_snapshot_resumes_exactly_once(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A snapshot cancelled mid-way (after some batches committed, with one open) and redone by
    a new instance yields every record exactly once and nothing spurious."""
    simulator = Simulator([DistrictSpec(id="big", version="1.2", size=200, seed=5)])
    async with simulator.serve():
        config = make_config(
            simulator,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            state_dir=tmp_path,
            sync={"batch_size": 50},
        )
        async with Service(config) as service:
            task = asyncio.create_task(service.sync("big"))
            while service.state_keys() < 300:  # noqa: ASYNC110 - polling a sync store, no event to wait on
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            partial = service.state_keys()
        async with Service(config) as again:
            await again.sync("big")
        rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
        assert rebuilt.violations == []
        truth = sum(len(simulator.district("big").truth_state(e)) for e in ENTITIES)
        assert rebuilt.ops == {"CREATED": truth}
        assert partial < truth


async def test_mass_delete_guard_holds_then_confirm_applies_once(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """Half the users vanish: the full sync deletes nothing and records the held count; the
    confirmed pass deletes each exactly once; a further full sync deletes nothing more."""
    config = make_config(sim, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path)
    d12 = sim.district("d12")
    async with Service(config) as service:
        await service.sync("d12")
        users = sorted(truth_keys(sim, "d12", "users"))
        gone = users[: len(users) // 2]
        for sid in gone:
            d12.hard_delete("users", sid)
        results = await service.sync("d12", full=True, entities=["users"])
        assert results[0].held_deletes == len(gone)
        assert results[0].deleted == 0
        cp: Checkpoint = service.checkpoint("d12", "users")
        assert cp.held_deletes == len(gone)
        assert (await rebuild(kafka_bootstrap, unique_prefix)).ops["DELETED"] == 0
        metrics = service.metrics.render().decode()
        assert 'oneroster_mass_delete_held_total{district="d12",entity="users"} 1.0' in metrics

        confirmed = await service.sync("d12", entities=["users"], confirm_deletes=True)
        assert confirmed[0].deleted == len(gone)
        assert service.checkpoint("d12", "users").held_deletes == 0
        await service.sync("d12", full=True, entities=["users"])
    rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
    assert rebuilt.ops["DELETED"] == len(gone)
    assert rebuilt.violations == []
    assert rebuilt.keys("users", "d12") == truth_keys(sim, "d12", "users")


@pytest.mark.parametrize("kind", ["filter_rejected", "filter_ignored"])
async def test_sources_without_delta_filter_fall_back_to_full_listings(
    kind: str, sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A server that rejects (400) or silently ignores the dateLastModified filter still gets
    every change exactly once; ignoring it marks the checkpoint delta_supported = False."""
    config = make_config(sim, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path)
    d12 = sim.district("d12")
    async with Service(config) as service:
        await service.sync("d12")
        sim.set_faults("d12", Faults.of([kind]))
        sim.advance_clock(30)
        sid = sorted(truth_keys(sim, "d12", "users"))[0]
        d12.update("users", sid, familyName="Changed")
        await service.sync("d12")
        assert service.checkpoint("d12", "users").delta_supported is False
        results = await service.sync("d12")
        assert {r.mode for r in results} == {"FULL"}
    rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
    assert rebuilt.violations == []
    assert rebuilt.events[("users", f"d12/{sid}", "UPDATED")] == 1
    assert rebuilt.ops["UPDATED"] == 1


@pytest.mark.parametrize("access", ["proxy", "direct"])
async def test_classlink_discovered_districts_sync_like_static_ones(
    access: str, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """Districts discovered through ClassLink (proxy bearer or direct OAuth 1.0a) are synced
    under ``classlink-<tenant_id>``; a disabled tenant is not."""
    simulator = Simulator(
        [
            DistrictSpec(id="t1", version="1.1", size="tiny", seed=21),
            DistrictSpec(id="t2", version="1.1", size="tiny", seed=22, enabled=False),
        ],
        classlink_api_key="cl-key",
    )
    async with simulator.serve() as root:
        base = make_config(
            simulator, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path
        )
        config = base.model_copy(
            update={
                "districts": (),
                "classlink": ClassLinkConfig.model_validate(
                    {"api_key": Secret("cl-key"), "host": root, "access": access}
                ),
            }
        )
        async with Service(config) as service:
            assert config.classlink is not None
            ids = await service.refresh_discovery(config.classlink)
            assert len(ids) == 1
            assert ids[0].startswith("classlink-")
            results = await service.sync(ids[0])
            assert {r.mode for r in results} == {"FULL"}
        rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
        truth = simulator.district("t1").truth_state("users")
        assert rebuilt.keys("users", ids[0]) == set(truth)
        assert rebuilt.violations == []
