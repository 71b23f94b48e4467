"""The ``<prefix>.state`` record format, written by the writer and read back by the restore.

Key ``<entity>/<district_id>/<sourcedId>`` (entity and district ids never contain ``/``;
sourcedIds may). An upsert's value is the encoded canonical record (single-object Avro) with
the headers ``content-type`` and ``schema`` (as on every Avro value), ``entity``, ``digest``
and, when known, ``raw-digest``, so a restore writes store
rows without decoding Avro; a delete is a tombstone with the ``entity`` header.
"""

from __future__ import annotations

from typing import cast

from producer.avro import RECORD_NAMES
from producer.avro import headers as schema_headers
from producer.events import OutRecord
from producer.kafka.reader import Headers, header
from producer.model import Entity
from producer.state import StateWrite


def state_key(entity: str, district_id: str, sourced_id: str) -> str:
    """The key of a record in the state topic."""
    return f"{entity}/{district_id}/{sourced_id}"


def split_state_key(key: str) -> tuple[str, str, str]:
    """``(entity, district_id, sourcedId)`` of a state-topic key."""
    entity, district, sid = key.split("/", 2)
    return entity, district, sid


def state_record(topic: str, write: StateWrite) -> OutRecord:
    """The state-topic record of a store write: the encoded canonical record, or a tombstone."""
    key = state_key(write.entity, write.district_id, write.sourced_id).encode()
    if write.value is None:
        return OutRecord(topic, key, None, [("entity", write.entity.encode())])
    assert write.digest is not None
    headers = [
        *schema_headers(RECORD_NAMES[cast("Entity", write.entity)]),
        ("entity", write.entity.encode()),
        ("digest", write.digest),
    ]
    if write.raw_digest is not None:
        headers.append(("raw-digest", write.raw_digest))
    return OutRecord(topic, key, write.value, headers)


def write_from_message(key: bytes, value: bytes | None, headers: Headers) -> StateWrite:
    """The store write a state-topic record stands for."""
    entity, district, sid = split_state_key(key.decode())
    if value is None:
        return StateWrite(entity, district, sid, None, None)
    digest = header(headers, "digest")
    if digest is None:
        raise ValueError(f"state record {key!r} has no digest header")
    return StateWrite(entity, district, sid, digest, value, header(headers, "raw-digest"))
