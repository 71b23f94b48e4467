"""``python -m bench --size S|M|L [--out DIR] [--only SCENARIO ...]``: run every scenario once
on the same data and write ``<out>/bench-<size>.json`` and ``<out>/bench-<size>.md``.

Kafka: ``KAFKA_BOOTSTRAP`` when set, else 127.0.0.1:9092 when it answers, else
``scripts/kafka start``. The simulator runs in a child process (:mod:`bench.sim`); the fan-out
daemon and the memory scenario run in processes of their own. Topics get a unique prefix
(``bench-<size>-<hex>``) and are left behind (the broker is a scratch broker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiokafka
import structlog

from bench import ceilings, scenarios
from bench.sim import SimDistrict, SimProcess
from producer.config import Config, config_from_mapping
from producer.kafka.options import producer_options
from producer.kafka.topics import TopicNames
from producer.model import ENTITIES
from producer.service import Service
from producer.simulator.auth import ALL_SCOPES

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Size:
    """What one size runs."""

    name: str
    district: str  # simulator size of the main district
    keys: int  # synthetic state keys for restore and memory
    fanout_districts: int
    fanout_poll: float
    fanout_window: float
    fanout_settle: float
    latency_poll: float
    latency_samples: int
    latency_gap: float
    memory_sync: bool  # snapshot the main district on top of the keys in the memory child


SIZES = {
    "S": Size("S", "small", 10_000, 20, 5.0, 10.0, 2.0, 1.0, 6, 0.5, True),
    # The fan-out window starts 70 s after the snapshots (past one 60 s poll and its jitter):
    # the first delta round after a snapshot commits every entity's checkpoint once, which is
    # not the steady state the goal is about.
    "M": Size("M", "medium", 1_000_000, 1000, 60.0, 180.0, 70.0, 5.0, 60, 2.5, True),
    "L": Size("L", "large", 1_000_000, 1000, 60.0, 180.0, 70.0, 5.0, 60, 2.5, False),
}

SCENARIOS = (
    "http",
    "snapshot",
    "nochange",
    "delta",
    "latency",
    "consume",
    "produce",
    "restore",
    "memory",
    "peer",
    "fanout",
)


# -- environment ----------------------------------------------------------------------------


def broker_answers(bootstrap: str) -> bool:
    host, _, port = bootstrap.partition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def ensure_kafka() -> str:
    """The bootstrap servers of a running broker, starting ``scripts/kafka`` when none."""
    given = os.environ.get("KAFKA_BOOTSTRAP")
    if given:
        return given
    if broker_answers("127.0.0.1:9092"):
        return "127.0.0.1:9092"
    subprocess.run([str(ROOT / "scripts" / "kafka"), "start"], check=True)
    return "127.0.0.1:9092"


def kafka_version() -> str:
    try:
        out = subprocess.run(
            [str(ROOT / "scripts" / "kafka"), "version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return out.stdout.strip().splitlines()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def machine() -> dict[str, Any]:
    mem = 0
    model = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import confluent_kafka  # noqa: PLC0415

        rdk = confluent_kafka.libversion()[0]
    except ImportError:
        rdk = None
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "ram_gib": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "kafka": kafka_version(),
        "aiokafka": aiokafka.__version__,
        "librdkafka": rdk,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- config ---------------------------------------------------------------------------------


def district_entry(d: SimDistrict, **overrides: Any) -> dict[str, Any]:
    """A ``[[districts]]`` table with the product's defaults (page size, concurrency)."""
    entry: dict[str, Any] = {
        "id": d.id,
        "base_url": d.base_url,
        "version": d.version,
        "auth": d.auth,
        "client_id": d.client_id,
        "client_secret": d.client_secret,
    }
    if d.auth == "oauth2":
        entry["token_url"] = d.token_url
        entry["scopes"] = list(ALL_SCOPES)
    return {**entry, **overrides}


