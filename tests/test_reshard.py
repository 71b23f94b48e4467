"""Moving a deployment of the unsharded layout (0.1.0 / 0.2.0) to the sharded one with
``oneroster-cdc reshard``, and the one-shot commands beside a live group (subprocesses of
``oneroster-cdc`` against the simulator and the real broker)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from producer.config import KafkaConfig, config_from_mapping
from producer.errors import NotShardedLayout
from producer.kafka.fleet import describe_fleet
from producer.kafka.layout import check_layout, latest_records
from producer.kafka.reader import TopicReader
from producer.kafka.shards import SHARDS_HEADER, shard_of
from producer.kafka.topics import TopicNames
from producer.model import ENTITIES
from producer.service import Service
from producer.simulator import DistrictSpec, Simulator
from tests.checker import compare_with_truth, rebuild, truth_snapshot
from tests.conftest import ROOT, ServeSimulator
from tests.harness import config_document, write_config
from tests.reliability_helpers import _env, cli_command, eventually, parse_log_lines, run_cli

pytestmark = pytest.mark.integration

#: Partitions of the event and state topics of the unsharded deployment (``kafka.partitions``).
PARTITIONS = 3
#: Shards it moves to: the state topic grows from 3 to 4 partitions, the checkpoints from 1.
SHARDS = 4
DISTRICTS = ("rs-a", "rs-b", "rs-c", "rs-d", "rs-e")


@pytest.fixture
async def sim(serve_simulator: ServeSimulator) -> Simulator:
    """Five tiny districts (1.2 and 1.1), spread over the shards."""
    return await serve_simulator(
        [
            DistrictSpec(id=d, version="1.2" if n % 2 else "1.1", size="tiny", seed=40 + n)
            for n, d in enumerate(DISTRICTS)
        ]
    )


def document(sim: Simulator, bootstrap: str, prefix: str, state_dir: Path) -> dict[str, Any]:
    """The deployment's config, with ``kafka.shards = SHARDS``."""
    doc = config_document(
        sim,
        bootstrap=bootstrap,
        prefix=prefix,
        state_dir=state_dir,
        sync={"mass_delete_threshold": 0.5},
    )
    doc["kafka"]["partitions"] = PARTITIONS
    doc["kafka"]["shards"] = SHARDS
    return doc


async def read(bootstrap: str, topic: str) -> list[Any]:
    """Every committed record of ``topic`` (with its partition), partition by partition."""
    async with TopicReader({"bootstrap_servers": bootstrap}, topic, action=f"test: {topic}") as r:
        return list(await r.read_all())


def latest_live(messages: list[Any]) -> dict[bytes, Any]:
    """The latest record of each key, when it is not a tombstone."""
    out: dict[bytes, Any] = {}
    for m in messages:
        if m.value is None:
            out.pop(m.key, None)
        else:
            out[m.key] = m
    return out


