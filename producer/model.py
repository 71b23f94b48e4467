"""Small typed values the pipeline's modules pass to each other.

The boxes of docs/architecture.md talk through these, never through each other's internals:
source client -> ``RawPage`` -> normaliser -> ``CanonicalRecord`` | ``Rejection`` -> differ ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, get_args

Entity = Literal[
    "orgs", "academicSessions", "courses", "classes", "users", "enrollments", "demographics"
]
#: Entities in dependency order: a record's references point at entities earlier in this list.
ENTITIES: Final[tuple[Entity, ...]] = get_args(Entity)

Status = Literal["active", "tobedeleted"]
Version = Literal["1.1", "1.2"]
#: What a change event says happened to a record.
Op = Literal["CREATED", "UPDATED", "DELETED"]
#: How a pass listed the source: everything, or what changed since the cursor.
SyncMode = Literal["DELTA", "FULL"]
#: Why a record was DELETED: the source said so, or a complete full listing lacked it.
DeleteReason = Literal["tobedeleted", "absent_from_full_sync"]


#: Canonical top-level fields whose OneRoster name is a Java/Kotlin keyword, by canonical name:
#: the OneRoster name. Schema 0.1.0 used the OneRoster name (``class``); the schema keeps it as
#: an alias, and digests hash a record under the OneRoster names, so the rename changes no
#: digest (an upgrade emits no spurious UPDATED).
RENAMED_FIELDS: Final[dict[str, str]] = {"schoolClass": "class"}


def record_key(district_id: str, sourced_id: str) -> str:
    """The Kafka key of a record in every topic: ``<district_id>/<sourcedId>``."""
    return f"{district_id}/{sourced_id}"


class Secret:
    """A secret string whose ``repr``/``str`` never shows the value; call ``reveal()`` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: pass it straight to the wire, never to a log."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class RawPage:
    """One page of a collection as the server sent it, records still raw JSON objects."""

    entity: Entity
    offset: int
    records: list[Any]
    #: ``X-Total-Count`` when the server sent it.
    total: int | None = None


@dataclass(frozen=True, slots=True)
class CanonicalRecord:
    """A OneRoster record in the one canonical shape of its entity (``schemas/<entity>.avsc``).

    ``data`` holds every field of the entity's canonical Avro record, including ``sourcedId``,
    ``status`` and ``dateLastModified`` (as an ISO-8601 UTC string), so it encodes as it is.
    """

    entity: Entity
    district_id: str
    sourced_id: str
    status: Status
    date_last_modified: datetime
    data: dict[str, Any] = field(hash=False)

    @property
    def key(self) -> str:
        return record_key(self.district_id, self.sourced_id)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A source record that could not be normalised; it goes to the dead-letter topic."""

    entity: Entity
    district_id: str
    reason: str
    #: The record as received, serialised back to JSON bytes.
    raw: bytes
    sourced_id: str | None = None
