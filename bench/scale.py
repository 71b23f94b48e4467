"""``python -m bench.scale``: the scale-out figures of issue 12, in one run.

1. Fan-out: ``--districts`` tiny districts polled every ``--poll`` seconds by one
   ``oneroster-cdc run`` process, then by two processes of the same deployment (the second
   joins the group; the shards split between them): each process's CPU share over the same
   ``--window``. The capacity ratio is the districts two instances carry at the CPU share per
   instance that one instance needed, over the districts one instance carries:
   ``share_1 * (n_a / share_a + n_b / share_b) / districts`` (CPU taken as linear in districts).
2. Restore: ``--keys-per-shard`` synthetic state keys in each of ``--shards`` shards; a cold
   restore of one shard (its partition alone) against a cold restore of the whole state.
3. Handover: two instances own the shards of that state (plus two tiny districts per shard);
   one is SIGKILLed; a user of each of its districts changes right after the kill; the time
   from the kill until each change is committed by the survivor (read_committed), beside the
   group's session timeout and the survivor's own log of the handover (assignment, restore).

Writes ``<out>/scale.json`` (every raw figure, the machine, the load average) and
``<out>/scale.md``. Nothing here is asserted: ``tests/test_bench.py`` only checks that a small
run produces every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import structlog
from aiokafka import AIOKafkaConsumer

from bench import ceilings, scenarios
from bench.run import ROOT, _f, config_data, ensure_kafka, free_port, machine, to_toml
from bench.sim import SimProcess
from producer.config import config_from_mapping
from producer.kafka.restore import restore_from_kafka
from producer.kafka.shards import shard_of
from producer.service import Service
from producer.state import StateStore

#: Entities of a tiny 1.2 district (every one is polled).
ENTITIES = 7


@dataclass(frozen=True, slots=True)
class Options:
    districts: int
    poll: float
    window: float
    settle: float
    shards: int
    keys_per_shard: int
    session_timeout: float
    only: frozenset[str]


# -- daemons --------------------------------------------------------------------------------


class Daemon:
    """One ``oneroster-cdc run`` process of a deployment, with its own state and HTTP port."""

    def __init__(
        self, name: str, data: dict[str, Any], work: Path, *, level: str = "WARNING"
    ) -> None:
        self.name = name
        self.port = free_port()
        doc = {
            **data,
            "state": {"dir": str(work / name / "state")},
            "http": {"listen": f"127.0.0.1:{self.port}"},
        }
        (work / name).mkdir(parents=True, exist_ok=True)
        self.config = work / name / "config.toml"
        self.config.write_text(to_toml(doc))
        self.log_path = work / name / "daemon.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = scenarios.start_daemon(self.config, self._log, level=level)
        self.killed_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metric(self, name: str) -> float:
        """Sum of every series of ``name`` (-1 while the endpoint does not answer)."""
        return scenarios.metric_sum(f"{self.url}/metrics", name)

    def series(self, name: str) -> int:
        return scenarios.metric_count(f"{self.url}/metrics", name)

    def shards(self) -> set[int]:
        status = scenarios.get_json(f"{self.url}/status.json")
        return set(status["instance"]["shards"]) if status else set()

    def cpu(self) -> float:
        return scenarios.cpu_seconds(self.proc.pid)

    def memory(self) -> dict[str, int]:
        """``VmRSS`` and ``VmHWM`` (peak) of the process, in bytes."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    out["rss" if name == "VmRSS" else "peak_rss"] = int(value.split()[0]) * 1024
        return out

    def check(self) -> None:
        if self.proc.poll() is not None and self.killed_at is None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_path}")

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(raw)
                if isinstance(item, dict):
                    out.append(item)
        return out

    def kill(self) -> float:
        self.killed_at = time.time()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        return self.killed_at

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for d in started:
            d.stop()


