"""The product's scenarios: snapshot, no-change re-read, delta, restore, peer pager, latency,
fan-out. Each returns plain numbers; :mod:`bench.run` puts them beside their ceilings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer

from bench.ceilings import Figure, Message, _token, partitions, read_topics
from bench.sim import SimDistrict, SimProcess, spread
from producer.auth import OAuth2ClientCredentials
from producer.client import OneRosterClient
from producer.config import Config
from producer.events import Batch
from producer.kafka.restore import restore_from_kafka
from producer.kafka.writer import TransactionalWriter
from producer.model import Entity, Secret
from producer.retry import RetryPolicy
from producer.scheduler import Scheduler
from producer.service import Service
from producer.simulator.auth import ALL_SCOPES
from producer.state import StateStore, StateWrite

# -- the sync engine, end to end ------------------------------------------------------------


class CommitCounter:
    """Counts the writers' transactions and messages (wraps each shard's
    ``TransactionalWriter.commit``)."""

    def __init__(self, service: Service) -> None:
        self.commits = 0
        self.messages = 0
        for shard in service.shards.values():
            self._wrap(shard.writer)

    def _wrap(self, writer: TransactionalWriter) -> None:
        inner = writer.commit

        async def commit(batch: Batch) -> None:
            await inner(batch)
            self.commits += 1
            self.messages += len(batch) + sum(1 for e in batch.events if e.value is None)
            self.messages += batch.checkpoint is not None

        writer.commit = commit  # type: ignore[method-assign]


async def timed_sync(service: Service, district_id: str, *, full: bool) -> dict[str, Any]:
    """One pass over every entity; records/s from the start of the pass to its last commit."""
    started, cpu = time.monotonic(), time.process_time()
    results = await service.sync(district_id, full=full)
    seconds = time.monotonic() - started
    cpu = time.process_time() - cpu
    fetched = sum(r.fetched for r in results)
    return {
        "records": fetched,
        "seconds": seconds,
        "rate": fetched / seconds,
        "cpu_share": cpu / seconds,
        "created": sum(r.created for r in results),
        "updated": sum(r.updated for r in results),
        "deleted": sum(r.deleted for r in results),
    }


async def delta(
    service: Service, sim: SimProcess, district: SimDistrict, share: float
) -> dict[str, Any]:
    """Change ``share`` of the records, then time a delta poll to its committed checkpoint."""
    changed, _ = await sim.amutate(district.id, spread(district.counts, share))
    out = await timed_sync(service, district.id, full=False)
    out["changed"] = sum(len(v) for v in changed.values())
    return out


# -- state: synthetic keys, restore ---------------------------------------------------------


async def write_synthetic_state(
    service: Service,
    values: list[Message],
    keys: int,
    *,
    chunk: int = 5000,
    district: str = "synthetic",
) -> Figure:
    """``keys`` state records of ``district`` (entity users), their values and digests cycled
    from real state records of the snapshot; written through the product's writer (the
    district's shard's)."""
    real = [(v, dict(h).get("digest")) for _, _, v, h in values if v is not None]
    assert real, "no state records to model the synthetic ones on"
    started = time.monotonic()
    for start in range(0, keys, chunk):
        writes = []
        for i in range(start, min(keys, start + chunk)):
            value, digest = real[i % len(real)]
            writes.append(StateWrite("users", district, f"syn-{i:09d}", digest, value))
        await service.writer_for(district).commit(Batch(state=writes))
    return Figure(keys, time.monotonic() - started)


async def cold_restore(config: Config, topic: str, path: Path) -> Figure:
    """Restore ``topic`` into an empty store at ``path``."""
    store = StateStore(path)
    try:
        stats = await restore_from_kafka(
            store,
            topic=topic,
            consumer_config={"bootstrap_servers": list(config.kafka.bootstrap_servers)},
        )
        assert stats.cold
        return Figure(stats.records, stats.seconds, {"keys": store.count()})
    finally:
        store.close()


async def warm_restart(config: Config) -> Figure:
    """Time ``Service.start`` over a store that is already up to date (the whole start:
    topics, writer, schemas, tail restore, checkpoints)."""
    service = Service(config)
    started = time.monotonic()
    await service.start()
    seconds = time.monotonic() - started
    keys = service.state_keys()
    await service.close()
    return Figure(keys, seconds)


def memory_child(config_path: Path, district_id: str | None) -> dict[str, Any]:
    """Peak RSS of a fresh process that restores the state (cold) and, when given, snapshots a
    district on top; see :mod:`bench.child`."""
    cmd = [sys.executable, "-m", "bench.child", "memory", str(config_path)]
    if district_id:
        cmd.append(district_id)
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- peer: a serial pager -------------------------------------------------------------------


def burn(seconds: float) -> None:
    """Use ``seconds`` of CPU, as a consumer processing a page does."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


