"""Sync checkpoints: per district and entity, the delta cursor, last syncs and counts.

They live on the compacted ``<prefix>.checkpoints`` topic (key ``<district_id>/<entity>``,
value an Avro ``Checkpoint``, built by ``producer.events``) and are written only inside the
transaction that wrote the events they cover, so a committed cursor never runs ahead of
committed data. At start the whole topic is read into a ``CheckpointBook``
(``producer.kafka.restore.load_checkpoints``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from producer.model import Entity
from producer.timestamps import format_timestamp, parse_timestamp


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
        return parse_timestamp(self.cursor)

    def replace(self, **changes: Any) -> Checkpoint:
        return dataclasses.replace(self, **changes)


def format_cursor(moment: datetime) -> str:
    """A cursor string: ISO-8601 UTC with milliseconds and ``Z`` (four-digit year, always)."""
    return format_timestamp(moment)


def fresh(district_id: str, entity: Entity) -> Checkpoint:
    """The checkpoint of a district and entity never synced."""
    return Checkpoint(district_id=district_id, entity=entity)


def split_checkpoint_key(key: str) -> tuple[str, str]:
    """``(district_id, entity)`` of a checkpoint-topic key."""
    district, _, entity = key.rpartition("/")
    return district, entity


class CheckpointBook:
    """The committed checkpoints, by (district, entity); updated after each commit."""

    def __init__(self, initial: Mapping[tuple[str, str], Checkpoint] | None = None) -> None:
        self._items: dict[tuple[str, str], Checkpoint] = dict(initial or {})

    def get(self, district_id: str, entity: Entity) -> Checkpoint:
        return self._items.get((district_id, entity)) or fresh(district_id, entity)

    def put(self, cp: Checkpoint) -> None:
        self._items[(cp.district_id, cp.entity)] = cp

    def all(self) -> list[Checkpoint]:
        return sorted(self._items.values(), key=lambda c: (c.district_id, c.entity))

    def drop(self, district_id: str) -> None:
        """Forget every checkpoint of a district (after their tombstones committed)."""
        for key in [k for k in self._items if k[0] == district_id]:
            del self._items[key]