async def write_unsharded_copy(bootstrap: str, source: str, target: str) -> None:
    """Lay out under ``target`` the deployment synced under ``source`` as 0.1.0 and 0.2.0 wrote
    it: the same events, dead letters and schemas in the same partitions; the state topic with
    ``PARTITIONS`` partitions and each record in Kafka's default partition of its key (murmur2 of
    ``<entity>/<district>/<sourcedId>``); the checkpoints topic with one partition and no
    ``shards`` header."""
    src, dst = TopicNames(source), TopicNames(target)
    history = {"cleanup.policy": "delete"}
    compact = {"cleanup.policy": "compact"}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                *(NewTopic(dst.events(e), PARTITIONS, 1, topic_configs=history) for e in ENTITIES),
                NewTopic(dst.deadletter, PARTITIONS, 1, topic_configs=history),
                NewTopic(dst.state, PARTITIONS, 1, topic_configs=compact),
                NewTopic(dst.checkpoints, 1, 1, topic_configs=compact),
                NewTopic(dst.schemas, 1, 1, topic_configs=compact),
            ]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        sent = []
        pairs = [(src.events(e), dst.events(e)) for e in ENTITIES]
        pairs += [(src.deadletter, dst.deadletter), (src.schemas, dst.schemas)]
        for old, new in pairs:
            sent.extend(
                [
                    await producer.send(
                        new, m.value, key=m.key, partition=m.partition, headers=list(m.headers)
                    )
                    for m in await read(bootstrap, old)
                ]
            )
        for m in latest_live(await read(bootstrap, src.state)).values():
            partition = (murmur2(m.key) & 0x7FFFFFFF) % PARTITIONS
            sent.append(
                await producer.send(
                    dst.state, m.value, key=m.key, partition=partition, headers=list(m.headers)
                )
            )
        for m in latest_live(await read(bootstrap, src.checkpoints)).values():
            headers = [(k, v) for k, v in m.headers if k != SHARDS_HEADER]
            sent.append(
                await producer.send(
                    dst.checkpoints, m.value, key=m.key, partition=0, headers=headers
                )
            )
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def mutate(sim: Simulator) -> None:
    """Changes in every district: updates, tobedeleted, creations and two hard deletes."""
    sim.advance_clock(60)
    for district_id in DISTRICTS:
        d = sim.district(district_id)
        users = sorted(d.truth_state("users"))
        for sid in users[:3]:
            d.update("users", sid, familyName=f"Resharded-{sid[-4:]}")
        d.mark_tobedeleted("users", users[3])
        d.create("users", {"givenName": f"New-{district_id}"})
        for sid in sorted(d.truth_state("enrollments"))[:2]:
            d.hard_delete("enrollments", sid)
        d.update("classes", sorted(d.truth_state("classes"))[0], title="Resharded class")


