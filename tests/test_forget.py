"""``oneroster-cdc forget --district ID``: a district's records and checkpoints are erased from
the stream's state (DELETED events and tombstones, in transactions), and compaction leaves
nothing of it; other districts are untouched; a district the config still lists is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from producer.cli import _forget
from producer.config import Config
from producer.daemon import Daemon
from producer.errors import ConfigError, GroupLive
from producer.service import Service
from producer.simulator import DistrictSpec, Simulator
from tests.checker import ENTITIES, read_all, read_checkpoints, rebuild
from tests.harness import make_config
from tests.reliability_helpers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """Two tiny districts on loopback: f1 is forgotten, f2 stays."""
    simulator = Simulator(
        [
            DistrictSpec(id="f1", version="1.2", size="tiny", seed=11),
            DistrictSpec(id="f2", version="1.1", size="tiny", seed=12),
        ]
    )
    async with simulator.serve():
        yield simulator


def configs(
    sim: Simulator, bootstrap: str, prefix: str, state_dir: Path, **kafka: str
) -> tuple[Config, Config]:
    """The config listing both districts, and the one after f1 was removed from it."""
    both = make_config(sim, bootstrap=bootstrap, prefix=prefix, state_dir=state_dir)
    if kafka:
        both = both.model_copy(
            update={"kafka": both.kafka.model_copy(update=kafka)}  # test-only tuning
        )
    return both, both.model_copy(update={"districts": both.districts[1:]})


async def state_latest(bootstrap: str, prefix: str) -> dict[str, bytes | None]:
    """The latest committed value per key of the state topic, as the log holds it now."""
    latest: dict[str, bytes | None] = {}
    for key, value, _ in await read_all(bootstrap, f"{prefix}.state"):
        assert key is not None
        latest[key.decode()] = value
    return latest


async def compact_fast(bootstrap: str, prefix: str) -> None:
    """Make the state topic's cleaner act within seconds: small segments, any dirt cleanable,
    tombstones dropped once cleaned."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    f"{prefix}.state",
                    configs={
                        "cleanup.policy": "compact",
                        "segment.ms": "200",
                        "min.cleanable.dirty.ratio": "0.001",
                        "delete.retention.ms": "0",
                        "min.compaction.lag.ms": "0",
                        "max.message.bytes": str(8 * 1024 * 1024),
                    },
                )
            ]
        )
    finally:
        await admin.close()