def wait_for(what: str, check: Any, *, timeout: float, fleet: list[Daemon]) -> float:
    """Poll ``check()`` every second until true; seconds waited."""
    started = time.monotonic()
    while not check():
        for d in fleet:
            d.check()
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(1)
    return time.monotonic() - started


def deployment(
    bootstrap: str, tag: str, sim: SimProcess, opts: Options, **sync: Any
) -> dict[str, Any]:
    """A config for every district of ``sim`` with ``opts.shards`` shards."""
    data = config_data(bootstrap, tag, Path("unused"), sim.districts, **sync)
    data["kafka"]["shards"] = opts.shards
    data["kafka"]["session_timeout"] = f"{opts.session_timeout:g}s"
    data["kafka"]["heartbeat_interval"] = f"{min(3.0, opts.session_timeout / 3):g}s"
    return data


def ids_in_shards(prefix: str, shards: int, per_shard: int) -> list[str]:
    """District ids, ``per_shard`` in every shard."""
    found: dict[int, list[str]] = {n: [] for n in range(shards)}
    n = 0
    while min(len(v) for v in found.values()) < per_shard:
        candidate = f"{prefix}{n:04d}"
        n += 1
        bucket = found[shard_of(candidate, shards)]
        if len(bucket) < per_shard:
            bucket.append(candidate)
    return [d for ids in found.values() for d in ids]


# -- 1. fan-out on one and two instances ----------------------------------------------------


def fanout(bootstrap: str, work: Path, opts: Options) -> dict[str, Any]:
    specs = [
        {"id": f"d{n:04d}", "version": "1.2", "size": "tiny", "seed": n}
        for n in range(opts.districts)
    ]
    tag = f"bench-scale-fan-{uuid.uuid4().hex[:6]}"
    out: dict[str, Any] = {"districts": opts.districts, "poll_interval": opts.poll}
    with SimProcess(specs) as sim, daemons() as fleet:
        data = deployment(bootstrap, tag, sim, opts, poll_interval=f"{opts.poll:g}s")
        ids = [d.id for d in sim.districts]
        one = Daemon("one", data, work / "fanout")
        fleet.append(one)
        out["one_snapshot_seconds"] = wait_for(
            "one instance's first poll of every district",
            lambda: (
                one.series("oneroster_last_success_timestamp_seconds") >= opts.districts * ENTITIES
            ),
            timeout=3600,
            fleet=fleet,
        )
        time.sleep(opts.settle)
        out["one"] = measure([one], opts.window, sim.pid)[0]
        out["one"]["districts"] = opts.districts

        two = Daemon("two", data, work / "fanout")
        fleet.append(two)

        def split() -> bool:
            mine = {d.name: d.shards() for d in fleet}
            if not all(mine.values()) or sorted(s for v in mine.values() for s in v) != list(
                range(opts.shards)
            ):
                return False
            own = sum(1 for d in ids if shard_of(d, opts.shards) in mine["two"])
            return two.series("oneroster_last_success_timestamp_seconds") >= own * ENTITIES

        out["join_seconds"] = wait_for("the split", split, timeout=1800, fleet=fleet)
        time.sleep(opts.settle)
        owned = {d.name: d.shards() for d in fleet}
        figures = measure(fleet, opts.window, sim.pid)
        for d, fig in zip(fleet, figures, strict=True):
            fig["shards"] = sorted(owned[d.name])
            fig["districts"] = sum(1 for i in ids if shard_of(i, opts.shards) in owned[d.name])
        out["two"] = {d.name: fig for d, fig in zip(fleet, figures, strict=True)}
    s1 = out["one"]["core_share"]
    per = [(f["districts"], f["core_share"]) for f in out["two"].values()]
    out["capacity_ratio"] = s1 * sum(n / s for n, s in per) / opts.districts
    out["cpu_ms_per_district_poll"] = {
        "1 instance": 1000 * s1 * opts.poll / opts.districts,
        **{
            f"2 instances: {name}": 1000 * f["core_share"] * opts.poll / max(1, f["districts"])
            for name, f in out["two"].items()
        },
    }
    return out


