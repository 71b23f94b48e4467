"""The normaliser: 1.1 and 1.2 records in, canonical records or precise rejections out."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.avro import DEAD_LETTER, RECORD_NAMES, Schemas
from producer.events import dead_letter
from producer.model import ENTITIES, CanonicalRecord, Rejection, Version
from producer.normalise import (
    MAX_ID_CHARS,
    MAX_ITEMS,
    denormalise,
    normalise,
)
from producer.simulator import DistrictSpec, Simulator
from producer.simulator.quirks import apply as apply_quirks
from producer.timestamps import format_timestamp, parse_timestamp

SCHEMAS = Schemas.load(history=False)

# Shapes seen in public 1.2 samples (JSON boolean enabledUser, empty roles, metadata.jp).
SAMPLE_USER_12 = {
    "sourcedId": "user-0001",
    "status": "active",
    "dateLastModified": "2023-02-10 05:05:21.299Z",
    "metadata": {"jp": {"kanaGivenName": "たろう", "kanaFamilyName": "やまだ", "homeClass": "1-1"}},
    "enabledUser": True,
    "username": "taro",
    "givenName": "Taro",
    "familyName": "Yamada",
    "roles": [],
    "userIds": [{"type": "LDAP", "identifier": "taro@example.jp"}],
    "agents": [],
    "grades": ["P1"],
    "password": "hunter2",
}
SAMPLE_USER_11 = {
    "sourcedId": "u-11",
    "status": "active",
    "dateLastModified": "2024-09-01T12:00:00Z",
    "enabledUser": "true",
    "givenName": "Ann",
    "familyName": "Lee",
    "role": "teacher",
    "orgs": [
        {"href": "https://x/orgs/s1", "sourcedId": "s1", "type": "org"},
        {"sourcedId": "s2"},
    ],
}
SAMPLE_CLASS = {
    "sourcedId": "class-1",
    "status": "active",
    "dateLastModified": "2023-02-10T05:05:21.299Z",
    "title": "1-1",
    "classCode": "",
    "classType": "homeroom",
    "course": {"href": "https://example.com/data-type", "sourcedId": "c-1", "type": "course"},
    "school": {"href": "https://example.com/data-type", "sourcedId": "s-1", "type": "org"},
    "terms": [
        {"href": "https://example.com/data-type", "sourcedId": "t-1", "type": "academicSession"}
    ],
    "periods": [],
    "metadata": {"jp": {"specialNeeds": "false"}},
}
SAMPLE_ENROLLMENT = {
    "sourcedId": "e-1",
    "status": "active",
    "dateLastModified": "2023-02-10T05:05:21.299Z",
    "user": {"sourcedId": "user-0001", "type": "user"},
    "class": {"sourcedId": "class-1", "type": "class"},
    "school": {"sourcedId": "s-1", "type": "org"},
    "role": "student",
    "primary": "false",
}


def _ok(entity: Any, raw: Any) -> CanonicalRecord:
    out = normalise(entity, "d1", raw)
    assert isinstance(out, CanonicalRecord), out
    return out


def _reason(entity: Any, raw: Any) -> str:
    out = normalise(entity, "d1", raw)
    assert isinstance(out, Rejection), out
    return out.reason


def test_sample_12_user_normalises_and_encodes():
    """A 1.2 user with a JSON boolean, empty roles and metadata.jp becomes a canonical record
    that encodes with the User schema; metadata is kept, the password is not."""
    rec = _ok("users", SAMPLE_USER_12)
    assert rec.key == "d1/user-0001"
    assert rec.data["enabledUser"] is True
    assert rec.data["roles"] == []
    assert rec.data["dateLastModified"] == "2023-02-10T05:05:21.299Z"
    assert rec.date_last_modified == datetime(2023, 2, 10, 5, 5, 21, 299000, tzinfo=UTC)
    assert orjson.loads(rec.data["metadata_json"])["jp"]["kanaGivenName"] == "たろう"
    assert "hunter2" not in orjson.dumps(rec.data).decode()
    assert rec.data["extensions_json"] is None
    assert list(rec.data) == list(SCHEMAS.get(RECORD_NAMES["users"]).fields)
    SCHEMAS.encode(RECORD_NAMES["users"], rec.data)


def test_11_user_role_and_orgs_become_primary_roles():
    """A 1.1 user's role + orgs become one primary role per org; missing ref types are filled."""
    rec = _ok("users", SAMPLE_USER_11)
    assert rec.data["enabledUser"] is True
    assert [(r["roleType"], r["role"], r["org"]) for r in rec.data["roles"]] == [
        ("primary", "teacher", {"sourcedId": "s1", "type": "org"}),
        ("primary", "teacher", {"sourcedId": "s2", "type": "org"}),
    ]
    assert rec.data["extensions_json"] is None


