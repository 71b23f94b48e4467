"""Shard ownership through the consumer group (issue 12): in-process daemons against the real
broker share the shards, each district is polled by exactly one of them, a leaving member's
shards move, and a fenced shard is closed while the daemon stays and rejoins.

The multi-process scenarios (SIGKILL, SIGSTOP, a fourth instance under continuous change) are
``tests/test_scale_out.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from producer.config import Config
from producer.daemon import Daemon
from producer.kafka.options import producer_options
from producer.kafka.shards import shard_of, transactional_id
from producer.kafka.writer import TransactionalWriter
from producer.simulator import DistrictSpec, Simulator
from producer.state import StateStore
from tests.checker import rebuild
from tests.conftest import ServeSimulator
from tests.harness import make_config
from tests.reliability_helpers import eventually, http_get

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SHARDS = 4
DISTRICTS = [f"g{i}" for i in range(8)]


@pytest.fixture
async def sim(serve_simulator: ServeSimulator) -> Simulator:
    """Eight tiny districts, spread over the four shards."""
    assert {shard_of(d, SHARDS) for d in DISTRICTS} == set(range(SHARDS))
    return await serve_simulator(
        [DistrictSpec(id=d, version="1.2", size="tiny", seed=i) for i, d in enumerate(DISTRICTS)]
    )


def _config(sim: Simulator, bootstrap: str, prefix: str, state_dir: Path) -> Config:
    return make_config(
        sim,
        bootstrap=bootstrap,
        prefix=prefix,
        state_dir=state_dir,
        sync={"poll_interval": "1s", "shutdown_grace": "2s"},
        kafka={"shards": SHARDS, "session_timeout": "6s", "heartbeat_interval": "1s"},
    )


class Running:
    """Daemons run as tasks of this test's event loop; stopped (gracefully) at the end."""

    def __init__(self) -> None:
        self.tasks: dict[Daemon, asyncio.Task[int]] = {}

    def start(self, config: Config) -> Daemon:
        daemon = Daemon(config)
        self.tasks[daemon] = asyncio.create_task(daemon.run(install_signals=False))
        return daemon

    async def stop(self, daemon: Daemon) -> int:
        daemon.stop()
        async with asyncio.timeout(60):
            return await self.tasks.pop(daemon)

    async def close(self) -> None:
        for daemon in list(self.tasks):
            with contextlib.suppress(Exception):
                await self.stop(daemon)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    """Starts daemons in this loop and stops whatever is left at the end."""
    runs = Running()
    try:
        yield runs
    finally:
        await runs.close()


def owned(daemon: Daemon) -> set[int]:
    return set(daemon.service.shards)


def succeeded(daemon: Daemon) -> set[str]:
    """Districts this daemon completed a poll of (its own metrics say so)."""
    text = daemon.metrics.render().decode()
    return {
        d for d in DISTRICTS if f'oneroster_last_success_timestamp_seconds{{district="{d}"' in text
    }


def metric(daemon: Daemon, name: str) -> float:
    for line in daemon.metrics.render().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in the metrics")


async def _ready(daemon: Daemon) -> bool:
    assert daemon.http is not None
    status, _ = await http_get(daemon.http.url + "/readyz")
    return status == 200


