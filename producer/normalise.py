"""OneRoster 1.1 / 1.2 JSON record -> the canonical record of its entity, or a rejection.

Public API::

    normalise(entity: Entity, district_id: str, raw: Any) -> CanonicalRecord | Rejection
    denormalise(entity: Entity, data: Mapping[str, Any]) -> dict[str, Any]
    dump_raw(raw: Any) -> bytes                     # JSON bytes of anything, for dead letters
    known_keys(entity: Entity) -> frozenset[str]    # raw keys that are not extensions
    MAX_ID_CHARS, MAX_STRING_CHARS, MAX_ITEMS, MAX_JSON_BYTES

``normalise`` is pure and never raises. Its output ``CanonicalRecord.data`` has exactly the fields
of ``schemas/<Entity>.avsc`` in schema order and encodes with it as it is. Rules:

- The shape is detected per record, not per configured version: a user with ``roles`` is 1.2; a
  user with ``role``/``orgs`` and no ``roles`` is 1.1, and becomes one ``primary`` role per org
  (a role with ``org = null`` when it has no orgs). A 1.2 record that also carries ``role`` or
  ``orgs`` keeps them in ``extensions_json``. ``roles: []`` stays empty.
- ``status``: ``active`` | ``tobedeleted``; ``inactive`` (OneRoster 1.0) means ``tobedeleted``;
  matched case-insensitively. A missing status is a rejection.
- Booleans (``enabledUser``, ``primary``, demographics flags): JSON booleans or the strings
  ``true``/``false`` (any case); null or absent is null.
- ``dateLastModified``: ISO-8601 extended format, ``T``, ``t`` or a space between date and time,
  seconds and any fraction optional, ``Z``/``z``/``±HH[:MM]`` or **no zone, which is taken as
  UTC** (the spec requires UTC; servers that omit the zone write UTC). A bare date is midnight
  UTC. Output: ``YYYY-MM-DDTHH:MM:SS.sssZ`` (millisecond precision, sorts as time).
- String fields take JSON strings, or JSON integers written in decimal (some 1.1 servers send
  numeric identifiers); floats, booleans, objects and arrays are rejections. Date fields
  (``startDate``, ``birthDate``, ...) are kept as sent.
- Canonical field names are OneRoster's, except where one is a Java/Kotlin keyword
  (``RENAMED_FIELDS``): an enrollment's ``class`` is ``schoolClass``.
- GUIDRefs keep ``sourcedId`` and ``type`` (filled from the field's expected type when absent);
  ``href`` is dropped. Unknown keys inside nested objects are dropped.
- ``password`` (users and credentials) is never carried.
- ``metadata`` (an object) is kept as sorted compact JSON in ``metadata_json``; unknown top-level
  keys are kept the same way in ``extensions_json``.
- Rejections carry a precise reason, ``<entity>[<path>]: <what>``, e.g.
  ``users[sourcedId]: missing`` or ``users[roles][0][org][sourcedId]: not a string (int)``, and
  the raw record as JSON bytes (orjson). A reason names the field and the rule broken, never
  the value (it is logged; the value may be personal data).
- Bounds: sourcedIds <= ``MAX_ID_CHARS``; other strings <= ``MAX_STRING_CHARS``; arrays <=
  ``MAX_ITEMS``; ``metadata_json`` and ``extensions_json`` <= ``MAX_JSON_BYTES`` each.

``denormalise`` turns canonical data back into a OneRoster 1.2 JSON object (string booleans,
metadata and extensions inlined); ``normalise(denormalise(x))`` gives ``x`` back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson

from producer.model import RENAMED_FIELDS, CanonicalRecord, Entity, Rejection, Status
from producer.timestamps import format_timestamp, parse_timestamp

MAX_ID_CHARS: Final = 1024
MAX_STRING_CHARS: Final = 65_536
MAX_ITEMS: Final = 10_000
MAX_JSON_BYTES: Final = 1_048_576

_STATUS: Final[Mapping[str, Status]] = {
    "active": "active",
    "tobedeleted": "tobedeleted",
    "inactive": "tobedeleted",
}
_BOOLS: Final = {"true": True, "false": False}


class _Reject(Exception):
    """A record cannot be normalised; ``path`` is built outward as the exception unwinds."""

    def __init__(self, what: str, *path: str) -> None:
        super().__init__(what)
        self.what = what
        self.path = list(path)

    def at(self, *outer: str) -> _Reject:
        self.path[:0] = outer
        return self


def _kind(value: Any) -> str:
    return type(value).__name__


def _unicode(value: str) -> str:
    """``value`` if it is valid Unicode text (no unpaired surrogate, which no UTF-8 can carry)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Reject("not valid Unicode (unpaired surrogate escape)") from None
    return value


