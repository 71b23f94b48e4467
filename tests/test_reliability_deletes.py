"""Mass deletes through the CLI: the guard holds them, alerts, and ``confirm-deletes`` applies
them exactly once; a listing cut short by errors deletes nothing and leaves the cursor alone.

Everything runs as the operator would run it: ``oneroster-cdc sync`` for the snapshot, the
daemon (``run``) whose scheduled full sync meets the disappearance, its ``/metrics``, and
``oneroster-cdc confirm-deletes`` as subprocesses; the simulator answers from this process.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from producer.simulator import DistrictSpec, Faults, Simulator
from producer.simulator.faults import FaultPlan
from tests.checker import observed_changes, read_checkpoints, rebuild, truth_snapshot
from tests.checker import state_mismatches as mismatches
from tests.conftest import ServeSimulator
from tests.harness import config_document, write_config
from tests.reliability_helpers import DaemonProcess, eventually, http_get, run_cli

pytestmark = pytest.mark.integration

DISTRICT = "mass"


@pytest.fixture
async def sim(serve_simulator: ServeSimulator) -> Simulator:
    """One 1.2 district of 20 students (44 users)."""
    return await serve_simulator([DistrictSpec(id=DISTRICT, version="1.2", size=20, seed=51)])


def config_for(sim: Simulator, bootstrap: str, prefix: str, tmp_path: Path) -> Path:
    doc = config_document(
        sim,
        bootstrap=bootstrap,
        prefix=prefix,
        state_dir=tmp_path / "state",
        sync={"full_sync_interval": "3s", "batch_size": 10},
        district_overrides={"entities": ["users"], "page_size": 5, "max_retries": 2},
    )
    return write_config(tmp_path / "deletes.toml", doc)


@pytest.mark.parametrize(
    "share", [pytest.param(1.0, id="empty-listing"), pytest.param(0.5, id="half-disappear")]
)
@pytest.mark.timeout(240)
async def test_mass_disappearance_is_held_alerted_then_confirmed_exactly_once(
    share: float, sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """All users (an empty listing) or half of them vanish: the daemon's full sync deletes
    nothing, logs ``sync.mass_delete_held`` and counts ``oneroster_mass_delete_held_total``;
    ``confirm-deletes`` then emits one DELETED per vanished user, and a second
    ``confirm-deletes`` emits nothing more."""
    config = config_for(sim, kafka_bootstrap, unique_prefix, tmp_path)
    logs = tmp_path / "logs"
    snapshot = await run_cli(config, "sync", "--district", DISTRICT, logs=logs)
    assert snapshot.returncode == 0, snapshot.stderr[-3000:]
    d = sim.district(DISTRICT)
    users = sorted(d.truth_state("users"))
    gone = users[: int(len(users) * share)]
    for sid in gone:
        d.hard_delete("users", sid)

    daemon = DaemonProcess(config, logs)
    try:
        daemon.start()
        url = await daemon.http_url()
        held = await daemon.wait_log("sync.mass_delete_held", within=90)
        metric = f'oneroster_mass_delete_held_total{{district="{DISTRICT}",entity="users"}}'

        async def alert_counted() -> bool:
            status, body = await http_get(f"{url}/metrics")
            found = re.search(re.escape(metric) + r" (\d+(?:\.\d+)?)", body)
            return status == 200 and found is not None and float(found.group(1)) >= 1

        await eventually(alert_counted, within=30, message=f"{metric} not >= 1 on /metrics")
        assert await daemon.terminate() == 0
    finally:
        daemon.close()
    assert held["missing"] == len(gone)
    assert held["total"] == len(users)
    assert f"confirm-deletes --district {DISTRICT} --entity users" in held["action"]
    before = await rebuild(kafka_bootstrap, unique_prefix)
    assert before.ops["DELETED"] == 0
    assert (await read_checkpoints(kafka_bootstrap, unique_prefix))[f"{DISTRICT}/users"][
        "held_deletes"
    ] == len(gone)

    confirmed = await run_cli(
        config, "confirm-deletes", "--district", DISTRICT, "--entity", "users", logs=logs
    )
    assert confirmed.returncode == 0, confirmed.stderr[-3000:]
    assert f"{len(gone)} delete(s) were held; {len(gone)} applied" in confirmed.stdout
    again = await run_cli(
        config, "confirm-deletes", "--district", DISTRICT, "--entity", "users", logs=logs
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 applied" in again.stdout

    after = await rebuild(kafka_bootstrap, unique_prefix)
    deletes = {c: n for c, n in observed_changes(after).items() if c.op == "DELETED"}
    assert set(deletes.values()) == {1}
    assert sorted(c.key for c in deletes) == sorted(f"{DISTRICT}/{s}" for s in gone)
    assert after.violations == []
    assert mismatches(after, truth_snapshot(sim, ("users",))) == []
    checkpoint = (await read_checkpoints(kafka_bootstrap, unique_prefix))[f"{DISTRICT}/users"]
    assert checkpoint["held_deletes"] == 0


class _FailAfter(FaultPlan):
    """Answers ``ok`` data requests normally, then every one with a 500."""

    def __init__(self, ok: int) -> None:
        super().__init__(Faults(kinds=("server_error",)))
        self.ok = ok

    def draw(self) -> str | None:
        if self.ok > 0:
            self.ok -= 1
            return None
        self.note("server_error")
        return "server_error"


@pytest.mark.timeout(180)
async def test_listing_cut_short_by_errors_deletes_nothing_and_keeps_the_cursor(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A full sync whose users listing starts answering 500 after three pages fails (exit 1),
    emits no DELETED, holds no delete and leaves the checkpoint (cursor, last full sync) as
    it was; once the server recovers a full sync deletes nothing either."""
    config = config_for(sim, kafka_bootstrap, unique_prefix, tmp_path)
    logs = tmp_path / "logs"
    snapshot = await run_cli(config, "sync", "--district", DISTRICT, logs=logs)
    assert snapshot.returncode == 0, snapshot.stderr[-3000:]
    checkpoint = (await read_checkpoints(kafka_bootstrap, unique_prefix))[f"{DISTRICT}/users"]

    d = sim.district(DISTRICT)
    d.plan = _FailAfter(ok=3)
    failed = await run_cli(config, "sync", "--district", DISTRICT, "--full", logs=logs)
    assert d.plan.fired.get("server_error", 0) > 0
    assert failed.returncode == 1
    assert "sync.district_failed" in failed.stderr
    assert f'"district":"{DISTRICT}"' in failed.stderr
    assert (await rebuild(kafka_bootstrap, unique_prefix)).ops["DELETED"] == 0
    assert (await read_checkpoints(kafka_bootstrap, unique_prefix))[
        f"{DISTRICT}/users"
    ] == checkpoint

    d.set_faults(Faults())
    recovered = await run_cli(config, "sync", "--district", DISTRICT, "--full", logs=logs)
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    final = await rebuild(kafka_bootstrap, unique_prefix)
    assert final.ops["DELETED"] == 0
    assert final.violations == []
    assert mismatches(final, truth_snapshot(sim, ("users",))) == []
    cp = (await read_checkpoints(kafka_bootstrap, unique_prefix))[f"{DISTRICT}/users"]
    assert cp["held_deletes"] == 0
    assert cp["last_full_sync_at"] != checkpoint["last_full_sync_at"]


