"""The ``<prefix>.schemas`` topic: every writer schema, keyed by its fingerprint, published once.

Key: the 16 hex digits of the fingerprint exactly as it appears in a value's single-object header
(the little-endian bytes of CRC-64-AVRO, in that order). Value: the self-contained schema JSON.
Headers: ``content-type: application/json`` and ``schema: <full name>`` (the type it describes).

At start the producer reads the topic (read_committed) and publishes only the schemas that are
missing or whose JSON differs (e.g. a doc updated without a new fingerprint), so a restart writes
nothing when the topic already holds them.

Public API::

    schema_records(schemas, topic) -> list[OutRecord]     # every schema's record
    read_published(topic, consumer_config) -> dict[bytes, bytes]   # key -> value, committed
    missing(records, published) -> list[OutRecord]        # what publishing still needs
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from producer.avro import Schemas
from producer.errors import BrokerUnavailable
from producer.state import topic_partitions
from producer.writer import OutRecord

log = structlog.get_logger(__name__)


def schema_records(schemas: Schemas, topic: str) -> list[OutRecord]:
    """One record per current and released schema: key = fingerprint hex, value = its JSON."""
    out = []
    for fp, text in schemas.published():
        node = orjson.loads(text)
        name = f"{node['namespace']}.{node['name']}"  # every schema file names its namespace
        headers = [("content-type", b"application/json"), ("schema", name.encode())]
        out.append(OutRecord(topic, fp.encode(), text.encode(), headers))
    return out


async def read_published(topic: str, consumer_config: dict[str, Any]) -> dict[bytes, bytes]:
    """The committed value of every key of ``topic`` (the last one wins; tombstones remove)."""
    consumer = AIOKafkaConsumer(
        **consumer_config, isolation_level="read_committed", enable_auto_commit=False
    )
    out: dict[bytes, bytes] = {}
    try:
        await consumer.start()
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if end[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for messages in batch.values():
                for m in messages:
                    if m.key is None:
                        continue
                    if m.value is None:
                        out.pop(m.key, None)
                    else:
                        out[m.key] = m.value
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
    except KafkaError as exc:
        raise BrokerUnavailable(f"reading schemas from {topic} failed: {exc}") from exc
    finally:
        await consumer.stop()
    return out


def missing(records: Sequence[OutRecord], published: Mapping[bytes, bytes]) -> list[OutRecord]:
    """The records whose key is not published, or published with another value."""
    return [r for r in records if published.get(r.key) != r.value]
