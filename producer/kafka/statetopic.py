"""The ``<prefix>.state`` record format, written by the writer and read back by the restore.

Key ``<entity>/<district_id>/<sourcedId>`` (entity and district ids never contain ``/``;
sourcedIds may). An upsert's value is the encoded canonical record (single-object Avro) with
the headers ``content-type`` and ``schema`` (as on every Avro value), ``entity``, ``digest``
and, when known, ``raw-digest``, so a restore writes store
rows without decoding Avro; a delete is a tombstone with the ``entity`` header.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from producer.avro import RECORD_NAMES
from producer.avro import headers as schema_headers
from producer.kafka.reader import Headers
from producer.state import Key, Row, StateWrite

#: A Kafka message as the writer hands it to a batch: key, value (None: tombstone), headers.
Message = tuple[bytes, bytes | None, Headers]


def state_key(entity: str, district_id: str, sourced_id: str) -> str:
    """The key of a record in the state topic."""
    return f"{entity}/{district_id}/{sourced_id}"


#: The headers every upsert of an entity starts with (``content-type``, ``schema``, ``entity``).
_UPSERT_HEADERS: Final[Mapping[str, tuple[tuple[str, bytes], ...]]] = {
    entity: (*schema_headers(name), ("entity", entity.encode()))
    for entity, name in RECORD_NAMES.items()
}


def split_state_key(key: str) -> tuple[str, str, str]:
    """``(entity, district_id, sourcedId)`` of a state-topic key."""
    entity, district, sid = key.split("/", 2)
    return entity, district, sid


def state_message(write: StateWrite) -> Message:
    """The state-topic message ``(key, value, headers)`` of a store write: the encoded canonical
    record, or a tombstone."""
    key = f"{write.entity}/{write.district_id}/{write.sourced_id}".encode()
    if write.value is None:
        return key, None, [("entity", write.entity.encode())]
    assert write.digest is not None
    fixed = _UPSERT_HEADERS[write.entity]
    if write.raw_digest is None:
        return key, write.value, [*fixed, ("digest", write.digest)]
    return key, write.value, [*fixed, ("digest", write.digest), ("raw-digest", write.raw_digest)]


def rows_from_messages(
    messages: Iterable[tuple[bytes | None, bytes | None, Headers]],
) -> tuple[list[Row], list[Key]]:
    """The store rows a run of state-topic records (key, value, headers) stands for, built
    straight from the messages: the upserts and the deletes, the latest record of a key
    winning (a key deleted then written again in one run is an upsert, never both)."""
    latest: dict[Key, Row | None] = {}
    for key, value, headers in messages:
        if key is None:
            continue
        entity, district, sid = key.decode().split("/", 2)
        if value is None:
            latest[entity, district, sid] = None
            continue
        digest = raw = None
        for name, data in headers:
            if name == "digest":
                digest = data if digest is None else digest
            elif name == "raw-digest":
                raw = data if raw is None else raw
        if digest is None:
            raise ValueError(f"state record {key!r} has no digest header")
        latest[entity, district, sid] = (entity, district, sid, digest, value, raw)
    upserts: list[Row] = []
    deletes: list[Key] = []
    for k, row in latest.items():
        if row is None:
            deletes.append(k)
        else:
            upserts.append(row)
    return upserts, deletes