async def serial_pager(
    district: SimDistrict, entities: list[str], page_size: int, *, work: float = 0.0
) -> Figure:
    """One request at a time, limit/offset until a short page, as typical sync scripts do;
    ``work`` seconds of CPU spent on each page before the next request."""
    records = 0
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {await _token(session, district)}"}
        started = time.monotonic()
        for entity in entities:
            offset = 0
            while True:
                url = f"{district.oneroster_url}/{entity}?limit={page_size}&offset={offset}"
                async with session.get(url, headers=headers) as resp:
                    data = orjson.loads(await resp.read())
                page = next(v for v in data.values() if isinstance(v, list))
                burn(work)
                records += len(page)
                offset += len(page)
                if len(page) < page_size:
                    break
        seconds = time.monotonic() - started
    return Figure(records, seconds)


async def our_pager(
    district: SimDistrict,
    entities: list[str],
    page_size: int,
    concurrency: int,
    *,
    work: float = 0.0,
) -> Figure:
    """``OneRosterClient`` listings (auth, retries, paging); ``work`` seconds of CPU spent on
    each page as it arrives (none by default)."""
    records = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(8, 2 * concurrency))
    ) as session:
        client = OneRosterClient(
            district_id=district.id,
            base_url=district.base_url,
            version=district.version,  # type: ignore[arg-type]
            auth=OAuth2ClientCredentials(
                session=session,
                token_url=district.token_url,
                client_id=district.client_id,
                client_secret=Secret(district.client_secret),
                scopes=ALL_SCOPES,
            ),
            page_size=page_size,
            concurrency=concurrency,
            retry=RetryPolicy(attempts=6),
            session=session,
        )
        started = time.monotonic()
        async with client:
            for entity in entities:
                async for page in client.listing(entity):  # type: ignore[arg-type]
                    burn(work)
                    records += len(page.records)
        seconds = time.monotonic() - started
    return Figure(records, seconds)


# -- latency: change -> committed event -----------------------------------------------------


async def latency(
    service: Service,
    sim: SimProcess,
    district: SimDistrict,
    *,
    samples: int,
    mean_gap: float,
    bootstrap: str,
) -> dict[str, Any]:
    """Change one user at random moments while the scheduler polls at the configured interval;
    a read_committed consumer times each change until its event is readable."""
    entity: Entity = "users"
    topic = service.topics.events(entity)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    tps = await partitions(consumer, topic)
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    waiting: dict[bytes, float] = {}
    seen: list[float] = []

    async def watch() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for messages in batch.values():
                for m in messages:
                    at = waiting.pop(m.key, None) if m.key is not None else None
                    if at is not None:
                        seen.append(now - at)

    scheduler = Scheduler(_Runner(service), service.config.sync, history=service)
    scheduler.set_districts([district.id])
    watcher = asyncio.create_task(watch())
    rng = random.Random(7)
    count = district.counts[entity]
    try:
        for _ in range(samples):
            await asyncio.sleep(rng.uniform(0, 2 * mean_gap))
            index = rng.randrange(count)
            changed, at = await sim.amutate(district.id, {entity: [index]})
            for sid in changed[entity]:
                waiting[f"{district.id}/{sid}".encode()] = at
        deadline = time.monotonic() + 3 * service.config.sync.poll_interval + 10
        while waiting and time.monotonic() < deadline:  # noqa: ASYNC110 - a bounded poll
            await asyncio.sleep(0.1)
    finally:
        await scheduler.stop(grace=30)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await consumer.stop()
    seen.sort()

    def pct(p: float) -> float:
        return seen[min(len(seen) - 1, round(p * (len(seen) - 1)))] if seen else float("nan")

    return {
        "samples": len(seen),
        "missing": len(waiting),
        "p50": pct(0.5),
        "p99": pct(0.99),
        "max": seen[-1] if seen else float("nan"),
        "poll_interval": service.config.sync.poll_interval,
    }