def test_11_user_with_role_and_no_orgs_keeps_the_role():
    """A 1.1 user with a role but no orgs keeps the role with a null org."""
    raw = {**SAMPLE_USER_11, "orgs": []}
    assert _ok("users", raw).data["roles"][0]["org"] is None


def test_12_user_that_also_sends_11_fields_keeps_them_as_extensions():
    """A record with 1.2 roles and a 1.1 role keeps the 1.1 fields in extensions_json."""
    raw = {**SAMPLE_USER_12, "role": "student", "nickname": "T"}
    ext = orjson.loads(_ok("users", raw).data["extensions_json"])
    assert ext == {"nickname": "T", "role": "student"}


def test_class_and_enrollment_samples():
    """Classes drop placeholder hrefs and keep empty codes; enrollment string booleans parse."""
    cls = _ok("classes", SAMPLE_CLASS)
    assert cls.data["course"] == {"sourcedId": "c-1", "type": "course"}
    assert cls.data["classCode"] == ""
    assert cls.data["periods"] == []
    enr = _ok("enrollments", SAMPLE_ENROLLMENT)
    assert enr.data["primary"] is False
    assert enr.data["schoolClass"]["sourcedId"] == "class-1"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("active", "active"),
        ("tobedeleted", "tobedeleted"),
        ("inactive", "tobedeleted"),
        ("Active", "active"),
    ],
)
def test_status_values(status, expected):
    """active/tobedeleted pass, inactive means tobedeleted, case is ignored."""
    rec = _ok("orgs", {"sourcedId": "o", "status": status, "dateLastModified": "2024-01-01"})
    assert rec.status == expected
    assert rec.data["status"] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-02-10 05:05:21.299Z", "2023-02-10T05:05:21.299Z"),
        ("2023-02-10T05:05:21Z", "2023-02-10T05:05:21.000Z"),
        ("2023-02-10T05:05:21", "2023-02-10T05:05:21.000Z"),
        ("2023-02-10t05:05:21.123456789z", "2023-02-10T05:05:21.123Z"),
        ("2023-02-10T07:05:21+02:00", "2023-02-10T05:05:21.000Z"),
        ("2023-02-10T00:30:00-0100", "2023-02-10T01:30:00.000Z"),
        ("2023-02-10", "2023-02-10T00:00:00.000Z"),
    ],
)
def test_lenient_timestamps_normalise_to_utc_millis(text, expected):
    """Space or T, any fraction, Z/offset/none (taken as UTC) all become UTC millisecond text."""
    moment = parse_timestamp(text)
    assert moment is not None
    assert format_timestamp(moment) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2023-13-01T00:00:00Z",
        "20230210T050521Z",
        "2023-W06-5",
        "0001-01-01T00:00:00+01:00",
        "2023-02-10T05:05:21Z" + " " * 100,
    ],
)
def test_unreadable_timestamps_are_rejected(text):
    """Non-ISO, out-of-range, basic-format, week dates and overlong text are not timestamps."""
    assert parse_timestamp(text) is None
    reason = _reason("orgs", {"sourcedId": "o", "status": "active", "dateLastModified": text})
    assert reason.startswith("orgs[dateLastModified]: not an ISO-8601 timestamp")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([1, 2], "users: not a JSON object (list)"),
        ({"status": "active"}, "users[sourcedId]: missing"),
        ({"sourcedId": ""}, "users[sourcedId]: empty"),
        ({"sourcedId": 12}, "users[sourcedId]: not a string (int)"),
        ({"sourcedId": "x" * (MAX_ID_CHARS + 1)}, f"users[sourcedId]: longer than {MAX_ID_CHARS}"),
        ({"sourcedId": "u"}, "users[status]: missing"),
        ({"sourcedId": "u", "status": "gone"}, "users[status]: unknown status (allowed"),
        ({"sourcedId": "u", "status": "active"}, "users[dateLastModified]: missing"),
    ],
)
def test_rejections_name_the_field(raw, reason):
    """Records without a usable sourcedId, status or timestamp are rejected with the field."""
    assert _reason("users", raw).startswith(reason)