async def test_forget_erases_a_district_and_compaction_leaves_nothing_of_it(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """After f1 and f2 are synced and f1 is removed from the config, ``forget --district f1``
    writes exactly one DELETED event (delete_reason null) and tombstone per f1 record, state
    tombstones for every f1 key and tombstones for f1's checkpoints, with no protocol violation;
    the local store and a cold restore hold no f1 key; f2 is untouched; and once the cleaner has
    run, the state topic holds no record of f1 at all."""
    both, without = configs(sim, kafka_bootstrap, unique_prefix, tmp_path / "state")
    async with Service(both) as service:
        await service.sync("f1")
        await service.sync("f2")
    await compact_fast(kafka_bootstrap, unique_prefix)
    before = await rebuild(kafka_bootstrap, unique_prefix)
    f1_keys = {e: before.keys(e, "f1") for e in ENTITIES}
    assert sum(len(k) for k in f1_keys.values()) > 20

    assert await _forget(without, "f1", force=False) == 0

    after = await rebuild(kafka_bootstrap, unique_prefix)
    assert after.violations == []
    for entity in ENTITIES:
        assert after.keys(entity, "f1") == set(), entity
        assert after.keys(entity, "f2") == set(sim.district("f2").truth_state(entity)), entity
        for sid in f1_keys[entity]:
            assert after.events[(entity, f"f1/{sid}", "DELETED")] == 1
    forgotten = [e for e in after.envelopes if e["op"] == "DELETED"]
    assert len(forgotten) == sum(len(k) for k in f1_keys.values())
    assert {e["district_id"] for e in forgotten} == {"f1"}
    assert {e["source"]["delete_reason"] for e in forgotten} == {None}
    assert all(e["before"] is not None and e["after"] is None for e in forgotten)
    checkpoints = await read_checkpoints(kafka_bootstrap, unique_prefix)
    assert not [k for k in checkpoints if k.startswith("f1/")]
    assert len([k for k in checkpoints if k.startswith("f2/")]) == len(ENTITIES)
    latest = await state_latest(kafka_bootstrap, unique_prefix)
    assert {k: v for k, v in latest.items() if "/f1/" in k and v is not None} == {}

    async with Service(without) as service:  # warm: the store applied the tombstones
        assert service.state_keys() == sum(len(after.keys(e, "f2")) for e in ENTITIES)
        assert not [c for c in service.checkpoints() if c.district_id == "f1"]
    cold, _ = configs(sim, kafka_bootstrap, unique_prefix, tmp_path / "cold")
    async with Service(cold.model_copy(update={"districts": cold.districts[1:]})) as service:
        assert all(service.store_for("f1").count(e, "f1") == 0 for e in ENTITIES)
        assert service.state_keys() == sum(len(after.keys(e, "f2")) for e in ENTITIES)

    # Compaction: new f2 writes roll the segments holding f1's records and tombstones (in every
    # partition); the cleaner then drops the records and, on a later pass (their delete
    # retention being 0), the tombstones.
    f2 = sim.district("f2")
    async with Service(without) as service:
        for attempt in range(60):
            sim.advance_clock(60)
            for sid in sorted(f2.truth_state("users")):
                f2.update("users", sid, givenName=f"Rolled{attempt}")
            await service.sync("f2", entities=["users"])
            keys = [k for k, _, _ in await read_all(kafka_bootstrap, f"{unique_prefix}.state")]
            if not any(k is not None and b"/f1/" in k for k in keys):
                break
            await asyncio.sleep(1)
        else:
            pytest.fail("the state topic still holds records of f1 after compaction")
    assert any(k is not None and b"/f2/" in k for k in keys)


async def test_forget_refuses_a_district_the_config_still_lists(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """With f1 still in the config, ``forget`` is a config error on ``districts[0]`` that says
    the next poll would snapshot it again, and writes nothing; ``--force`` forgets it anyway."""
    both, _ = configs(sim, kafka_bootstrap, unique_prefix, tmp_path / "state")
    async with Service(both) as service:
        await service.sync("f1", entities=["orgs", "users"])
    events = len(await read_all(kafka_bootstrap, f"{unique_prefix}.users"))
    with pytest.raises(ConfigError) as caught:
        await _forget(both, "f1", force=False)
    assert caught.value.key == "districts[0]"
    assert "snapshot it again" in str(caught.value)
    assert len(await read_all(kafka_bootstrap, f"{unique_prefix}.users")) == events
    assert await _forget(both, "f1", force=True) == 0
    assert (await rebuild(kafka_bootstrap, unique_prefix)).keys("users", "f1") == set()


async def test_forget_is_refused_while_a_daemon_runs_and_works_once_it_stopped(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """While a daemon of the deployment runs (a live member of the group ``<client_id>``),
    ``forget`` refuses with ``GroupLive`` naming it and writes nothing; the daemon keeps its
    shards. Once it stopped, ``forget`` erases f1, and the daemon restarted without f1 emits
    nothing of it."""
    both, without = configs(sim, kafka_bootstrap, unique_prefix, tmp_path / "state")
    fast = both.model_copy(
        update={"sync": both.sync.model_copy(update={"poll_interval": 0.5, "jitter": 0.0})}
    )
    daemon = Daemon(fast)
    running = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await eventually(
            lambda: len({c.district_id for c in daemon.service.checkpoints()}) == 2, within=120
        )
        events = len(await read_all(kafka_bootstrap, f"{unique_prefix}.users"))
        with pytest.raises(GroupLive, match="forget"):
            await _forget(without, "f1", force=False)
        assert not running.done()
        assert sorted(daemon.service.shards) == list(range(both.kafka.shards))
        assert len(await read_all(kafka_bootstrap, f"{unique_prefix}.users")) >= events
    finally:
        daemon.stop()
        async with asyncio.timeout(60):
            code = await running
    assert code == 0
    assert await _forget(without, "f1", force=False) == 0
    deleted = (await rebuild(kafka_bootstrap, unique_prefix)).ops["DELETED"]
    assert deleted > 0
    sim.advance_clock(60)
    f1 = sim.district("f1")
    f1.update("users", sorted(f1.truth_state("users"))[0], givenName="AfterForget")
    again = Daemon(without)
    running = asyncio.create_task(again.run(install_signals=False))
    try:
        await eventually(lambda: again.polled_districts == ("f2",), within=120)

        async def polled_f2() -> bool:
            rows = (await again.status())["districts"]
            return any(r["id"] == "f2" and r["last_success_at"] for r in rows)

        await eventually(polled_f2, within=60)
    finally:
        again.stop()
        async with asyncio.timeout(60):
            assert await running == 0
    after = await rebuild(kafka_bootstrap, unique_prefix)
    assert after.ops["DELETED"] == deleted
    assert {e: after.keys(e, "f1") for e in ENTITIES} == {e: set() for e in ENTITIES}