def config_data(
    bootstrap: str, prefix: str, state_dir: Path, districts: list[SimDistrict], **sync: Any
) -> dict[str, Any]:
    """Product defaults except the topic prefix, a single partition count and ``sync``."""
    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topic_prefix": prefix,
            "client_id": prefix,
            "replication_factor": 1,
        },
        "sync": sync,
        "state": {"dir": str(state_dir)},
        "http": {"enabled": False},
        "districts": [district_entry(d) for d in districts],
    }


def to_toml(data: dict[str, Any]) -> str:
    """Enough TOML for a config: scalars, string lists, inline tables, tables and arrays of
    tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(str(v))

    lines: list[str] = []
    for section, body in data.items():
        tables = body if isinstance(body, list) else [body]
        for table in tables:
            lines.append(f"[[{section}]]" if isinstance(body, list) else f"[{section}]")
            lines.extend(f"{k} = {value(v)}" for k, v in table.items())
            lines.append("")
    return "\n".join(lines)


# -- the run --------------------------------------------------------------------------------


def ratio(value: float | None, ceiling: float | None) -> float | None:
    if value is None or not ceiling:
        return None
    return value / ceiling


@dataclass(slots=True)
class _Run:
    """What the scenarios of one run share."""

    size: Size
    bootstrap: str
    work: Path
    only: set[str]
    results: dict[str, Any]
    sim: SimProcess
    district: SimDistrict
    entities: list[str]
    config: Config
    tag: str
    #: State records of the snapshot, read back (the model of the synthetic keys).
    state: list[ceilings.Message] = field(default_factory=list)


async def run_main(
    size: Size, bootstrap: str, work: Path, only: set[str], results: dict[str, Any]
) -> None:
    """Every scenario on the main district (all but fan-out), in an order that reuses data."""
    tag = f"bench-{size.name.lower()}-{uuid.uuid4().hex[:6]}"
    spec = {"id": "bench", "version": "1.2", "size": size.district, "seed": 1}
    with SimProcess([spec]) as sim:
        district = sim.district("bench")
        results["district"] = {"size": size.district, "records": district.records}
        data = config_data(
            bootstrap,
            tag,
            work / "state",
            [district],
            poll_interval=f"{size.latency_poll}s",
            jitter="0s",
        )
        run = _Run(
            size,
            bootstrap,
            work,
            only,
            results,
            sim,
            district,
            [e for e in ENTITIES if e in district.counts],
            config_from_mapping(data, {}),
            tag,
        )
        if "http" in only:
            await _http(run)
        await _syncs(run)
        if {"consume", "produce", "restore", "memory"} & only:
            consume, kept = await ceilings.read_topics(
                bootstrap, [run.config.kafka.topic_prefix + ".state"], keep=400_000
            )
            run.state = next(iter(kept.values()))
            results["consume_snapshot_state"] = {
                "messages": consume.count,
                "seconds": consume.seconds,
                "rate": consume.rate,
            }
        if "produce" in only and "snapshot" in results:
            await _produce(run)
        if {"restore", "memory"} & only:
            await _keys(run)
        if "peer" in only:
            await _peer(run)


async def _http(run: _Run) -> None:
    """Ceiling 1a, twice (the better run counts: the machine is shared)."""
    dcfg = run.config.districts[0]
    runs = [
        await ceilings.http_ceiling(
            run.district,
            entities=run.entities,
            page_size=dcfg.page_size,
            concurrency=dcfg.concurrency,
        )
        for _ in range(2)
    ]
    best = max(runs, key=lambda f: f.rate)
    run.results["http"] = {
        "records": best.count,
        "seconds": best.seconds,
        "rate": best.rate,
        "runs": [r.rate for r in runs],
        "pages": best.extra["pages"],
        "cpu_share": best.extra["cpu_share"],
        "page_size": dcfg.page_size,
        "concurrency": dcfg.concurrency,
    }


async def _syncs(run: _Run) -> None:
    """Scenarios 2, 3, 4 and 9 on one service, in that order."""
    only, results, district = run.only, run.results, run.district
    service = Service(run.config)
    await service.start()
    counter = scenarios.CommitCounter(service)
    try:
        if "snapshot" in only:
            results["snapshot"] = await scenarios.timed_sync(service, district.id, full=True)
            results["snapshot"]["commits"] = counter.commits
            results["snapshot"]["messages"] = counter.messages
        if "nochange" in only:
            results["nochange"] = await scenarios.timed_sync(service, district.id, full=True)
        if "delta" in only:
            results["delta"] = await scenarios.delta(service, run.sim, district, 0.01)
        if "latency" in only:
            results["latency"] = await scenarios.latency(
                service,
                run.sim,
                district,
                samples=run.size.latency_samples,
                mean_gap=run.size.latency_gap,
                bootstrap=run.bootstrap,
            )
    finally:
        await service.close()


async def _produce(run: _Run) -> None:
    """Ceilings 1b and 1c: the snapshot's messages, read back, produced again."""
    config, snap = run.config, run.results["snapshot"]
    topics = TopicNames(config.kafka.topic_prefix)
    _, messages = await ceilings.read_topics(
        run.bootstrap, [topics.events(e) for e in run.entities], keep=400_000
    )
    messages[topics.state] = run.state
    per_txn = max(1, round(snap["messages"] / max(1, snap["commits"])))
    target = f"ceil-{uuid.uuid4().hex[:6]}"
    await ceilings.create_topics(
        run.bootstrap,
        {f"{target}.{t}": config.kafka.partitions for t in messages},
        compact={f"{target}.{topics.state}"},
    )
    txns = ceilings.plan(messages, total=snap["messages"], per_txn=per_txn, prefix=target)
    sent = sum(len(t) for t in txns)
    aio = await ceilings.aiokafka_produce(run.bootstrap, txns, producer_options(config.kafka))
    run.results["produce_aiokafka"] = {
        "messages": aio.count,
        "seconds": aio.seconds,
        "rate": aio.rate,
        "records_rate": snap["records"] * sent / snap["messages"] / aio.seconds,
        "per_txn": per_txn,
        "bytes": sum(len(m[2] or b"") + len(m[1] or b"") for t in txns for _, m in t),
        "compression": config.kafka.compression,
    }
    batch = await ceilings.aiokafka_batch_produce(
        run.bootstrap, txns, producer_options(config.kafka)
    )
    run.results["produce_aiokafka_batch"] = {
        "messages": batch.count,
        "seconds": batch.seconds,
        "rate": batch.rate,
        "records_rate": snap["records"] * sent / snap["messages"] / batch.seconds,
    }
    try:
        rdk = ceilings.librdkafka_produce(run.bootstrap, txns, config.kafka.compression)
    except ImportError as exc:
        run.results["produce_librdkafka"] = {"unavailable": f"confluent-kafka: {exc}"}
        return
    run.results["produce_librdkafka"] = {
        "messages": rdk.count,
        "seconds": rdk.seconds,
        "rate": rdk.rate,
        "records_rate": snap["records"] * sent / snap["messages"] / rdk.seconds,
        **rdk.extra,
    }


