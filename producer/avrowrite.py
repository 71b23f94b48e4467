"""Avro binary writers compiled from a parsed schema, for the plain types of change envelopes.

``compile_fields(parsed)`` turns a record schema whose fields are strings, ints and longs,
enums, arrays, nested records and ``["null", X]`` unions into a function that appends the
Avro binary encoding of those fields of a mapping (other keys are ignored) to a list of bytes,
without fastavro's per-call set-up (the envelope around a spliced ``before``/``after`` costs
two fastavro calls per event otherwise). It returns None for a schema with any other type.
The writer takes only values it is sure of (``str`` for strings, ``int`` in range for ints
and longs, a known symbol for an enum, a ``list`` or ``tuple`` for an array, a ``dict`` with
exactly the record's fields for a nested record) and raises ``Unfit`` on anything else; the
caller then encodes that value with fastavro (``producer.avro.Schemas``), whose strict rules
and error messages stay the reference. Its output is byte-for-byte fastavro's
(``tests/test_avro.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

#: Appends the Avro binary encoding of a value to a list of bytes.
Write = Callable[[Any, list[bytes]], None]

_RANGES: Final = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


#: Counts and lengths below this take one byte (zig-zag doubles them), precomputed.
_SMALL_COUNT: Final = 64
_SMALL: Final = tuple(bytes([n << 1]) for n in range(_SMALL_COUNT))


class Unfit(Exception):
    """A value the compiled writer does not take: encode it with fastavro instead."""


def zigzag(n: int) -> bytes:
    """Avro's zig-zag varint encoding of a long."""
    if 0 <= n < _SMALL_COUNT:
        return _SMALL[n]
    return _varint(n)


def _varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def compile_fields(parsed: Mapping[str, Any]) -> Write | None:
    """A writer of the fields of the parsed record schema ``parsed`` (fastavro's
    ``parse_schema`` output) read from a mapping, or None when a field has a type this module
    does not write."""
    named: dict[str, Any] = dict(parsed.get("__named_schemas", {}))
    try:
        plan = tuple((f["name"], _writer(f["type"], named)) for f in parsed["fields"])
    except _Unsupported:
        return None

    def write(value: Any, out: list[bytes]) -> None:
        try:
            for name, field in plan:
                field(value[name], out)
        except KeyError:
            raise Unfit(value) from None

    return write


class _Unsupported(Exception):
    pass


def _writer(schema: Any, named: dict[str, Any]) -> Write:  # noqa: PLR0911 - one per type
    if isinstance(schema, str):
        if schema in named:
            return _writer(named[schema], named)
        if schema == "string":
            return _string
        if schema in _RANGES:
            return _integer(*_RANGES[schema])
        raise _Unsupported(schema)
    if isinstance(schema, list):
        return _nullable(schema, named)
    kind = schema.get("type")
    if "name" in schema:
        named.setdefault(schema["name"], schema)
    if kind == "enum":
        return _enum(schema["symbols"])
    if kind == "array":
        return _array(_writer(schema["items"], named))
    if kind == "record":
        return _record(schema["fields"], named)
    if isinstance(kind, str) and kind in _RANGES and "logicalType" not in schema:
        return _integer(*_RANGES[kind])
    if kind in _RANGES and schema.get("logicalType") == "timestamp-millis":
        return _integer(*_RANGES[kind])  # an int of epoch millis; a datetime is Unfit
    if kind == "string" and "logicalType" not in schema:
        return _string
    raise _Unsupported(kind)


def _string(value: Any, out: list[bytes]) -> None:
    if type(value) is not str:
        raise Unfit(value)
    data = value.encode()  # an unpaired surrogate raises: fastavro then names the field
    out.append(zigzag(len(data)))
    out.append(data)


def _integer(low: int, high: int) -> Write:
    def write(value: Any, out: list[bytes]) -> None:
        if type(value) is not int or not low <= value <= high:
            raise Unfit(value)
        out.append(zigzag(value))

    return write


def _enum(symbols: list[str]) -> Write:
    index = {symbol: zigzag(i) for i, symbol in enumerate(symbols)}

    def write(value: Any, out: list[bytes]) -> None:
        try:
            out.append(index[value])
        except (KeyError, TypeError):
            raise Unfit(value) from None

    return write


def _array(item: Write) -> Write:
    def write(value: Any, out: list[bytes]) -> None:
        if type(value) is not list and type(value) is not tuple:
            raise Unfit(value)
        if value:
            out.append(zigzag(len(value)))
            for element in value:
                item(element, out)
        out.append(b"\x00")

    return write


def _nullable(branches: list[Any], named: dict[str, Any]) -> Write:
    if len(branches) != 2 or branches[0] != "null":  # ["null", X] only
        raise _Unsupported(branches)
    other = _writer(branches[1], named)

    def write(value: Any, out: list[bytes]) -> None:
        if value is None:
            out.append(b"\x00")
        else:
            out.append(b"\x02")
            other(value, out)

    return write


def _record(fields: list[Mapping[str, Any]], named: dict[str, Any]) -> Write:
    plan = tuple((f["name"], _writer(f["type"], named)) for f in fields)
    size = len(plan)

    def write(value: Any, out: list[bytes]) -> None:
        if type(value) is not dict or len(value) != size:
            raise Unfit(value)
        try:
            for name, field in plan:
                field(value[name], out)
        except KeyError:
            raise Unfit(value) from None

    return write
