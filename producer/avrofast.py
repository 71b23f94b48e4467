"""Avro binary writers generated per schema: the hot path of ``Schemas._write``.

fastavro's writer walks the schema for every value and, writing strictly, checks every union
branch by trial; for our schemas that costs most of a change's encode time. ``compile_writer``
turns a parsed schema into one Python function with every field unrolled that writes the same
bytes for the values it accepts. It accepts only the exact, common shapes: a ``dict`` with
exactly the record's fields, ``str`` for strings and enum symbols, ``bool``, ``int`` in range,
``bytes``, ``list`` for arrays, ``None`` for the null branch of ``["null", T]``, and an ``int``
or an aware ``datetime`` for a ``timestamp-millis``. Anything
else (a missing or extra field, another type, an unknown symbol, a string that is not valid
UTF-8) raises ``Declined`` and the caller writes the value with fastavro, strictly, as before:
fastavro stays the one judge of what fits a schema and of the error message naming the field.

Schemas with a construct this module does not generate (maps, fixed, floats, ints, logical
types other than ``timestamp-millis``, unions other than ``["null", T]``) get no generated
writer (``compile_writer`` returns None). Tests compare the generated writers' bytes with
fastavro's on every record of the simulator's districts, on envelopes and on damaged values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

#: Zig-zag varint bytes of the small non-negative numbers (lengths, counts, enum indexes).
_SMALL: Final = 1024


class Declined(Exception):
    """The value is not in the shape the generated writer takes: write it with fastavro."""


class Unsupported(Exception):
    """The schema has a construct the generator does not handle."""


def zigzag(n: int) -> bytes:
    """Avro's zig-zag varint of a long."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_ZZ: Final = tuple(zigzag(n) for n in range(_SMALL))
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _millis(moment: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime, as fastavro counts them (whole
    milliseconds, rounded down)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000 + delta.microseconds // 1_000


_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1


class _Gen:
    """Source of one module: a function per record type, code inlined for the rest."""

    def __init__(self, named: Mapping[str, Any]) -> None:
        self.named = named
        self.functions: dict[str, str] = {}  # record full name -> function name
        self.bodies: list[str] = []
        self.consts: dict[str, Any] = {}
        self.counter = 0

    def var(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def const(self, value: Any) -> str:
        name = self.var("_k")
        self.consts[name] = value
        return name

    def resolve(self, node: Any) -> Any:
        if isinstance(node, str) and node in self.named:
            return self.named[node]
        return node

    def record(self, node: Mapping[str, Any]) -> str:
        """The name of the function writing records of ``node`` (generated on first use)."""
        name = node["name"]
        if name in self.functions:
            return self.functions[name]
        fn = self.functions[name] = self.var("_record")
        fields = node["fields"]
        lines = [
            f"def {fn}(r, o):",
            f"    if type(r) is not dict or len(r) != {len(fields)}:",
            "        raise Declined",
        ]
        for f in fields:
            v = self.var("v")
            lines.append(f"    {v} = r[{f['name']!r}]")
            lines.extend("    " + line for line in self.value(f["type"], v))
        lines.append("")
        self.bodies.append("\n".join(lines))
        return fn

    def value(self, node: Any, v: str) -> list[str]:  # noqa: PLR0911 - one branch per type
        """Lines writing the value named ``v`` of type ``node`` into ``o``."""
        node = self.resolve(node)
        if isinstance(node, list):
            if len(node) != 2 or node[0] != "null" or node[1] == "null":
                raise Unsupported(f"union {node!r}")
            return [
                f"if {v} is None:",
                "    o.append(0)",
                "else:",
                "    o.append(2)",
                *("    " + line for line in self.value(node[1], v)),
            ]
        kind = node["type"] if isinstance(node, dict) else node
        logical = node.get("logicalType") if isinstance(node, dict) else None
        if logical == "timestamp-millis" and kind == "long":
            return [
                f"if type({v}) is datetime and {v}.tzinfo is not None:",
                f"    {v} = _millis({v})",
                f"if type({v}) is not int or not _LONG_MIN <= {v} <= _LONG_MAX:",
                "    raise Declined",
                f"o += _zigzag({v})",
            ]
        if logical is not None:
            raise Unsupported(f"logical type {logical!r}")
        if kind == "string":
            b = self.var("b")
            return [
                f"if type({v}) is not str:",
                "    raise Declined",
                f"{b} = {v}.encode()",
                f"o += _ZZ[len({b})] if len({b}) < {_SMALL} else _zigzag(len({b}))",
                f"o += {b}",
            ]
        if kind == "bytes":
            return [
                f"if type({v}) is not bytes:",
                "    raise Declined",
                f"o += _ZZ[len({v})] if len({v}) < {_SMALL} else _zigzag(len({v}))",
                f"o += {v}",
            ]
        if kind == "boolean":
            return [
                f"if {v} is True:",
                "    o.append(1)",
                f"elif {v} is False:",
                "    o.append(0)",
                "else:",
                "    raise Declined",
            ]
        if kind == "long":
            return [
                f"if type({v}) is not int or not _LONG_MIN <= {v} <= _LONG_MAX:",
                "    raise Declined",
                f"o += _zigzag({v})",
            ]
        if kind == "null":
            return [f"if {v} is not None:", "    raise Declined"]
        if kind == "enum":
            index = self.const({s: _ZZ[i] for i, s in enumerate(node["symbols"])})
            i = self.var("i")
            return [
                f"{i} = {index}.get({v}) if type({v}) is str else None",
                f"if {i} is None:",
                "    raise Declined",
                f"o += {i}",
            ]
        if kind == "array":
            item = self.var("x")
            return [
                f"if type({v}) is not list:",
                "    raise Declined",
                f"if {v}:",
                f"    o += _ZZ[len({v})] if len({v}) < {_SMALL} else _zigzag(len({v}))",
                f"    for {item} in {v}:",
                *("        " + line for line in self.value(node["items"], item)),
                "o.append(0)",
            ]
        if kind == "record":
            return [f"{self.record(node)}({v}, o)"]
        raise Unsupported(f"type {kind!r}")


def compile_writer(parsed: Mapping[str, Any]) -> Callable[[Any], bytes] | None:
    """A function writing a value of the record schema ``parsed`` (fastavro's
    ``parse_schema`` output) as Avro binary, raising ``Declined`` for a value it does not
    take; None when the schema has a construct this module does not generate."""
    if parsed.get("type") != "record":
        return None
    gen = _Gen(parsed.get("__named_schemas", {}))
    try:
        top = gen.record(parsed)
    except Unsupported:
        return None
    source = "\n".join(gen.bodies)
    scope: dict[str, Any] = {
        "Declined": Declined,
        "_ZZ": _ZZ,
        "_zigzag": zigzag,
        "_millis": _millis,
        "datetime": datetime,
        "_LONG_MIN": _LONG_MIN,
        "_LONG_MAX": _LONG_MAX,
        **gen.consts,
    }
    exec(compile(source, f"<avro writer {parsed.get('name')}>", "exec"), scope)  # noqa: S102
    record = scope[top]

    def write(value: Any) -> bytes:
        out = bytearray()
        try:
            record(value, out)
        except Declined:
            raise
        except (KeyError, UnicodeEncodeError) as exc:  # a field missing, a lone surrogate
            raise Declined from exc
        return bytes(out)

    return write
