"""Single-object Avro encoding: strict, decodable by fingerprint, spliceable envelopes."""

from __future__ import annotations

import io
import json
import shutil
from typing import Any

import pytest
from fastavro import schemaless_writer

from producer.avro import (
    CHANGE_NAMES,
    CHECKPOINT,
    DEAD_LETTER,
    MAGIC,
    RECORD_NAMES,
    SCHEMA_DIR,
    Schemas,
    body_of,
    headers,
    read_release,
)
from producer.errors import EncodingError

SCHEMAS = Schemas.load()
USER = RECORD_NAMES["users"]


def _user(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sourcedId": "u-1",
        "status": "active",
        "dateLastModified": "2023-02-10T05:05:21.299Z",
        "userMasterIdentifier": None,
        "username": "jdoe",
        "userIds": [{"type": "SIS", "identifier": "123"}],
        "enabledUser": True,
        "givenName": "Jane",
        "familyName": "Doe",
        "middleName": None,
        "preferredFirstName": None,
        "preferredMiddleName": None,
        "preferredLastName": None,
        "pronouns": None,
        "roles": [
            {
                "roleType": "primary",
                "role": "student",
                "org": {"sourcedId": "s-1", "type": "org"},
                "userProfile": None,
                "beginDate": None,
                "endDate": None,
            }
        ],
        "userProfiles": [],
        "primaryOrg": {"sourcedId": "s-1", "type": "org"},
        "identifier": None,
        "email": "jane@example.org",
        "sms": None,
        "phone": None,
        "agents": [],
        "grades": ["09"],
        "resources": [],
        "metadata_json": '{"jp":{"kanaGivenName":"ジェーン"}}',
        "extensions_json": None,
    }
    base.update(over)
    return base


def _envelope(before: Any, after: Any, op: str = "UPDATED") -> dict[str, Any]:
    return {
        "event_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "op": op,
        "district_id": "springfield",
        "entity": "users",
        "sourced_id": "u-1",
        "before": before,
        "after": after,
        "changed_fields": ["email"],
        "source": {
            "version": "1.2",
            "server": "https://sis.example",
            "dateLastModified": "2023-02-10T05:05:21.299Z",
            "status": "active",
            "sync_mode": "DELTA",
            "sync_id": "sync-1",
            "delete_reason": None,
        },
        "emitted_at": 1_700_000_000_000,
    }


def test_encode_writes_magic_fingerprint_and_body():
    """Single-object bytes are C3 01, the 8-byte fingerprint, then the Avro body."""
    data = SCHEMAS.encode(USER, _user())
    info = SCHEMAS.get(USER)
    assert data[:2] == MAGIC == b"\xc3\x01"
    assert data[2:10] == info.fingerprint
    assert body_of(data) == SCHEMAS.encode_body(USER, _user())
    assert SCHEMAS.frame(USER, body_of(data)) == data


def test_decode_finds_the_schema_by_fingerprint():
    """Decoding returns the schema's full name and the value that was encoded."""
    decoded = SCHEMAS.decode(SCHEMAS.encode(USER, _user()))
    assert decoded.name == USER
    assert decoded.value == _user()


def test_wrong_type_raises_encoding_error_with_field_path():
    """A value of the wrong type names its path inside the record."""
    bad = _user(roles=[{**_user()["roles"][0], "role": 5}])
    with pytest.raises(EncodingError, match=r"User\.roles\[0\]\.role: expected string, got int"):
        SCHEMAS.encode(USER, bad)


def test_unknown_field_is_refused():
    """Strict encoding refuses a field the schema does not name."""
    with pytest.raises(EncodingError, match="unknown field"):
        SCHEMAS.encode(USER, _user(nickname="JJ"))


def test_missing_required_field_is_refused():
    """A required field (no default) that is absent is reported by path."""
    value = _user()
    del value["sourcedId"]
    with pytest.raises(EncodingError, match=r"User\.sourcedId: missing"):
        SCHEMAS.encode(USER, value)


def test_bad_enum_symbol_is_refused():
    """An enum value outside the symbols is reported with the allowed ones."""
    with pytest.raises(EncodingError, match=r"User\.status: 'inactive' is not one of"):
        SCHEMAS.encode(USER, _user(status="inactive"))


def test_unknown_schema_name_and_fingerprint_are_errors():
    """Unknown names, missing headers and unknown fingerprints raise EncodingError."""
    with pytest.raises(EncodingError, match="unknown schema"):
        SCHEMAS.get("oneroster.cdc.Nope")
    with pytest.raises(EncodingError, match="C3 01"):
        SCHEMAS.decode(b"\x00\x00\x00\x00\x01")
    with pytest.raises(EncodingError, match="unknown schema fingerprint"):
        SCHEMAS.decode(MAGIC + b"\x01" * 8 + b"\x00")


def test_truncated_body_is_an_encoding_error():
    """A body cut short does not decode and says which schema it tried."""
    data = SCHEMAS.encode(USER, _user())
    with pytest.raises(EncodingError, match="cannot decode"):
        SCHEMAS.decode(data[:20])


@pytest.mark.parametrize(("before", "after"), [(None, "u"), ("u", "u"), ("u", None)])
def test_spliced_envelope_equals_plain_encoding(before, after):
    """encode_change with pre-encoded bodies gives the same bytes as encoding the whole dict."""
    b = _user() if before else None
    a = _user(email="new@example.org") if after else None
    env = _envelope(b, a)
    plain = SCHEMAS.encode(CHANGE_NAMES["users"], env)
    spliced = SCHEMAS.encode_change(
        "users",
        env,
        before_body=SCHEMAS.encode_body(USER, b) if b else None,
        after_body=SCHEMAS.encode_body(USER, a) if a else None,
    )
    assert spliced == plain
    assert SCHEMAS.encode_change("users", env) == plain
    assert SCHEMAS.decode(spliced).value["after"] == a