async def test_two_daemons_share_the_shards_and_each_district_is_polled_by_one(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path, running: Running
) -> None:
    """A lone daemon owns all four shards; a second one joins and the group splits them (no
    shard twice, none left over); each daemon polls exactly its shards' districts and every
    district completes polls on exactly one of them; metrics, /readyz and the status JSON say
    which shards each owns; when the second leaves, its shards move back. The stream stays
    exactly once."""
    first = running.start(_config(sim, kafka_bootstrap, unique_prefix, tmp_path / "a"))
    await eventually(lambda: owned(first) == set(range(SHARDS)), within=90, interval=0.2)
    await eventually(lambda: _ready(first), within=30, interval=0.2)
    await eventually(lambda: succeeded(first) == set(DISTRICTS), within=90, interval=0.2)

    second = running.start(_config(sim, kafka_bootstrap, unique_prefix, tmp_path / "b"))

    def split() -> bool:
        a, b = owned(first), owned(second)
        return bool(a) and bool(b) and not a & b and a | b == set(range(SHARDS))

    await eventually(
        split, within=90, interval=0.2, message=lambda: f"{owned(first)} {owned(second)}"
    )
    await eventually(lambda: _ready(second), within=30, interval=0.2)
    for daemon in (first, second):
        mine = {d for d in DISTRICTS if shard_of(d, SHARDS) in owned(daemon)}
        assert set(daemon.polled_districts) == mine
        assert metric(daemon, "oneroster_shards_owned") == len(owned(daemon))
        assert metric(daemon, "oneroster_rebalances_total") >= 1
    assert metric(first, "oneroster_rebalances_total") >= 2  # alone, then with the second
    # Every district completes polls on the second's side only if it is in its shards.
    await eventually(
        lambda: succeeded(second) == set(second.polled_districts), within=60, interval=0.2
    )
    assert not succeeded(second) - set(second.polled_districts)

    status: dict[str, Any] = await second.status()
    assert status["instance"]["shards"] == sorted(owned(second))
    assert status["instance"]["shard_count"] == SHARDS
    rows = {row["id"]: row for row in status["districts"]}
    assert {d: rows[d]["shard"] for d in DISTRICTS} == {d: shard_of(d, SHARDS) for d in DISTRICTS}
    assert {d for d in DISTRICTS if rows[d]["owned"]} == set(second.polled_districts)

    assert await running.stop(second) == 0
    await eventually(lambda: owned(first) == set(range(SHARDS)), within=60, interval=0.2)
    await eventually(lambda: set(first.polled_districts) == set(DISTRICTS), within=30, interval=0.2)
    assert await running.stop(first) == 0

    rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
    assert rebuilt.violations == []
    for d in DISTRICTS:
        truth = sim.district(d).truth_state("users")
        assert rebuilt.keys("users", d) == set(truth)


async def test_a_fenced_shard_is_closed_and_the_daemon_rejoins(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path, running: Running
) -> None:
    """Another producer takes one shard's transactional id (as a new owner would): the
    daemon's next commit there is fenced, it closes that shard only (the others keep polling),
    does not exit, rejoins the group and, given the shard again, starts it anew (fencing the
    other producer in turn) and polls its districts again."""
    config = _config(sim, kafka_bootstrap, unique_prefix, tmp_path / "a")
    daemon = running.start(config)
    await eventually(lambda: owned(daemon) == set(range(SHARDS)), within=90, interval=0.2)
    await eventually(lambda: succeeded(daemon) == set(DISTRICTS), within=90, interval=0.2)

    victim = shard_of(DISTRICTS[0], SHARDS)
    store = StateStore(tmp_path / "intruder.sqlite")
    intruder = TransactionalWriter(
        producer_config=producer_options(config.kafka),
        transactional_id=transactional_id(config.kafka.client_id, victim),
        state_topic=f"{unique_prefix}.state",
        checkpoints_topic=f"{unique_prefix}.checkpoints",
        shards=SHARDS,
        store=store,
    )
    await intruder.start()
    try:
        sim.advance_clock(60)
        district = sim.district(DISTRICTS[0])
        district.update("users", sorted(district.truth_state("users"))[0], givenName="Fenced")
        await eventually(lambda: victim not in owned(daemon), within=60, interval=0.1)
        assert owned(daemon) == set(range(SHARDS)) - {victim}
        assert not daemon.shards_restored()  # /readyz: a shard it should own is closed
        assert not set(daemon.polled_districts) & {
            d for d in DISTRICTS if shard_of(d, SHARDS) == victim
        }
        # It rejoins (a session timeout later at most) and takes the shard back.
        await eventually(lambda: owned(daemon) == set(range(SHARDS)), within=60, interval=0.2)
        await eventually(lambda: DISTRICTS[0] in daemon.polled_districts, within=30, interval=0.2)
    finally:
        await intruder.close()
        store.close()
    assert not running.tasks[daemon].done()  # it never exited

    async def committed_after_rejoin() -> bool:
        rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
        return any(r.get("givenName") == "Fenced" for r in rebuilt.state["users"].values())

    await eventually(committed_after_rejoin, within=60)
    assert await running.stop(daemon) == 0
    rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
    assert rebuilt.violations == []
