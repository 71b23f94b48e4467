"""Scale-out (issue 12): several ``oneroster-cdc run`` processes share the districts through
Kafka's group protocol, exactly once per shard.

One scenario, in phases that build on each other (each phase is the setup of the next, so the
simulator, the broker topics and the running instances are shared honestly):

1. Three instances over 24 districts (4 per shard, 6 shards): the shards are split between
   them, every district is polled, and the committed stream equals the truth.
2. A fourth instance joins: shards move to it, and only those (the sticky assignor).
3. SIGKILL of one instance inside a poll: its shards move to the survivors, which restore only
   those shards' partitions and resume from the committed cursors (a DELTA poll, no snapshot).
4. SIGSTOP of one instance past the session timeout, the districts change while it sleeps, then
   SIGCONT: it commits nothing (its shards' transactional ids were fenced by the new owners) and
   rejoins the group (or exits cleanly).

Each phase mutates the simulated districts (a round of creates, updates, soft and hard deletes
in every district), waits until the committed state equals the truth and then runs the
independent checker (``tests/checker.py``): 0 lost, 0 duplicated, 0 spurious changes, no
protocol violation, state == truth. Throughout, the daemons' JSON logs are the record of who
polled what when: no two instances may have overlapping polls of one district, except the
paused instance's polls while it was a fenced zombie (which must commit nothing).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import murmur2

from producer.kafka.reader import topic_partitions
from producer.simulator import DistrictSpec, Faults, Simulator
from tests.checker import (
    TruthSnapshot,
    compare_with_truth,
    rebuild,
    state_mismatches,
    truth_snapshot,
)
from tests.conftest import ServeSimulator
from tests.harness import config_document, write_config
from tests.reliability_helpers import DaemonProcess, eventually, http_get, parse_log_lines

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARDS = 6
PER_SHARD = 4
SEED = 20261201
#: The group's session timeout (the shortest a broker accepts by default): a SIGKILLed or
#: paused instance loses its shards this long after its last heartbeat.
SESSION_TIMEOUT = 6.0
#: Log events that end a poll in the scheduler.
POLL_ENDS = ("poll.finished", "poll.failed", "poll.timeout")


def shard(district_id: str) -> int:
    """Kafka's default partitioner on the id (written out: not the producer's function)."""
    hashed: int = murmur2(district_id.encode())
    return (hashed & 0x7FFFFFFF) % SHARDS


def district_ids() -> list[str]:
    """24 ids, 4 in every shard, so every instance has districts to poll."""
    by_shard: dict[int, list[str]] = defaultdict(list)
    n = 0
    while min((len(by_shard[s]) for s in range(SHARDS)), default=0) < PER_SHARD:
        candidate = f"scale{n:03d}"
        n += 1
        if len(by_shard[shard(candidate)]) < PER_SHARD:
            by_shard[shard(candidate)].append(candidate)
    return sorted(d for ids in by_shard.values() for d in ids)


DISTRICTS = district_ids()


def stamp(line: dict[str, Any]) -> float:
    """The log line's UTC timestamp as epoch seconds."""
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


# ------------------------------------------------------------------------------- instances


