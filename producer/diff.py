"""The differ: a canonical record against the prior state of its key -> a change, or nothing.

Pure: no Avro, no Kafka. ``producer.events`` turns a ``Change`` into the records to write.

Public API::

    Prior                                         # type alias
    Change(op, entity, district_id, sourced_id, event_id, before, after, changed_fields,
           digest, prior_digest, date_last_modified, status, delete_reason=None)  # .key
    digest(data: Mapping[str, Any]) -> bytes        # 16 bytes, ignores dateLastModified
    raw_digest(raw: Any) -> bytes | None            # of the source JSON, for skipping re-reads
    diff(record: CanonicalRecord, prior: Prior | None, *, new_digest: bytes | None = None)
        -> Change | None
    absent(entity, district_id, sourced_id, prior: Prior) -> Change   # full-sync hard delete
    event_id(district_id, entity, sourced_id, op, *, prior_digest, new_digest,
             date_last_modified) -> str

Rules (``Prior`` is ``(digest, prior canonical data or None when only the digest is known)``):

- ``digest`` is a 16-byte BLAKE2b of the record's canonical JSON (orjson, sorted keys at every
  level) **without** ``dateLastModified``: a record the source only "touched" keeps its digest.
- Active record, no prior: CREATED; ``changed_fields`` = the fields that have a value (not null,
  not empty), sorted.
- Active record, same digest as the prior: ``None`` (unchanged; re-reads emit nothing).
- Active record, other digest: UPDATED, ``before`` = the prior data; ``changed_fields`` = the
  top-level fields whose values differ, sorted; empty when the prior data is unknown.
- ``tobedeleted`` record with a prior: DELETED, ``before`` = the prior data, ``after`` = null,
  ``delete_reason`` = ``tobedeleted``, ``changed_fields`` empty. For an **unknown key** it emits
  nothing: there is nothing downstream to delete, and it must not appear as a creation.
- ``absent``: DELETED with ``delete_reason`` = ``absent_from_full_sync`` for a key in the state
  but missing from a complete full listing; its source dateLastModified/status are the prior
  record's (an empty dateLastModified when the prior data is unknown).
- ``dateLastModified`` never appears in ``changed_fields``.

``event_id`` is a UUID5 (fixed namespace) over district, entity, sourcedId, op, the prior and new
digests (hex, empty when none) and the source dateLastModified of the change (the new record's;
the prior's for ``absent``). The same change re-read or re-sent after a crash gets the same id;
a record deleted and re-created with identical content gets a new one, because the source
stamps a new dateLastModified.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from producer.model import (
    RENAMED_FIELDS,
    CanonicalRecord,
    DeleteReason,
    Entity,
    Op,
    Status,
    record_key,
)

#: What the state store knows of a key: its digest, and its canonical data when available.
Prior = tuple[bytes, Mapping[str, Any] | None]

DIGEST_SIZE: Final = 16
_EVENT_NS: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:oneroster-cdc:event-id")
_DLM: Final = "dateLastModified"


@dataclass(frozen=True, slots=True)
class Change:
    """One change of one record, ready to become an event (and a state write or tombstone)."""

    op: Op
    entity: Entity
    district_id: str
    sourced_id: str
    event_id: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    changed_fields: tuple[str, ...]
    #: Digest of ``after`` (what the state store keeps); None for DELETED.
    digest: bytes | None
    prior_digest: bytes | None
    #: The source's dateLastModified of the change (ISO-8601 UTC text).
    date_last_modified: str
    status: Status
    delete_reason: DeleteReason | None = None

    @property
    def key(self) -> str:
        """The Kafka key, ``<district_id>/<sourcedId>``."""
        return record_key(self.district_id, self.sourced_id)


#: Changes whenever the normaliser's output for the same input may change, so raw digests
#: written by an older release never vouch for a record the new rules would see differently.
RAW_DIGEST_VERSION: Final = b"normalise-1"


def raw_digest(raw: Any) -> bytes | None:
    """16-byte BLAKE2b of a raw source record (a JSON object) without ``dateLastModified``.

    Equal raw digests mean the server sent the same record (at most touched), so its canonical
    form is the one already stored: a re-read can skip normalising it. ``None`` when ``raw`` is
    not an object or cannot be serialised (it then takes the normal path).
    """
    if type(raw) is not dict:
        return None
    if _DLM in raw:
        raw = dict(raw)
        del raw[_DLM]
    try:
        data = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        return None
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE, person=RAW_DIGEST_VERSION).digest()


def digest(data: Mapping[str, Any]) -> bytes:
    """16-byte BLAKE2b of the canonical record without ``dateLastModified``, its fields under
    their OneRoster names (``RENAMED_FIELDS``: the digest of an enrollment is the one schema
    0.1.0 gave it, when the field was still ``class``)."""
    rest = dict(data)
    rest.pop(_DLM, None)
    for name, oneroster_name in RENAMED_FIELDS.items():
        if name in rest:
            rest[oneroster_name] = rest.pop(name)
    return hashlib.blake2b(
        orjson.dumps(rest, option=orjson.OPT_SORT_KEYS), digest_size=DIGEST_SIZE
    ).digest()


def event_id(
    district_id: str,
    entity: str,
    sourced_id: str,
    op: Op,
    *,
    prior_digest: bytes | None,
    new_digest: bytes | None,
    date_last_modified: str,
) -> str:
    """The deterministic id of a change (see the module docstring)."""
    name = "\x1f".join(
        (
            district_id,
            entity,
            sourced_id,
            op,
            prior_digest.hex() if prior_digest else "",
            new_digest.hex() if new_digest else "",
            date_last_modified,
        )
    )
    return _uuid5(name)


_EVENT_NS_BYTES: Final = _EVENT_NS.bytes


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(_EVENT_NS, name))``, without building a ``UUID`` object (the hot path
    of every change): SHA-1 of namespace + name, version 5 and RFC 4122 variant bits set."""
    b = bytearray(hashlib.sha1(_EVENT_NS_BYTES + name.encode()).digest()[:16])  # noqa: S324 - UUID5 is SHA-1 by definition
    b[6] = (b[6] & 0x0F) | 0x50
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _has_value(value: Any) -> bool:
    return value is not None and value != []


