"""Sync checkpoints: per district and entity, the delta cursor, last syncs and counts.

They live on the compacted ``<prefix>.checkpoints`` topic (key ``<district_id>/<entity>``,
value an Avro ``Checkpoint``) and are written only inside the transaction that wrote the events
they cover, so a committed cursor never runs ahead of committed data. At start the whole topic
is read (read_committed; compacted, so it holds one record per key) into memory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from producer.avro import CHECKPOINT, Schemas, headers
from producer.errors import BrokerUnavailable
from producer.kafka_authz import denied
from producer.model import Entity
from producer.normalise import format_timestamp
from producer.state import topic_partitions
from producer.writer import OutRecord

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where the sync of one district and entity stands (mirrors ``schemas/Checkpoint.avsc``)."""

    district_id: str
    entity: str
    cursor: str | None = None
    cursor_format: str = "iso8601-utc-millis"
    last_full_sync_at: datetime | None = None
    last_delta_sync_at: datetime | None = None
    last_sync_id: str | None = None
    record_count: int = 0
    created_count: int = 0
    updated_count: int = 0
    deleted_count: int = 0
    rejected_count: int = 0
    held_deletes: int = 0
    delta_supported: bool = True

    @property
    def key(self) -> str:
        return f"{self.district_id}/{self.entity}"

    def cursor_time(self) -> datetime | None:
        """The cursor as an aware UTC datetime."""
        if self.cursor is None:
            return None
        return datetime.fromisoformat(self.cursor.replace("Z", "+00:00")).astimezone(UTC)

    def replace(self, **changes: Any) -> Checkpoint:
        return dataclasses.replace(self, **changes)


def format_cursor(moment: datetime) -> str:
    """A cursor string: ISO-8601 UTC with milliseconds and ``Z`` (four-digit year, always)."""
    return format_timestamp(moment)


def encode_checkpoint(schemas: Schemas, topic: str, cp: Checkpoint) -> OutRecord:
    """The checkpoint-topic record of ``cp``."""
    value = schemas.encode(CHECKPOINT, dataclasses.asdict(cp))
    return OutRecord(topic, cp.key.encode(), value, headers(CHECKPOINT))


def decode_checkpoint(schemas: Schemas, value: bytes) -> Checkpoint:
    data = schemas.decode(value).value
    fields = {f.name for f in dataclasses.fields(Checkpoint)}
    return Checkpoint(**{k: v for k, v in data.items() if k in fields})


async def load_checkpoints(
    schemas: Schemas, *, topic: str, consumer_config: dict[str, Any]
) -> dict[tuple[str, str], Checkpoint]:
    """Every committed checkpoint, by (district_id, entity)."""
    consumer = AIOKafkaConsumer(
        **consumer_config, isolation_level="read_committed", enable_auto_commit=False
    )
    out: dict[tuple[str, str], Checkpoint] = {}
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
                    district, _, entity = m.key.decode().rpartition("/")
                    if m.value is None:
                        out.pop((district, entity), None)
                    else:
                        out[(district, entity)] = decode_checkpoint(schemas, m.value)
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
    except KafkaError as exc:
        refused = denied(exc, operation="Read", topic=topic, options=consumer_config)
        if refused is not None:
            raise refused from exc
        raise BrokerUnavailable(f"reading checkpoints from {topic} failed: {exc}") from exc
    finally:
        await consumer.stop()
    log.info("checkpoints_loaded", topic=topic, count=len(out))
    return out


def fresh(district_id: str, entity: Entity) -> Checkpoint:
    """The checkpoint of a district and entity never synced."""
    return Checkpoint(district_id=district_id, entity=entity)
