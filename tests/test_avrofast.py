"""The generated Avro writers (``producer.avrofast``) write exactly fastavro's bytes for every
value they take, and decline (leaving it to fastavro, strict) every value they do not: records of
simulated districts, change envelopes, and damaged values of every kind."""

from __future__ import annotations

import copy
import functools
import io
from datetime import UTC, datetime
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.avro import CHANGE_NAMES, RECORD_NAMES, Schemas
from producer.avrofast import Declined, compile_writer
from producer.diff import diff
from producer.errors import EncodingError
from producer.events import SourceInfo, envelope
from producer.model import ENTITIES, CanonicalRecord
from producer.normalise import normalise
from producer.simulator import DistrictSpec, Simulator
from producer.simulator.quirks import apply as apply_quirks

SCHEMAS = Schemas.load()


def fastavro_bytes(parsed: dict[str, Any], value: Any) -> bytes | None:
    """fastavro's strict bytes for ``value``, or None when fastavro refuses it."""
    buf = io.BytesIO()
    try:
        schemaless_writer(buf, parsed, value, strict_allow_default=True)
    except Exception:  # noqa: BLE001 - fastavro raises TypeError, ValueError, AttributeError...
        return None
    return buf.getvalue()


def assert_same(parsed: dict[str, Any], value: Any) -> bool:
    """The generated writer gives fastavro's bytes, or declines; it never takes a value
    fastavro refuses. Returns whether it took the value."""
    writer = compile_writer(parsed)
    assert writer is not None
    expected = fastavro_bytes(parsed, value)
    try:
        got = writer(value)
    except Declined:
        return False
    assert expected is not None, f"took a value fastavro refuses: {value!r}"
    assert got == expected
    return True


@functools.cache
def records(version: str, quirks: frozenset[str]) -> list[CanonicalRecord]:
    """Every record of a small simulated district, normalised (built once per shape)."""
    sim = Simulator([DistrictSpec(id="d", version=version, size="small", quirks=quirks)])  # type: ignore[arg-type]
    out = []
    for entity in ENTITIES:
        for raw in sim.district("d").store.iter_entity(entity):
            record = normalise(entity, "d", apply_quirks(raw, quirks))
            if isinstance(record, CanonicalRecord):
                out.append(record)
    return out


_QUIRKS = frozenset({"json_booleans", "empty_roles", "vendor_metadata", "missing_optional"})


@pytest.mark.parametrize(("version", "quirks"), [("1.1", frozenset()), ("1.2", _QUIRKS)])
def test_every_simulated_record_and_its_envelopes_encode_to_fastavros_bytes(
    version: str, quirks: frozenset[str]
) -> None:
    """Every record of a small district (1.1, and 1.2 with record quirks) and its CREATED,
    UPDATED and DELETED envelopes are taken by the generated writers, byte for byte
    fastavro's."""
    found = records(version, quirks)
    assert len(found) > 5_000
    source = SourceInfo("1.2", "http://sis", "FULL", "s1", datetime(2026, 1, 1, tzinfo=UTC))
    for i, record in enumerate(found):
        body = SCHEMAS.get(RECORD_NAMES[record.entity]).parsed
        assert assert_same(body, record.data)
        if i % 7:
            continue
        change_schema = SCHEMAS.get(CHANGE_NAMES[record.entity]).parsed
        created = diff(record, None)
        assert created is not None
        updated = diff(record, (b"old", {**record.data, "status": "tobedeleted"}))
        assert updated is not None
        for change in (created, updated):
            assert assert_same(change_schema, envelope(change, source))


def test_schemas_encode_the_same_bytes_with_and_without_the_generated_writers() -> None:
    """``Schemas.encode`` (generated path) equals single-object framing of fastavro's bytes."""
    for record in records("1.2", frozenset())[:2_000]:
        info = SCHEMAS.get(RECORD_NAMES[record.entity])
        expected = fastavro_bytes(info.parsed, record.data)
        assert expected is not None
        assert SCHEMAS.encode(info.name, record.data) == info.header + expected


def _user() -> dict[str, Any]:
    return copy.deepcopy(next(r.data for r in records("1.2", frozenset()) if r.entity == "users"))


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda d: d.pop("givenName"), None),  # missing (with a default): fastavro fills it
        (lambda d: d.update(extra="x"), None),  # a field the schema lacks
        (lambda d: d.update(givenName=5), "givenName"),
        (lambda d: d.update(status="deleted"), "status"),  # not an enum symbol
        (lambda d: d.update(enabledUser="true"), "enabledUser"),
        (lambda d: d.update(givenName="\ud800"), None),  # not UTF-8 (fastavro names no field)
        (lambda d: d.update(roles=tuple(d["roles"])), None),  # a tuple: fastavro decides
        (lambda d: d.update(sourcedId=None), "sourcedId"),
    ],
)
def test_values_the_writer_declines_go_to_fastavro(change: Any, path: str | None) -> None:
    """A value off the common shape is declined; ``Schemas.encode_body`` then gives fastavro's
    answer: its bytes, or an ``EncodingError`` naming the field."""
    parsed = SCHEMAS.get("oneroster.cdc.User").parsed
    data = _user()
    change(data)
    writer = compile_writer(parsed)
    assert writer is not None
    with pytest.raises(Declined):
        writer(data)
    expected = fastavro_bytes(parsed, data)
    if expected is None:
        with pytest.raises(EncodingError) as err:
            SCHEMAS.encode_body("oneroster.cdc.User", data)
        if path is not None:
            assert path in str(err.value)
    else:
        assert SCHEMAS.encode_body("oneroster.cdc.User", data) == expected


def test_schemas_with_other_constructs_get_no_generated_writer() -> None:
    """Maps, ints, doubles, logical types and wider unions are left to fastavro."""
    for field_type in (
        {"type": "map", "values": "string"},
        "int",
        "double",
        {"type": "int", "logicalType": "date"},
        ["null", "string", "long"],
        ["string", "null"],
    ):
        schema: dict[str, Any] = parse_schema(  # type: ignore[assignment]
            {"type": "record", "name": "X", "fields": [{"name": "a", "type": field_type}]}
        )
        assert compile_writer(schema) is None, field_type


_anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(alphabet="aé\ud800 ", max_size=4)
    | st.binary(max_size=4)
    | st.sampled_from(["active", "tobedeleted", "primary", "student", "x" * 2_000]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), entity=st.sampled_from(ENTITIES))
def test_damaged_values_are_written_as_fastavro_writes_them_or_declined(
    data: st.DataObject, entity: Any
) -> None:
    """A real record with one top-level or nested value replaced by anything (wrong types,
    huge numbers, lone surrogates, long strings, empty lists) is never written differently from
    fastavro, and never taken when fastavro refuses it."""
    sample = [r.data for r in records("1.2", _QUIRKS) if r.entity == entity][:50]
    value = copy.deepcopy(data.draw(st.sampled_from(sample)))
    target = value
    nested = [v for v in value.values() if isinstance(v, dict)]
    nested += [i for v in value.values() if isinstance(v, list) for i in v if isinstance(i, dict)]
    if len(nested) > 0 and data.draw(st.booleans()):
        target = data.draw(st.sampled_from(nested))
    key = data.draw(st.sampled_from([*target, "x"]))
    target[key] = data.draw(_anything)
    assert_same(SCHEMAS.get(RECORD_NAMES[entity]).parsed, value)