async def _keys(run: _Run) -> None:
    """Scenarios 5 and 6 on synthetic keys (ceiling 1d is the raw consume of their topic)."""
    syn = f"{run.tag}-keys"
    keys = run.size.keys
    syn_config = config_from_mapping(
        config_data(run.bootstrap, syn, run.work / "keys-writer", [run.district]), {}
    )
    writer_service = Service(syn_config)
    await writer_service.start()
    try:
        wrote = await scenarios.write_synthetic_state(writer_service, run.state, keys)
    finally:
        await writer_service.close()
    run.results["synthetic_keys"] = {
        "keys": keys,
        "write_seconds": wrote.seconds,
        "write_rate": wrote.rate,
        "note": "state records of district 'synthetic' whose values and digests are "
        "cycled from the snapshot's state records, written by TransactionalWriter",
    }
    if "restore" in run.only:
        raw, _ = await ceilings.read_topics(run.bootstrap, [f"{syn}.state"])
        cold = await scenarios.cold_restore(
            syn_config, f"{syn}.state", run.work / "cold" / "store.sqlite"
        )
        warm = await scenarios.warm_restart(syn_config)
        run.results["restore"] = {
            "raw_consume_rate": raw.rate,
            "raw_consume_messages": raw.count,
            "cold_keys": cold.count,
            "cold_seconds": cold.seconds,
            "cold_rate": cold.rate,
            "warm_keys": warm.count,
            "warm_start_seconds": warm.seconds,
        }
    if "memory" in run.only:
        mem_data = config_data(run.bootstrap, syn, run.work / "keys-memory", [run.district])
        path = run.work / "memory.toml"
        path.write_text(to_toml(mem_data))
        mem = scenarios.memory_child(path, run.district.id if run.size.memory_sync else None)
        mem["bytes_per_key"] = mem["peak_rss"] / max(1, mem["keys"])
        mem["bytes_per_key_over_baseline"] = (mem["peak_rss"] - mem["baseline_rss"]) / max(
            1, mem["keys"]
        )
        run.results["memory"] = mem


