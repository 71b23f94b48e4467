"""The Avro schemas in ``schemas/``: documented, evolvable, compatible with the last release."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from producer.avro import CHANGE_NAMES, RECORD_NAMES, SCHEMA_DIR, Schemas

# The newest released copy: the current schemas must stay compatible with it both ways.
HISTORY = max(
    (p for p in (SCHEMA_DIR / "history").iterdir() if p.is_dir()),
    key=lambda p: tuple(int(x) for x in p.name.split(".")),
)
CURRENT = Schemas.load(SCHEMA_DIR, history=False)
RELEASED = Schemas.load(HISTORY, history=False)


def _sample(schema: Any, named: dict[str, Any], depth: int = 0) -> Any:
    """A value exercising every field of ``schema``: non-null union branches, one array item."""
    if isinstance(schema, str):
        if schema in named:
            return _sample(named[schema], named, depth)
        return {
            "null": None,
            "boolean": True,
            "int": 7,
            "long": 1_700_000_000_000,
            "float": 1.5,
            "double": 2.5,
            "bytes": b'{"x": 1}',
            "string": f"s{depth}",
        }[schema]
    if isinstance(schema, list):
        branch = next((b for b in schema if b != "null"), "null")
        return _sample(branch, named, depth)
    kind = schema["type"]
    if schema.get("logicalType") == "timestamp-millis":
        return datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    if kind in ("record", "enum"):
        named[f"{schema.get('namespace', 'org.oneroster.cdc')}.{schema['name']}"] = schema
    if kind == "record":
        return {f["name"]: _sample(f["type"], named, depth + 1) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][-1]
    if kind == "array":
        return [_sample(schema["items"], named, depth + 1)]
    if kind == "map":
        return {"k": _sample(schema["values"], named, depth + 1)}
    return _sample(kind, named, depth)


def _roundtrip(writer: dict[str, Any], reader: dict[str, Any], value: Any) -> Any:
    buf = io.BytesIO()
    schemaless_writer(buf, writer, value)
    buf.seek(0)
    return schemaless_reader(buf, writer, reader)


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _fields(node: Any) -> list[dict[str, Any]]:
    return node.get("fields", []) if isinstance(node, dict) else []


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.avsc")), ids=lambda p: p.name)
def test_every_type_and_field_is_documented(path):
    """Every schema file defines one namespaced type with a doc, and every field has a doc."""
    node = _json(path)
    assert node["namespace"] == "org.oneroster.cdc"
    assert node["name"] == path.stem
    assert node["doc"].strip()
    for field in _fields(node):
        assert field["doc"].strip(), f"{path.name}: {field['name']} has no doc"


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.avsc")), ids=lambda p: p.name)
def test_nullable_fields_default_to_null_and_arrays_to_empty(path):
    """Optional fields are ``["null", T]`` with default null; arrays default to ``[]``."""
    for field in _fields(_json(path)):
        t = field["type"]
        if isinstance(t, list):
            assert t[0] == "null", field["name"]
            assert "default" in field, field["name"]
            assert field["default"] is None, field["name"]
        if isinstance(t, dict) and t.get("type") == "array":
            assert field.get("default") == [], field["name"]


@pytest.mark.parametrize("name", sorted(RECORD_NAMES.values()))
def test_entity_records_share_the_common_fields(name):
    """Each canonical record starts with sourcedId, status, dateLastModified and ends with the
    preserved ``metadata_json`` and ``extensions_json``."""
    fields = CURRENT.get(name).fields
    assert fields[:3] == ("sourcedId", "status", "dateLastModified")
    assert fields[-2:] == ("metadata_json", "extensions_json")


@pytest.mark.parametrize("name", sorted(CHANGE_NAMES.values()))
def test_change_envelopes_have_the_contract_fields(name):
    """Every change envelope has the fields the README's event contract names, in that order."""
    assert CURRENT.get(name).fields == (
        "event_id",
        "op",
        "district_id",
        "entity",
        "sourced_id",
        "before",
        "after",
        "changed_fields",
        "source",
        "emitted_at",
    )


def test_history_holds_every_current_schema():
    """The last release has a copy of every current schema (none was dropped since)."""
    assert set(RELEASED.names) == set(CURRENT.names)


@pytest.mark.parametrize("name", sorted(CURRENT.names))
def test_roundtrip_current_schema(name):
    """A value with every field set encodes and decodes back equal under the current schema."""
    info = CURRENT.get(name)
    value = _sample(json.loads(info.json), {})
    assert CURRENT.decode(CURRENT.encode(name, value)).value == value


@pytest.mark.parametrize("name", sorted(CURRENT.names))
def test_released_data_reads_with_current_schema(name):
    """Backward compatibility: data written with the released schema reads with the current one."""
    old, new = RELEASED.get(name), CURRENT.get(name)
    value = _sample(json.loads(old.json), {})
    decoded = _roundtrip(old.parsed, new.parsed, value)
    for key in old.fields:
        assert decoded[key] == value[key]


@pytest.mark.parametrize("name", sorted(CURRENT.names))
def test_current_data_reads_with_released_schema(name):
    """Forward compatibility: data written with the current schema reads with the released one."""
    old, new = RELEASED.get(name), CURRENT.get(name)
    value = _sample(json.loads(new.json), {})
    decoded = _roundtrip(new.parsed, old.parsed, value)
    for key in old.fields:
        assert decoded[key] == value[key]


def _crc64_avro(data: bytes) -> bytes:
    """CRC-64-AVRO written out from the Avro specification, independent of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for b in data:
        fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
    return fp.to_bytes(8, "little")


@pytest.mark.parametrize("name", sorted(CURRENT.names))
def test_fingerprint_is_crc64_avro_of_the_canonical_form_little_endian(name):
    """The 8 header bytes are the spec's CRC-64-AVRO of the parsing canonical form, LE order."""
    info = CURRENT.get(name)
    canonical = to_parsing_canonical_form(info.parsed).encode()
    assert info.fingerprint == _crc64_avro(canonical)


def test_self_contained_schema_json_defines_each_named_type_once():
    """The published JSON of an envelope defines GUIDRef once and refers to it by name after."""
    text = CURRENT.get("org.oneroster.cdc.UserChange").json
    assert text.count('"name": "GUIDRef"') == 1
    assert '"org.oneroster.cdc.GUIDRef"' in text
