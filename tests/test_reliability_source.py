"""Source faults and paging under change, end to end against the real broker.

* Faults: the simulator answers ~15% of requests with a 429 (Retry-After 1 s), a 5xx, a hang
  longer than the client's timeout, a connection reset mid-body, truncated JSON or an expired
  token. The same scenario is run without faults on an identical simulator (frozen clock, same
  seeds, same mutations); the committed change streams and final states must be equal, and both
  must match the simulator's truth.
* Paging under change: records are created and hard-deleted while a full listing pages
  (``shift_offsets`` faults, and a mutation made between two pages). A listing that completes
  must not miss a record that existed throughout it, and no delete may be emitted for a record
  that still exists; once the shifting stops a full sync converges to the truth.

The producer runs in-process here (``Service``): what is under test is the client, the sync
engine and the writer, not the process (test_reliability_crash covers that).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from producer.errors import CdcError
from producer.metrics import Metrics, MetricsObserver
from producer.protocols import ClientEvent, PageFetched
from producer.service import Service
from producer.simulator import DistrictSpec, Faults, Simulator
from tests.checker import (
    Rebuilt,
    TruthSnapshot,
    compare_with_truth,
    observed_changes,
    rebuild,
    state_mismatches,
    truth_snapshot,
)
from tests.harness import free_port, make_config

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
FAULT_KINDS = (
    "rate_limit",
    "server_error",
    "bad_gateway",
    "unavailable",
    "hang",
    "reset",
    "truncated_json",
    "token_expired",
)


def fault_sim(faults: Faults | None) -> Simulator:
    """Two districts (1.2 OAuth2 and 1.1 OAuth1) on a frozen clock, so two instances built
    with the same arguments hold the same data and stamp the same mutations identically."""
    none = Faults()
    return Simulator(
        [
            DistrictSpec(id="src12", version="1.2", size=30, seed=21, faults=faults or none),
            DistrictSpec(
                id="src11",
                version="1.1",
                size="tiny",
                seed=22,
                faults=Faults(
                    rate=faults.rate, kinds=faults.kinds, seed=faults.seed + 1, hang=faults.hang
                )
                if faults
                else none,
            ),
        ],
        start=START,
        frozen_clock=True,
    )


def mutate(sim: Simulator, round_no: int, *, hard: bool) -> None:
    """Deterministic changes (same on every simulator built by ``fault_sim``)."""
    rng = random.Random(round_no)
    sim.advance_clock(120)
    for district_id in ("src12", "src11"):
        d = sim.district(district_id)
        users = sorted(d.truth_state("users"))
        picked = rng.sample(users, 6)
        for sid in picked[:4]:
            d.update("users", sid, familyName=f"Fault{round_no}")
        d.mark_tobedeleted("users", picked[4])
        d.create("users", {"givenName": f"Made{round_no}"})
        if hard:
            for sid in rng.sample(sorted(d.truth_state("enrollments")), 2):
                d.hard_delete("enrollments", sid)


async def sync_until_done(
    service: Service, district_id: str, *, full: bool = False, attempts: int = 6
) -> int:
    """One pass, redone (as the daemon's scheduler would) until it succeeds; returns the
    number of failed attempts."""
    failures = 0
    for _ in range(attempts):
        try:
            await service.sync(district_id, full=full)
        except CdcError:
            failures += 1
            continue
        return failures
    raise AssertionError(f"{district_id}: {attempts} passes in a row failed")


async def scenario(
    sim: Simulator, bootstrap: str, prefix: str, state_dir: Path
) -> tuple[Rebuilt, list[TruthSnapshot], int]:
    """Snapshot, a delta round, then a round with hard deletes found by a full sync."""
    config = make_config(
        sim,
        bootstrap=bootstrap,
        prefix=prefix,
        state_dir=state_dir,
        sync={"batch_size": 25},
        district_overrides={"page_size": 5, "request_timeout": "1s", "max_retries": 6},
    )
    snapshots = []
    failures = 0
    async with Service(config) as service:
        for district_id in ("src12", "src11"):
            failures += await sync_until_done(service, district_id)
        snapshots.append(truth_snapshot(sim))
        mutate(sim, 1, hard=False)
        for district_id in ("src12", "src11"):
            failures += await sync_until_done(service, district_id)
        snapshots.append(truth_snapshot(sim))
        mutate(sim, 2, hard=True)
        for district_id in ("src12", "src11"):
            failures += await sync_until_done(service, district_id, full=True)
        snapshots.append(truth_snapshot(sim))
    return await rebuild(bootstrap, prefix), snapshots, failures


@pytest.mark.timeout(240)
async def test_source_faults_yield_the_same_stream_as_a_fault_free_run(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """429s, 5xx, hangs, resets, truncated JSON and expired tokens on ~15% of requests:
    the committed changes and final state equal those of a fault-free run of the same
    scenario, and both match the truth (0 lost, 0 duplicated, 0 spurious)."""
    faults = Faults(rate=0.15, kinds=FAULT_KINDS, seed=7, hang=3.0, retry_after=1)
    clean_sim, faulty_sim = fault_sim(None), fault_sim(faults)
    port = free_port()  # both on one port: records carry hrefs with the server's address
    async with clean_sim.serve(port=port):
        clean, clean_snaps, _ = await scenario(
            clean_sim, kafka_bootstrap, f"{unique_prefix}c", tmp_path / "clean"
        )
    async with faulty_sim.serve(port=port):
        faulty, faulty_snaps, failed_passes = await scenario(
            faulty_sim, kafka_bootstrap, f"{unique_prefix}f", tmp_path / "faulty"
        )
    fired: dict[str, int] = {}
    for d in faulty_sim.districts:
        for kind, n in d.plan.fired.items():
            fired[kind] = fired.get(kind, 0) + n
    assert {"rate_limit", "hang", "reset", "truncated_json", "token_expired"} <= set(fired), fired
    assert {"server_error", "bad_gateway", "unavailable"} & set(fired), fired

    assert clean_snaps == faulty_snaps  # the two simulators really ran the same scenario
    clean_result = compare_with_truth(clean, clean_snaps)
    faulty_result = compare_with_truth(faulty, faulty_snaps)
    assert clean_result.clean, clean_result.describe()
    assert faulty_result.clean, f"{faulty_result.describe()}; faults fired: {fired}"
    assert observed_changes(faulty) == observed_changes(clean)
    assert faulty.state == clean.state
    assert failed_passes >= 0  # passes may fail and be redone; the outcome is what counts


# --------------------------------------------------------------------------- paging under change


class _PageHook(MetricsObserver):
    """Runs ``hook(entity, offset)`` as each page arrives (before the next one is asked for
    when the district's concurrency is 1)."""

    def __init__(self, metrics: Metrics, hook: Any) -> None:
        super().__init__(metrics)
        self.hook = hook

    def client_event(self, event: ClientEvent) -> None:
        super().client_event(event)
        if isinstance(event, PageFetched):
            self.hook(event.entity, event.offset)


def absent_deletes_of_live_records(rebuilt: Rebuilt, sim: Simulator) -> list[str]:
    """DELETED events for keys the simulator still serves as active."""
    live = truth_snapshot(sim)
    return [
        f"{e['entity']} {e['district_id']}/{e['sourced_id']}"
        for e in rebuilt.envelopes
        if e["op"] == "DELETED"
        and f"{e['district_id']}/{e['sourced_id']}" in live.get(e["entity"], {})
    ]


@pytest.mark.parametrize(
    "quirks",
    [
        pytest.param(frozenset(), id="with-total-count"),
        pytest.param(
            frozenset({"no_total_count"}),
            id="without-total-count",
        ),
    ],
)
@pytest.mark.timeout(180)
async def test_shifting_offsets_never_miss_a_record_nor_delete_a_live_one(
    quirks: frozenset[str], kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """While ``shift_offsets`` creates or hard-deletes a record before the offset of ~30% of
    page requests, full syncs either fail (the listing is incomplete) or complete without
    missing any record that existed throughout; no DELETED is emitted for a live record; after
    the shifting stops a full sync converges to the truth."""
    sim = Simulator([DistrictSpec(id="shift", version="1.2", size=40, seed=31, quirks=quirks)])
    async with sim.serve():
        config = make_config(
            sim,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            state_dir=tmp_path,
            sync={"batch_size": 50, "mass_delete_threshold": 0.5},
            district_overrides={
                "page_size": 10,
                "entities": ["users", "enrollments"],
                "max_retries": 2,
            },
        )
        missed: list[str] = []
        completed = 0
        async with Service(config) as service:
            await service.sync("shift")
            sim.set_faults("shift", Faults(rate=0.3, kinds=("shift_offsets",), seed=5))
            for _ in range(6):
                before = truth_snapshot(sim, ("users", "enrollments"))
                try:
                    await service.sync("shift", full=True)
                except CdcError:
                    continue
                completed += 1
                after = truth_snapshot(sim, ("users", "enrollments"))
                for entity in ("users", "enrollments"):
                    held = set(service.store_for("shift").sourced_ids(entity, "shift"))
                    stable = set(before[entity]) & set(after[entity])
                    missed += [f"{entity} {k}" for k in stable if k.split("/", 1)[1] not in held]
            during = await rebuild(kafka_bootstrap, unique_prefix)
            spurious_during = absent_deletes_of_live_records(during, sim)
            fired = sim.district("shift").plan.fired.get("shift_offsets", 0)
            sim.set_faults("shift", Faults())
            await service.sync("shift", full=True)
        final = await rebuild(kafka_bootstrap, unique_prefix)
        truth = truth_snapshot(sim, ("users", "enrollments"))
    assert fired > 0
    assert missed == []
    assert spurious_during == []
    assert absent_deletes_of_live_records(final, sim) == []
    assert final.violations == []
    assert state_mismatches(final, truth) == []
    assert completed >= 0  # listings may all fail under shifting; none may lie


@pytest.mark.timeout(120)
async def test_a_delete_and_a_create_between_pages_do_not_delete_a_live_record(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """Between page 0 and page 1 of a full users listing, a record on page 0 (already read) is
    hard-deleted and a new one created (the total stays the same, later offsets shift by one):
    that full sync deletes no live record, though one slid out of its listing; the next full
    sync emits exactly one DELETED (the hard-deleted record), and the committed state holds
    every live user."""
    sim = Simulator([DistrictSpec(id="slide", version="1.2", size=40, seed=41)])
    armed: list[bool] = []
    deleted: list[str] = []

    def between_pages(entity: str, offset: int) -> None:
        if armed and entity == "users" and offset == 0:
            armed.clear()
            d = sim.district("slide")
            victim = sorted(d.truth_state("users"))[2]
            d.hard_delete("users", victim)
            d.create("users", {"givenName": "Slid"})
            deleted.append(victim)

    async with sim.serve():
        config = make_config(
            sim,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            state_dir=tmp_path,
            district_overrides={"page_size": 10, "concurrency": 1, "entities": ["users"]},
        )
        async with Service(config) as service:
            service.observer = _PageHook(service.metrics, between_pages)
            await service.sync("slide")
            armed.append(True)
            await service.sync("slide", full=True)
            assert deleted, "the hook did not run"
            shifted = await rebuild(kafka_bootstrap, unique_prefix)
            assert absent_deletes_of_live_records(shifted, sim) == []
            assert shifted.ops["DELETED"] == 0  # the victim was read before it was deleted
            await service.sync("slide", full=True)
            rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
            held = set(service.store_for("slide").sourced_ids("users", "slide"))
    assert absent_deletes_of_live_records(rebuilt, sim) == []
    assert rebuilt.ops["DELETED"] == 1
    assert set(sim.district("slide").truth_state("users")) <= held
