"""The contract as a JVM team meets it (``contract/java``): generated classes compile, and a
Java consumer (kafka-clients, avro, read_committed) decodes a real sync's topics exactly as the
Python side does. The README's Java snippet is that consumer's code."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from fastavro import schemaless_writer

from producer.avro import CHANGE_NAMES, MAGIC, SCHEMA_DIR, read_release
from producer.service import Service
from producer.simulator import DistrictSpec, Simulator
from tests.checker import ENTITIES, Decoder, read_all, rebuild
from tests.harness import make_config

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "contract" / "java"
SOURCE = PROJECT / "src" / "main" / "java" / "oneroster" / "contract" / "ContractCheck.java"
#: A cold ~/.m2 downloads the plugins, avro and kafka-clients first (about a minute).
MAVEN_TIMEOUT = 900


def _mvn(*args: str) -> subprocess.CompletedProcess[str]:
    mvn = shutil.which("mvn")
    assert mvn is not None, "Maven (mvn) is needed for the Java contract test"
    return subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-Dstyle.color=never",
            f"-Dschemas.dir={SCHEMA_DIR}",
            "-f",
            str(PROJECT / "pom.xml"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=MAVEN_TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def compiled() -> None:
    """avro-maven-plugin generates classes from schemas/*.avsc; javac compiles them (lint on,
    warnings as errors) with the consumer."""
    done = _mvn("compile")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]


@pytest.mark.timeout(MAVEN_TIMEOUT)
def test_generated_classes_compile(compiled: None) -> None:
    """Every schema yields a SpecificRecord class, and they compile (0.1.0's did not)."""
    generated = PROJECT / "target" / "generated-sources" / "avro" / "oneroster" / "cdc"
    names = {p.stem for p in SCHEMA_DIR.glob("*.avsc")}
    assert {p.stem for p in generated.glob("*.java")} == names
    classes = PROJECT / "target" / "classes" / "oneroster" / "cdc"
    assert {p.stem for p in classes.glob("*.class") if "$" not in p.stem} == names


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """A 1.2 and a 1.1 tiny district, served on loopback."""
    simulator = Simulator(
        [
            DistrictSpec(id="j12", version="1.2", size="tiny", seed=11),
            DistrictSpec(id="j11", version="1.1", size="tiny", seed=12),
        ]
    )
    async with simulator.serve():
        yield simulator


@pytest.mark.integration
@pytest.mark.timeout(MAVEN_TIMEOUT)
async def test_java_consumer_decodes_every_value_like_python(
    compiled: None, sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """After a snapshot and a delta with updates, a tobedeleted record, a hard delete found by a
    full sync and a dead letter, the Java consumer decodes every value of every topic with the
    generic and the generated API, and its event ids, ops and counts equal the Python side's.
    The same events written with schema 0.1.0 (as a 0.1.0 producer wrote them) decode into the
    0.2.0 classes too, through the aliases (e.g. an enrollment's `class` as `schoolClass`)."""
    config = make_config(sim, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path)
    j12 = sim.district("j12")
    async with Service(config) as service:
        for district in ("j12", "j11"):
            await service.sync(district)
        sim.advance_clock(60)
        users = sorted(j12.truth_state("users"))
        j12.update("users", users[0], familyName="Renamed")
        j12.mark_tobedeleted("users", users[1])
        j12.hard_delete("enrollments", sorted(j12.truth_state("enrollments"))[0])
        j12.create("users", {"givenName": 3.5})  # a float name: a dead letter
        await service.sync("j12")
        await service.sync("j12", full=True)

    rebuilt = await rebuild(kafka_bootstrap, unique_prefix)
    assert rebuilt.violations == []
    expected_events = Counter(
        (f"{unique_prefix}.{env['entity']}", env["event_id"], env["op"])
        for env in rebuilt.envelopes
    )
    assert {op for _t, _i, op in expected_events} == {"CREATED", "UPDATED", "DELETED"}
    expected_counts = {}
    for topic in [
        *(f"{unique_prefix}.{e}" for e in ENTITIES),
        *(f"{unique_prefix}.{t}" for t in ("state", "checkpoints", "deadletter")),
    ]:
        records = await read_all(kafka_bootstrap, topic)
        values = sum(1 for _k, v, _h in records if v is not None)
        expected_counts[topic] = (values, len(records) - values)
    assert expected_counts[f"{unique_prefix}.deadletter"][0] >= 1

    legacy = f"{unique_prefix}-v010"
    await _copy_as_0_1_0(kafka_bootstrap, unique_prefix, legacy)
    expected_events.update(
        (topic.replace(unique_prefix, legacy, 1), event_id, op)
        for topic, event_id, op in list(expected_events)
    )
    for entity in ENTITIES:
        expected_counts[f"{legacy}.{entity}"] = expected_counts[f"{unique_prefix}.{entity}"]

    done = await asyncio.to_thread(
        _mvn, "exec:java", f"-Dexec.args={kafka_bootstrap} {unique_prefix} {legacy}"
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    events: Counter[tuple[str, str, str]] = Counter()
    counts = {}
    # Maven 3.8 prefixes the program's first line with colour resets even in batch mode.
    for line in re.sub(r"\x1b\[[0-9;]*m", "", done.stdout).splitlines():
        if not line.startswith(("EVENT ", "COUNT ")):
            continue
        kind, topic, *rest = line.split()
        if kind == "EVENT":
            events[(topic, rest[0], rest[1])] += 1
        elif kind == "COUNT":
            counts[topic] = (int(rest[0]), int(rest[1]))
    assert events == expected_events
    assert counts == expected_counts


async def _copy_as_0_1_0(bootstrap: str, prefix: str, legacy: str) -> None:
    """Copy every event topic of ``prefix`` to ``legacy``, each value re-encoded with the
    released 0.1.0 schema (namespace ``org.oneroster.cdc``, enrollment field ``class``)."""
    decoder = await Decoder.from_topic(bootstrap, prefix)
    released = read_release(SCHEMA_DIR / "history" / "0.1.0")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{legacy}.{e}", 1, 1) for e in ENTITIES])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for entity in ENTITIES:
            old = released[CHANGE_NAMES[entity].replace("oneroster.cdc.", "org.oneroster.cdc.")]
            for key, value, headers in await read_all(bootstrap, f"{prefix}.{entity}"):
                copy, copy_headers = value, headers
                if value is not None:
                    env = decoder.decode(value)
                    for image in ("before", "after"):
                        if env[image] is not None and "schoolClass" in env[image]:
                            env[image]["class"] = env[image].pop("schoolClass")
                    body = io.BytesIO()
                    schemaless_writer(body, old.parsed, env)
                    copy = MAGIC + old.fingerprint + body.getvalue()
                    copy_headers = {**headers, "schema": old.name.encode()}
                await producer.send_and_wait(
                    f"{legacy}.{entity}", copy, key=key, headers=list(copy_headers.items())
                )
    finally:
        await producer.stop()


def _readme_java_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```java\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, "the README has exactly one Java block"
    return str(blocks[0])


def test_readme_java_snippet_is_the_contract_test_code() -> None:
    """The README's Java block is, line for line, the marked region of ContractCheck.java (the
    code the test above compiles and runs), so it cannot go stale."""
    source = SOURCE.read_text(encoding="utf-8")
    region = source.split("// README-BEGIN\n", 1)[1].split("  // README-END\n", 1)[0]
    lines = region.splitlines()
    indent = min(len(x) - len(x.lstrip()) for x in lines if x.strip())
    assert _readme_java_block() == "".join(f"{x[indent:]}\n" for x in lines)