BASE = {"sourcedId": "u", "status": "active", "dateLastModified": "2024-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"enabledUser": "maybe"}, "users[enabledUser]: not a boolean (a string other"),
        ({"givenName": 1.5}, "users[givenName]: not a string (float)"),
        ({"givenName": ["a"]}, "users[givenName]: not a string (list)"),
        (
            {"roles": [{"roleType": "primary", "role": "x", "org": {"sourcedId": 3}}]},
            "users[roles][0][org][sourcedId]: not a string (int)",
        ),
        ({"roles": [{"roleType": "primary"}]}, "users[roles][0][role]: missing"),
        ({"roles": {"role": "x"}}, "users[roles]: not an array (dict)"),
        ({"agents": [None]}, "users[agents][0]: null"),
        ({"grades": ["1"] * (MAX_ITEMS + 1)}, f"users[grades]: more than {MAX_ITEMS} items"),
        ({"metadata": "x"}, "users[metadata]: not an object (str)"),
        ({"orgs": [{"sourcedId": "s"}]}, "users[role]: missing"),
        ({"primaryOrg": "s1"}, "users[primaryOrg]: not an object (str)"),
    ],
)
def test_wrong_types_are_rejected_with_a_path(extra, reason):
    """Wrong types, bad nesting and oversize arrays give a rejection naming the nested path."""
    out = normalise("users", "d1", {**BASE, **extra})
    assert isinstance(out, Rejection)
    assert out.reason.startswith(reason), out.reason
    assert out.sourced_id == "u"
    assert orjson.loads(out.raw)["sourcedId"] == "u"


def test_dead_letter_value_encodes():
    """A rejection becomes a DeadLetter value that encodes and keeps reason and raw bytes."""
    out = normalise("users", "d1", {"status": "active"})
    assert isinstance(out, Rejection)
    value = dead_letter(out, received_at=datetime(2024, 1, 1, tzinfo=UTC), sync_id="s1")
    decoded = SCHEMAS.decode(SCHEMAS.encode(DEAD_LETTER, value)).value
    assert decoded["reason"] == "users[sourcedId]: missing"
    assert orjson.loads(decoded["raw"]) == {"status": "active"}
    assert decoded["received_at"] == datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("entity", "raw", "checks"),
    [
        (
            "academicSessions",
            {
                **BASE,
                "title": "2024",
                "type": "schoolYear",
                "schoolYear": 2024,
                "startDate": "2023-08-01",
                "parent": {"sourcedId": "p"},
            },
            {"schoolYear": "2024", "parent": {"sourcedId": "p", "type": "academicSession"}},
        ),
        (
            "courses",
            {
                **BASE,
                "title": "Math",
                "courseCode": "M1",
                "grades": ["09", "10"],
                "schoolYear": {"sourcedId": "y"},
                "org": {"sourcedId": "s", "type": "org"},
            },
            {"grades": ["09", "10"], "schoolYear": {"sourcedId": "y", "type": "academicSession"}},
        ),
        (
            "demographics",
            {**BASE, "birthDate": "2010-01-02", "sex": "female", "asian": "TRUE", "white": False},
            {"asian": True, "white": False, "hispanicOrLatinoEthnicity": None},
        ),
        (
            "orgs",
            {**BASE, "name": "HS", "type": "school", "children": [{"sourcedId": "c"}]},
            {"children": [{"sourcedId": "c", "type": "org"}], "parent": None},
        ),
    ],
)
def test_other_entities_normalise(entity, raw, checks):
    """Sessions, courses, demographics and orgs normalise: typed refs, booleans, numeric years."""
    data = _ok(entity, raw).data
    for key, value in checks.items():
        assert data[key] == value
    SCHEMAS.encode(RECORD_NAMES[entity], data)