async def interrupted_reshard(config: Path, logs: Path, topic: str, after: int) -> int:
    """Run ``reshard --batch 1`` and SIGKILL it once ``after`` of its transactions on ``topic``
    committed; returns how many had (a crash in the middle of the move)."""
    logs.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a local tmp dir, instant
    err_path = logs / f"reshard-killed-{topic}.err"
    argv = [*cli_command(), "--config", str(config), "--log-format", "json", "reshard"]
    with err_path.open("wb") as err:
        proc = subprocess.Popen(  # noqa: ASYNC220 - polled asynchronously below
            [*argv, "--batch", "1"], stdout=subprocess.DEVNULL, stderr=err, env=_env(), cwd=ROOT
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                lines = parse_log_lines(err_path.read_text(errors="replace"))
                done = [
                    x
                    for x in lines
                    if x.get("event") == "reshard.transaction_committed" and x["topic"] == topic
                ]
                if len(done) >= after:
                    proc.send_signal(signal.SIGKILL)
                    break
                assert proc.poll() is None, f"reshard ended first: {lines[-5:]}"
                assert time.monotonic() < deadline, "reshard committed too little in 120 s"
                await asyncio.sleep(0.005)
        finally:
            proc.kill()
            proc.wait()
    lines = parse_log_lines(err_path.read_text(errors="replace"))
    assert not any(x.get("event") == "reshard.done" for x in lines), "not interrupted"
    return sum(
        x.get("event") == "reshard.transaction_committed" and x["topic"] == topic for x in lines
    )


async def strays(bootstrap: str, prefix: str) -> list[str]:
    """Live state and checkpoint records outside their district's shard partition."""
    topics = TopicNames(prefix)
    out = []
    for topic, district_at in ((topics.state, 1), (topics.checkpoints, 0)):
        found = await latest_records({"bootstrap_servers": bootstrap}, topic, action="test")
        for (partition, key), record in found.items():
            district = key.decode().split("/")[district_at]
            if record.value is not None and partition != shard_of(district, SHARDS):
                out.append(f"{topic} {key.decode()} in {partition}")
    return out


@pytest.mark.timeout(600)
async def test_reshard_moves_an_unsharded_deployment_and_the_stream_stays_exactly_once(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """A deployment in the unsharded layout (state by murmur2 of the record key over 3
    partitions, one checkpoints partition, no ``shards`` header) is refused by the layout check.
    ``reshard`` SIGKILLed after two of its transactions on the state, then a second one killed
    after two on the checkpoints, leave it refused still; a third run fences (shard-0 and, as
    checkpoints for 4 shards exist, shard-1..3), finds the topics grown (state 3 -> 4,
    checkpoints 1 -> 4) and the state moved, moves the remaining checkpoints into their shard's
    partition (with the header) and touches no event; a fourth run has nothing to move. Then
    ``sync --all`` and ``sync --all --full`` continue from the committed cursors: the events
    before and after form one exactly-once stream (0 lost, 0 duplicated, 0 spurious, no
    violation, state == truth) and the layout check passes."""
    source, prefix = f"{unique_prefix}src", unique_prefix
    first = config_from_mapping(document(sim, kafka_bootstrap, source, tmp_path / "src"), {})
    async with Service(first) as service:
        for district_id in DISTRICTS:
            await service.sync(district_id)
    snapshots = [truth_snapshot(sim)]
    await write_unsharded_copy(kafka_bootstrap, source, prefix)
    doc = document(sim, kafka_bootstrap, prefix, tmp_path / "state")
    config = write_config(tmp_path / "deployment.toml", doc)
    kafka = config_from_mapping(doc, {}).kafka
    before = await rebuild(kafka_bootstrap, prefix)
    assert compare_with_truth(before, snapshots).clean, compare_with_truth(before, snapshots)
    with pytest.raises(NotShardedLayout, match="oneroster-cdc reshard"):
        await check_layout(kafka)
    assert len(await strays(kafka_bootstrap, prefix)) > len(DISTRICTS)

    mutate(sim)  # changes made while the deployment is down for the move
    topics = TopicNames(prefix)
    # Killed while moving the state, then again while moving the checkpoints.
    for topic in (topics.state, topics.checkpoints):
        committed = await interrupted_reshard(config, tmp_path / "logs", topic, after=2)
        assert committed >= 2
        with pytest.raises(NotShardedLayout):
            await check_layout(kafka)

    done = await run_cli(config, "reshard", "--batch", "50", logs=tmp_path / "logs")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # The second killed run wrote checkpoints for 4 shards: their writers are fenced too.
    assert f"fenced: {', '.join(f'{prefix}-shard-{n}' for n in range(SHARDS))}\n" in out
    assert f"{prefix}.state: {SHARDS} partitions (unchanged); 0 record(s) moved" in out
    assert f"{prefix}.checkpoints: {SHARDS} partitions (unchanged)" in out
    assert f"done: the sharded layout of {SHARDS} shards" in out
    assert await strays(kafka_bootstrap, prefix) == [], out
    layout = await check_layout(kafka)
    assert (layout.state_partitions, layout.checkpoint_partitions) == (SHARDS, SHARDS)
    assert layout.checkpoints == len(DISTRICTS) * len(ENTITIES)
    moved = await rebuild(kafka_bootstrap, prefix)
    assert moved.event_ids == before.event_ids  # not one event written, not one lost

    again = await run_cli(config, "reshard", logs=tmp_path / "logs")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"nothing to move: already the sharded layout of {SHARDS} shards" in again.stdout
    assert "0 record(s) moved" in again.stdout

    for args in (("sync", "--all"), ("sync", "--all", "--full")):
        result = await run_cli(config, *args, logs=tmp_path / "logs")
        assert result.returncode == 0, result.stderr[-3000:]
    snapshots.append(truth_snapshot(sim))
    after = await rebuild(kafka_bootstrap, prefix)
    comparison = compare_with_truth(after, snapshots)
    assert comparison.clean, comparison.describe()
    assert comparison.observed > comparison.expected - len(before.event_ids) > 0
    await check_layout(kafka)
    assert await strays(kafka_bootstrap, prefix) == []


async def _owning(kafka: KafkaConfig) -> bool:
    """Whether the group has a member with its shards assigned."""
    fleet = await describe_fleet(kafka)
    return fleet.live and all(m.shards for m in fleet.members)


async def _poll(consumer: AIOKafkaConsumer) -> None:
    while True:
        await consumer.getmany(timeout_ms=200)


async def test_one_shot_commands_refuse_beside_a_live_group_and_status_names_the_owners(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """With no instance running, ``status`` says "no live group". While a member of the group
    ``<client_id>`` is live, ``sync``, ``confirm-deletes``, ``forget`` and ``reshard`` exit 1
    naming it and saying to stop the daemons, and write nothing; ``status`` names it as the
    owner of every shard (table and ``--json``)."""
    doc = document(sim, kafka_bootstrap, unique_prefix, tmp_path / "state")
    config = write_config(tmp_path / "c.toml", doc)
    logs = tmp_path / "logs"
    synced = await run_cli(config, "sync", "--district", DISTRICTS[0], logs=logs)
    assert synced.returncode == 0, synced.stderr[-3000:]
    alone = await run_cli(config, "status", logs=logs)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert f"shards: no live group (group '{unique_prefix}' has no member" in alone.stdout
    rows = [
        json.loads(x)
        for x in (await run_cli(config, "status", "--json", logs=logs)).stdout.splitlines()
    ]
    assert {(r["owner"], r["group_live"]) for r in rows} == {(None, False)}
    assert {r["shard"] for r in rows} == {shard_of(DISTRICTS[0], SHARDS)}
    events = await rebuild(kafka_bootstrap, unique_prefix)

    kafka = config_from_mapping(doc, {}).kafka
    owner = f"{unique_prefix}@ops-host:4242"
    consumer = AIOKafkaConsumer(
        TopicNames(unique_prefix).checkpoints,
        bootstrap_servers=kafka_bootstrap,
        group_id=unique_prefix,
        client_id=owner,
        enable_auto_commit=False,
        heartbeat_interval_ms=300,
        session_timeout_ms=10_000,
    )
    await consumer.start()
    polling = asyncio.ensure_future(_poll(consumer))
    try:
        await eventually(
            lambda: _owning(kafka), within=60, interval=0.2, message="the member joined"
        )
        commands = [
            ("sync", "--all"),
            ("confirm-deletes", "--district", DISTRICTS[0], "--entity", "users"),
            ("forget", "--district", DISTRICTS[0], "--force"),
            ("reshard",),
        ]
        for args in commands:
            result = await run_cli(config, *args, logs=logs)
            assert result.returncode == 1, (args, result.stdout, result.stderr[-2000:])
            assert f"oneroster-cdc {args[0]}: 1 instance(s) of group '{unique_prefix}'" in (
                result.stderr
            )
            assert owner in result.stderr
            assert "Stop the daemons (or scale them to 0) first" in result.stderr
        table = await run_cli(config, "status", logs=logs)
        assert table.returncode == 0, table.stderr[-3000:]
        assert f"shards (group '{unique_prefix}': Stable, 1 instance(s))" in table.stdout
        owned = [line.split() for line in table.stdout.splitlines() if owner in line]
        assert sorted(int(cells[0]) for cells in owned) == list(range(SHARDS))
        listed = await run_cli(config, "status", "--json", logs=logs)
        rows = [json.loads(x) for x in listed.stdout.splitlines()]
        assert len(rows) == len(ENTITIES)
        assert {(r["owner"], r["group_live"]) for r in rows} == {(owner, True)}
        assert all(r["owner_host"].endswith("127.0.0.1") for r in rows)
    finally:
        polling.cancel()
        await consumer.stop()
    assert (await rebuild(kafka_bootstrap, unique_prefix)).event_ids == events.event_ids