def measure(fleet: list[Daemon], window: float, sim_pid: int) -> list[dict[str, Any]]:
    """CPU share of each daemon (and of the simulator) over the same window."""
    cpu0 = [d.cpu() for d in fleet]
    sim0, t0, load0 = scenarios.cpu_seconds(sim_pid), time.monotonic(), os.getloadavg()[0]
    time.sleep(window)
    seconds = time.monotonic() - t0
    cpu1 = [d.cpu() for d in fleet]
    sim_share = (scenarios.cpu_seconds(sim_pid) - sim0) / seconds
    for d in fleet:
        d.check()
    return [
        {
            "window": seconds,
            "cpu_seconds": b - a,
            "core_share": (b - a) / seconds,
            "simulator_core_share": sim_share,
            "load_before": round(load0, 2),
            "load_after": round(os.getloadavg()[0], 2),
            "error_series": max(0, d.series("oneroster_errors_total")),
            "state_keys": d.metric("oneroster_state_keys"),
            **d.memory(),
        }
        for d, a, b in zip(fleet, cpu0, cpu1, strict=True)
    ]


# -- 2 and 3. restore of one shard, handover ------------------------------------------------


async def write_state(
    bootstrap: str, data: dict[str, Any], work: Path, opts: Options
) -> dict[str, Any]:
    """``keys_per_shard`` synthetic state keys in every shard, modelled on a real snapshot."""
    config = config_from_mapping({**data, "state": {"dir": str(work / "writer")}}, {})
    service = Service(config)
    await service.start()
    try:
        first = config.districts[0].id
        await service.sync(first, full=True)
        _, kept = await ceilings.read_topics(
            bootstrap, [f"{config.kafka.topic_prefix}.state"], keep=10_000
        )
        model = next(iter(kept.values()))
        started = time.monotonic()
        synthetic = ids_in_shards("synthetic-", opts.shards, 1)
        for district in synthetic:
            await scenarios.write_synthetic_state(
                service, model, opts.keys_per_shard, district=district
            )
        seconds = time.monotonic() - started
    finally:
        await service.close()
    total = opts.keys_per_shard * opts.shards
    return {"keys": total, "write_seconds": seconds, "write_rate": total / seconds}


async def restore_one_vs_all(bootstrap: str, topic: str, work: Path, shards: int) -> dict[str, Any]:
    """Cold restores into empty stores: shard 0's partition alone, then every partition."""
    consumer = {"bootstrap_servers": bootstrap}
    out: dict[str, Any] = {}
    for name, shard in (("one", 0), ("all", None)):
        store = StateStore(work / f"restore-{name}.sqlite")
        try:
            stats = await restore_from_kafka(
                store, topic=topic, consumer_config=consumer, shard=shard, shards=shards
            )
        finally:
            store.close()
        files = work.glob(f"restore-{name}.sqlite*")  # noqa: ASYNC240 - a local tmp dir
        size = sum(f.stat().st_size for f in files)
        out[name] = {
            "keys": stats.records,
            "seconds": stats.seconds,
            "rate": stats.records / stats.seconds,
            "partitions": list(stats.partitions),
            "file_bytes": size,
            "file_bytes_per_key": size / max(1, stats.records),
        }
    out["seconds_ratio"] = out["all"]["seconds"] / out["one"]["seconds"]
    return out