def test_checkpoint_may_omit_defaulted_fields():
    """A checkpoint with only its required fields encodes; defaults fill the rest on decode."""
    value = {"district_id": "d", "entity": "users", "cursor": "2024-01-01T00:00:00.000Z"}
    decoded = SCHEMAS.decode(SCHEMAS.encode(CHECKPOINT, value)).value
    assert decoded["cursor"] == "2024-01-01T00:00:00.000Z"
    assert decoded["delta_supported"] is True
    assert decoded["held_deletes"] == 0


def test_dead_letter_roundtrip_keeps_raw_bytes():
    """A dead-letter record keeps the raw JSON bytes and timestamp."""
    value = {
        "district_id": "d",
        "entity": "users",
        "sourced_id": None,
        "reason": "users[sourcedId]: missing",
        "raw": b'{"status":"active"}',
        "received_at": 1_700_000_000_123,
        "sync_id": "s",
    }
    decoded = SCHEMAS.decode(SCHEMAS.encode(DEAD_LETTER, value)).value
    assert decoded["raw"] == value["raw"]
    assert int(decoded["received_at"].timestamp() * 1000) == value["received_at"]


def test_headers_name_schema_and_op():
    """Headers carry the content type, the schema's full name and the op when given."""
    assert headers(USER) == [
        ("content-type", b"application/avro; encoding=single-object"),
        ("schema", USER.encode()),
    ]
    assert headers(CHANGE_NAMES["users"], "DELETED")[-1] == ("op", b"DELETED")


def test_published_lists_every_schema_with_its_fingerprint():
    """published() pairs each fingerprint (hex) with self-contained JSON that parses."""
    pairs = dict(SCHEMAS.published())
    for name in SCHEMAS.names:
        info = SCHEMAS.get(name)
        assert json.loads(pairs[info.fingerprint.hex()])["name"] == name.rpartition(".")[2]


def test_data_from_a_released_schema_decodes_into_the_current_one(tmp_path):
    """A new optional field is filled with its default when decoding data of a released schema."""
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas", ignore=shutil.ignore_patterns("history"))
    shutil.copytree(
        SCHEMA_DIR,
        tmp_path / "schemas" / "history" / "0.1.0",
        ignore=shutil.ignore_patterns("history"),
    )
    org = tmp_path / "schemas" / "Org.avsc"
    node = json.loads(org.read_text())
    node["fields"].append({"name": "nick", "type": ["null", "string"], "default": None, "doc": "x"})
    org.write_text(json.dumps(node))
    old = Schemas.load(tmp_path / "schemas" / "history" / "0.1.0", history=False)
    new = Schemas.load(tmp_path / "schemas")
    value = {"sourcedId": "o", "status": "active", "dateLastModified": "2024-01-01T00:00:00.000Z"}
    data = old.encode(RECORD_NAMES["orgs"], value)
    decoded = new.decode(data)
    assert decoded.name == RECORD_NAMES["orgs"]
    assert decoded.value["nick"] is None
    assert new.get(RECORD_NAMES["orgs"]).fingerprint != data[2:10]


def test_load_refuses_an_empty_directory(tmp_path):
    """Loading a directory without schemas is an EncodingError, not a silent empty registry."""
    with pytest.raises(EncodingError, match=r"no \.avsc"):
        Schemas.load(tmp_path)


def test_a_0_1_0_value_decodes_into_0_2_0_names_and_is_not_spliced():
    """A state value written with schema 0.1.0 (``org.oneroster.cdc.Enrollment`` with ``class``)
    decodes into the current ``Enrollment`` with ``schoolClass``; ``current_body`` refuses it
    (its body is re-encoded, never spliced into a current envelope), but accepts current data."""
    old = read_release(SCHEMA_DIR / "history" / "0.1.0")["org.oneroster.cdc.Enrollment"]
    value = {
        "sourcedId": "e-1",
        "status": "active",
        "dateLastModified": "2024-01-01T00:00:00.000Z",
        "class": {"sourcedId": "c-1", "type": "class"},
    }
    buf = io.BytesIO()
    schemaless_writer(buf, old.parsed, value, strict_allow_default=True)
    data = MAGIC + old.fingerprint + buf.getvalue()
    decoded = SCHEMAS.decode(data)
    assert decoded.name == RECORD_NAMES["enrollments"] == "oneroster.cdc.Enrollment"
    assert decoded.value["schoolClass"] == {"sourcedId": "c-1", "type": "class"}
    assert "class" not in decoded.value
    assert SCHEMAS.current_body(data) is None
    current = SCHEMAS.encode(RECORD_NAMES["enrollments"], decoded.value)
    assert SCHEMAS.current_body(current) == current[10:]


def test_a_0_1_0_class_decodes_as_school_class():
    """0.1.0's ``org.oneroster.cdc.Class`` resolves into ``oneroster.cdc.SchoolClass`` (alias)."""
    old = read_release(SCHEMA_DIR / "history" / "0.1.0")["org.oneroster.cdc.Class"]
    value = {
        "sourcedId": "c-1",
        "status": "tobedeleted",
        "dateLastModified": "2024-01-01T00:00:00.000Z",
    }
    buf = io.BytesIO()
    schemaless_writer(buf, old.parsed, value, strict_allow_default=True)
    decoded = SCHEMAS.decode(MAGIC + old.fingerprint + buf.getvalue())
    assert decoded.name == RECORD_NAMES["classes"] == "oneroster.cdc.SchoolClass"
    assert decoded.value["status"] == "tobedeleted"