def test_integers_are_accepted_for_string_fields():
    """A numeric identifier is kept as its decimal text."""
    assert _ok("orgs", {**BASE, "identifier": 12345}).data["identifier"] == "12345"


def test_rejection_raw_survives_unserialisable_input():
    """Even a value orjson cannot dump yields a Rejection with JSON bytes, never an exception."""
    out = normalise("orgs", "d1", {**BASE, "sourcedId": "o", "x": {1, 2}})
    assert isinstance(out, Rejection)
    assert out.reason.startswith("orgs: not serialisable as JSON")
    assert isinstance(orjson.loads(out.raw), str)


def test_unknown_fields_and_metadata_are_kept_sorted():
    """Unknown top-level fields and metadata are kept as sorted compact JSON."""
    rec = _ok("orgs", {**BASE, "zeta": 1, "alpha": {"b": 2, "a": 1}, "metadata": {"y": 1, "x": 2}})
    assert rec.data["extensions_json"] == '{"alpha":{"a":1,"b":2},"zeta":1}'
    assert rec.data["metadata_json"] == '{"x":2,"y":1}'


@pytest.mark.parametrize("raw", [SAMPLE_USER_12, SAMPLE_USER_11])
def test_denormalise_then_normalise_is_identity(raw):
    """The canonical data read back as 1.2 JSON normalises to the same record."""
    rec = _ok("users", raw)
    assert _ok("users", denormalise("users", rec.data)) == rec


# ---- properties -------------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_ref = st.fixed_dictionaries(
    {"sourcedId": st.text(min_size=1, max_size=6)},
    optional={"type": st.sampled_from(["org", "user"]), "href": st.text(max_size=5)},
)
_FIELD_VALUES = {
    "enabledUser": st.sampled_from([True, False, "true", "FALSE", "no", None]),
    "primary": st.sampled_from([True, "false", 1, None]),
    "givenName": st.text(max_size=10) | st.integers(),
    "roles": st.lists(
        st.fixed_dictionaries(
            {"roleType": st.sampled_from(["primary", "secondary"]), "role": st.text(max_size=5)},
            optional={"org": _ref, "beginDate": st.text(max_size=10)},
        ),
        max_size=2,
    ),
    "role": st.text(max_size=5),
    "orgs": st.lists(_ref, max_size=2),
    "parent": _ref | st.none(),
    "children": st.lists(_ref, max_size=2),
    "user": _ref,
    "grades": st.lists(st.text(max_size=3), max_size=3),
    "metadata": st.dictionaries(st.text(max_size=4), _json, max_size=3),
}
_good_id = st.text(min_size=1, max_size=8).filter(str.strip)
_raw = st.fixed_dictionaries(
    {
        "sourcedId": st.one_of(_good_id, _good_id, _good_id, st.none() | st.integers()),
        "status": st.sampled_from(["active", "tobedeleted", "inactive", "Active", "x"]),
        "dateLastModified": st.one_of(
            st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
            st.sampled_from(["2024-01-01", "2023-02-10 05:05:21.299Z", "bad"]),
        ),
    },
    optional={k: st.one_of(v, v, v, _json) for k, v in _FIELD_VALUES.items()},
).flatmap(
    lambda d: st.dictionaries(st.text(max_size=6), _json, max_size=2).map(lambda e: {**e, **d})
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entity=st.sampled_from(ENTITIES), raw=_raw | _json)
def test_property_never_raises_and_records_encode(entity, raw):
    """For any JSON input normalise returns a record that encodes, or a rejection with raw bytes;
    a record normalised again from its 1.2 JSON view is unchanged."""
    out = normalise(entity, "d", raw)
    if isinstance(out, Rejection):
        assert out.reason.startswith(entity)
        assert isinstance(out.raw, bytes)
        return
    assert out.data["sourcedId"] == out.sourced_id
    data = SCHEMAS.encode(RECORD_NAMES[entity], out.data)
    assert SCHEMAS.decode(data).value == out.data
    assert normalise(entity, "d", denormalise(entity, out.data)) == out


# ---- the generated per-entity normalisers against the reference path ---------------------------