def _str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise _Reject(f"longer than {MAX_STRING_CHARS} characters")
        return _unicode(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _Reject(f"not a string ({_kind(value)})")


def _req_str(value: Any) -> str:
    if value is None:
        raise _Reject("missing")
    out = _str(value)
    assert out is not None
    return out


def _id(value: Any) -> str:
    if value is None:
        raise _Reject("missing")
    if not isinstance(value, str):
        raise _Reject(f"not a string ({_kind(value)})")
    if not value.strip():
        raise _Reject("empty")
    if len(value) > MAX_ID_CHARS:
        raise _Reject(f"longer than {MAX_ID_CHARS} characters")
    return _unicode(value)


def _bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        found = _BOOLS.get(value.strip().lower())
        if found is not None:
            return found
        raise _Reject("not a boolean (a string other than true or false)")
    raise _Reject(f"not a boolean ({_kind(value)})")


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Reject(f"not an array ({_kind(value)})")
    if len(value) > MAX_ITEMS:
        raise _Reject(f"more than {MAX_ITEMS} items")
    return value


def _obj(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _Reject(f"not an object ({_kind(value)})")
    return value


def _each(value: Any, item: Callable[[Any], Any]) -> list[Any]:
    items = _list(value)
    out = []
    for i, v in enumerate(items):
        try:
            out.append(item(v))
        except _Reject as r:
            raise r.at(str(i)) from None
    return out


def _field(obj: Mapping[str, Any], key: str, conv: Callable[[Any], Any]) -> Any:
    try:
        return conv(obj.get(key))
    except _Reject as r:
        raise r.at(key) from None


def _strs(value: Any) -> list[str | None]:
    return _each(value, _req_str)


def _ref_of(ref_type: str) -> Callable[[Any], dict[str, str] | None]:
    def ref(value: Any) -> dict[str, str] | None:
        if value is None:
            return None
        obj = _obj(value)
        sid = _field(obj, "sourcedId", _id)
        typ = _field(obj, "type", _str)
        return {"sourcedId": sid, "type": typ or ref_type}

    return ref


def _req_ref_of(ref_type: str) -> Callable[[Any], dict[str, str]]:
    ref = _ref_of(ref_type)

    def req(value: Any) -> dict[str, str]:
        out = ref(value)
        if out is None:
            raise _Reject("null")
        return out

    return req


def _refs_of(ref_type: str) -> Callable[[Any], list[dict[str, str]]]:
    item = _req_ref_of(ref_type)
    return lambda value: _each(value, item)


def _record_of(
    spec: tuple[tuple[str, Callable[[Any], Any]], ...],
) -> Callable[[Any], dict[str, Any]]:
    def rec(value: Any) -> dict[str, Any]:
        obj = _obj(value)
        return {k: _field(obj, k, conv) for k, conv in spec}

    return rec


_ORG_REF = _ref_of("org")
_credential = _record_of((("type", _req_str), ("username", _req_str)))
_user_id = _record_of((("type", _req_str), ("identifier", _req_str)))
_user_profile = _record_of(
    (
        ("profileId", _req_str),
        ("profileType", _req_str),
        ("vendorId", _req_str),
        ("applicationId", _str),
        ("description", _str),
        ("credentials", lambda v: _each(v, _credential)),
    )
)
_role = _record_of(
    (
        ("roleType", _req_str),
        ("role", _req_str),
        ("org", _ORG_REF),
        ("userProfile", _str),
        ("beginDate", _str),
        ("endDate", _str),
    )
)

Spec = tuple[tuple[str, Callable[[Any], Any]], ...]
_SPECS: Final[Mapping[Entity, Spec]] = {
    "orgs": (
        ("name", _str),
        ("type", _str),
        ("identifier", _str),
        ("parent", _ORG_REF),
        ("children", _refs_of("org")),
    ),
    "academicSessions": (
        ("title", _str),
        ("startDate", _str),
        ("endDate", _str),
        ("type", _str),
        ("parent", _ref_of("academicSession")),
        ("children", _refs_of("academicSession")),
        ("schoolYear", _str),
    ),
    "courses": (
        ("title", _str),
        ("schoolYear", _ref_of("academicSession")),
        ("courseCode", _str),
        ("grades", _strs),
        ("subjects", _strs),
        ("org", _ORG_REF),
        ("subjectCodes", _strs),
        ("resources", _refs_of("resource")),
    ),
    "classes": (
        ("title", _str),
        ("classCode", _str),
        ("classType", _str),
        ("location", _str),
        ("grades", _strs),
        ("subjects", _strs),
        ("course", _ref_of("course")),
        ("school", _ORG_REF),
        ("terms", _refs_of("academicSession")),
        ("subjectCodes", _strs),
        ("periods", _strs),
        ("resources", _refs_of("resource")),
    ),
    "users": (
        ("userMasterIdentifier", _str),
        ("username", _str),
        ("userIds", lambda v: _each(v, _user_id)),
        ("enabledUser", _bool),
        ("givenName", _str),
        ("familyName", _str),
        ("middleName", _str),
        ("preferredFirstName", _str),
        ("preferredMiddleName", _str),
        ("preferredLastName", _str),
        ("pronouns", _str),
        ("roles", lambda v: _each(v, _role)),
        ("userProfiles", lambda v: _each(v, _user_profile)),
        ("primaryOrg", _ORG_REF),
        ("identifier", _str),
        ("email", _str),
        ("sms", _str),
        ("phone", _str),
        ("agents", _refs_of("user")),
        ("grades", _strs),
        ("resources", _refs_of("resource")),
    ),
    "enrollments": (
        ("user", _ref_of("user")),
        ("schoolClass", _ref_of("class")),  # OneRoster `class` (RENAMED_FIELDS)
        ("school", _ORG_REF),
        ("role", _str),
        ("primary", _bool),
        ("beginDate", _str),
        ("endDate", _str),
    ),
    "demographics": (
        ("birthDate", _str),
        ("sex", _str),
        ("americanIndianOrAlaskaNative", _bool),
        ("asian", _bool),
        ("blackOrAfricanAmerican", _bool),
        ("nativeHawaiianOrOtherPacificIslander", _bool),
        ("white", _bool),
        ("demographicRaceTwoOrMoreRaces", _bool),
        ("hispanicOrLatinoEthnicity", _bool),
        ("countryOfBirthCode", _str),
        ("stateOfBirthAbbreviation", _str),
        ("cityOfBirth", _str),
        ("publicSchoolResidenceStatus", _str),
    ),
}
_COMMON: Final = frozenset({"sourcedId", "status", "dateLastModified", "metadata"})
#: Raw keys each entity consumes; anything else goes to ``extensions_json``.
_KNOWN: Final[Mapping[Entity, frozenset[str]]] = {
    e: _COMMON
    | {RENAMED_FIELDS.get(k, k) for k, _ in spec}
    | ({"password"} if e == "users" else set())
    for e, spec in _SPECS.items()
}
_NO_EXTRAS: Final[frozenset[str]] = frozenset()
_LEGACY_USER_KEYS: Final = frozenset({"role", "orgs"})


def known_keys(entity: Entity) -> frozenset[str]:
    """The raw top-level keys the normaliser reads for ``entity`` (including a 1.1 user's
    ``role`` and ``orgs``); every other key ends up in ``extensions_json``."""
    return _KNOWN[entity] | (_LEGACY_USER_KEYS if entity == "users" else _NO_EXTRAS)


def _json_text(value: Any) -> str:
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise _Reject(f"not serialisable as JSON ({exc})") from None
    if len(data) > MAX_JSON_BYTES:
        raise _Reject(f"larger than {MAX_JSON_BYTES} bytes as JSON")
    return data.decode()


def _legacy_roles(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """1.1 ``role`` + ``orgs`` -> 1.2 ``roles``: one primary role per org."""
    role = _field(raw, "role", _str)
    orgs = _field(raw, "orgs", _refs_of("org"))
    if role is None:
        if orgs:
            raise _Reject("missing (a 1.1 user with orgs needs a role)", "role")
        return []
    base = {"roleType": "primary", "role": role}
    tail = {"userProfile": None, "beginDate": None, "endDate": None}
    if not orgs:
        return [{**base, "org": None, **tail}]
    return [{**base, "org": org, **tail} for org in orgs]


def _normalise(entity: Entity, district_id: str, raw: Any) -> CanonicalRecord:
    if not isinstance(raw, dict):
        raise _Reject(f"not a JSON object ({_kind(raw)})")
    sourced_id = _field(raw, "sourcedId", _id)
    status_raw = raw.get("status")
    if status_raw is None:
        raise _Reject("missing", "status")
    status = _STATUS.get(status_raw.lower()) if isinstance(status_raw, str) else None
    if status is None:
        raise _Reject("unknown status (allowed: active, tobedeleted, inactive)", "status")
    dlm_raw = raw.get("dateLastModified")
    if dlm_raw is None:
        raise _Reject("missing", "dateLastModified")
    moment = parse_timestamp(dlm_raw) if isinstance(dlm_raw, str) else None
    if moment is None:
        raise _Reject(f"not an ISO-8601 timestamp ({_kind(dlm_raw)})", "dateLastModified")
    # Millisecond precision, as in the text, so ``date_last_modified`` and the cursor agree.
    moment = moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)
    data: dict[str, Any] = {
        "sourcedId": sourced_id,
        "status": status,
        "dateLastModified": format_timestamp(moment),
    }
    for key, conv in _SPECS[entity]:
        data[key] = _field(raw, RENAMED_FIELDS.get(key, key), conv)
    consumed = _NO_EXTRAS
    if entity == "users" and raw.get("roles") is None and not _LEGACY_USER_KEYS.isdisjoint(raw):
        data["roles"] = _legacy_roles(raw)
        consumed = _LEGACY_USER_KEYS
    metadata = raw.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _Reject(f"not an object ({_kind(metadata)})", "metadata")
    data["metadata_json"] = None if metadata is None else _field(raw, "metadata", _json_text)
    known = _KNOWN[entity]
    extras = {k: v for k, v in raw.items() if k not in known and k not in consumed}
    data["extensions_json"] = _json_text(extras) if extras else None
    return CanonicalRecord(entity, district_id, sourced_id, status, moment, data)


def dump_raw(raw: Any) -> bytes:
    """``raw`` as JSON bytes for a dead letter, whatever it holds (a repr when JSON cannot)."""
    try:
        return orjson.dumps(raw, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        pass
    try:
        return orjson.dumps(repr(raw)[:MAX_JSON_BYTES])
    except RecursionError:  # nested deeper than Python's recursion limit
        return orjson.dumps(f"<{type(raw).__name__} nested too deep to serialise>")


def normalise(entity: Entity, district_id: str, raw: Any) -> CanonicalRecord | Rejection:
    """The canonical record of ``raw`` (one OneRoster JSON object), or why it cannot be one."""
    try:
        return _normalise(entity, district_id, raw)
    except _Reject as r:
        where = f"[{']['.join(r.path)}]" if r.path else ""
        reason = f"{entity}{where}: {r.what}"
    except Exception as exc:  # noqa: BLE001 - normalise never raises; a surprise is a rejection
        reason = f"{entity}: cannot normalise: {type(exc).__name__}"
    sid = raw.get("sourcedId") if isinstance(raw, dict) else None
    if not isinstance(sid, str) or not sid.strip() or len(sid) > MAX_ID_CHARS:
        sid = None
    return Rejection(entity, district_id, reason, dump_raw(raw), sid)


def _bool_text(value: Any) -> Any:
    return value if value is None else ("true" if value else "false")


def denormalise(entity: Entity, data: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical data as a OneRoster 1.2 JSON object (nulls and empty arrays omitted)."""
    out: dict[str, Any] = {}
    if data.get("extensions_json"):
        out.update(orjson.loads(data["extensions_json"]))
    for key, value in data.items():
        if key in ("metadata_json", "extensions_json") or value is None or value == []:
            continue
        out[RENAMED_FIELDS.get(key, key)] = _bool_text(value) if isinstance(value, bool) else value
    if data.get("metadata_json"):
        out["metadata"] = orjson.loads(data["metadata_json"])
    if entity == "users":
        # Always present, even empty: an absent `roles` would read back as a 1.1 user.
        out["roles"] = [{k: v for k, v in r.items() if v is not None} for r in data["roles"]]
    return out
