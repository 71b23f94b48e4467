"""``oneroster-cdc demo``: a local broker, the simulator and the daemon, with events on screen.

1. Kafka: uses the broker of ``config/demo.toml`` when it answers; otherwise starts one with
   ``scripts/kafka start`` (a checkout of this repository) and stops it at the end.
2. The simulator: the same districts as ``oneroster-cdc simulate`` with default options
   (``springfield``, OneRoster 1.2 / OAuth2, and ``shelbyville``, 1.1 / OAuth 1.0a), on
   127.0.0.1:8000, matching ``config/demo.toml``.
3. The daemon, in this process, polling every few seconds.
4. A printer that shows committed events as they arrive (read_committed), and a mutator that
   changes a few records in the simulator every few seconds so deltas keep flowing.
Ctrl+C (or ``--duration``) stops everything gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import structlog

from producer.avro import Schemas
from producer.config import Config, load_config
from producer.daemon import Daemon
from producer.kafka.options import connection_options, consumer_options
from producer.kafka.probe import broker_answers
from producer.kafka.reader import TopicReader
from producer.kafka.topics import TopicNames
from producer.logs import register_secrets
from producer.model import ENTITIES
from producer.simulator import DistrictSpec, Simulator
from producer.tail import format_event

log = structlog.get_logger(__name__)

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = ROOT / "scripts" / "kafka"
DEMO_CONFIG = ROOT / "config" / "demo.toml"
#: Event lines printed per second at most (a snapshot emits thousands); the rest are counted.
MAX_LINES_PER_SECOND = 15


def demo_districts() -> list[DistrictSpec]:
    """The simulator's default districts, as ``config/demo.toml`` expects them."""
    return [
        DistrictSpec(id="springfield", version="1.2", size="small", seed=1),
        DistrictSpec(id="shelbyville", version="1.1", size="small", seed=2),
    ]


async def _printer(config: Config, counts: Counter[str]) -> None:
    """Print committed events of every entity as they arrive (rate-limited)."""
    schemas = Schemas.load()
    names = TopicNames(config.kafka.topic_prefix)
    reader = TopicReader(
        consumer_options(config.kafka),
        *(names.events(e) for e in ENTITIES),
        action="demo: reading events",
    )
    shown = 0
    async with reader:
        await reader.seek_to_end()
        loop = asyncio.get_running_loop()
        window = loop.time()
        while True:
            messages = await reader.poll(1000)
            for m in messages:
                if m.value is None:
                    continue
                envelope = schemas.decode(m.value).value
                counts[envelope["op"]] += 1
                if loop.time() - window >= 1.0:
                    window, shown = loop.time(), 0
                if shown < MAX_LINES_PER_SECOND:
                    print(format_event(envelope), flush=True)
                    shown += 1
            if messages:
                print(
                    f"-- committed so far: created={counts['CREATED']} "
                    f"updated={counts['UPDATED']} deleted={counts['DELETED']}",
                    flush=True,
                )


async def _mutator(sim: Simulator, interval: float = 4.0) -> None:
    """Every few seconds: rename a user, add one, and retire an enrollment."""
    rng = random.Random(7)  # noqa: S311 - demo data, not cryptography
    n = 0
    while True:
        await asyncio.sleep(interval)
        for district in sim.districts:
            users = sorted(district.truth_state("users"))
            enrollments = sorted(district.truth_state("enrollments"))
            if users:
                district.update("users", rng.choice(users), familyName=f"Demo{n}")
            district.create("users", {"givenName": f"New{n}", "familyName": "Student"})
            if enrollments:
                district.mark_tobedeleted("enrollments", rng.choice(enrollments))
            n += 1


def _pointed_at(config: Config, sim: Simulator) -> Config:
    """``config`` with its districts' URLs pointed at the running simulator (any port)."""
    districts = []
    for district in config.districts:
        try:
            found = sim.district(district.id)
        except KeyError:
            districts.append(district)
            continue
        update: dict[str, str] = {"base_url": found.base_url}
        if district.token_url is not None:
            update["token_url"] = found.token_url
        districts.append(district.model_copy(update=update))
    return config.model_copy(update={"districts": tuple(districts)})


async def run_demo(args: argparse.Namespace, *, config_path: Path | None) -> int:
    """Run the demo until Ctrl+C or ``--duration``; the exit code."""
    config = load_config(config_path or DEMO_CONFIG, os.environ)
    register_secrets(config.secrets())
    started_kafka = False
    # A broker we start listens where the config expects one.
    port = config.kafka.bootstrap_servers[0].rpartition(":")[2]
    kafka_env = {**os.environ, "KAFKA_PORT": port}
    if not await broker_answers(connection_options(config.kafka, role="demo")):
        if not KAFKA_SCRIPT.exists():
            print("demo: no broker answers and scripts/kafka is not here", file=sys.stderr)
            return 1
        print("demo: starting a local Kafka broker (scripts/kafka start) ...", flush=True)
        await asyncio.to_thread(
            subprocess.run, [str(KAFKA_SCRIPT), "start"], check=True, env=kafka_env
        )
        started_kafka = True
    sim = Simulator(demo_districts())
    counts: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with sim.serve("127.0.0.1", args.port) as root:
            daemon = Daemon(_pointed_at(config, sim))
            stop_waiter = asyncio.create_task(stop.wait())
            stop_waiter.add_done_callback(lambda _: daemon.stop())
            print(
                f"demo: simulator on {root}; daemon starting (config {config_path or DEMO_CONFIG})"
            )
            running = asyncio.create_task(daemon.run(install_signals=False))
            await daemon.started.wait()
            if daemon.http is not None:
                print(f"demo: {daemon.http.url}/metrics  {daemon.http.url}/readyz", flush=True)
            helpers = [
                asyncio.create_task(_printer(config, counts)),
                asyncio.create_task(_mutator(sim)),
            ]
            if args.duration is not None:
                loop.call_later(args.duration, daemon.stop)
            code = await running
            stop_waiter.cancel()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if started_kafka:
            await asyncio.to_thread(
                subprocess.run, [str(KAFKA_SCRIPT), "stop"], check=False, env=kafka_env
            )
    print(
        f"demo: done: created={counts['CREATED']} updated={counts['UPDATED']} "
        f"deleted={counts['DELETED']}",
        flush=True,
    )
    return code
