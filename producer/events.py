"""The encoder step: what the sync engine decided, as the Kafka records of one batch.

The engine (``producer.sync``) decides *what* happened (a change, a rejection, a checkpoint);
this module decides *how it is written*: the topic, the key, the Avro value, the headers, the
tombstone that follows a DELETED event, the state write and the size limit. The writer
(``producer.kafka.writer``) then commits a ``Batch`` in one transaction.

Public API::

    OutRecord(topic, key, value, headers)          # value None = tombstone
    Batch(events, state, deadletters, checkpoint)  # one transaction
    SourceInfo(version, server, sync_mode, sync_id, emitted_at)
    envelope(change, source) -> dict               # the change event as a dict
    encode(schemas, change, source, *, before_body=None, after_body=None) -> Encoded
    dead_letter(rejection, *, received_at, sync_id) -> dict   # the DeadLetter value
    Encoder(schemas, topics)
        .prior(state_value) -> (canonical data, Avro body)
        .add_change(batch, change, source, *, before_body, raw_digest, after_body)
            -> str | None
        .add_dead_letter(batch, rejection, *, received_at, sync_id) -> None
        .checkpoint(cp) -> OutRecord
        .decode_checkpoint(value) -> Checkpoint
    MAX_VALUE_BYTES, MAX_RAW_BYTES

``encode`` encodes the new canonical record once and uses those bytes both as the state value
(single-object) and inside the event's ``after``; ``before_body`` (the prior state value's body,
``Schemas.current_body(state_bytes)``) skips re-encoding the prior image, and ``after_body``
(encoded by a ``sync.workers`` process) skips encoding the new one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from producer.avro import CHANGE_NAMES, CHECKPOINT, DEAD_LETTER, RECORD_NAMES, Schemas
from producer.avro import headers as schema_headers
from producer.checkpoints import Checkpoint
from producer.diff import Change
from producer.errors import EncodingError
from producer.kafka.topics import MAX_MESSAGE_BYTES, TopicNames
from producer.model import Rejection, SyncMode
from producer.state import StateWrite

Headers = list[tuple[str, bytes]]

#: An event or state value larger than this is dead-lettered instead (half of what topics
#: accept).
MAX_VALUE_BYTES: Final = MAX_MESSAGE_BYTES // 2
#: A dead letter carries at most this much of the raw record (the reason says so when cut).
MAX_RAW_BYTES: Final = 256 * 1024
#: The header that marks the tombstone following a DELETED event.
TOMBSTONE_HEADERS: Final[Headers] = [("op", b"TOMBSTONE")]


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One Kafka record to write: topic, key, value (``None`` is a tombstone), headers."""

    topic: str
    key: bytes
    value: bytes | None
    headers: Headers = field(default_factory=list)


@dataclass(slots=True)
class Batch:
    """What one transaction writes. Order within each list is kept on the wire."""

    events: list[OutRecord] = field(default_factory=list)
    state: list[StateWrite] = field(default_factory=list)
    deadletters: list[OutRecord] = field(default_factory=list)
    checkpoint: OutRecord | None = None

    def __len__(self) -> int:
        return len(self.events) + len(self.state) + len(self.deadletters)

    @property
    def empty(self) -> bool:
        return not (self.events or self.state or self.deadletters or self.checkpoint)


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """How the change was observed: fills the envelope's ``source`` and ``emitted_at``."""

    version: str
    server: str | None
    sync_mode: SyncMode
    sync_id: str
    #: Producer clock: an aware datetime, or epoch milliseconds.
    emitted_at: datetime | int


@dataclass(frozen=True, slots=True)
class Encoded:
    """The bytes to write for one change."""

    #: The change event (single-object Avro), for ``<prefix>.<entity>``.
    event: bytes
    #: Kafka headers of the event (schema full name and op).
    event_headers: Headers
    #: The new state value (single-object Avro canonical record); None = write a tombstone.
    state: bytes | None


def _millis(moment: datetime | int) -> int:
    if isinstance(moment, datetime):
        return int(moment.timestamp() * 1000)
    return moment


def envelope(change: Change, source: SourceInfo) -> dict[str, Any]:
    """The change envelope of ``change`` as a dict of ``<Entity>Change.avsc``."""
    return {
        "event_id": change.event_id,
        "op": change.op,
        "district_id": change.district_id,
        "entity": change.entity,
        "sourced_id": change.sourced_id,
        "before": change.before,
        "after": change.after,
        "changed_fields": list(change.changed_fields),
        "source": {
            "version": source.version,
            "server": source.server,
            "dateLastModified": change.date_last_modified,
            "status": change.status,
            "sync_mode": source.sync_mode,
            "sync_id": source.sync_id,
            "delete_reason": change.delete_reason,
        },
        "emitted_at": _millis(source.emitted_at),
    }


