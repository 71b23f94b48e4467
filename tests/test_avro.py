"""Single-object Avro encoding: strict, decodable by fingerprint, spliceable envelopes."""

from __future__ import annotations

import io
import json
import random
import shutil
from datetime import UTC, datetime
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from producer import avro
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
from producer.avrowrite import Unfit, compile_fields
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


# -- the compiled envelope writer (producer.avrowrite) ---------------------------------------


def _random_text(rng: random.Random) -> str:
    alphabet = "abz09-_ ./:" + "éüß" + "学区" + "\U0001f600" + "\x00\x7f"
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 40, 200])))


def _random_envelope(rng: random.Random, entity: str) -> dict[str, Any]:
    """An envelope of ``entity`` with every field drawn at random within its schema: any
    text, every enum symbol, null and non-null unions, empty and long lists, longs up to the
    bounds (no ``before``/``after``: the envelope's own fields are what is compiled)."""
    big = 2**63 - 1
    return {
        "event_id": _random_text(rng),
        "op": rng.choice(["CREATED", "UPDATED", "DELETED", "UNKNOWN"]),
        "district_id": _random_text(rng),
        "entity": entity,
        "sourced_id": _random_text(rng),
        "before": None,
        "after": None,
        "changed_fields": [_random_text(rng) for _ in range(rng.choice([0, 1, 3, 70]))],
        "source": {
            "version": rng.choice(["1.1", "1.2", ""]),
            "server": rng.choice([None, _random_text(rng)]),
            "dateLastModified": _random_text(rng),
            "status": rng.choice(["active", "tobedeleted", "unknown"]),
            "sync_mode": rng.choice(["DELTA", "FULL", "UNKNOWN"]),
            "sync_id": _random_text(rng),
            "delete_reason": rng.choice([None, "tobedeleted", "absent_from_full_sync"]),
        },
        "emitted_at": rng.choice(
            [0, 1, -1, 63, 64, -65, 2**31, -(2**31) - 1, big, -big - 1, rng.randrange(-big, big)]
        ),
    }


def test_compiled_envelope_writer_is_byte_for_byte_fastavro() -> None:
    """The envelope fields written by the compiled writer (``encode_change``) are exactly what
    fastavro writes for the whole change schema, for every entity and 3,000 random envelopes
    (text of every length and script, all enum symbols, null and non-null unions, empty and
    long arrays, longs at the varint and range boundaries)."""
    rng = random.Random(7)
    for n in range(3000):
        entity = list(CHANGE_NAMES)[n % len(CHANGE_NAMES)]
        env = _random_envelope(rng, entity)
        assert SCHEMAS.encode_change(entity, env) == SCHEMAS.encode(CHANGE_NAMES[entity], env)


def test_compiled_envelope_writer_leaves_fastavro_nothing_to_do(monkeypatch) -> None:
    """For an envelope that fits, with the record bodies given, ``encode_change`` calls
    fastavro not at all (the compiled writer took every field)."""
    calls = []
    real = schemaless_writer

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1].get("name"))
        return real(*args, **kwargs)

    monkeypatch.setattr(avro, "schemaless_writer", counting)
    env = _envelope(None, _user())
    body = SCHEMAS.encode_body(USER, _user())
    calls.clear()
    spliced = SCHEMAS.encode_change("users", env, after_body=body)
    assert calls == []
    assert spliced == SCHEMAS.encode(CHANGE_NAMES["users"], env)


@pytest.mark.parametrize(
    ("change", "fits"),
    [
        ({"emitted_at": datetime(2024, 5, 1, tzinfo=UTC)}, True),  # fastavro converts it
        ({"emitted_at": 2**63}, False),
        ({"emitted_at": "1700000000000"}, False),
        ({"op": "RENAMED"}, False),
        ({"sourced_id": 12}, False),
        ({"sourced_id": "\ud800"}, False),  # an unpaired surrogate is not UTF-8
        ({"changed_fields": ("a", "b")}, True),
        ({"changed_fields": ["a", 3]}, False),
        ({"source": {"extra": 1}}, False),
        ({"source": {"delete_reason": "renamed"}}, False),
        ({"source": {"server": 7}}, False),
    ],
)
def test_values_the_compiled_writer_refuses_go_to_fastavro(
    change: dict[str, Any], fits: bool
) -> None:
    """A value the compiled writer does not take is encoded by fastavro, strictly: the bytes
    of a value fastavro accepts, the same ``EncodingError`` (naming the field) for one it
    refuses; a source record that lacks a defaulted field gets its default either way."""
    env = _envelope(None, None, op="DELETED")
    for key, value in change.items():
        if key == "source":
            env["source"] = {**env["source"], **value}
        else:
            env[key] = value
    if fits:
        assert SCHEMAS.encode_change("users", env) == SCHEMAS.encode(CHANGE_NAMES["users"], env)
        return
    with pytest.raises(EncodingError) as plain:
        SCHEMAS.encode(CHANGE_NAMES["users"], env)
    with pytest.raises(EncodingError) as compiled:
        SCHEMAS.encode_change("users", env)
    assert str(compiled.value).split(": ", 1)[1] == str(plain.value).split(": ", 1)[1]
    short = _envelope(None, None, op="DELETED")
    del short["source"]["server"]
    assert SCHEMAS.encode_change("users", short) == SCHEMAS.encode(CHANGE_NAMES["users"], short)


def test_compile_fields_writes_what_fastavro_writes_and_declines_other_types() -> None:
    """``compile_fields`` on its own: ints, longs, a nested record with an array of enums and
    a nullable record are written as fastavro writes them; a schema with a boolean, a map, a
    float or a three-branch union compiles to None (fastavro writes those)."""
    schema: dict[str, Any] = parse_schema(  # type: ignore[assignment]
        {
            "type": "record",
            "name": "T",
            "fields": [
                {"name": "i", "type": "int"},
                {"name": "l", "type": "long"},
                {
                    "name": "r",
                    "type": [
                        "null",
                        {
                            "type": "record",
                            "name": "R",
                            "fields": [
                                {"name": "s", "type": "string"},
                                {
                                    "name": "e",
                                    "type": {
                                        "type": "array",
                                        "items": {
                                            "type": "enum",
                                            "name": "E",
                                            "symbols": ["x", "y"],
                                        },
                                    },
                                },
                            ],
                        },
                    ],
                },
                {"name": "again", "type": ["null", "R"]},
            ],
        }
    )
    write = compile_fields(schema)
    assert write is not None
    for value in (
        {"i": -(2**31), "l": 2**40, "r": None, "again": None},
        {
            "i": 2**31 - 1,
            "l": -1,
            "r": {"s": "ü", "e": ["y", "x", "y"]},
            "again": {"s": "", "e": []},
        },
    ):
        out: list[bytes] = []
        write(value, out)
        buf = io.BytesIO()
        schemaless_writer(buf, schema, value, strict_allow_default=True)
        assert b"".join(out) == buf.getvalue()
    with pytest.raises(Unfit):
        write({"i": 2**31, "l": 0, "r": None, "again": None}, [])
    for other in (
        "boolean",
        "float",
        {"type": "map", "values": "string"},
        ["null", "int", "string"],
    ):
        declined: dict[str, Any] = parse_schema(  # type: ignore[assignment]
            {"type": "record", "name": "D", "fields": [{"name": "f", "type": other}]}
        )
        assert compile_fields(declined) is None
