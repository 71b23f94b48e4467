"""The OneRoster filter grammar, field lists and the ``fields``/``sort`` parameters.

Grammar (what real servers accept; ``AND`` binds tighter than ``OR``)::

    filter     := clause ( ( " AND " | " OR " ) clause )*
    clause     := field predicate "'" value "'"
    predicate  := "=" | "!=" | ">" | ">=" | "<" | "<=" | "~"

``field`` may be a dotted path into GUIDRefs and lists (``roles.org.sourcedId``); a clause on a
list matches when any element matches (``!=`` when none equals). ``~`` is a case-insensitive
"contains". ``dateLastModified`` (and the other ``*Date`` fields) compare as timestamps; every
other field compares as a string, JSON booleans as ``"true"``/``"false"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from producer.model import Version

_COMMON: Final = ("sourcedId", "status", "dateLastModified", "metadata")
_USER_COMMON: Final = [
    "username",
    "userIds",
    "enabledUser",
    "givenName",
    "familyName",
    "middleName",
    "identifier",
    "email",
    "sms",
    "phone",
    "agents",
    "grades",
    "password",
]
FIELDS: Final[dict[str, frozenset[str]]] = {
    "orgs": frozenset((*_COMMON, "name", "type", "identifier", "parent", "children")),
    "academicSessions": frozenset(
        (*_COMMON, "title", "startDate", "endDate", "type", "parent", "children", "schoolYear")
    ),
    "courses": frozenset(
        (*_COMMON, "title", "schoolYear", "courseCode", "grades", "subjects", "org",
         "subjectCodes", "resources")
    ),
    "classes": frozenset(
        (*_COMMON, "title", "classCode", "classType", "location", "grades", "subjects", "course",
         "school", "terms", "subjectCodes", "periods", "resources")
    ),
    "enrollments": frozenset(
        (*_COMMON, "user", "class", "school", "role", "primary", "beginDate", "endDate")
    ),
    "demographics": frozenset(
        (*_COMMON, "birthDate", "sex", "americanIndianOrAlaskaNative", "asian",
         "blackOrAfricanAmerican", "nativeHawaiianOrOtherPacificIslander", "white",
         "demographicRaceTwoOrMoreRaces", "hispanicOrLatinoEthnicity", "countryOfBirthCode",
         "stateOfBirthAbbreviation", "cityOfBirth", "publicSchoolResidenceStatus")
    ),
}  # fmt: skip
USER_FIELDS: Final[dict[str, frozenset[str]]] = {
    "1.1": frozenset((*_COMMON, *_USER_COMMON, "role", "orgs")),
    "1.2": frozenset(
        (*_COMMON, *_USER_COMMON, "userMasterIdentifier", "preferredFirstName",
         "preferredMiddleName", "preferredLastName", "pronouns", "roles", "userProfiles",
         "primaryOrg", "resources")
    ),
}  # fmt: skip
_DATE_FIELDS: Final = frozenset(
    ("dateLastModified", "startDate", "endDate", "beginDate", "birthDate")
)
_CLAUSE: Final = re.compile(r"\s*([A-Za-z_][\w.]*)\s*(!=|>=|<=|=|>|<|~)\s*'((?:[^']|'')*)'\s*")
_JOIN: Final = re.compile(r"(AND|OR)\b")


class QueryError(ValueError):
    """A query parameter the server refuses; ``code_minor`` goes into the imsx body."""

    def __init__(self, message: str, code_minor: str = "invalid_filter_field") -> None:
        super().__init__(message)
        self.code_minor = code_minor


def entity_fields(entity: str, version: Version) -> frozenset[str]:
    """Top-level field names of ``entity`` records served in ``version``."""
    if entity == "users":
        return USER_FIELDS[version]
    return FIELDS[entity]


def parse_timestamp(text: str) -> datetime:
    """Lenient ISO-8601: ``T`` or a space, ``Z`` or an offset, optional fraction, or a date."""
    value = text.strip().replace(" ", "T", 1)
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise QueryError(f"not a timestamp: {text!r}", "invalid_filter_field") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


@dataclass(frozen=True, slots=True)
class Clause:
    """One ``field op 'value'`` test."""

    path: tuple[str, ...]
    op: str
    value: str

    @property
    def field(self) -> str:
        return self.path[0]

    def matches(self, record: dict[str, Any]) -> bool:
        values = list(_resolve(record, self.path))
        if self.op == "!=":
            return not any(self._test(v, "=") for v in values)
        return any(self._test(v, self.op) for v in values)

    def _test(self, raw: Any, op: str) -> bool:
        if raw is None:
            return False
        left: Any
        right: Any
        if self.path[-1] in _DATE_FIELDS:
            try:
                left, right = parse_timestamp(str(raw)), parse_timestamp(self.value)
            except QueryError:
                return False
        else:
            left = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
            right = self.value
        if op == "~":
            return str(right).lower() in str(left).lower()
        return bool(_OPS[op](left, right))


_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": lambda a, b: a == b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


def _resolve(value: Any, path: tuple[str, ...]) -> Iterable[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _resolve(item, path)
        return
    if not path:
        yield value
        return
    if isinstance(value, dict) and path[0] in value:
        yield from _resolve(value[path[0]], path[1:])


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed filter: OR of AND-groups of clauses."""

    groups: tuple[tuple[Clause, ...], ...]
    text: str

    def matches(self, record: dict[str, Any]) -> bool:
        return any(all(c.matches(record) for c in group) for group in self.groups)

    def clauses(self) -> Iterable[Clause]:
        for group in self.groups:
            yield from group

    def modified_after(self) -> datetime | None:
        """For a pure conjunction holding ``dateLastModified>``/``>=``, the largest threshold."""
        if len(self.groups) != 1:
            return None
        found = [
            parse_timestamp(c.value)
            for c in self.groups[0]
            if c.path == ("dateLastModified",) and c.op in (">", ">=")
        ]
        return max(found) if found else None


