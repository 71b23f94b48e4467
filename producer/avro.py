"""Avro schemas and the wire format of every value oneroster-cdc writes to Kafka.

Wire format: Avro **single-object encoding** (Avro specification, "Single object encoding"):
``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of the writer schema's parsing canonical form
(little-endian) + the Avro binary body. Java reads it with ``BinaryMessageDecoder`` and a schema
store; any reader resolves the fingerprint through the ``<prefix>.schemas`` topic, whose values
are the self-contained schema JSON (``Schemas.published()``). Every message also carries headers
naming its schema (``headers()``).

Schemas live in ``schemas/*.avsc`` (the repository's source of truth, shipped inside the package
as ``producer/schemas/``; ``SCHEMA_DIR`` finds either): one named type per file
(``<Name>.avsc``), full names in ``oneroster.cdc`` (no field is named ``oneroster``, so the
package root of generated JVM code is never shadowed), referenced by full name across files.
``Schemas.load`` parses them once
and builds, per type, a self-contained schema (each named type defined at its first use).
``schemas/history/<version>/`` holds released copies; their fingerprints decode too, resolved
into the current schema of the same full name or of the one that lists it in its ``aliases``
(0.1.0's ``org.oneroster.cdc.Class`` is ``oneroster.cdc.SchoolClass``).

Public API::

    NAMESPACE, MAGIC, RECORD_NAMES, CHANGE_NAMES, DEAD_LETTER, CHECKPOINT, SCHEMA_DIR
    read_release(directory) -> dict[str, SchemaInfo]  # a released copy, by full name
    Schemas.load(directory=SCHEMA_DIR, *, history=True) -> Schemas
    Schemas.get(name) -> SchemaInfo                 # by full name
    Schemas.encode_body(name, value) -> bytes       # strict Avro binary, no header
    Schemas.frame(name, body) -> bytes              # header + body
    Schemas.encode(name, value) -> bytes            # single-object bytes
    Schemas.decode(data) -> Decoded                 # by fingerprint
    Schemas.current_body(data) -> bytes | None      # body, if written with a current schema
    Schemas.encode_change(entity, envelope, *, before_body=None, after_body=None) -> bytes
    Schemas.published() -> list[tuple[str, str]]    # (fingerprint hex, schema JSON)
    body_of(single_object) -> bytes                 # the body of single-object bytes
    headers(name, op=None) -> list[tuple[str, bytes]]

Encoding is strict: a value that does not fit raises ``EncodingError`` naming the field path,
e.g. ``oneroster.cdc.User.roles[0].role: expected string, got int``.

Speed: the canonical record is encoded once (``encode_body``); that body is the state value (after
``frame``) and is spliced into the change envelope: an Avro record is the concatenation of its
fields and a union value is the branch index (zig-zag varint) followed by the value, so
``encode_change`` encodes only the small fields around ``before``/``after``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from producer.avrofast import Declined, compile_writer, zigzag
from producer.errors import EncodingError
from producer.model import Entity

NAMESPACE: Final = "oneroster.cdc"
MAGIC: Final = b"\xc3\x01"


def schema_dir(package: Path) -> Path:
    """Where the schemas are, for the package at ``package``: ``<package>/schemas`` in an
    installed wheel (``setup.py`` ships the repository's ``schemas/`` there), else the source
    tree's ``schemas/`` next to the package (a checkout, an editable install)."""
    packaged = package / "schemas"
    return packaged if packaged.is_dir() else package.parent / "schemas"


SCHEMA_DIR: Final = schema_dir(Path(__file__).resolve().parent)

#: Short name of each entity's canonical record, and the stem of its change envelope's name
#: (``<stem>Change``): the class record is ``SchoolClass`` (``Class`` clashes with
#: ``java.lang.Class`` in generated JVM code) but its envelope stays ``ClassChange``.
_RECORD_SHORT: Final[dict[Entity, tuple[str, str]]] = {
    "orgs": ("Org", "Org"),
    "academicSessions": ("AcademicSession", "AcademicSession"),
    "courses": ("Course", "Course"),
    "classes": ("SchoolClass", "Class"),
    "users": ("User", "User"),
    "enrollments": ("Enrollment", "Enrollment"),
    "demographics": ("Demographics", "Demographics"),
}
#: Full name of each entity's canonical record (the state value).
RECORD_NAMES: Final[Mapping[Entity, str]] = {
    e: f"{NAMESPACE}.{n}" for e, (n, _) in _RECORD_SHORT.items()
}
#: Full name of each entity's change envelope (the event value).
CHANGE_NAMES: Final[Mapping[Entity, str]] = {
    e: f"{NAMESPACE}.{stem}Change" for e, (_, stem) in _RECORD_SHORT.items()
}
DEAD_LETTER: Final = f"{NAMESPACE}.DeadLetter"
CHECKPOINT: Final = f"{NAMESPACE}.Checkpoint"

_PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    """One parsed schema: its full name, fingerprint and self-contained JSON."""

    name: str
    #: CRC-64-AVRO of the parsing canonical form, in header (little-endian) byte order.
    fingerprint: bytes
    #: Self-contained schema JSON, docs included (what a consumer registers).
    json: str
    #: fastavro's parsed schema.
    parsed: dict[str, Any]
    #: Field names in order, for records; empty otherwise.
    fields: tuple[str, ...]

    @property
    def header(self) -> bytes:
        """The single-object header: ``C3 01`` + fingerprint."""
        return MAGIC + self.fingerprint


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded single-object value and the full name of its schema."""

    name: str
    value: Any


@dataclass(frozen=True, slots=True)
class _Splice:
    prefix: dict[str, Any]
    suffix: dict[str, Any]
    prefix_fields: tuple[str, ...]
    suffix_fields: tuple[str, ...]


def headers(name: str, op: str | None = None) -> list[tuple[str, bytes]]:
    """Kafka headers naming the value's schema (full name) and, for events, the op."""
    out = [
        ("content-type", b"application/avro; encoding=single-object"),
        ("schema", name.encode()),
    ]
    if op is not None:
        out.append(("op", op.encode()))
    return out


def body_of(data: bytes) -> bytes:
    """The Avro binary body of single-object bytes (e.g. a state value, to splice as ``before``)."""
    if data[:2] != MAGIC or len(data) < 10:
        raise EncodingError("not Avro single-object encoded: missing the C3 01 header")
    return data[10:]


_NULL_BRANCH: Final = zigzag(0)
_VALUE_BRANCH: Final = zigzag(1)


def _fullname(node: Mapping[str, Any], namespace: str | None) -> str:
    name = str(node["name"])
    if "." in name:
        return name
    ns = node.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


def _inline_name(
    name: str, registry: Mapping[str, Any], seen: set[str], namespace: str | None
) -> Any:
    """A type name: primitive, a reference to an already defined type, or inlined here."""
    full = name if "." in name or namespace is None else f"{namespace}.{name}"
    if name in _PRIMITIVES or full in seen:
        return name
    if full not in registry:
        raise EncodingError(f"schema: unknown type {name!r}")
    return _inline(registry[full], registry, seen, namespace)


def _inline(node: Any, registry: Mapping[str, Any], seen: set[str], namespace: str | None) -> Any:
    """Copy ``node`` with named references inlined at their first occurrence."""
    if isinstance(node, str):
        return _inline_name(node, registry, seen, namespace)
    if isinstance(node, list):
        return [_inline(n, registry, seen, namespace) for n in node]
    if not isinstance(node, dict):
        raise EncodingError(f"schema: unexpected node {node!r}")
    kind = node.get("type")
    out = dict(node)
    if kind in ("record", "error", "enum", "fixed"):
        full = _fullname(node, namespace)
        seen.add(full)
        namespace = full.rpartition(".")[0] or None
        if kind in ("record", "error"):
            out["fields"] = [
                {**f, "type": _inline(f["type"], registry, seen, namespace)} for f in node["fields"]
            ]
    elif kind == "array":
        out["items"] = _inline(node["items"], registry, seen, namespace)
    elif kind == "map":
        out["values"] = _inline(node["values"], registry, seen, namespace)
    elif isinstance(kind, (dict, list)):
        out["type"] = _inline(kind, registry, seen, namespace)
    return out


def _read_dir(directory: Path) -> dict[str, Any]:
    registry: dict[str, Any] = {}
    for path in sorted(directory.glob("*.avsc")):
        try:
            node = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EncodingError(f"schema {path}: cannot read: {exc}") from exc
        registry[_fullname(node, None)] = node
    if not registry:
        raise EncodingError(f"schema directory {directory} holds no .avsc files")
    return registry


def _build(registry: Mapping[str, Any]) -> dict[str, SchemaInfo]:
    out: dict[str, SchemaInfo] = {}
    for name, node in registry.items():
        expanded = _inline(node, registry, set(), None)
        try:
            parsed = cast("dict[str, Any]", parse_schema(expanded, {}))
        except Exception as exc:  # fastavro raises several unrelated types
            raise EncodingError(f"schema {name}: invalid: {exc}") from exc
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
        fields = tuple(f["name"] for f in expanded.get("fields", ()))
        out[name] = SchemaInfo(name, fp, json.dumps(expanded, ensure_ascii=False), parsed, fields)
    return out


def read_release(directory: Path | str) -> dict[str, SchemaInfo]:
    """Every schema of a released copy (``schemas/history/<version>/``), by its full name."""
    return _build(_read_dir(Path(directory)))


class Schemas:
    """All schemas, parsed once; encodes and decodes single-object values."""

    __slots__ = ("_by_fp", "_by_name", "_splices")

    def __init__(
        self,
        by_name: dict[str, SchemaInfo],
        by_fp: dict[bytes, tuple[SchemaInfo, SchemaInfo]],
        splices: dict[str, _Splice],
    ) -> None:
        self._by_name = by_name
        self._by_fp = by_fp
        self._splices = splices

    @classmethod
    def load(cls, directory: Path | str = SCHEMA_DIR, *, history: bool = True) -> Schemas:
        """Parse every ``*.avsc`` of ``directory`` (and, with ``history``, its released copies)."""
        directory = Path(directory)
        registry = _read_dir(directory)
        by_name = _build(registry)
        missing = [
            n
            for n in (*RECORD_NAMES.values(), *CHANGE_NAMES.values(), DEAD_LETTER, CHECKPOINT)
            if n not in by_name
        ]
        if missing:
            raise EncodingError(f"schema directory {directory} lacks {', '.join(missing)}")
        # A released type resolves into the current type of the same full name, or the one
        # that lists its full name among its aliases (a renamed type or namespace).
        current = {name: name for name in by_name}
        for name, node in registry.items():
            for alias in node.get("aliases", ()):
                current.setdefault(alias, name)
        by_fp: dict[bytes, tuple[SchemaInfo, SchemaInfo]] = {}
        hist = directory / "history"
        if history and hist.is_dir():
            for release in sorted(p for p in hist.iterdir() if p.is_dir()):
                for name, info in read_release(release).items():
                    if name in current:
                        by_fp[info.fingerprint] = (info, by_name[current[name]])
        for info in by_name.values():
            by_fp[info.fingerprint] = (info, info)
        splices = {name: cls._splice(registry, name) for name in CHANGE_NAMES.values()}
        return cls(by_name, by_fp, splices)

    @staticmethod
    def _splice(registry: Mapping[str, Any], name: str) -> _Splice:
        node = registry[name]
        names = [f["name"] for f in node["fields"]]
        i = names.index("before")
        if names[i + 1] != "after":
            raise EncodingError(f"schema {name}: `after` must follow `before`")

        def part(fields: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
            aux = {"type": "record", "name": f"{name}{suffix}", "fields": fields}
            return cast(
                "dict[str, Any]", parse_schema(_inline(aux, registry, set(), NAMESPACE), {})
            )

        pre, post = node["fields"][:i], node["fields"][i + 2 :]
        return _Splice(
            part(pre, "Prefix"),
            part(post, "Suffix"),
            tuple(f["name"] for f in pre),
            tuple(f["name"] for f in post),
        )

    def get(self, name: str) -> SchemaInfo:
        """The schema with this full name."""
        try:
            return self._by_name[name]
        except KeyError:
            raise EncodingError(f"unknown schema {name!r}") from None

    @property
    def names(self) -> tuple[str, ...]:
        """Full names of every current schema."""
        return tuple(self._by_name)

    def published(self) -> list[tuple[str, str]]:
        """``(fingerprint hex, self-contained schema JSON)`` of every current and released schema.

        Publish them (e.g. key = fingerprint hex) to ``<prefix>.schemas`` so any consumer can
        resolve the fingerprint in a message header.
        """
        return [(fp.hex(), w.json) for fp, (w, _) in self._by_fp.items()]

    def encode_body(self, name: str, value: Any) -> bytes:
        """Strict Avro binary encoding of ``value`` with schema ``name`` (no header)."""
        return self._write(self.get(name).parsed, name, value)

    def frame(self, name: str, body: bytes) -> bytes:
        """Single-object bytes for a body already encoded with schema ``name``."""
        return self.get(name).header + body

    def encode(self, name: str, value: Any) -> bytes:
        """Single-object bytes of ``value`` with schema ``name``."""
        info = self.get(name)
        return info.header + self._write(info.parsed, name, value)

    def encode_change(
        self,
        entity: Entity,
        envelope: Mapping[str, Any],
        *,
        before_body: bytes | None = None,
        after_body: bytes | None = None,
    ) -> bytes:
        """Single-object bytes of a change envelope of ``entity``.

        ``before``/``after`` are taken from the pre-encoded record bodies when given (the fast
        path: ``encode_body(RECORD_NAMES[entity], data)`` once per record), else encoded from
        ``envelope["before"]``/``envelope["after"]`` (a dict or None).
        """
        name = CHANGE_NAMES[entity]
        splice = self._splices[name]
        rec = RECORD_NAMES[entity]
        parts = [self._by_name[name].header]
        parts.append(
            self._write(splice.prefix, name, {k: envelope[k] for k in splice.prefix_fields})
        )
        for field, given in (("before", before_body), ("after", after_body)):
            body = given
            if body is None:
                value = envelope.get(field)
                if value is None:
                    parts.append(_NULL_BRANCH)
                    continue
                body = self.encode_body(rec, value)
            parts.append(_VALUE_BRANCH)
            parts.append(body)
        parts.append(
            self._write(splice.suffix, name, {k: envelope[k] for k in splice.suffix_fields})
        )
        return b"".join(parts)

    def decode(self, data: bytes) -> Decoded:
        """Decode single-object bytes by fingerprint (released schemas resolve to current)."""
        if data[:2] != MAGIC or len(data) < 10:
            raise EncodingError("not Avro single-object encoded: missing the C3 01 header")
        try:
            writer, reader = self._by_fp[bytes(data[2:10])]
        except KeyError:
            raise EncodingError(f"unknown schema fingerprint {bytes(data[2:10]).hex()}") from None
        try:
            value = schemaless_reader(
                io.BytesIO(data[10:]),
                writer.parsed,
                None if reader is writer else reader.parsed,
            )
        except Exception as exc:  # fastavro raises EOFError, ValueError, ... on corrupt input
            raise EncodingError(f"{writer.name}: cannot decode: {exc}") from exc
        return Decoded(reader.name, value)

    def current_body(self, data: bytes) -> bytes | None:
        """The body of single-object bytes written with a current schema; None for a released
        schema's (its body may not splice into a current envelope: decode and re-encode it)."""
        entry = self._by_fp.get(bytes(data[2:10])) if data[:2] == MAGIC else None
        if entry is None or entry[0] is not entry[1]:
            return None
        return data[10:]

    @staticmethod
    def _write(parsed: dict[str, Any], name: str, value: Any) -> bytes:
        """Strict Avro binary of ``value``: through the schema's generated writer when it takes
        the value (``producer.avrofast``), else through fastavro, which names what does not
        fit."""
        entry = _WRITERS.get(id(parsed))
        if entry is None or entry[0] is not parsed:
            entry = _WRITERS[id(parsed)] = (parsed, compile_writer(parsed))
        if entry[1] is not None:
            try:
                return entry[1](value)
            except Declined:
                pass
        buf = io.BytesIO()
        try:
            schemaless_writer(buf, parsed, value, strict_allow_default=True)
        except Exception as exc:  # fastavro raises TypeError, ValueError, AttributeError, ...
            path = _find_mismatch(parsed, value, name, parsed.get("__named_schemas", {}))
            raise EncodingError(path if path is not None else f"{name}: {exc}") from exc
        return buf.getvalue()


#: Generated writers by ``id`` of the parsed schema (kept beside it: an id is reused only once
#: its object is gone).
_WRITERS: dict[int, tuple[dict[str, Any], Callable[[Any], bytes] | None]] = {}

_INT_RANGE: Final = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def _describe(value: Any) -> str:
    return type(value).__name__


def _find_mismatch(  # noqa: PLR0911, PLR0912 - one branch per Avro type
    schema: Any, value: Any, path: str, named: Mapping[str, Any]
) -> str | None:
    """Where ``value`` first does not fit ``schema``, as ``path: what``; None if it fits."""
    if isinstance(schema, str):
        if schema in named:
            return _find_mismatch(named[schema], value, path, named)
        kind: Any = schema
    elif isinstance(schema, list):
        for branch in schema:
            if _find_mismatch(branch, value, path, named) is None:
                return None
        if len(schema) == 2 and "null" in schema and value is not None:
            other = schema[1] if schema[0] == "null" else schema[0]
            return _find_mismatch(other, value, path, named)
        return f"{path}: {_describe(value)} fits no branch of the union"
    else:
        kind = schema.get("type")
        if schema.get("logicalType") == "timestamp-millis" and isinstance(value, datetime):
            return None if value.tzinfo is not None else f"{path}: naive datetime"
        if isinstance(kind, (list, dict)):
            return _find_mismatch(kind, value, path, named)
    if kind == "null":
        return None if value is None else f"{path}: expected null, got {_describe(value)}"
    if kind == "boolean":
        return (
            None if isinstance(value, bool) else f"{path}: expected boolean, got {_describe(value)}"
        )
    if kind in _INT_RANGE:
        lo, hi = _INT_RANGE[kind]
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            return None
        return f"{path}: expected {kind}, got {value!r}"
    if kind in ("float", "double"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"{path}: expected {kind}, got {_describe(value)}"
    if kind == "string":
        return (
            None if isinstance(value, str) else f"{path}: expected string, got {_describe(value)}"
        )
    if kind in ("bytes", "fixed"):
        return (
            None if isinstance(value, bytes) else f"{path}: expected bytes, got {_describe(value)}"
        )
    if kind == "enum":
        syms = schema["symbols"]
        return None if value in syms else f"{path}: {value!r} is not one of {syms}"
    if kind == "array":
        if not isinstance(value, list):
            return f"{path}: expected array, got {_describe(value)}"
        for i, item in enumerate(value):
            err = _find_mismatch(schema["items"], item, f"{path}[{i}]", named)
            if err is not None:
                return err
        return None
    if kind == "map":
        if not isinstance(value, dict):
            return f"{path}: expected map, got {_describe(value)}"
        for k, v in value.items():
            err = _find_mismatch(schema["values"], v, f"{path}[{k!r}]", named)
            if err is not None:
                return err
        return None
    if kind in ("record", "error"):
        if not isinstance(value, dict):
            return f"{path}: expected record, got {_describe(value)}"
        names = {f["name"] for f in schema["fields"]}
        extra = sorted(set(value) - names)
        if extra:
            return f"{path}: unknown field(s) {', '.join(map(str, extra))}"
        for f in schema["fields"]:
            fpath = f"{path}.{f['name']}"
            if f["name"] not in value:
                if "default" in f:
                    continue
                return f"{fpath}: missing"
            err = _find_mismatch(f["type"], value[f["name"]], fpath, named)
            if err is not None:
                return err
        return None
    return None
