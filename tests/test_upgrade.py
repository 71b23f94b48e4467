"""Upgrading the producer from schema 0.1.0 to 0.2.0 emits no spurious events."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from fastavro import schemaless_writer

from producer.avro import MAGIC, SCHEMA_DIR, Schemas, read_release
from producer.kafka.shards import shard_of
from producer.kafka.statetopic import split_state_key
from producer.service import Service
from producer.simulator import DistrictSpec, Simulator
from tests.checker import read_all, rebuild
from tests.harness import make_config

pytestmark = pytest.mark.integration


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """One tiny 1.2 district, served on loopback."""
    simulator = Simulator([DistrictSpec(id="u12", version="1.2", size="tiny", seed=21)])
    async with simulator.serve():
        yield simulator


async def _rewrite_state_as_0_1_0(bootstrap: str, prefix: str, shards: int) -> int:
    """Write every live state value again as a 0.1.0 producer wrote it: the 0.1.0 schema
    (``org.oneroster.cdc``, enrollment ``class``), headers ``entity`` and the digest 0.1.0
    computed (BLAKE2b of the record's sorted JSON with ``class``, without dateLastModified), and
    no raw digest, so the next sync must normalise and compare digests. Each goes to its
    district's shard partition, where the sharded layout reads it."""
    current = Schemas.load(history=False)
    released = read_release(SCHEMA_DIR / "history" / "0.1.0")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    count = 0
    try:
        for key, value, headers in await read_all(bootstrap, f"{prefix}.state"):
            if value is None:
                continue
            decoded = current.decode(value)
            old = released[json.loads(current.get(decoded.name).json)["aliases"][0]]
            data = dict(decoded.value)
            if "schoolClass" in data:
                data["class"] = data.pop("schoolClass")
            body = io.BytesIO()
            schemaless_writer(body, old.parsed, data)
            hashed = {k: v for k, v in data.items() if k != "dateLastModified"}
            digest = hashlib.blake2b(
                orjson.dumps(hashed, option=orjson.OPT_SORT_KEYS), digest_size=16
            ).digest()
            assert digest == headers["digest"]  # what 0.2.0 wrote: the same digest
            assert key is not None
            await producer.send_and_wait(
                f"{prefix}.state",
                MAGIC + old.fingerprint + body.getvalue(),
                key=key,
                partition=shard_of(split_state_key(key.decode())[1], shards),
                headers=[("entity", headers["entity"]), ("digest", digest)],
            )
            count += 1
    finally:
        await producer.stop()
    return count


async def test_a_0_1_0_state_gives_no_spurious_events_and_decodes_as_before(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """After a cold restore of a state topic that 0.1.0 wrote, a delta and a full sync emit
    exactly the two real changes (a user and an enrollment), not an UPDATED per enrollment (the
    digest still hashes ``schoolClass`` as ``class``), and the enrollment's ``before`` (a 0.1.0
    value, re-encoded) carries its class."""
    first = make_config(
        sim, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path / "a"
    )
    async with Service(first) as service:
        await service.sync("u12")
    before = await rebuild(kafka_bootstrap, unique_prefix)
    rewritten = await _rewrite_state_as_0_1_0(kafka_bootstrap, unique_prefix, first.kafka.shards)
    assert rewritten == sum(before.ops.values())

    district = sim.district("u12")
    sim.advance_clock(60)
    user = sorted(district.truth_state("users"))[0]
    enrollment = sorted(district.truth_state("enrollments"))[0]
    district.update("users", user, familyName="Upgraded")
    district.update("enrollments", enrollment, role="aide")
    second = make_config(
        sim, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path / "b"
    )
    async with Service(second) as service:  # a cold restore from the rewritten topic
        await service.sync("u12")
        await service.sync("u12", full=True)

    after = await rebuild(kafka_bootstrap, unique_prefix)
    assert after.violations == []
    new = [e for e in after.envelopes if e["event_id"] not in before.event_ids]
    assert sorted((e["entity"], e["sourced_id"], e["op"]) for e in new) == [
        ("enrollments", enrollment, "UPDATED"),
        ("users", user, "UPDATED"),
    ]
    changed = next(e for e in new if e["entity"] == "enrollments")
    assert changed["changed_fields"] == ["role"]
    assert changed["before"]["schoolClass"] == changed["after"]["schoolClass"] is not None