async def committed_changes(
    bootstrap: str, topic: str, keys: set[bytes], expected: int, ready: asyncio.Event
) -> dict[bytes, float]:
    """When each of ``keys`` (filled in after ``ready`` is set) first appears committed in
    ``topic``, read from its end; until ``expected`` keys are seen, or 300 s."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    seen: dict[bytes, float] = {}
    try:
        tps = await ceilings.partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        ready.set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(seen) < expected:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for messages in batch.values():
                for m in messages:
                    if m.key in keys and m.key not in seen:
                        seen[m.key] = now
    finally:
        await consumer.stop()
    return seen


def handover(bootstrap: str, work: Path, opts: Options) -> dict[str, Any]:
    ids = ids_in_shards("h", opts.shards, 2)
    specs = [{"id": d, "version": "1.2", "size": "tiny", "seed": n} for n, d in enumerate(ids)]
    tag = f"bench-scale-ho-{uuid.uuid4().hex[:6]}"
    out: dict[str, Any] = {"shards": opts.shards, "keys_per_shard": opts.keys_per_shard}
    with SimProcess(specs) as sim, daemons() as fleet:
        data = deployment(bootstrap, tag, sim, opts, poll_interval="2s", jitter="0s")
        out["state"] = asyncio.run(write_state(bootstrap, data, work, opts))
        if "restore" in opts.only:
            out["restore"] = asyncio.run(
                restore_one_vs_all(bootstrap, f"{tag}.state", work, opts.shards)
            )
        if "handover" not in opts.only:
            return out
        a = Daemon("a", data, work / "handover", level="INFO")
        fleet.append(a)
        wait_for(
            "a's first polls",
            lambda: a.series("oneroster_last_success_timestamp_seconds") >= len(ids) * ENTITIES,
            timeout=1800,
            fleet=fleet,
        )
        b = Daemon("b", data, work / "handover", level="INFO")
        fleet.append(b)

        def split() -> bool:
            mine = [a.shards(), b.shards()]
            return all(mine) and sorted(mine[0] | mine[1]) == list(range(opts.shards))

        wait_for("the split", split, timeout=600, fleet=fleet)
        wait_for(
            "b ready",
            lambda: scenarios.get_status(f"{b.url}/readyz") == 200,
            timeout=600,
            fleet=fleet,
        )
        moved = a.shards()
        theirs = [d for d in ids if shard_of(d, opts.shards) in moved]
        out["moved_shards"] = sorted(moved)
        out["moved_keys"] = opts.keys_per_shard * len(moved)

        async def kill_and_watch() -> dict[bytes, float]:
            ready = asyncio.Event()
            keys: set[bytes] = set()
            watcher = asyncio.create_task(
                committed_changes(bootstrap, f"{tag}.users", keys, len(theirs), ready)
            )
            await ready.wait()
            a.kill()
            for d in theirs:
                changed, _ = await sim.amutate(d, {"users": [0]})
                keys.update(f"{d}/{sid}".encode() for sid in changed["users"])
            return await watcher

        seen = asyncio.run(kill_and_watch())
        killed = a.killed_at
        assert killed is not None
        delays = sorted(t - killed for t in seen.values())
        out["districts_moved"] = len(theirs)
        out["committed"] = len(seen)
        out["first_commit_seconds"] = delays[0] if delays else None
        out["all_committed_seconds"] = delays[-1] if len(seen) == len(theirs) else None
        out["survivor"] = {"state_keys": b.metric("oneroster_state_keys"), **b.memory()}
        lines = [x for x in b.lines() if _epoch(x) >= killed]
        assigned = [x for x in lines if x.get("event") == "shards.assigned"]
        out["assigned_seconds"] = _epoch(assigned[-1]) - killed if assigned else None
        restored = [x for x in lines if x.get("event") == "state_restored"]
        out["restores"] = [
            {k: x.get(k) for k in ("shard", "records", "seconds", "cold", "partitions")}
            for x in restored
            if x.get("shard") in moved
        ]
    return out


def _epoch(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


# -- report ---------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    m, r, o = report["machine"], report["results"], report["options"]
    lines = [
        f"Scale-out, {report['started']}; machine: {m['cores']} cores ({m['cpu']}), "
        f"{m['ram_gib']} GiB RAM, Python {m['python']}, Kafka {m['kafka']}; load average "
        f"before {report['load_before']}, after {report['load_after']}; "
        f"{report['seconds']:.0f} s.",
        "",
        "| scenario | figure |",
        "| --- | --- |",
    ]
    fan = r.get("fanout")
    if fan:
        lines.append(
            f"| fan-out, {fan['districts']:,} districts, poll {_f(fan['poll_interval'])} s, "
            f"1 instance | {_f(fan['one']['core_share'] * 100, 1)}% of a core "
            f"(simulator {_f(fan['one']['simulator_core_share'] * 100, 1)}%, load "
            f"{fan['one']['load_before']}) |"
        )
        for name, f in fan["two"].items():
            lines.append(
                f"| fan-out, 2 instances: {name} ({f['districts']} districts, shards "
                f"{f['shards']}) | {_f(f['core_share'] * 100, 1)}% of a core (load "
                f"{f['load_before']}) |"
            )
        lines.append(
            f"| capacity of 2 instances / 1 at the same CPU share per instance | "
            f"{_f(fan['capacity_ratio'], 2)} |"
        )
        per = fan["cpu_ms_per_district_poll"]
        lines.append(
            "| CPU per district poll (7 entities) | "
            + ", ".join(f"{k} {_f(v, 2)} ms" for k, v in per.items())
            + " |"
        )
    ho = r.get("handover")
    if ho:
        st = ho["state"]
        lines.append(
            f"| synthetic state | {st['keys']:,} keys in {ho['shards']} shards, written at "
            f"{_f(st['write_rate'])} keys/s |"
        )
        rs = ho.get("restore")
        if rs:
            lines.append(
                f"| cold restore of one shard | {rs['one']['keys']:,} keys in "
                f"{_f(rs['one']['seconds'], 2)} s ({_f(rs['one']['rate'])} keys/s) |"
            )
            lines.append(
                f"| cold restore of the whole state | {rs['all']['keys']:,} keys in "
                f"{_f(rs['all']['seconds'], 2)} s ({_f(rs['all']['rate'])} keys/s); "
                f"{_f(rs['seconds_ratio'], 2)}x one shard's time; SQLite "
                f"{_f(rs['all']['file_bytes_per_key'])} B/key on disk |"
            )
        if "first_commit_seconds" in ho:
            restores = ", ".join(
                f"shard {x['shard']}: {x['records']:,} keys in {x['seconds']} s"
                for x in ho["restores"]
            )
            lines.append(
                f"| handover, SIGKILL of an instance owning shards {ho['moved_shards']} "
                f"({ho['moved_keys']:,} synthetic keys), session timeout "
                f"{_f(report['options']['session_timeout'], 1)} s | first committed change "
                f"{_f(ho['first_commit_seconds'], 2)} s after the kill, all "
                f"{ho['districts_moved']} districts {_f(ho['all_committed_seconds'], 2)} s; "
                f"assignment at {_f(ho['assigned_seconds'], 2)} s; restores: {restores} |"
            )
    del o
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--districts", type=int, default=1000)
    parser.add_argument("--poll", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=120.0)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--keys-per-shard", type=int, default=100_000)
    parser.add_argument("--session-timeout", type=float, default=10.0)
    parser.add_argument("--only", nargs="*", choices=("fanout", "restore", "handover"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temp dir)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    opts = Options(
        args.districts,
        args.poll,
        args.window,
        args.settle,
        args.shards,
        args.keys_per_shard,
        args.session_timeout,
        frozenset(args.only or ("fanout", "restore", "handover")),
    )
    bootstrap = ensure_kafka()
    report: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "options": {k: v for k, v in vars(args).items() if k not in ("out", "work", "only")},
    }
    results: dict[str, Any] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.work) as tmp:
        work = Path(tmp)
        if {"restore", "handover"} & opts.only:
            results["handover"] = handover(bootstrap, work, opts)
        if "fanout" in opts.only:
            results["fanout"] = fanout(bootstrap, work, opts)
    report["seconds"] = time.monotonic() - started
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    report["results"] = results
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    table = markdown(report)
    (args.out / "scale.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