class _Runner:
    def __init__(self, service: Service) -> None:
        self._service = service

    async def poll(self, district_id: str, *, full: bool) -> None:
        await self._service.poll(district_id, full=full)


# -- fan-out: the daemon with many small districts ------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scrape(url: str) -> list[tuple[str, float]] | None:
    """``(series, value)`` of every sample at a Prometheus endpoint (None: no answer)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out.append((series, float(value)))
    return out


def metric_count(url: str, name: str) -> int:
    """How many series of ``name`` (with labels) the endpoint has (-1: no answer)."""
    samples = _scrape(url)
    if samples is None:
        return -1
    return sum(1 for series, _ in samples if series.startswith(name + "{"))


def metric_sum(url: str, name: str) -> float:
    """The sum of every series of ``name`` (-1: no answer)."""
    samples = _scrape(url)
    if samples is None:
        return -1.0
    return sum(v for series, v in samples if series == name or series.startswith(name + "{"))


def get_status(url: str) -> int:
    """The HTTP status of a GET (0: no answer)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def get_json(url: str) -> Any:
    """The JSON body of a GET (None: no answer)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return orjson.loads(resp.read())
    except (OSError, ValueError):
        return None


def start_daemon(
    config_path: Path, log: IO[bytes], *, level: str = "WARNING"
) -> subprocess.Popen[bytes]:
    """``oneroster-cdc run`` as a process of its own, JSON logs at ``level`` to ``log``."""
    exe = Path(sys.executable).with_name("oneroster-cdc")
    argv = [str(exe), "--config", str(config_path), "--log-format", "json"]
    return subprocess.Popen(
        [*argv, "--log-level", level, "run"], stdout=log, stderr=subprocess.STDOUT
    )


def fanout(
    config_path: Path,
    metrics_url: str,
    *,
    expected: int,
    window: float,
    settle: float,
    timeout: float,
    log_path: Path,
) -> dict[str, Any]:
    """Run ``oneroster-cdc run``; once every district/entity has succeeded once (the snapshot),
    wait ``settle`` seconds, then measure the daemon's CPU over ``window`` seconds."""
    with log_path.open("wb") as log:
        proc = start_daemon(config_path, log)
        try:
            started = time.monotonic()
            while metric_count(metrics_url, "oneroster_last_success_timestamp_seconds") < expected:
                if proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {proc.returncode}; see {log_path}")
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"the fan-out snapshot did not finish in {timeout} s")
                time.sleep(1)
            snapshot = time.monotonic() - started
            time.sleep(settle)
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(window)
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            errors = metric_count(metrics_url, "oneroster_errors_total")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {
        "snapshot_seconds": snapshot,
        "window": t1 - t0,
        "cpu_seconds": cpu1 - cpu0,
        "core_share": (cpu1 - cpu0) / (t1 - t0),
        "error_series": max(0, errors),
    }


__all__ = [
    "CommitCounter",
    "cold_restore",
    "cpu_seconds",
    "delta",
    "fanout",
    "get_json",
    "get_status",
    "latency",
    "memory_child",
    "metric_count",
    "metric_sum",
    "our_pager",
    "read_topics",
    "serial_pager",
    "start_daemon",
    "timed_sync",
    "warm_restart",
    "write_synthetic_state",
]
