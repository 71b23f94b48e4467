"""OneRoster 1.1 / 1.2 JSON record -> the canonical record of its entity, or a rejection.

Public API::

    normalise(entity: Entity, district_id: str, raw: Any) -> CanonicalRecord | Rejection
    normalise(entity, district_id, raw, generic=True)  # the reference path (tests, bench)
    denormalise(entity: Entity, data: Mapping[str, Any]) -> dict[str, Any]
    dump_raw(raw: Any) -> bytes                     # JSON bytes of anything, for dead letters
    known_keys(entity: Entity) -> frozenset[str]    # raw keys that are not extensions
    MAX_ID_CHARS, MAX_STRING_CHARS, MAX_ITEMS, MAX_JSON_BYTES

``normalise`` is pure and never raises. Each entity's field list (``_SPECS``) is the one
definition; ``normalise`` runs a normaliser generated from it per entity (fields unrolled, the
common case checked inline, about twice as fast), which must equal the reference path that walks
the list as data (``generic=True``). Its output ``CanonicalRecord.data`` has exactly the fields
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

import re
from collections.abc import Callable, Mapping
from datetime import datetime
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


#: What each converter is, for the per-entity fast normalisers generated below: a converter
#: missing here is always run as it is (the generic path).
_KINDS: dict[Callable[[Any], Any], tuple[str, Any]] = {}


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


_KINDS.update({_str: ("str", None), _req_str: ("req_str", None), _bool: ("bool", None)})
_KINDS[_strs] = ("strs", None)


def _ref_of(ref_type: str) -> Callable[[Any], dict[str, str] | None]:
    def ref(value: Any) -> dict[str, str] | None:
        if value is None:
            return None
        obj = _obj(value)
        sid = _field(obj, "sourcedId", _id)
        typ = _field(obj, "type", _str)
        return {"sourcedId": sid, "type": typ or ref_type}

    _KINDS[ref] = ("ref", ref_type)
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

    def refs(value: Any) -> list[dict[str, str]]:
        return _each(value, item)

    _KINDS[refs] = ("refs", ref_type)
    return refs


def _record_of(
    spec: tuple[tuple[str, Callable[[Any], Any]], ...],
) -> Callable[[Any], dict[str, Any]]:
    def rec(value: Any) -> dict[str, Any]:
        obj = _obj(value)
        return {k: _field(obj, k, conv) for k, conv in spec}

    _KINDS[rec] = ("record", spec)
    return rec


def _records_of(item: Callable[[Any], dict[str, Any]]) -> Callable[[Any], list[dict[str, Any]]]:
    def records(value: Any) -> list[dict[str, Any]]:
        return _each(value, item)

    _KINDS[records] = ("records", item)
    return records


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
        ("credentials", _records_of(_credential)),
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
        ("userIds", _records_of(_user_id)),
        ("enabledUser", _bool),
        ("givenName", _str),
        ("familyName", _str),
        ("middleName", _str),
        ("preferredFirstName", _str),
        ("preferredMiddleName", _str),
        ("preferredLastName", _str),
        ("pronouns", _str),
        ("roles", _records_of(_role)),
        ("userProfiles", _records_of(_user_profile)),
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
#: A 1.1 user's keys: its ``role`` and ``orgs`` become ``roles``.
_KNOWN_WITH_LEGACY: Final = _KNOWN["users"] | _LEGACY_USER_KEYS


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


def _status_of(raw: Mapping[str, Any]) -> Status:
    status_raw = raw.get("status")
    if status_raw is None:
        raise _Reject("missing", "status")
    status = _STATUS.get(status_raw.lower()) if isinstance(status_raw, str) else None
    if status is None:
        raise _Reject("unknown status (allowed: active, tobedeleted, inactive)", "status")
    return status


def _moment_of(raw: Mapping[str, Any]) -> tuple[datetime, str]:
    """``dateLastModified`` as a moment cut to milliseconds, and as the canonical text."""
    dlm_raw = raw.get("dateLastModified")
    if dlm_raw is None:
        raise _Reject("missing", "dateLastModified")
    moment = parse_timestamp(dlm_raw) if isinstance(dlm_raw, str) else None
    if moment is None:
        raise _Reject(f"not an ISO-8601 timestamp ({_kind(dlm_raw)})", "dateLastModified")
    # Millisecond precision, as in the text, so ``date_last_modified`` and the cursor agree.
    moment = moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)
    return moment, format_timestamp(moment)


def _metadata_json(raw: Mapping[str, Any]) -> str | None:
    metadata = raw.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _Reject(f"not an object ({_kind(metadata)})", "metadata")
    return None if metadata is None else _field(raw, "metadata", _json_text)


def _extensions_json(raw: Mapping[str, Any], known: frozenset[str]) -> str | None:
    extras = {k: v for k, v in raw.items() if k not in known}
    return _json_text(extras) if extras else None


def _normalise(entity: Entity, district_id: str, raw: Any) -> CanonicalRecord:
    """The reference path: the entity's field list run as data (see ``_compile``)."""
    if not isinstance(raw, dict):
        raise _Reject(f"not a JSON object ({_kind(raw)})")
    sourced_id = _field(raw, "sourcedId", _id)
    status = _status_of(raw)
    moment, stamp = _moment_of(raw)
    data: dict[str, Any] = {"sourcedId": sourced_id, "status": status, "dateLastModified": stamp}
    for key, conv in _SPECS[entity]:
        data[key] = _field(raw, RENAMED_FIELDS.get(key, key), conv)
    known = _KNOWN[entity]
    if entity == "users" and raw.get("roles") is None and not _LEGACY_USER_KEYS.isdisjoint(raw):
        data["roles"] = _legacy_roles(raw)
        known = _KNOWN_WITH_LEGACY
    data["metadata_json"] = _metadata_json(raw)
    data["extensions_json"] = _extensions_json(raw, known)
    return CanonicalRecord(entity, district_id, sourced_id, status, moment, data)


