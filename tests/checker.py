"""An independent checker of what the producer committed.

It does not use ``producer.avro``: it reads the writer schemas from ``<prefix>.schemas`` (as a
stock consumer would), decodes single-object Avro with plain fastavro, reads every event topic
with ``isolation_level=read_committed`` and rebuilds the state per key, counting protocol
violations: an event for a key in the wrong state (CREATED for a live key, UPDATED or DELETED
for an unknown one) and a DELETED not followed by its tombstone.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from fastavro import parse_schema, schemaless_reader

ENTITIES = (
    "orgs",
    "academicSessions",
    "courses",
    "classes",
    "users",
    "enrollments",
    "demographics",
)


async def read_all(
    bootstrap: str, topic: str
) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    """Every committed record of ``topic`` up to its end, in partition order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        parts = sorted(cluster.partitions_for_topic(topic) or ())
        if not parts:
            return []
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []
        for _ in range(2000):
            if all([await consumer.position(tp) >= end[tp] for tp in tps]):
                break
            batch = await consumer.getmany(timeout_ms=200)
            for tp in tps:
                out.extend((m.key, m.value, dict(m.headers)) for m in batch.get(tp, []))
        return out
    finally:
        await consumer.stop()


class Decoder:
    """Single-object Avro decoding with schemas taken from the schemas topic."""

    def __init__(self, schemas: dict[bytes, Any]) -> None:
        self._schemas = schemas

    @classmethod
    async def from_topic(cls, bootstrap: str, prefix: str) -> Decoder:
        schemas = {}
        for key, value, _ in await read_all(bootstrap, f"{prefix}.schemas"):
            assert key is not None
            assert value is not None
            schemas[bytes.fromhex(key.decode())] = parse_schema(json.loads(value))
        return cls(schemas)

    def decode(self, data: bytes) -> dict[str, Any]:
        assert data[:2] == b"\xc3\x01", "not Avro single-object encoding"
        schema = self._schemas[data[2:10]]
        return schemaless_reader(io.BytesIO(data[10:]), schema)  # type: ignore[no-any-return]


@dataclass
class Rebuilt:
    """State rebuilt from events, with counts and violations."""

    state: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    events: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    ops: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    event_ids: Counter[str] = field(default_factory=Counter)
    envelopes: list[dict[str, Any]] = field(default_factory=list)

    def keys(self, entity: str, district: str) -> set[str]:
        prefix = f"{district}/"
        return {k[len(prefix) :] for k in self.state[entity] if k.startswith(prefix)}

    def record(self, entity: str, district: str, sourced_id: str) -> dict[str, Any]:
        return self.state[entity][f"{district}/{sourced_id}"]


async def rebuild(bootstrap: str, prefix: str) -> Rebuilt:
    """Replay every event topic under ``prefix`` into a ``Rebuilt``."""
    decoder = await Decoder.from_topic(bootstrap, prefix)
    out = Rebuilt()
    for entity in ENTITIES:
        records = await read_all(bootstrap, f"{prefix}.{entity}")
        awaiting_tombstone: set[str] = set()
        for raw_key, value, _headers in records:
            assert raw_key is not None
            key = raw_key.decode()
            if value is None:
                if key not in awaiting_tombstone:
                    out.violations.append(f"{entity} {key}: tombstone without a DELETED before it")
                awaiting_tombstone.discard(key)
                continue
            if key in awaiting_tombstone:
                out.violations.append(f"{entity} {key}: DELETED not followed by its tombstone")
                awaiting_tombstone.discard(key)
            env = decoder.decode(value)
            out.envelopes.append(env)
            op = env["op"]
            out.events[(entity, key, op)] += 1
            out.ops[op] += 1
            out.event_ids[env["event_id"]] += 1
            live = out.state[entity]
            if op == "CREATED":
                if key in live:
                    out.violations.append(f"{entity} {key}: CREATED while live")
                live[key] = env["after"]
            elif op == "UPDATED":
                if key not in live:
                    out.violations.append(f"{entity} {key}: UPDATED while unknown")
                live[key] = env["after"]
            else:
                if key not in live:
                    out.violations.append(f"{entity} {key}: DELETED while unknown")
                live.pop(key, None)
                awaiting_tombstone.add(key)
        out.violations.extend(
            f"{entity} {k}: DELETED not followed by its tombstone" for k in awaiting_tombstone
        )
    duplicates = [i for i, n in out.event_ids.items() if n > 1]
    out.violations.extend(f"event_id {i} seen more than once" for i in duplicates)
    return out
