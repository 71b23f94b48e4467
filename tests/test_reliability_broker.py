"""Broker fault: the Kafka broker is SIGKILLed mid-sync and restarted on its data.

This test starts a broker of its own (``scripts/kafka`` on a free port with a data directory
under the test's tmp dir), never the shared one. The daemon runs as a subprocess; while the
broker is down ``/readyz`` must answer 503 naming the broker, the daemon must stay up, and once
the broker is back the daemon must finish the snapshot and a delta round with nothing lost,
duplicated or spurious (independent checker against the simulator's truth).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from producer.simulator import DistrictSpec, Faults, Simulator
from tests.checker import (
    TruthSnapshot,
    compare_with_truth,
    rebuild,
    state_mismatches,
    truth_snapshot,
)
from tests.harness import config_document, free_port, write_config
from tests.reliability_helpers import DaemonProcess, PrivateBroker, eventually, http_get

pytestmark = pytest.mark.integration


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[PrivateBroker]:
    """A private single-node Kafka, stopped (and its data removed) afterwards."""
    own = PrivateBroker(free_port(pair=True), tmp_path / "kafka")
    await own.start()
    try:
        yield own
    finally:
        await own.stop()


async def ready_status(url: str) -> tuple[int, dict[str, object]]:
    try:
        status, body = await http_get(f"{url}/readyz", within=10)
    except (OSError, TimeoutError) as exc:
        return 0, {"error": repr(exc)}
    return status, json.loads(body)


async def caught_up(bootstrap: str, prefix: str, sim: Simulator) -> bool:
    rebuilt = await rebuild(bootstrap, prefix)
    return not state_mismatches(rebuilt, truth_snapshot(sim)) and not rebuilt.violations


@pytest.mark.timeout(420)
async def test_broker_killed_mid_sync_then_restarted_loses_and_duplicates_nothing(
    broker: PrivateBroker, unique_prefix: str, tmp_path: Path
) -> None:
    """SIGKILL of the broker during the snapshot: /readyz answers 503 with the broker check
    failing while it is down and the daemon keeps running; after ``scripts/kafka start --keep``
    /readyz is 200 again and the snapshot completes. Then a delta round meets a second outage
    in which the daemon is SIGKILLed too and restarted while the broker is down (it retries its
    start, not ready). In the end the committed events match the truth exactly once."""
    slow = Faults(rate=1.0, kinds=("latency",), latency=0.05, seed=1)
    sim = Simulator([DistrictSpec(id="brk", version="1.2", size=40, seed=61, faults=slow)])
    async with sim.serve():
        doc = config_document(
            sim,
            bootstrap=broker.bootstrap,
            prefix=unique_prefix,
            state_dir=tmp_path / "state",
            sync={"batch_size": 5, "full_sync_interval": "5s"},
            district_overrides={"page_size": 10, "concurrency": 2},
        )
        config = write_config(tmp_path / "broker.toml", doc)
        daemon = DaemonProcess(config, tmp_path / "logs")
        snapshots: list[TruthSnapshot] = []
        try:
            daemon.start()
            url = await daemon.http_url()
            await eventually(
                lambda: _status_is(url, 200), within=90, message="/readyz never became 200"
            )
            await daemon.wait_log("poll.started", within=60)
            await asyncio.sleep(0.5)
            assert mid_poll(daemon), "the snapshot poll had already ended; no mid-sync kill"
            await broker.kill()
            down = await eventually(
                lambda: _status_is(url, 503), within=60, message="/readyz stayed 200"
            )
            assert "broker" in down["failing"], down
            await asyncio.sleep(3)  # the daemon keeps retrying against a dead broker
            assert daemon.running(), daemon.err_path.read_text(errors="replace")[-3000:]
            still_down = await ready_status(url)
            assert still_down[0] == 503, still_down

            await broker.start(keep=True)
            await eventually(
                lambda: _status_is(url, 200), within=120, message="/readyz not 200 after restart"
            )
            await eventually(
                lambda: caught_up(broker.bootstrap, unique_prefix, sim),
                within=150,
                interval=2,
                message="the snapshot did not complete after the broker came back",
            )
            snapshots.append(truth_snapshot(sim))

            # Round 2: changes, then the broker dies again, and so does the daemon; the daemon
            # is restarted while the broker is still down (it must wait, not give up).
            sim.advance_clock(10)
            d = sim.district("brk")
            for sid in sorted(d.truth_state("users"))[:5]:
                d.update("users", sid, familyName="AfterOutage")
            d.create("users", {"givenName": "PostOutage"})
            d.mark_tobedeleted("users", sorted(d.truth_state("users"))[7])
            await broker.kill()
            await eventually(lambda: _status_is(url, 503), within=60, message="/readyz stayed 200")
            daemon.kill()
            daemon.start()
            url = await daemon.http_url()
            await daemon.wait_log("daemon.start_retry", within=60)
            starting = await ready_status(url)
            assert starting[0] == 503, starting
            await broker.start(keep=True)
            await eventually(
                lambda: _status_is(url, 200), within=120, message="/readyz not 200 after restart"
            )
            await eventually(
                lambda: caught_up(broker.bootstrap, unique_prefix, sim),
                within=120,
                interval=2,
                message="the delta round did not complete after the second outage",
            )
            snapshots.append(truth_snapshot(sim))
            assert await daemon.terminate() == 0
        finally:
            daemon.close()
        rebuilt = await rebuild(broker.bootstrap, unique_prefix)
    result = compare_with_truth(rebuilt, snapshots)
    assert result.clean, result.describe()
    assert result.expected == result.observed > 0


def mid_poll(daemon: DaemonProcess) -> bool:
    """Whether the daemon's last poll line is a start (a poll is in progress)."""
    events = [line.get("event") for line in daemon.lines()]
    polls = [e for e in events if str(e).startswith("poll.")]
    return bool(polls) and polls[-1] == "poll.started"


async def _status_is(url: str, wanted: int) -> dict[str, object] | None:
    status, body = await ready_status(url)
    return body if status == wanted else None