def assert_matches_reference(entity: Any, raw: Any) -> None:
    """The generated normaliser gives exactly the reference path's outcome: the same record
    (field order and value types included) or the same rejection (reason, raw bytes, id)."""
    fast = normalise(entity, "d", raw)
    reference = normalise(entity, "d", raw, generic=True)
    assert fast == reference
    if isinstance(fast, CanonicalRecord):
        assert isinstance(reference, CanonicalRecord)
        assert orjson.dumps(fast.data) == orjson.dumps(reference.data)
        assert list(fast.data) == list(reference.data)
        assert fast.date_last_modified.utcoffset() == reference.date_last_modified.utcoffset()


_RECORD_QUIRKS = ["json_booleans", "empty_roles", "vendor_metadata", "date_space"]
_RECORD_QUIRKS += ["date_no_fraction", "inactive_status", "missing_optional"]


@pytest.mark.parametrize("version", ["1.1", "1.2"])
@pytest.mark.parametrize("quirks", [(), tuple(_RECORD_QUIRKS), ("date_space",)])
def test_generated_normalisers_match_the_reference_on_simulator_records(
    version: Version, quirks: tuple[str, ...]
) -> None:
    """Every record of a small simulated district (1.1 and 1.2 shapes, with and without the
    record quirks real servers show) normalises to exactly what the reference path gives."""
    sim = Simulator([DistrictSpec(id="d", version=version, size="small", quirks=frozenset(quirks))])
    district = sim.district("d")
    seen = 0
    for entity in ENTITIES:
        for record in district.store.iter_entity(entity):
            raw = apply_quirks(record, frozenset(quirks))
            assert_matches_reference(entity, raw)
            seen += 1
    assert seen > 5_000


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entity=st.sampled_from(ENTITIES), raw=_raw | _json)
def test_generated_normalisers_match_the_reference_on_any_input(entity: Any, raw: Any) -> None:
    """Any JSON input, well-formed or not, gives the reference path's record or rejection."""
    assert_matches_reference(entity, raw)


_SIM_RECORDS: dict[str, list[dict[str, Any]]] = {}


def _simulated(entity: str) -> list[dict[str, Any]]:
    if not _SIM_RECORDS:
        district = Simulator([DistrictSpec(id="d", size="tiny")]).district("d")
        for name in ENTITIES:
            _SIM_RECORDS[name] = list(district.store.iter_entity(name))[:50]
    return _SIM_RECORDS[entity]


_CANONICAL = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"
#: Timestamps in the canonical shape, real or not (a 30th of February, hour 24, year 0), and
#: near misses: other digits (Arabic-Indic), a lower-case zone, a trailing newline.
_canonical_stamp = st.one_of(
    st.from_regex(_CANONICAL, fullmatch=True),
    st.datetimes().map(lambda d: d.isoformat(timespec="milliseconds") + "Z"),
    st.from_regex(
        _CANONICAL.replace("0-9", "0-9\u0660-\u0669").replace("Z", "[Zz]\n?"), fullmatch=True
    ),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), entity=st.sampled_from(ENTITIES))
def test_generated_normalisers_match_the_reference_on_damaged_simulator_records(
    data: st.DataObject, entity: Any
) -> None:
    """A simulated record with one top-level or nested value replaced by anything (a number
    for a string, a non-ASCII or over-long text, a list for a reference, a canonical-looking
    timestamp that is no date) still gives exactly the reference path's outcome."""
    raw = copy.deepcopy(data.draw(st.sampled_from(_simulated(entity))))
    target = raw
    containers: list[dict[str, Any]] = [v for v in raw.values() if isinstance(v, dict)]
    containers += [i for v in raw.values() if isinstance(v, list) for i in v if isinstance(i, dict)]
    nested = data.draw(st.booleans())
    if containers and nested:
        target = data.draw(st.sampled_from(containers))
    key = data.draw(st.sampled_from([*target, "sourcedId", "type", "x"]))
    value = data.draw(
        _json
        | _canonical_stamp
        | st.text(alphabet="aé\ud800 ", max_size=3)
        | st.sampled_from(["", " ", "x" * 65_537, "i" * 1_025, "TRUE", "False", "Active"])
    )
    target[key] = value
    assert_matches_reference(entity, raw)