def parse_filter(text: str, allowed: frozenset[str]) -> Filter:
    """Parse ``text``; QueryError for bad syntax or a field outside ``allowed``."""
    groups: list[list[Clause]] = [[]]
    pos = 0
    while True:
        m = _CLAUSE.match(text, pos)
        if m is None:
            raise QueryError(f"cannot parse filter at position {pos}: {text[pos : pos + 30]!r}")
        path = tuple(m.group(1).split("."))
        if path[0] not in allowed:
            raise QueryError(f"invalid filter field: {m.group(1)}")
        clause = Clause(path, m.group(2), m.group(3).replace("''", "'"))
        if clause.field in _DATE_FIELDS and clause.op != "~":
            parse_timestamp(clause.value)
        groups[-1].append(clause)
        pos = m.end()
        if pos >= len(text):
            break
        j = _JOIN.match(text, pos)
        if j is None:
            raise QueryError(f"expected AND or OR at position {pos} in filter")
        if j.group(1) == "OR":
            groups.append([])
        pos = j.end()
    return Filter(tuple(tuple(g) for g in groups), text)


def parse_fields(text: str, allowed: frozenset[str]) -> tuple[str, ...]:
    """The comma-separated ``fields`` list; QueryError (invalid_selection_field) if unknown."""
    names = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise QueryError(
            f"invalid selection field: {', '.join(unknown)}", "invalid_selection_field"
        )
    return names


def select_fields(record: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``record`` reduced to ``names`` (in the record's own order)."""
    return {k: v for k, v in record.items() if k in names}


def sort_key(record: dict[str, Any], field: str) -> tuple[int, str]:
    """Sort key for ``sort=field``: records without the field sort last."""
    values = list(_resolve(record, tuple(field.split("."))))
    if not values or values[0] is None:
        return (1, "")
    return (0, str(values[0]))