async def _peer(run: _Run) -> None:
    """Scenario 8: 50 ms added to every request; a serial pager against ours."""
    dcfg, district = run.config.districts[0], run.district
    run.sim.set_faults(district.id, rate=1.0, kinds=("latency",), latency=0.05)
    try:
        serial = await scenarios.serial_pager(district, run.entities, dcfg.page_size)
        ours = await scenarios.our_pager(district, run.entities, dcfg.page_size, dcfg.concurrency)
        ours8 = await scenarios.our_pager(district, run.entities, dcfg.page_size, 8)
    finally:
        run.sim.set_faults(district.id)
    run.results["peer"] = {
        "added_latency": 0.05,
        "serial_rate": serial.rate,
        "serial_seconds": serial.seconds,
        "ours_rate": ours.rate,
        "ours_seconds": ours.seconds,
        "ours_concurrency": dcfg.concurrency,
        "speedup": ours.rate / serial.rate,
        "ours8_rate": ours8.rate,
        "speedup8": ours8.rate / serial.rate,
        "records": ours.count,
    }


def run_fanout(
    size: Size, bootstrap: str, work: Path, results: dict[str, Any], **sync: Any
) -> None:
    """Scenario 7 (``sync``: further ``[sync]`` settings of the daemon)."""
    tag = f"bench-{size.name.lower()}-fan-{uuid.uuid4().hex[:6]}"
    specs = [
        {"id": f"d{n:04d}", "version": "1.2", "size": "tiny", "seed": n}
        for n in range(size.fanout_districts)
    ]
    with SimProcess(specs) as sim:
        port = free_port()
        data = config_data(
            bootstrap,
            tag,
            work / "fan-state",
            sim.districts,
            poll_interval=f"{size.fanout_poll}s",
            **sync,
        )
        data["http"] = {"listen": f"127.0.0.1:{port}"}
        path = work / "fanout.toml"
        path.write_text(to_toml(data))
        entities = len(sim.districts[0].counts)
        sim_cpu0 = scenarios.cpu_seconds(sim.pid)
        out = scenarios.fanout(
            path,
            f"http://127.0.0.1:{port}/metrics",
            expected=size.fanout_districts * entities,
            window=size.fanout_window,
            settle=size.fanout_settle,
            timeout=3600,
            log_path=work / "fanout.log",
        )
        out["simulator_cpu_seconds_total"] = scenarios.cpu_seconds(sim.pid) - sim_cpu0
    out["districts"] = size.fanout_districts
    out["poll_interval"] = size.fanout_poll
    results["fanout"] = out


# -- report ---------------------------------------------------------------------------------


