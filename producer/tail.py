"""``oneroster-cdc tail``: decode and print the change events of one entity.

Reads ``<prefix>.<entity>`` with ``isolation_level=read_committed`` (only committed changes),
from the end (new events) or from the beginning, without a consumer group. Tombstones are
skipped in the compact form and shown as ``{"key": ..., "tombstone": true}`` with ``--json``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from producer.avro import Schemas
from producer.config import Config
from producer.errors import BrokerUnavailable
from producer.kafka_authz import denied
from producer.kafka_options import consumer_options
from producer.model import Entity
from producer.state import topic_partitions
from producer.topics import TopicNames


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError


def format_event(envelope: dict[str, Any]) -> str:
    """One line per change: time, op, key, and what changed."""
    emitted = envelope["emitted_at"]
    when = emitted.isoformat(timespec="seconds") if isinstance(emitted, datetime) else emitted
    key = f"{envelope['district_id']}/{envelope['sourced_id']}"
    line = f"{when} {envelope['op']:<7} {envelope['entity']} {key}"
    if envelope["op"] == "UPDATED" and envelope["changed_fields"]:
        line += f" changed={','.join(envelope['changed_fields'])}"
    reason = (envelope.get("source") or {}).get("delete_reason")
    if reason:
        line += f" reason={reason}"
    return line


def _print(
    schemas: Schemas,
    messages: list[Any],
    *,
    prefix: bytes | None,
    as_json: bool,
    budget: int | None,
    out: TextIO,
) -> int:
    """Print the events among ``messages`` (at most ``budget``); how many were printed."""
    printed = 0
    for m in messages:
        if budget is not None and printed >= budget:
            break
        if prefix is not None and not (m.key or b"").startswith(prefix):
            continue
        if m.value is None:
            if as_json:
                out.write(
                    orjson.dumps({"key": (m.key or b"").decode(), "tombstone": True}).decode()
                )
                out.write("\n")
            continue
        envelope = schemas.decode(m.value).value
        if as_json:
            out.write(orjson.dumps(envelope, default=_default).decode() + "\n")
        else:
            out.write(format_event(envelope) + "\n")
        out.flush()
        printed += 1
    return printed


async def tail(
    config: Config,
    entity: Entity,
    *,
    from_beginning: bool = False,
    district: str | None = None,
    as_json: bool = False,
    limit: int | None = None,
    idle_timeout: float | None = None,
    out: TextIO,
) -> int:
    """Print events until ``limit`` events, ``idle_timeout`` idle seconds, or cancellation."""
    schemas = Schemas.load()
    topic = TopicNames(config.kafka.topic_prefix).events(entity)
    options = consumer_options(config.kafka)
    consumer = AIOKafkaConsumer(
        **options, isolation_level="read_committed", enable_auto_commit=False
    )
    printed = 0
    prefix = f"{district}/".encode() if district else None
    try:
        await consumer.start()
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        last = time.monotonic()
        while limit is None or printed < limit:
            batch = await consumer.getmany(timeout_ms=500)
            if not batch:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    break
                continue
            last = time.monotonic()
            messages = [m for part in batch.values() for m in part]
            budget = None if limit is None else limit - printed
            printed += _print(
                schemas, messages, prefix=prefix, as_json=as_json, budget=budget, out=out
            )
    except KafkaError as exc:
        refused = denied(exc, operation="Read", topic=topic, options=options)
        if refused is not None:
            raise refused from exc
        raise BrokerUnavailable(f"tail {topic}: {exc}") from exc
    except asyncio.CancelledError:
        pass
    finally:
        await consumer.stop()
    return 0
