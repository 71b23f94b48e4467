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

from producer.avro import Schemas
from producer.config import Config
from producer.kafka.options import consumer_options
from producer.kafka.reader import Message, TopicReader
from producer.kafka.topics import TopicNames
from producer.model import Entity


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
    messages: list[Message],
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
    printed = 0
    prefix = f"{district}/".encode() if district else None
    reader = TopicReader(consumer_options(config.kafka), topic, action=f"tail {topic}")
    try:
        async with reader:
            if from_beginning:
                await reader.seek_to_beginning()
            else:
                await reader.seek_to_end()
            last = time.monotonic()
            while limit is None or printed < limit:
                messages = await reader.poll(500)
                if not messages:
                    if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                        break
                    continue
                last = time.monotonic()
                budget = None if limit is None else limit - printed
                printed += _print(
                    schemas, messages, prefix=prefix, as_json=as_json, budget=budget, out=out
                )
    except asyncio.CancelledError:
        pass
    return 0