def goals(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Every goal of issues 7 and 13 with its figure (None when the scenario did not run); the
    targets are issue 13's where it tightened issue 7's (warm restart under 1 s)."""
    get = lambda *path: _dig(r, path)  # noqa: E731
    snap_ceiling = (
        min(x for x in (get("http", "rate"), get("produce_aiokafka", "records_rate")) if x)
        if (get("http", "rate") or get("produce_aiokafka", "records_rate"))
        else None
    )
    out = [
        (
            "snapshot / min(HTTP, aiokafka produce)",
            ratio(get("snapshot", "rate"), snap_ceiling),
            ">=",
            0.8,
        ),
        (
            "no-change re-read / HTTP",
            ratio(get("nochange", "rate"), get("http", "rate")),
            ">=",
            0.9,
        ),
        ("pager speedup vs serial (50 ms)", get("peer", "speedup"), ">=", 4.0),
        (
            "cold restore / raw consume",
            ratio(get("restore", "cold_rate"), get("restore", "raw_consume_rate")),
            ">=",
            0.8,
        ),
        ("warm restart (s)", get("restore", "warm_start_seconds"), "<", 1.0),
        ("peak RSS (MB)", (get("memory", "peak_rss") or 0) / 1e6 or None, "<=", 200.0),
        ("fan-out core share", get("fanout", "core_share"), "<=", 0.10),
        (
            "p99 change-to-event (s)",
            get("latency", "p99"),
            "<=",
            (get("latency", "poll_interval") or 0) + 1.0,
        ),
    ]
    rows = []
    for name, value, op, target in out:
        ok = None
        if value is not None and not math.isnan(value):
            ok = {"<": value < target, "<=": value <= target, ">=": value >= target}[op]
        rows.append({"goal": name, "value": value, "op": op, "target": target, "met": ok})
    return rows


def _dig(r: dict[str, Any], path: tuple[str, ...]) -> Any:
    for p in path:
        if not isinstance(r, dict) or p not in r:
            return None
        r = r[p]
    return r


def _f(v: Any, digits: int = 0) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    m = report["machine"]
    get = lambda *path: _dig(r, path)  # noqa: E731
    lines = [
        f"Size **{report['size']}** ({_f(get('district', 'records'))} records in the main "
        f"district), {report['started']}; machine: {m['cores']} cores ({m['cpu']}), "
        f"{m['ram_gib']} GiB RAM, Python {m['python']}, Kafka {m['kafka']}, aiokafka "
        f"{m['aiokafka']}, librdkafka {m['librdkafka']}; load average before "
        f"{report['load_before']}, after {report['load_after']}; {report['seconds']:.0f} s.",
        "",
        "| scenario | figure | ceiling (same run) | ratio |",
        "| --- | --- | --- | --- |",
    ]

    def row(name: str, figure: str, ceiling: str = "", rat: float | None = None) -> None:
        lines.append(f"| {name} | {figure} | {ceiling} | {_f(rat, 2) if rat is not None else ''} |")

    row(
        "1a HTTP ceiling (aiohttp+orjson)",
        f"{_f(get('http', 'rate'))} records/s, client CPU {_f(get('http', 'cpu_share'), 2)} core",
    )
    row(
        "1b aiokafka transactional produce",
        f"{_f(get('produce_aiokafka', 'rate'))} msgs/s = "
        f"{_f(get('produce_aiokafka', 'records_rate'))} records/s",
    )
    row(
        "1b' aiokafka batch API (create_batch/send_batch)",
        f"{_f(get('produce_aiokafka_batch', 'rate'))} msgs/s",
        "aiokafka send",
        ratio(get("produce_aiokafka_batch", "rate"), get("produce_aiokafka", "rate")),
    )
    rdk = get("produce_librdkafka", "rate")
    row(
        "1c librdkafka (confluent-kafka) produce",
        f"{_f(rdk)} msgs/s = {_f(get('produce_librdkafka', 'records_rate'))} records/s"
        if rdk
        else str(get("produce_librdkafka", "unavailable")),
        "aiokafka",
        ratio(rdk, get("produce_aiokafka", "rate")),
    )
    row(
        "1d raw read_committed consume (state)",
        f"{_f(get('restore', 'raw_consume_rate'))} msgs/s"
        f" ({_f(get('restore', 'raw_consume_messages'))} keys)",
    )
    ceiling = [x for x in (get("http", "rate"), get("produce_aiokafka", "records_rate")) if x]
    row(
        "2 snapshot (full first sync)",
        f"{_f(get('snapshot', 'rate'))} records/s ({_f(get('snapshot', 'seconds'), 1)} s, "
        f"CPU {_f(get('snapshot', 'cpu_share'), 2)} core)",
        f"min(HTTP, produce) {_f(min(ceiling) if ceiling else None)}",
        ratio(get("snapshot", "rate"), min(ceiling) if ceiling else None),
    )
    row(
        "3 no-change full re-read",
        f"{_f(get('nochange', 'rate'))} records/s (CPU {_f(get('nochange', 'cpu_share'), 2)} core)",
        f"HTTP {_f(get('http', 'rate'))}",
        ratio(get("nochange", "rate"), get("http", "rate")),
    )
    row(
        "4 delta, 1% changed",
        f"{_f(get('delta', 'changed'))} changes: poll start to committed "
        f"checkpoint {_f(get('delta', 'seconds'), 2)} s",
    )
    row(
        "5 cold restore",
        f"{_f(get('restore', 'cold_rate'))} keys/s",
        f"raw consume {_f(get('restore', 'raw_consume_rate'))}",
        ratio(get("restore", "cold_rate"), get("restore", "raw_consume_rate")),
    )
    row(
        f"5 warm restart ({_f(get('restore', 'warm_keys'))} keys)",
        f"{_f(get('restore', 'warm_start_seconds'), 2)} s (whole Service.start)",
    )
    mem = get("memory", "peak_rss")
    row(
        f"6 peak RSS ({_f(get('memory', 'keys'))} keys)",
        f"{_f(mem / 1e6 if mem else None)} MB = {_f(get('memory', 'bytes_per_key'))} B/key "
        f"({_f(get('memory', 'bytes_per_key_over_baseline'))} B/key over the "
        f"{_f((get('memory', 'baseline_rss') or 0) / 1e6)} MB baseline)",
    )
    row(
        f"7 fan-out ({_f(get('fanout', 'districts'))} districts, poll "
        f"{_f(get('fanout', 'poll_interval'))} s)",
        f"{_f((get('fanout', 'core_share') or 0) * 100, 1)}% of one core over "
        f"{_f(get('fanout', 'window'))} s",
    )
    row("8 peer: serial pager, 50 ms/request", f"{_f(get('peer', 'serial_rate'))} records/s")
    row(
        f"8 peer: our pager (concurrency {_f(get('peer', 'ours_concurrency'))})",
        f"{_f(get('peer', 'ours_rate'))} records/s",
        "serial",
        get("peer", "speedup"),
    )
    row(
        "8 peer: our pager (concurrency 8)",
        f"{_f(get('peer', 'ours8_rate'))} records/s",
        "serial",
        get("peer", "speedup8"),
    )
    row(
        f"9 change -> committed event (poll {_f(get('latency', 'poll_interval'))} s)",
        f"p50 {_f(get('latency', 'p50'), 2)} s, p99 {_f(get('latency', 'p99'), 2)} s "
        f"({_f(get('latency', 'samples'))} samples)",
    )
    lines += ["", "| goal | value | target | met |", "| --- | --- | --- | --- |"]
    for g in report["goals"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[g["met"]]
        lines.append(f"| {g['goal']} | {_f(g['value'], 2)} | {g['op']} {g['target']} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="S")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, help="a subset of scenarios")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temp dir)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    size = SIZES[args.size]
    only = set(args.only or SCENARIOS)
    bootstrap = ensure_kafka()
    report: dict[str, Any] = {
        "size": size.name,
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "bootstrap": bootstrap,
    }
    results: dict[str, Any] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-", dir=args.work) as tmp:
        work = Path(tmp)
        asyncio.run(run_main(size, bootstrap, work, only, results))
        if "fanout" in only:
            run_fanout(size, bootstrap, work, results)
    report["seconds"] = time.monotonic() - started
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    report["results"] = results
    report["goals"] = goals(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"bench-{size.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / f"bench-{size.name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SIZES", "Config", "main"]