@pytest.mark.timeout(240)
async def test_confirm_deletes_is_refused_while_the_daemon_runs_then_applies_them_once(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """An operator tries to confirm held deletes while the daemon runs: the command refuses
    (exit 1, naming the running instance of the group) and writes nothing, and the daemon goes
    on. Once the daemon is stopped the deletes are applied once, and the restarted daemon emits
    nothing more: no duplicate DELETED and no re-created record."""
    config = config_for(sim, kafka_bootstrap, unique_prefix, tmp_path)
    logs = tmp_path / "logs"
    snapshot = await run_cli(config, "sync", "--district", DISTRICT, logs=logs)
    assert snapshot.returncode == 0, snapshot.stderr[-3000:]
    d = sim.district(DISTRICT)
    gone = sorted(d.truth_state("users"))[::2]
    for sid in gone:
        d.hard_delete("users", sid)

    daemon = DaemonProcess(config, logs)
    try:
        daemon.start()
        await daemon.wait_log("sync.mass_delete_held", within=90)
        before = await rebuild(kafka_bootstrap, unique_prefix)
        refused = await run_cli(
            config, "confirm-deletes", "--district", DISTRICT, "--entity", "users", logs=logs
        )
        assert refused.returncode == 1, refused.stderr[-3000:]
        assert "running" in refused.stderr
        assert unique_prefix in refused.stderr  # the group, named after the client id
        assert daemon.running()
        assert (await rebuild(kafka_bootstrap, unique_prefix)).ops == before.ops
        assert await daemon.terminate() == 0
        confirmed = await run_cli(
            config, "confirm-deletes", "--district", DISTRICT, "--entity", "users", logs=logs
        )
        assert confirmed.returncode == 0, confirmed.stderr[-3000:]
        assert f"{len(gone)} applied" in confirmed.stdout
        daemon.start()
        await daemon.wait_log("poll.finished", within=90, where=lambda x: x.get("full") is True)
        assert await daemon.terminate() == 0
    finally:
        daemon.close()
    after = await rebuild(kafka_bootstrap, unique_prefix)
    deletes = {c: n for c, n in observed_changes(after).items() if c.op == "DELETED"}
    assert set(deletes.values()) == {1}
    assert sorted(c.key for c in deletes) == sorted(f"{DISTRICT}/{s}" for s in gone)
    assert after.ops["CREATED"] == len(d.truth_state("users")) + len(gone)
    assert after.violations == []
    assert mismatches(after, truth_snapshot(sim, ("users",))) == []