# ---- per-entity normalisers ---------------------------------------------------------------------
#
# The reference path above walks an entity's field list and calls two or three functions per
# field. The normalisers below are generated from the same field lists with every field unrolled
# and the common case (null, an ASCII string, a GUIDRef of strings, "true"/"false") checked
# inline. Anything else (a number for a string, a non-ASCII text, an over-long value, a wrong
# type) runs that field's own converter, the very call the reference path makes, so the output
# and every rejection are the reference path's by construction (tests/test_normalise.py compares
# the two on the simulator's records and on fuzzed ones).

#: Returned by a fast check when the value is not the common case.
_SLOW: Final = object()
_CANONICAL_TIMESTAMP: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"
)


def _encodes(value: str) -> bool:
    """Whether a non-ASCII ``value`` is valid Unicode text (see ``_unicode``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _fast_moment(raw: Mapping[str, Any]) -> tuple[datetime, str]:
    """``_moment_of``, skipping the parse and the formatting when the source already writes the
    canonical form (``YYYY-MM-DDTHH:MM:SS.sssZ``): then the canonical text is the text itself."""
    text = raw.get("dateLastModified")
    if type(text) is str and _CANONICAL_TIMESTAMP.fullmatch(text) is not None:
        try:
            return datetime.fromisoformat(text), text
        except ValueError:  # the right shape but no real date (a 30th of February)
            pass
    return _moment_of(raw)


def _fast_ref(value: Any, ref_type: str) -> Any:
    """``_ref_of(ref_type)(value)`` for a GUIDRef of plain strings, else ``_SLOW``."""
    if value is None:
        return None
    if type(value) is not dict:
        return _SLOW
    sid = value.get("sourcedId")
    typ = value.get("type")
    if (
        type(sid) is str
        and len(sid) <= MAX_ID_CHARS
        and sid.strip()
        and (sid.isascii() or _encodes(sid))
        and (
            typ is None
            or (
                type(typ) is str
                and len(typ) <= MAX_STRING_CHARS
                and (typ.isascii() or _encodes(typ))
            )
        )
    ):
        return {"sourcedId": sid, "type": typ or ref_type}
    return _SLOW


def _fast_req_ref(value: Any, ref_type: str) -> Any:
    """``_req_ref_of(ref_type)(value)`` for a plain GUIDRef, else ``_SLOW`` (null included)."""
    return _SLOW if value is None else _fast_ref(value, ref_type)


def _fast_strs(value: Any) -> Any:
    """``_strs(value)`` for a list of plain strings, else ``_SLOW``."""
    if value is None:
        return []
    if type(value) is not list or len(value) > MAX_ITEMS:
        return _SLOW
    for item in value:
        if type(item) is not str or len(item) > MAX_STRING_CHARS:
            return _SLOW
        if not (item.isascii() or _encodes(item)):
            return _SLOW
    return list(value)


def _fast_each(value: Any, item: Callable[..., Any], *args: Any) -> Any:
    """``_each(value, ...)`` with ``item(one, *args)`` a fast check (a GUIDRef's, a generated
    record's), else ``_SLOW``."""
    if value is None:
        return []
    if type(value) is not list or len(value) > MAX_ITEMS:
        return _SLOW
    out = []
    for one in value:
        rec = item(one, *args)
        if rec is _SLOW:
            return _SLOW
        out.append(rec)
    return out


_FAST_HELPERS: Final[Mapping[str, Any]] = {
    "_SLOW": _SLOW,
    "_BOOLS": _BOOLS,
    "_STATUS": _STATUS,
    "_LEGACY_USER_KEYS": _LEGACY_USER_KEYS,
    "_KNOWN_WITH_LEGACY": _KNOWN_WITH_LEGACY,
    "CanonicalRecord": CanonicalRecord,
    "_encodes": _encodes,
    "_fast_moment": _fast_moment,
    "_fast_ref": _fast_ref,
    "_fast_req_ref": _fast_req_ref,
    "_fast_strs": _fast_strs,
    "_fast_each": _fast_each,
    "_field": _field,
    "_id": _id,
    "_status_of": _status_of,
    "_legacy_roles": _legacy_roles,
    "_metadata_json": _metadata_json,
    "_extensions_json": _extensions_json,
}


class _Source:
    """Python source being generated, and the values its names refer to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = dict(_FAST_HELPERS)

    def name(self, value: Any) -> str:
        """A name bound to ``value`` in the generated code's namespace."""
        name = f"_c{len(self.names)}"
        self.names[name] = value
        return name

    def check(self, conv: Callable[[Any], Any], var: str, slow: str, indent: str) -> None:
        """Lines that leave in ``var`` what ``conv(var)`` returns, or run ``slow``."""
        kind, arg = _KINDS.get(conv, ("", None))
        text = f"len({var}) > {MAX_STRING_CHARS} or not ({var}.isascii() or _encodes({var}))"
        if kind == "str":
            lines = [f"if {var} is not None and (type({var}) is not str or {text}):", f"    {slow}"]
        elif kind == "req_str":
            lines = [f"if type({var}) is not str or {text}:", f"    {slow}"]
        elif kind == "bool":
            lines = [
                f"if {var} is not None and type({var}) is not bool:",
                f"    {var} = _BOOLS.get({var}) if type({var}) is str else None",
                f"    if {var} is None:",
                f"        {slow}",
            ]
        elif kind == "ref":
            lines = [f"{var} = _fast_ref({var}, {arg!r})", f"if {var} is _SLOW:", f"    {slow}"]
        elif kind == "refs":
            call = f"_fast_each({var}, _fast_req_ref, {arg!r})"
            lines = [f"{var} = {call}", f"if {var} is _SLOW:", f"    {slow}"]
        elif kind == "strs":
            lines = [f"{var} = _fast_strs({var})", f"if {var} is _SLOW:", f"    {slow}"]
        elif kind == "records":
            item = self.name(_compile_record(_KINDS[arg][1]))
            lines = [f"{var} = _fast_each({var}, {item})", f"if {var} is _SLOW:", f"    {slow}"]
        else:  # no fast check for this converter: always the reference call
            lines = [slow]
        self.lines += [indent + line for line in lines]

    def compile(self, name: str, filename: str) -> Any:
        """The function ``name`` defined by the lines."""
        exec(compile("\n".join(self.lines) + "\n", filename, "exec"), self.names)  # noqa: S102
        return self.names[name]


def _compile_record(spec: Spec) -> Callable[[Any], Any]:
    """A fast check of a nested record (``_record_of(spec)``): the dict, or ``_SLOW``."""
    src = _Source()
    src.lines += ["def record(obj):", "    if type(obj) is not dict:", "        return _SLOW"]
    src.lines.append("    get = obj.get")
    for i, (key, conv) in enumerate(spec):
        src.lines.append(f"    v{i} = get({key!r})")
        src.check(conv, f"v{i}", "return _SLOW", "    ")
    fields = ", ".join(f"{key!r}: v{i}" for i, (key, _) in enumerate(spec))
    src.lines.append(f"    return {{{fields}}}")
    return src.compile("record", "<normalise record>")  # type: ignore[no-any-return]


FastNormaliser = Callable[[str, dict[str, Any]], CanonicalRecord]


def _compile(entity: Entity, spec: Spec) -> FastNormaliser:
    """The normaliser of ``entity`` with its field list unrolled: ``_normalise`` for a dict."""
    src = _Source()
    src.lines += [
        "def normalise(district_id, raw):",
        "    get = raw.get",
        "    sid = get('sourcedId')",
        f"    if type(sid) is not str or len(sid) > {MAX_ID_CHARS} or not sid.strip()"
        " or not (sid.isascii() or _encodes(sid)):",
        "        sid = _field(raw, 'sourcedId', _id)",
        "    status = get('status')",
        "    status = _STATUS.get(status) if type(status) is str else None",
        "    if status is None:",
        "        status = _status_of(raw)",
        "    moment, stamp = _fast_moment(raw)",
    ]
    for i, (key, conv) in enumerate(spec):
        raw_key = RENAMED_FIELDS.get(key, key)
        src.lines.append(f"    v{i} = get({raw_key!r})")
        src.check(conv, f"v{i}", f"v{i} = _field(raw, {raw_key!r}, {src.name(conv)})", "    ")
    src.lines.append(f"    known = {src.name(_KNOWN[entity])}")
    if entity == "users":
        roles = next(i for i, (key, _) in enumerate(spec) if key == "roles")
        src.lines += [
            "    if get('roles') is None and not _LEGACY_USER_KEYS.isdisjoint(raw):",
            f"        v{roles} = _legacy_roles(raw)",
            "        known = _KNOWN_WITH_LEGACY",
        ]
    fields = "".join(f", {key!r}: v{i}" for i, (key, _) in enumerate(spec))
    src.lines += [
        "    meta = None if get('metadata') is None else _metadata_json(raw)",
        "    ext = None if raw.keys() <= known else _extensions_json(raw, known)",
        "    data = {'sourcedId': sid, 'status': status, 'dateLastModified': stamp"
        f"{fields}, 'metadata_json': meta, 'extensions_json': ext}}",
        f"    return CanonicalRecord({entity!r}, district_id, sid, status, moment, data)",
    ]
    return src.compile("normalise", f"<normalise {entity}>")  # type: ignore[no-any-return]


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


_FAST: Final[Mapping[Entity, FastNormaliser]] = {e: _compile(e, s) for e, s in _SPECS.items()}


def normalise(
    entity: Entity, district_id: str, raw: Any, *, generic: bool = False
) -> CanonicalRecord | Rejection:
    """The canonical record of ``raw`` (one OneRoster JSON object), or why it cannot be one.

    ``generic=True`` runs the reference path (the field list walked as data) instead of the
    entity's generated normaliser; both give the same result (for tests and ``bench.micro``).
    """
    try:
        fast = None if generic or type(raw) is not dict else _FAST.get(entity)
        if fast is not None:
            return fast(district_id, raw)
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