def encode(
    schemas: Schemas,
    change: Change,
    source: SourceInfo,
    *,
    before_body: bytes | None = None,
    after_body: bytes | None = None,
) -> Encoded:
    """Event bytes, event headers and state bytes of ``change``; the record is encoded once.

    ``before_body`` is used only when ``change.before`` is set; it must be the body of exactly
    that prior record (``Schemas.current_body`` of its state value). ``after_body``, likewise,
    only when ``change.after`` is set, and must be ``encode_body`` of exactly that record.

    Raises ``EncodingError`` when a value does not fit its schema.
    """
    record_name = RECORD_NAMES[change.entity]
    state = None
    if change.after is None:
        after_body = None
    else:
        if after_body is None:
            after_body = schemas.encode_body(record_name, change.after)
        state = schemas.frame(record_name, after_body)
    if change.before is None:
        before_body = None
    event = schemas.encode_change(
        change.entity, envelope(change, source), before_body=before_body, after_body=after_body
    )
    return Encoded(event, schema_headers(CHANGE_NAMES[change.entity], change.op), state)


def dead_letter(
    rejection: Rejection, *, received_at: datetime | int, sync_id: str | None
) -> dict[str, Any]:
    """The ``DeadLetter.avsc`` value of a rejection; ``received_at``: aware datetime or epoch ms."""
    return {
        "district_id": rejection.district_id,
        "entity": rejection.entity,
        "sourced_id": rejection.sourced_id,
        "reason": rejection.reason,
        "raw": rejection.raw,
        "received_at": received_at,
        "sync_id": sync_id,
    }


class Encoder:
    """Builds the records of a batch under one topic prefix."""

    def __init__(self, schemas: Schemas, topics: TopicNames) -> None:
        self.schemas = schemas
        self.topics = topics

    def prior(self, value: bytes) -> tuple[Mapping[str, Any], bytes | None]:
        """The canonical data and Avro body of a stored state value; the body is None when an
        older release wrote the value (it is then re-encoded, never spliced)."""
        return self.schemas.decode(value).value, self.schemas.current_body(value)

    def add_change(
        self,
        batch: Batch,
        change: Change,
        source: SourceInfo,
        *,
        before_body: bytes | None = None,
        raw_digest: bytes | None = None,
        after_body: bytes | None = None,
    ) -> str | None:
        """Append the event (and, for DELETED, its tombstone) and the state write of
        ``change``; or, when it cannot be written, append nothing and return why."""
        try:
            encoded = encode(
                self.schemas, change, source, before_body=before_body, after_body=after_body
            )
        except EncodingError as exc:
            return f"{change.entity}: does not fit its Avro schema: {exc}"
        size = len(encoded.event) + len(encoded.state or b"")
        if size > MAX_VALUE_BYTES:
            return f"{change.entity}: encoded change of {size} bytes exceeds {MAX_VALUE_BYTES}"
        topic = self.topics.events(change.entity)
        key = change.key.encode()
        batch.events.append(OutRecord(topic, key, encoded.event, encoded.event_headers))
        if change.op == "DELETED":
            batch.events.append(OutRecord(topic, key, None, TOMBSTONE_HEADERS))
            batch.state.append(
                StateWrite(change.entity, change.district_id, change.sourced_id, None, None)
            )
        else:
            batch.state.append(
                StateWrite(
                    change.entity,
                    change.district_id,
                    change.sourced_id,
                    change.digest,
                    encoded.state,
                    raw_digest,
                )
            )
        return None

    def add_dead_letter(
        self, batch: Batch, rejection: Rejection, *, received_at: datetime, sync_id: str
    ) -> None:
        """Append the dead letter of ``rejection``; a raw record over ``MAX_RAW_BYTES`` is cut
        (and its reason says so)."""
        raw, reason = rejection.raw, rejection.reason
        if len(raw) > MAX_RAW_BYTES:
            reason = f"{reason} (raw cut from {len(raw)} to {MAX_RAW_BYTES} bytes)"
            raw = raw[:MAX_RAW_BYTES]
        cut = dataclasses.replace(rejection, raw=raw, reason=reason)
        value = self.schemas.encode(
            DEAD_LETTER, dead_letter(cut, received_at=received_at, sync_id=sync_id)
        )
        key = f"{rejection.district_id}/{rejection.sourced_id or ''}".encode()
        batch.deadletters.append(
            OutRecord(self.topics.deadletter, key, value, schema_headers(DEAD_LETTER))
        )

    def checkpoint(self, cp: Checkpoint) -> OutRecord:
        """The checkpoint-topic record of ``cp``."""
        value = self.schemas.encode(CHECKPOINT, dataclasses.asdict(cp))
        return OutRecord(
            self.topics.checkpoints, cp.key.encode(), value, schema_headers(CHECKPOINT)
        )

    def decode_checkpoint(self, value: bytes) -> Checkpoint:
        """The checkpoint a checkpoint-topic value holds."""
        data = self.schemas.decode(value).value
        fields = {f.name for f in dataclasses.fields(Checkpoint)}
        return Checkpoint(**{k: v for k, v in data.items() if k in fields})

    def schema_records(self, published: Mapping[bytes, bytes] | None = None) -> list[OutRecord]:
        """The ``<prefix>.schemas`` records: every current and released schema, keyed by its
        fingerprint (hex), headers ``content-type: application/json`` and ``schema: <full
        name>``; without those ``published`` already holds with the same JSON."""
        out = []
        for fp, text in self.schemas.published():
            key, value = fp.encode(), text.encode()
            if published is not None and published.get(key) == value:
                continue
            node = json.loads(text)
            name = f"{node['namespace']}.{node['name']}"  # every schema file names its namespace
            headers = [("content-type", b"application/json"), ("schema", name.encode())]
            out.append(OutRecord(self.topics.schemas, key, value, headers))
        return out