@dataclass
class Instance:
    """One ``oneroster-cdc run`` process of the group (one incarnation, never restarted)."""

    name: str
    daemon: DaemonProcess
    killed_at: float | None = None
    stopped_at: float | None = None
    continued_at: float | None = None
    _read: int = 0
    _lines: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (read incrementally)."""
        path = self.daemon.err_path
        if path.exists():
            with path.open("rb") as f:
                f.seek(self._read)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._read += end
            self._lines += parse_log_lines(data[:end].decode("utf-8", errors="replace"))
        return self._lines

    def events(self, name: str, since: float = 0.0) -> list[dict[str, Any]]:
        return [x for x in self.lines() if x.get("event") == name and stamp(x) >= since]

    @property
    def alive(self) -> bool:
        return self.daemon.running() and self.stopped_at is None

    def owned(self) -> set[int] | None:
        """The shards its logs say it owns now (None while a rebalance is open)."""
        state: set[int] | None = None
        for line in self.lines():
            if line.get("event") == "shards.assigned":
                state = {int(s) for s in line["shards"]}
            elif line.get("event") == "shards.revoked":
                state = None
        return state

    def open_polls(self) -> set[str]:
        """Districts it is polling now (started, not ended)."""
        busy: set[str] = set()
        for line in self.lines():
            if line.get("event") == "poll.started":
                busy.add(line["district"])
            elif line.get("event") in POLL_ENDS:
                busy.discard(line["district"])
            elif line.get("event") in ("shards.assigned", "daemon.stopped"):
                busy.clear()
        return busy

    async def status(self) -> dict[str, Any]:
        url = await self.daemon.http_url()
        code, body = await http_get(f"{url}/status.json")
        assert code == 200, body
        parsed: dict[str, Any] = json.loads(body)
        return parsed

    def describe(self) -> str:
        tail = self.daemon.err_path.read_text(errors="replace")[-2500:]
        return f"{self.name} (running={self.daemon.running()}): ...{tail}"


@dataclass(frozen=True)
class Poll:
    """One poll of one district by one instance, from its log lines."""

    instance: str
    district: str
    start: float
    end: float
    ended_by: str  # the end event, or what bounds a poll that logged no end
    full: bool


def polls_of(inst: Instance, now: float) -> list[Poll]:
    """Every poll of ``inst``. A poll with no end line was cancelled (by a revoke, a stop or a
    kill): it ended at the latest when the instance next logged that its shard's polls stopped,
    or an assignment (the eager protocol revokes every shard, stopping its polls, before any new
    assignment), or its own stop, or when it died."""
    lines = inst.lines()
    out: list[Poll] = []
    death = inst.killed_at if inst.killed_at is not None else now
    for i, line in enumerate(lines):
        if line.get("event") != "poll.started":
            continue
        district, start = line["district"], stamp(line)
        end, ended_by = death, "killed" if inst.killed_at is not None else "running"
        for later in lines[i + 1 :]:
            event = later.get("event")
            if later.get("district") == district and event in (*POLL_ENDS, "poll.started"):
                if event != "poll.started":
                    end, ended_by = stamp(later), str(event)
                    break
                end, ended_by = stamp(later), "restarted"
                break
            stopped = event == "shards.polls_stopped" and shard(district) in later["shards"]
            if stopped or event in ("shards.assigned", "daemon.stopped"):
                end, ended_by = stamp(later), f"bounded by {event}"
                break
        out.append(Poll(inst.name, district, start, end, ended_by, bool(line.get("full"))))
    return out


def overlapping(polls: Iterable[Poll], exempt: Callable[[Poll], bool]) -> list[tuple[Poll, Poll]]:
    """Pairs of polls of one district by two instances whose intervals intersect."""
    by_district: dict[str, list[Poll]] = defaultdict(list)
    for p in polls:
        by_district[p.district].append(p)
    out = []
    for items in by_district.values():
        items.sort(key=lambda p: p.start)
        for i, a in enumerate(items):
            for b in items[i + 1 :]:
                if b.start >= a.end:
                    break
                if a.instance != b.instance and not (exempt(a) or exempt(b)):
                    out.append((a, b))
    return out


class Fleet:
    """The instances of one deployment (same config but for the state directory)."""

    def __init__(self, document: dict[str, Any], root: Path) -> None:
        self.document = document
        self.root = root
        self.instances: dict[str, Instance] = {}

    def start(self, name: str) -> Instance:
        doc = {**self.document, "state": {"dir": str(self.root / name / "state")}}
        config = write_config(self.root / f"{name}.toml", doc)
        inst = Instance(name, DaemonProcess(config, self.root / name / "logs"))
        inst.daemon.start()
        self.instances[name] = inst
        return inst

    @property
    def live(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.alive]

    def polls(self) -> list[Poll]:
        now = time.time()
        return [p for i in self.instances.values() for p in polls_of(i, now)]

    def describe(self) -> str:
        return "\n\n".join(i.describe() for i in self.instances.values())

    async def settled(self) -> dict[str, set[int]]:
        """Wait until the live instances' logs and status pages agree on an assignment that
        covers every shard exactly once and every instance has restored its shards."""

        async def check() -> dict[str, set[int]] | None:
            owned: dict[str, set[int]] = {}
            for inst in self.live:
                mine = inst.owned()
                if mine is None:
                    return None
                status = await inst.status()
                if set(status["instance"]["shards"]) != mine or not status["readiness"]["ready"]:
                    return None
                owned[inst.name] = mine
            shards = [s for mine in owned.values() for s in mine]
            if sorted(shards) != list(range(SHARDS)):
                return None
            return owned

        found: dict[str, set[int]] = await eventually(
            check,
            within=90,
            interval=0.5,
            message=lambda: "no settled assignment:\n" + self.describe(),
        )
        return found

    def close(self) -> None:
        for inst in self.instances.values():
            proc = inst.daemon.proc
            if proc is not None and inst.stopped_at is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
            inst.daemon.close()


# ------------------------------------------------------------------------------- the truth


def mutate(sim: Simulator, rng: random.Random, round_no: int) -> None:
    """One round of changes in every district: creates, updates and deletes, all visible to a
    delta poll (deletes as ``tobedeleted``: a hard delete is seen only by a full listing, and
    the polls here stay deltas so that a moved district's first poll shows it resumed from
    its committed cursor; full listings after crashes are tests/test_reliability_*.py's)."""
    sim.advance_clock(10)
    for district_id in DISTRICTS:
        d = sim.district(district_id)
        users = sorted(d.truth_state("users"))
        picked = rng.sample(users, 3)
        d.update("users", picked[0], familyName=f"Scale{round_no}-{picked[0][-4:]}")
        d.update("users", picked[1], givenName=f"Given{round_no}")
        d.mark_tobedeleted("users", picked[2])
        d.create("users", {"givenName": f"New{round_no}"})
        d.mark_tobedeleted("enrollments", rng.choice(sorted(d.truth_state("enrollments"))))
        d.update("classes", rng.choice(sorted(d.truth_state("classes"))), title=f"R{round_no}")


class Truth:
    """The snapshots the checker judges the committed stream against."""

    def __init__(self, sim: Simulator, bootstrap: str, prefix: str) -> None:
        self.sim, self.bootstrap, self.prefix = sim, bootstrap, prefix
        self.snapshots: list[TruthSnapshot] = []

    async def converge(self, fleet: Fleet, what: str) -> None:
        """Wait until the committed state equals the truth, then take a snapshot."""

        differences: list[str] = []

        async def caught_up() -> bool:
            rebuilt = await rebuild(self.bootstrap, self.prefix)
            differences[:] = [
                *state_mismatches(rebuilt, truth_snapshot(self.sim)),
                *rebuilt.violations,
            ]
            return not differences

        await eventually(
            caught_up,
            within=120,
            interval=1.0,
            message=lambda: (
                f"{what}: the committed state never equalled the truth: {differences[:5]}\n"
                + fleet.describe()
            ),
        )
        self.snapshots.append(truth_snapshot(self.sim))

    async def check(self, what: str) -> None:
        """0 lost, 0 duplicated, 0 spurious, no violation, state == truth."""
        rebuilt = await rebuild(self.bootstrap, self.prefix)
        result = compare_with_truth(rebuilt, self.snapshots)
        assert result.clean, f"{what}: {result.describe()}"
        assert result.expected == result.observed > 0


async def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    """The end offset of every partition of ``topic`` (read_uncommitted: includes records of
    transactions still open)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(await topic_partitions(consumer, topic))
    finally:
        await consumer.stop()
    return {tp.partition: off for tp, off in ends.items()}


def restores(inst: Instance, since: float) -> dict[int, dict[str, Any]]:
    """The ``state_restored`` lines of ``inst`` since ``since``, by shard (the latest)."""
    return {int(x["shard"]): x for x in inst.events("state_restored", since)}


def assert_restored_only(
    inst: Instance, shards: set[int], since: float, marks: dict[int, int], prefix: str
) -> None:
    """Since ``since`` ``inst`` restored each of ``shards`` from that shard's state partition
    alone, up to at least the partition's end offset in ``marks`` (measured when the shard's
    previous owner was gone or had handed it over)."""
    found = restores(inst, since)
    assert shards <= set(found), f"{inst.name} did not restore {shards - set(found)}"
    for n in shards:
        line = found[n]
        assert line["topic"] == f"{prefix}.state", line
        assert line["partitions"] == [n], line
        assert set(line["from_offsets"]) == set(line["to_offsets"]) == {str(n)}, line
        start, end = line["from_offsets"][str(n)], line["to_offsets"][str(n)]
        assert end >= marks[n] > 0, (line, marks)
        assert 0 <= start <= end, line
        assert line["records"] <= end - start, line


# ------------------------------------------------------------------------------- the test


@pytest.fixture
async def sim(serve_simulator: ServeSimulator) -> Simulator:
    """24 tiny districts, every answer delayed by 60 ms (a remote server's round trip) so that
    a poll lasts long enough for a SIGKILL to land inside it."""
    slow = Faults(rate=1.0, kinds=("latency",), latency=0.06, seed=1)
    specs = [
        DistrictSpec(id=d, version="1.2", size="tiny", seed=n, faults=slow)
        for n, d in enumerate(DISTRICTS)
    ]
    return await serve_simulator(specs)


@pytest.mark.timeout(600)
async def test_instances_share_shards_and_take_over_exactly_once(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """Three instances, then a fourth, a SIGKILL inside a poll and a SIGSTOP past the session
    timeout: every district is polled by exactly one instance at a time, shards move only
    as the group says, restores read only the moved shards' partitions, the paused instance
    commits nothing, and after every phase the committed stream holds every truth change
    exactly once and the state equals the truth."""
    rng = random.Random(SEED)
    document = config_document(
        sim,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        state_dir=tmp_path / "unused",
        sync={
            "poll_interval": "2s",
            "full_sync_interval": "1h",  # after the first snapshot, every poll is a delta
            "batch_size": 20,
            "shutdown_grace": "2s",
        },
        district_overrides={"page_size": 20, "concurrency": 2, "max_retries": 4},
    )
    document["kafka"].update(
        shards=SHARDS, session_timeout=f"{SESSION_TIMEOUT:g}s", heartbeat_interval="1s"
    )
    fleet = Fleet(document, tmp_path)
    truth = Truth(sim, kafka_bootstrap, unique_prefix)
    state_topic = f"{unique_prefix}.state"
    zombie_since: float | None = None
    zombie_until: float | None = None
    zombie_name = ""

    def is_zombie(p: Poll) -> bool:
        """A poll of the paused instance from before its pause until its rejoin."""
        if p.instance != zombie_name or zombie_since is None:
            return False
        return p.end > zombie_since and (zombie_until is None or p.start < zombie_until)

    def assert_exclusive(what: str) -> None:
        pairs = overlapping(fleet.polls(), is_zombie)
        assert not pairs, f"{what}: one district polled by two instances at once: {pairs[:5]}"

    try:
        # 1. Three instances over 24 districts.
        for name in ("a", "b", "c"):
            fleet.start(name)
        owned = await fleet.settled()
        assert all(owned[name] for name in ("a", "b", "c")), owned
        await truth.converge(fleet, "first snapshot")
        mutate(sim, rng, 1)
        await truth.converge(fleet, "round 1")
        await truth.check("three instances")
        # Since the last assignment (the instances joined one after the other, so the first
        # owned every shard for a moment), each instance polled exactly its shards' districts.
        since = max(stamp(i.events("shards.assigned")[-1]) for i in fleet.live)
        polls = [p for p in fleet.polls() if p.start >= since]
        assert {p.district for p in polls if p.ended_by == "poll.finished"} == set(DISTRICTS)
        for inst in fleet.live:
            own_districts = {d for d in DISTRICTS if shard(d) in owned[inst.name]}
            polled = {p.district for p in polls if p.instance == inst.name}
            assert polled == own_districts, f"{inst.name}: {polled ^ own_districts} not its own"
            status = await inst.status()
            rows = {r["id"]: r for r in status["districts"]}
            assert {d for d, r in rows.items() if r["shard"] in owned[inst.name]} == own_districts
        assert_exclusive("three instances")

        # 2. A fourth instance: shards move to it, and only those.
        joined = time.time()
        marks = await high_watermarks(kafka_bootstrap, state_topic)
        fourth = fleet.start("d")
        before = owned
        owned = await fleet.settled()
        assert owned["d"], owned
        for name in ("a", "b", "c"):
            assert owned[name] <= before[name], f"sticky: {name} {before[name]} -> {owned[name]}"
        assert_restored_only(fourth, owned["d"], joined, marks, unique_prefix)
        assert all(restores(fourth, joined)[n]["from_offsets"][str(n)] == 0 for n in owned["d"])
        for name in ("a", "b", "c"):  # a shard kept restores only its tail, from its own file
            for n, line in restores(fleet.instances[name], joined).items():
                assert n in before[name], line
                assert line["partitions"] == [n], line
                assert line["cold"] is False, line
                assert line["from_offsets"][str(n)] > 0, line
        mutate(sim, rng, 2)
        await truth.converge(fleet, "round 2")
        await truth.check("a fourth instance")
        assert_exclusive("a fourth instance")

        # 3. SIGKILL inside a poll: the survivors take over from the committed cursors.
        mutate(sim, rng, 3)
        victim = max(fleet.live, key=lambda i: len(owned[i.name]))
        moved = owned[victim.name]
        await eventually(victim.open_polls, within=30, interval=0.02)
        await asyncio.sleep(rng.uniform(0.0, 0.2))
        assert victim.open_polls(), "the poll ended before the kill"
        victim.killed_at = time.time()
        victim.daemon.kill()
        marks = await high_watermarks(kafka_bootstrap, state_topic)
        before = {k: v for k, v in owned.items() if k != victim.name}
        owned = await fleet.settled()
        assert set(owned) == set(before)
        taken: dict[str, set[int]] = {}
        took: set[int] = set()
        for name, mine in owned.items():
            assert before[name] <= mine, f"sticky: {name} {before[name]} -> {mine}"
            taken[name] = mine - before[name]
            took |= taken[name]
        assert took == moved
        for name, new in taken.items():
            assert_restored_only(fleet.instances[name], new, victim.killed_at, marks, unique_prefix)
        await truth.converge(fleet, "round 3 (after the kill)")
        await truth.check("SIGKILL inside a poll")
        for name, new in taken.items():
            inst = fleet.instances[name]
            for d in (d for d in DISTRICTS if shard(d) in new):
                first = next(
                    x for x in inst.events("poll.started", victim.killed_at) if x["district"] == d
                )
                assert first["full"] is False, f"{d} was snapshotted again, not resumed: {first}"
        assert_exclusive("SIGKILL inside a poll")

        # 4. SIGSTOP past the session timeout, changes meanwhile, SIGCONT.
        sleeper = min(fleet.live, key=lambda i: i.name)
        zombie_name = sleeper.name
        asleep = owned[sleeper.name]
        assert sleeper.daemon.proc is not None
        sleeper.stopped_at = zombie_since = time.time()
        sleeper.daemon.proc.send_signal(signal.SIGSTOP)
        marks = await high_watermarks(kafka_bootstrap, state_topic)
        before = {k: v for k, v in owned.items() if k != sleeper.name}
        owned = await fleet.settled()
        assert set(owned) == set(before)
        gained = {s for k in owned for s in owned[k] - before[k]}
        assert gained == asleep, (before, owned)
        for name, mine in owned.items():
            new = mine - before[name]
            assert_restored_only(fleet.instances[name], new, zombie_since, marks, unique_prefix)
        mutate(sim, rng, 4)
        await truth.converge(fleet, "round 4 (one instance paused)")
        sleeper.continued_at = time.time()
        sleeper.daemon.proc.send_signal(signal.SIGCONT)
        sleeper.stopped_at = None

        def back() -> bool:
            if not sleeper.daemon.running():
                return True
            return bool(sleeper.events("shards.assigned", sleeper.continued_at or 0.0))

        await eventually(back, within=90, interval=0.5, message=fleet.describe)
        if sleeper.daemon.running():
            owned = await fleet.settled()
            zombie_until = stamp(sleeper.events("shards.assigned", sleeper.continued_at)[0])
        else:
            assert sleeper.events("daemon.stopped", sleeper.continued_at), sleeper.describe()
            zombie_until = time.time()
            owned = await fleet.settled()
        # It committed nothing while fenced: no pass of its zombie polls wrote a change.
        for line in sleeper.events("sync.entity_done", sleeper.continued_at):
            if stamp(line) < zombie_until:
                changes = line["created"] + line["updated"] + line["deleted"]
                assert changes == 0, f"the paused instance wrote after its wake-up: {line}"
        mutate(sim, rng, 5)
        await truth.converge(fleet, "round 5 (after SIGCONT)")
        await truth.check("SIGSTOP past the session timeout")
        assert_exclusive("SIGSTOP past the session timeout")

        for inst in fleet.live:
            assert await inst.daemon.terminate() == 0, inst.describe()
    finally:
        fleet.close()
