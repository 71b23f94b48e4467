"""Tests for producer.scheduler on fake time: timing, fairness, backoff, runtime changes, stop."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random

import pytest

from producer.config import SyncConfig
from producer.metrics import Metrics
from producer.scheduler import Scheduler


class FakeTime:
    """A clock and a sleep that only move when the test advances time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._seq), future))
        await future

    @staticmethod
    async def settle() -> None:
        for _ in range(30):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper due on the way, in order."""
        target = self.now + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue
            self.now = max(self.now, when)
            future.set_result(None)
            await self.settle()
        self.now = target
        await self.settle()


class FakeRunner:
    """Records each poll; per district it can take time, fail, or hang."""

    def __init__(self, time: FakeTime) -> None:
        self.time = time
        self.polls: list[tuple[str, bool, float]] = []
        self.duration: dict[str, float] = {}
        self.failing: set[str] = set()
        self.hanging: set[str] = set()
        self.running = 0
        self.max_running = 0
        self.cancelled: list[str] = []
        self.finished: list[str] = []

    async def poll(self, district_id: str, *, full: bool) -> None:
        self.polls.append((district_id, full, self.time.now))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if district_id in self.hanging:
                await asyncio.Event().wait()
            if self.duration.get(district_id):
                await self.time.sleep(self.duration[district_id])
            if district_id in self.failing:
                raise ConnectionError(f"{district_id} is down")
            self.finished.append(district_id)
        except asyncio.CancelledError:
            self.cancelled.append(district_id)
            raise
        finally:
            self.running -= 1

    def starts(self, district_id: str) -> list[float]:
        return [t for d, _, t in self.polls if d == district_id]


class FakeHistory:
    """Last full sync times the test chooses."""

    def __init__(self, times: dict[str, float | None]) -> None:
        self.times = times

    async def last_full_sync(self, district_id: str) -> float | None:
        return self.times.get(district_id)


def sync_config(**overrides) -> SyncConfig:
    values = {"poll_interval": 10.0, "jitter": 0.0, "full_sync_interval": 1000.0}
    return SyncConfig(**(values | overrides))


@pytest.fixture
def fake():
    """Fake time plus a runner on it."""
    time = FakeTime()
    return time, FakeRunner(time)


def scheduler(fake, **overrides) -> Scheduler:
    time, runner = fake
    history = overrides.pop("history", None)
    metrics = overrides.pop("metrics", None)
    return Scheduler(
        runner,
        sync_config(**overrides),
        history=history,
        metrics=metrics,
        clock=time.clock,
        sleep=time.sleep,
        rng=random.Random(7),
    )


async def test_schedule_is_drift_free(fake):
    """Polls start on the grid origin + k*interval however long each poll takes."""
    time, runner = fake
    runner.duration["a"] = 3.0
    async with scheduler(fake) as s:
        s.set_districts(["a"])
        await time.advance(35)
        assert runner.starts("a") == [0, 10, 20, 30]
        await s.stop(grace=0)


async def test_overrun_skips_missed_slots(fake):
    """A poll that overruns its slots resumes at the next grid slot, without a burst."""
    time, runner = fake
    runner.duration["a"] = 25.0
    async with scheduler(fake) as s:
        s.set_districts(["a"])
        await time.advance(31)
        assert runner.starts("a") == [0, 30]
        await s.stop(grace=0)


async def test_jitter_bounds(fake):
    """Each start lies within [slot, slot + jitter], and jitter actually varies the starts."""
    time, runner = fake
    async with scheduler(fake, jitter=2.0) as s:
        s.set_districts(["a"])
        await time.advance(100)
        await s.stop(grace=0)
    starts = runner.starts("a")
    assert len(starts) == 10
    offsets = [t - 10 * k for k, t in enumerate(starts)]
    assert all(0 <= o <= 2.0 for o in offsets)
    assert len({round(o, 6) for o in offsets}) > 1


async def test_hanging_district_does_not_delay_others(fake):
    """A hanging poll holds one slot until its timeout; other districts keep their schedule."""
    time, runner = fake
    runner.hanging.add("slow")
    async with scheduler(fake, max_concurrent_districts=2, poll_timeout=15.0) as s:
        s.set_districts(["slow", "fast"])
        await time.advance(45)
        assert runner.starts("fast") == [0, 10, 20, 30, 40]
        assert runner.cancelled[0] == "slow"
        status = s.status()["slow"]
        assert status.last_error == "PollTimeout"
        assert status.consecutive_failures >= 1
        await s.stop(grace=0)


async def test_failures_back_off_exponentially_and_open_the_circuit(fake):
    """A failing district retries after 1, 2, 4, 4 ... seconds; its circuit opens; it recovers."""
    time, runner = fake
    runner.failing.add("bad")
    metrics = Metrics()
    config = {"failure_backoff": 1.0, "failure_backoff_max": 4.0, "circuit_breaker_threshold": 3}
    async with scheduler(fake, metrics=metrics, **config) as s:
        assert [s.backoff(n) for n in range(5)] == [0, 1, 2, 4, 4]
        s.set_districts(["bad", "good"])
        await time.advance(16)
        assert runner.starts("bad") == [0, 1, 3, 7, 11, 15]
        assert runner.starts("good") == [0, 10]
        status = s.status()["bad"]
        assert status.circuit_open
        assert status.last_error == "ConnectionError"
        runner.failing.clear()
        await time.advance(4)
        status = s.status()["bad"]
        assert (status.consecutive_failures, status.circuit_open) == (0, False)
        await time.advance(10)
        assert runner.starts("bad")[-3:] == [19, 20, 30], "back on the grid after recovery"
        await s.stop(grace=0)
    assert b'oneroster_errors_total{district="bad",kind="ConnectionError"} 6.0' in metrics.render()


async def test_full_sync_when_interval_passed(fake):
    """Full syncs run when full_sync_interval has passed since the last one (or there was none)."""
    time, runner = fake
    history = FakeHistory({"new": None, "known": -5.0})
    async with scheduler(fake, full_sync_interval=25.0, history=history) as s:
        s.set_districts(["new", "known"])
        await time.advance(35)
        await s.stop(grace=0)
    full = {d: [t for dd, f, t in runner.polls if dd == d and f] for d in ("new", "known")}
    assert full["new"] == [0, 30]
    assert full["known"] == [20]


async def test_failed_full_sync_stays_due(fake):
    """A full sync that fails is retried as a full sync."""
    time, runner = fake
    runner.failing.add("a")
    async with scheduler(fake, history=FakeHistory({}), failure_backoff=1.0) as s:
        s.set_districts(["a"])
        await time.advance(2)
        runner.failing.clear()
        await time.advance(12)
        await s.stop(grace=0)
    assert [f for _, f, _ in runner.polls] == [True, True, True, False]


async def test_add_and_remove_districts_at_runtime(fake):
    """set_districts starts new districts and stops removed ones without a restart."""
    time, runner = fake
    runner.duration["a"] = 4.0
    async with scheduler(fake) as s:
        s.set_districts(["a"])
        await time.advance(12)
        s.set_districts(["a", "b"])
        assert s.district_ids == ("a", "b")
        await time.advance(1)
        assert runner.starts("b") == [12]
        s.set_districts(["b"])
        await time.advance(2)
        assert runner.finished.count("a") == 2, "the in-flight poll of a finishes"
        await time.advance(30)
        assert runner.starts("a") == [0, 10]
        assert runner.starts("b") == [12, 22, 32, 42]
        assert tuple(s.district_ids) == ("b",)
        await s.stop(grace=0)


async def test_removed_idle_district_stops_at_once(fake):
    """Removing an idle district cancels its task immediately."""
    time, runner = fake
    async with scheduler(fake) as s:
        s.set_districts(["a"])
        await time.advance(5)
        s.set_districts([])
        await time.advance(1)
        assert s.status() == {}
        await time.advance(30)
        assert runner.starts("a") == [0]
        await s.stop(grace=0)


async def test_stop_waits_for_in_flight_within_grace(fake):
    """stop(grace) lets an in-flight poll finish inside the grace and starts nothing new."""
    time, runner = fake
    runner.duration["a"] = 5.0
    s = scheduler(fake)
    s.set_districts(["a", "idle"])
    runner.duration["idle"] = 0.0
    await time.advance(2)
    stopping = asyncio.create_task(s.stop(grace=10.0))
    await time.advance(4)
    summary = await stopping
    assert (summary.finished, summary.cancelled) == (1, 0)
    assert runner.cancelled == []
    await time.advance(50)
    assert runner.starts("a") == [0]
    with pytest.raises(RuntimeError, match="stopping"):
        s.set_districts(["a"])


async def test_stop_cancels_after_grace(fake):
    """A poll still running when the grace ends is cancelled."""
    time, runner = fake
    runner.duration["a"] = 100.0
    s = scheduler(fake)
    s.set_districts(["a"])
    await time.advance(1)
    stopping = asyncio.create_task(s.stop(grace=10.0))
    await time.advance(9)
    assert not stopping.done()
    await time.advance(2)
    summary = await stopping
    assert (summary.finished, summary.cancelled) == (0, 1)
    assert runner.cancelled == ["a"]


async def test_global_concurrency_limit(fake):
    """No more than max_concurrent_districts polls run at once; every district gets its turn."""
    time, runner = fake
    ids = [f"d{i}" for i in range(5)]
    for district in ids:
        runner.duration[district] = 3.0
    async with scheduler(fake, max_concurrent_districts=2) as s:
        s.set_districts(ids)
        await time.advance(9.5)
        assert runner.max_running == 2
        assert sorted(d for d, _, _ in runner.polls) == ids
        assert sorted({t for _, _, t in runner.polls}) == [0, 3, 6]
        await s.stop(grace=0)


async def test_error_never_stops_the_daemon(fake):
    """A district whose runner raises keeps being retried; the others keep polling."""
    time, runner = fake
    runner.failing.add("bad")
    async with scheduler(fake, failure_backoff=5.0, failure_backoff_max=5.0) as s:
        s.set_districts(["bad", "good"])
        await time.advance(30)
        assert len(runner.starts("bad")) == 7
        assert runner.starts("good") == [0, 10, 20, 30]
        assert set(s.district_ids) == {"bad", "good"}
        await s.stop(grace=0)


async def test_drop_stops_some_districts_within_grace_and_keeps_the_others(fake):
    """drop (a revoked shard's districts): an idle district stops at once, a running poll gets
    the grace and is then cancelled, the other districts keep their schedule, and a dropped
    district can be scheduled again (a shard assigned back)."""
    time, runner = fake
    runner.duration["long"] = 100.0
    s = scheduler(fake)
    s.set_districts(["long", "idle", "other"])
    await time.advance(1)
    dropping = asyncio.create_task(s.drop(["long", "idle"], grace=10.0))
    await time.advance(9)
    assert not dropping.done()
    await time.advance(2)
    summary = await dropping
    assert (summary.finished, summary.cancelled) == (0, 1)
    assert runner.cancelled == ["long"]
    assert s.district_ids == ("other",)
    await time.advance(20)
    assert runner.starts("idle") == [0]
    assert runner.starts("other") == [0, 10, 20, 30]
    s.set_districts(["other", "idle"])
    await time.advance(10)
    assert len(runner.starts("idle")) == 3
    await s.stop(grace=0)