def _changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[str, ...]:
    keys = before.keys() | after.keys()
    return tuple(sorted(k for k in keys if k != _DLM and before.get(k) != after.get(k)))


def diff(
    record: CanonicalRecord, prior: Prior | None, *, new_digest: bytes | None = None
) -> Change | None:
    """The change ``record`` makes to the state ``prior`` of its key, or None if it makes none.

    ``new_digest`` may be passed when already computed (``digest(record.data)``).
    """
    data = record.data
    prior_digest: bytes | None = None
    before: Mapping[str, Any] | None = None
    if prior is not None:
        prior_digest, before = prior
    new: bytes | None = None
    after: Mapping[str, Any] | None = None
    reason: DeleteReason | None = None
    if record.status == "tobedeleted":
        if prior is None:
            return None
        op: Op = "DELETED"
        fields: tuple[str, ...] = ()
        reason = "tobedeleted"
    else:
        new = digest(data) if new_digest is None else new_digest
        after = data
        if prior is None:
            op = "CREATED"
            fields = tuple(sorted(k for k, v in data.items() if k != _DLM and _has_value(v)))
        elif prior_digest == new:
            return None
        else:
            op = "UPDATED"
            fields = () if before is None else _changed(before, data)
    dlm = data[_DLM]
    eid = event_id(
        record.district_id,
        record.entity,
        record.sourced_id,
        op,
        prior_digest=prior_digest,
        new_digest=new,
        date_last_modified=dlm,
    )
    return Change(
        op=op,
        entity=record.entity,
        district_id=record.district_id,
        sourced_id=record.sourced_id,
        event_id=eid,
        before=before,
        after=after,
        changed_fields=fields,
        digest=new,
        prior_digest=prior_digest,
        date_last_modified=dlm,
        status=record.status,
        delete_reason=reason,
    )


def absent(entity: Entity, district_id: str, sourced_id: str, prior: Prior) -> Change:
    """The DELETED change for a key in the state that a complete full listing did not return."""
    prior_digest, before = prior
    dlm = str(before.get(_DLM, "")) if before is not None else ""
    status: Status = "active"
    if before is not None and before.get("status") == "tobedeleted":
        status = "tobedeleted"
    return Change(
        "DELETED",
        entity,
        district_id,
        sourced_id,
        event_id(
            district_id,
            entity,
            sourced_id,
            "DELETED",
            prior_digest=prior_digest,
            new_digest=None,
            date_last_modified=dlm,
        ),
        before,
        None,
        (),
        None,
        prior_digest,
        dlm,
        status,
        "absent_from_full_sync",
    )
