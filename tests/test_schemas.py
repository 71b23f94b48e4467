"""The Avro schemas in ``schemas/``: documented, evolvable, compatible with every release,
and safe for generated JVM code."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from producer import __version__
from producer.avro import CHANGE_NAMES, NAMESPACE, RECORD_NAMES, SCHEMA_DIR, Schemas, read_release


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in path.name.split("."))


#: Every released copy, oldest first: the current schemas must stay compatible with each.
RELEASES = sorted((p for p in (SCHEMA_DIR / "history").iterdir() if p.is_dir()), key=_version)
CURRENT = Schemas.load(SCHEMA_DIR, history=False)
RELEASED = {p.name: read_release(p) for p in RELEASES}

#: What a reader of a release cannot read in data written with the current schemas, and how it
#: fails; the README's "Schema 0.2.0" section says the same to consumers.
#: "error": resolution fails; "null": the renamed field reads as its old default (null).
FORWARD_BREAKS: dict[tuple[str, str], str] = {
    ("0.1.0", f"{NAMESPACE}.SchoolClass"): "error",  # was Class: no name to match
    ("0.1.0", f"{NAMESPACE}.ClassChange"): "error",  # its before/after union holds SchoolClass
    ("0.1.0", f"{NAMESPACE}.Enrollment"): "null",  # `class` became `schoolClass`
    ("0.1.0", f"{NAMESPACE}.EnrollmentChange"): "null",
}

#: Java and Kotlin keywords, and java.lang classes a generated class must not hide.
JVM_RESERVED = frozenset(
    [
        "abstract",
        "assert",
        "boolean",
        "break",
        "byte",
        "case",
        "catch",
        "char",
        "class",
        "const",
        "continue",
        "default",
        "do",
        "double",
        "else",
        "enum",
        "extends",
        "final",
        "finally",
        "float",
        "for",
        "goto",
        "if",
        "implements",
        "import",
        "instanceof",
        "int",
        "interface",
        "long",
        "native",
        "new",
        "package",
        "private",
        "protected",
        "public",
        "return",
        "short",
        "static",
        "strictfp",
        "super",
        "switch",
        "synchronized",
        "this",
        "throw",
        "throws",
        "transient",
        "try",
        "void",
        "volatile",
        "while",
        "record",
        "var",
        "yield",
        "sealed",
        "permits",
        "as",
        "fun",
        "in",
        "is",
        "null",
        "object",
        "typealias",
        "typeof",
        "val",
        "when",
        "true",
        "false",
    ]
)
JAVA_LANG = frozenset(
    [
        "Boolean",
        "Byte",
        "Character",
        "Class",
        "ClassLoader",
        "Comparable",
        "Double",
        "Enum",
        "Error",
        "Exception",
        "Float",
        "Integer",
        "Iterable",
        "Long",
        "Math",
        "Number",
        "Object",
        "Override",
        "Package",
        "Process",
        "Record",
        "Runnable",
        "Runtime",
        "Short",
        "String",
        "System",
        "Thread",
        "Throwable",
        "Void",
    ]
)


def _sample(schema: Any, named: dict[str, Any], depth: int = 0) -> Any:
    """A value exercising every field of ``schema``: non-null union branches, one array item,
    the last enum symbol the producer writes (not the reader-only default)."""
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
        named[f"{schema.get('namespace', NAMESPACE)}.{schema['name']}"] = schema
    if kind == "record":
        return {f["name"]: _sample(f["type"], named, depth + 1) for f in schema["fields"]}
    if kind == "enum":
        return [s for s in schema["symbols"] if s != schema.get("default")][-1]
    if kind == "array":
        return [_sample(schema["items"], named, depth + 1)]
    if kind == "map":
        return {"k": _sample(schema["values"], named, depth + 1)}
    return _sample(kind, named, depth)


def _current_name(released_name: str) -> str:
    """The current type a released type resolves into: same full name, or listed as an alias."""
    if released_name in CURRENT.names:
        return released_name
    matches = [
        n
        for n in CURRENT.names
        if released_name in json.loads(CURRENT.get(n).json).get("aliases", [])
    ]
    assert len(matches) == 1, f"{released_name}: no current type (or several) lists it"
    return matches[0]


def _renamed(value: Any, schema: Any) -> Any:
    """``value`` of a released schema with its fields under their current names (field aliases),
    recursively, for comparing with what the current schema reads."""
    current = (
        json.loads(CURRENT.get(_current_name(schema)).json) if isinstance(schema, str) else schema
    )
    return _rename_fields(value, current, {})


def _rename_fields(value: Any, schema: Any, named: dict[str, Any]) -> Any:
    if isinstance(schema, str):
        return _rename_fields(value, named[schema], named) if schema in named else value
    if isinstance(schema, list):
        if value is None:
            return None
        branch = next(b for b in schema if b != "null")
        return _rename_fields(value, branch, named)
    kind = schema["type"]
    if kind in ("record", "enum"):
        named[f"{schema.get('namespace', NAMESPACE)}.{schema['name']}"] = schema
    if kind == "record" and isinstance(value, dict):
        out = {}
        for f in schema["fields"]:
            old = next((a for a in [f["name"], *f.get("aliases", [])] if a in value), None)
            if old is not None:
                out[f["name"]] = _rename_fields(value[old], f["type"], named)
        return out
    if kind == "array" and isinstance(value, list):
        return [_rename_fields(v, schema["items"], named) for v in value]
    if isinstance(kind, (dict, list)):
        return _rename_fields(value, kind, named)
    return value


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
    assert node["namespace"] == NAMESPACE
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


def test_the_package_version_is_released_as_the_current_schemas():
    """``schemas/history/<package version>/`` exists and equals ``schemas/`` file for file, so
    a schema change cannot ship without a new version and its released copy."""
    release = SCHEMA_DIR / "history" / __version__
    assert release.is_dir(), f"no released copy for version {__version__}"
    current = {p.name: p.read_text(encoding="utf-8") for p in SCHEMA_DIR.glob("*.avsc")}
    copy = {p.name: p.read_text(encoding="utf-8") for p in release.glob("*.avsc")}
    assert copy == current


@pytest.mark.parametrize("release", RELEASED, ids=str)
def test_every_released_type_still_has_a_current_type(release):
    """No type was dropped: each released type resolves into exactly one current type, of the
    same full name or listing the released name among its aliases."""
    for name in RELEASED[release]:
        assert _current_name(name) in CURRENT.names


def _pairs() -> list[tuple[str, str]]:
    return [(release, name) for release, infos in RELEASED.items() for name in sorted(infos)]


@pytest.mark.parametrize("name", sorted(CURRENT.names))
def test_roundtrip_current_schema(name):
    """A value with every field set encodes and decodes back equal under the current schema."""
    info = CURRENT.get(name)
    value = _sample(json.loads(info.json), {})
    assert CURRENT.decode(CURRENT.encode(name, value)).value == value


@pytest.mark.parametrize(("release", "name"), _pairs())
def test_released_data_reads_with_current_schema(release, name):
    """Backward compatibility, for every release: data written with a released schema reads with
    the current one, each field under its current name (renamed fields through their aliases)."""
    old = RELEASED[release][name]
    new = CURRENT.get(_current_name(name))
    value = _sample(json.loads(old.json), {})
    decoded = _roundtrip(old.parsed, new.parsed, value)
    assert decoded == _renamed(value, new.name)


@pytest.mark.parametrize(("release", "name"), _pairs())
def test_current_data_reads_with_released_schema(release, name):
    """Forward compatibility, for every release: data written with the current schema reads with
    the released one; the documented exceptions (FORWARD_BREAKS) break exactly as documented."""
    old = RELEASED[release][name]
    new = CURRENT.get(_current_name(name))
    value = _sample(json.loads(new.json), {})
    expected = _renamed(value, new.name)
    brk = FORWARD_BREAKS.get((release, new.name))
    if brk == "error":
        with pytest.raises(Exception, match=r"(?i)mismatch|not found"):
            _roundtrip(new.parsed, old.parsed, value)
        return
    decoded = _renamed(_roundtrip(new.parsed, old.parsed, value), new.name)
    if brk == "null":
        enrollment = decoded if "schoolClass" in expected else decoded["after"]
        assert enrollment["schoolClass"] is None  # the 0.1.0 reader's `class`: its default
        return
    assert decoded == expected


def test_forward_breaks_name_real_types():
    """Every documented exception names a release and a current type that exist."""
    for release, name in FORWARD_BREAKS:
        assert release in RELEASED
        assert name in CURRENT.names


@pytest.mark.parametrize(
    "name", [n for n in sorted(CURRENT.names) if json.loads(CURRENT.get(n).json)["type"] == "enum"]
)
def test_enums_read_an_unknown_symbol_as_their_default(name):
    """Every enum has a default: a symbol written by a later version reads as it, not an error."""
    node = json.loads(CURRENT.get(name).json)
    assert node["default"] in node["symbols"]
    newer = {**node, "symbols": [*node["symbols"], "ADDED_LATER"]}
    buf = io.BytesIO()
    schemaless_writer(buf, newer, "ADDED_LATER")
    buf.seek(0)
    assert schemaless_reader(buf, newer, CURRENT.get(name).parsed) == node["default"]


def _names_in(node: Any, out: set[str]) -> set[str]:
    """Every field name (and field alias) inside ``node``."""
    if isinstance(node, list):
        for n in node:
            _names_in(n, out)
    elif isinstance(node, dict):
        for f in node.get("fields", ()):
            out.add(f["name"])
            _names_in(f["type"], out)
        for key in ("items", "values", "type"):
            if isinstance(node.get(key), (dict, list)):
                _names_in(node[key], out)
    return out


def test_generated_jvm_code_has_no_name_clashes():
    """What made 0.1.0's generated classes fail to compile cannot come back: no field is named
    like the namespace's first segment (a field ``org`` hid the package ``org``), no field or
    type is a Java/Kotlin keyword, and no type hides a java.lang class."""
    root = NAMESPACE.split(".")[0]
    for name in CURRENT.names:
        node = json.loads(CURRENT.get(name).json)
        fields = {f["name"] for f in _fields(node)}
        assert root not in fields, name
        assert not (fields & JVM_RESERVED), (name, fields & JVM_RESERVED)
        short = name.rpartition(".")[2]
        assert short not in JAVA_LANG, name
        assert short.lower() not in JVM_RESERVED, name
    assert root not in _names_in([json.loads(CURRENT.get(n).json) for n in CURRENT.names], set())


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
    text = CURRENT.get(f"{NAMESPACE}.UserChange").json
    assert text.count('"name": "GUIDRef"') == 1
    assert f'"{NAMESPACE}.GUIDRef"' in text
