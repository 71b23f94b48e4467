"""The wire contract as a consumer meets it: headers on every value, schemas published once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from producer.avro import Schemas
from producer.events import OutRecord
from producer.service import Service
from producer.simulator import DistrictSpec, Simulator
from tests.checker import ENTITIES, read_all
from tests.harness import make_config

pytestmark = pytest.mark.integration

AVRO = b"application/avro; encoding=single-object"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """One tiny 1.2 district, served on loopback."""
    simulator = Simulator([DistrictSpec(id="d12", version="1.2", size="tiny", seed=5)])
    async with simulator.serve():
        yield simulator


async def test_every_value_names_its_schema_in_headers(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """Events, state values, checkpoints and dead letters each carry ``content-type`` and a
    ``schema`` header naming the full name of the schema whose fingerprint the value holds;
    schema records carry ``application/json`` and the name of the type they describe."""
    config = make_config(sim, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path)
    sim.district("d12").create("users", {"givenName": 3.5})  # a float name: a dead letter
    async with Service(config) as service:
        await service.sync("d12")
    names = {}
    for key, value, headers in await read_all(kafka_bootstrap, f"{unique_prefix}.schemas"):
        assert key is not None
        assert value is not None
        node = json.loads(value)
        names[bytes.fromhex(key.decode())] = f"{node['namespace']}.{node['name']}"
        assert headers["content-type"] == b"application/json"
        assert headers["schema"].decode() == names[bytes.fromhex(key.decode())]
    topics = [
        *(f"{unique_prefix}.{e}" for e in ENTITIES),
        f"{unique_prefix}.state",
        f"{unique_prefix}.checkpoints",
        f"{unique_prefix}.deadletter",
    ]
    seen: dict[str, int] = {}
    for topic in topics:
        for _key, value, headers in await read_all(kafka_bootstrap, topic):
            if value is None:
                continue
            seen[topic] = seen.get(topic, 0) + 1
            assert headers.get("content-type") == AVRO, topic
            assert headers.get("schema", b"").decode() == names[value[2:10]], topic
    assert set(seen) == set(topics), "every topic holds at least one value"


async def test_schemas_are_published_once_and_only_what_is_missing(
    sim: Simulator, kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """The first start publishes every schema; a restart publishes nothing; a start that finds
    one schema missing from the topic publishes that one alone."""
    config = make_config(sim, bootstrap=kafka_bootstrap, prefix=unique_prefix, state_dir=tmp_path)
    topic = f"{unique_prefix}.schemas"
    expected = len(Schemas.load().published())
    async with Service(config):
        pass
    first = await read_all(kafka_bootstrap, topic)
    assert len(first) == expected
    async with Service(config):
        pass
    assert len(await read_all(kafka_bootstrap, topic)) == expected

    gone = first[0][0]
    assert gone is not None
    async with Service(config) as service:
        # Remove one schema (a tombstone), as an operator cleaning the topic might.
        await service.shards[0].writer.publish([OutRecord(topic, gone, None)])
    async with Service(config):
        pass
    after = await read_all(kafka_bootstrap, topic)
    assert len(after) == expected + 2  # the tombstone, then that schema again
    assert after[-1][0] == gone
    assert after[-1][1] == first[0][1]
