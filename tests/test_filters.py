"""Filter builder, timestamp formats and strict query encoding (pure)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qsl, quote, unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer.filters import FilterError, delta_filter, encode_component, encode_query, predicate
from producer.timestamps import DEFAULT_FORMAT, TimestampFormat, detect_format, parse_timestamp

MOMENT = datetime(2026, 4, 26, 12, 0, 5, 987654, UTC)


@pytest.mark.parametrize(
    ("observed", "written"),
    [
        ("2023-02-10T05:05:21Z", "2026-04-26T12:00:05Z"),
        ("2023-02-10T05:05:21.299Z", "2026-04-26T12:00:05.987Z"),
        ("2023-02-10 05:05:21.299Z", "2026-04-26 12:00:05.987Z"),
        ("2023-02-10T05:05:21.123456+00:00", "2026-04-26T12:00:05.987654+00:00"),
        ("2023-02-10T05:05:21.1234567Z", "2026-04-26T12:00:05.9876540Z"),
        ("2023-02-10T05:05:21", "2026-04-26T12:00:05"),
        ("2023-02-10T05:05:21-0500", "2026-04-26T07:00:05-0500"),
        ("2023-02-10", "2026-04-26"),
    ],
)
def test_cursor_is_written_in_the_observed_format(observed, written):
    """A cursor takes the separator, precision and zone of the server's own timestamps."""
    fmt = detect_format(observed)
    assert fmt is not None
    assert fmt.format(MOMENT) == written


@pytest.mark.parametrize("value", [None, 17, "", "yesterday", "2023-13", "2023-02-10T05:05Z+99:00"])
def test_non_timestamps_are_not_detected(value):
    """Values that are not timestamps give no format (the default stays in use)."""
    assert detect_format(value) is None


def test_delta_filter_shape():
    """The delta filter is dateLastModified>'<cursor>' in the given format."""
    assert delta_filter(MOMENT) == "dateLastModified>'2026-04-26T12:00:05.987Z'"
    fmt = TimestampFormat(fraction_digits=0)
    assert delta_filter(MOMENT, fmt) == "dateLastModified>'2026-04-26T12:00:05Z'"


def test_date_only_servers_get_an_inclusive_day():
    """For servers that write only dates, the cursor's own day is re-read (>=)."""
    fmt = detect_format("2020-01-01")
    assert fmt is not None
    assert delta_filter(MOMENT, fmt) == "dateLastModified>='2026-04-26'"


def test_naive_cursor_is_utc():
    """A naive datetime is taken as UTC, not local time."""
    assert DEFAULT_FORMAT.format(MOMENT.replace(tzinfo=None)) == DEFAULT_FORMAT.format(MOMENT)


def test_predicates_combine_with_one_operator():
    """& and | join predicates; mixing AND with OR is refused."""
    both = predicate("status", "=", "active") & predicate("role", "!=", "student")
    assert str(both) == "status='active' AND role!='student'"
    either = predicate("a", "~", "x") | predicate("b.sourcedId", "=", "y")
    assert str(either) == "a~'x' OR b.sourcedId='y'"
    with pytest.raises(FilterError, match="cannot mix"):
        _ = both | predicate("c", "=", "z")


def test_quotes_in_values_are_doubled():
    """A single quote inside a value is doubled so the value stays one literal."""
    assert str(predicate("familyName", "=", "O'Brien")) == "familyName='O''Brien'"


@pytest.mark.parametrize(("field", "op"), [("x y", "="), ("a", "=="), ("1a", "="), ("a.", ">")])
def test_bad_fields_and_operators_are_refused(field, op):
    """Field names and operators outside the grammar raise FilterError."""
    with pytest.raises(FilterError):
        predicate(field, op, "v")


def test_encoding_is_strict_rfc3986():
    """Only unreserved characters stay bare; quotes, >, spaces, / and : are escaped."""
    query = encode_query([("filter", "dateLastModified>'2026-01-01 00:00:00Z'/ü"), ("limit", "5")])
    assert query == ("filter=dateLastModified%3E%272026-01-01%2000%3A00%3A00Z%27%2F%C3%BC&limit=5")


@given(
    field=st.from_regex(
        r"[A-Za-z_][A-Za-z0-9_]{0,10}(\.[A-Za-z_][A-Za-z0-9_]{0,5})?", fullmatch=True
    ),
    op=st.sampled_from(["=", "!=", ">", ">=", "<", "<=", "~"]),
    value=st.text(max_size=40),
)
def test_any_predicate_round_trips_through_the_query_string(field, op, value):
    """Any value, quotes and all, survives encoding and decoding and unquotes to itself."""
    text = str(predicate(field, op, value))
    query = encode_query([("filter", text)])
    assert re.fullmatch(r"filter=[A-Za-z0-9%._~-]*", query)
    decoded = dict(parse_qsl(query, keep_blank_values=True))["filter"]
    assert decoded == text
    assert unquote(query.removeprefix("filter=")) == text
    literal = text[len(field) + len(op) :]
    assert literal.startswith("'")
    assert literal.endswith("'")
    assert literal[1:-1].replace("''", "'") == value


@given(
    moment=st.datetimes(
        min_value=datetime(1970, 1, 2),  # noqa: DTZ001 -- hypothesis bounds are naive
        max_value=datetime(2999, 12, 30),  # noqa: DTZ001 -- hypothesis bounds are naive
        timezones=st.just(UTC),
    ),
    digits=st.integers(0, 9),
    sep=st.sampled_from(["T", " "]),
    zone=st.sampled_from(["Z", "", "+00:00", "+0530", "-08:00"]),
)
def test_formatted_cursors_are_detected_as_their_format_and_never_later(moment, digits, sep, zone):
    """A written cursor reads back as its own format and never lies after the real moment."""
    fmt = TimestampFormat(separator=sep, fraction_digits=digits, zone=zone)
    text = fmt.format(moment)
    assert detect_format(text) == fmt
    parsed = _parse(text)
    assert parse_timestamp(text) == parsed
    assert parsed <= moment
    assert moment - parsed < timedelta(seconds=1)


def _parse(text: str) -> datetime:
    """An independent reading of a written timestamp (fraction cut to microseconds)."""
    match = re.fullmatch(r"(.{10})[T ](.{8})(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?", text)
    assert match is not None
    micros = (match[3] or "").ljust(6, "0")[:6]
    zone = match[4] or "Z"
    zone = "+00:00" if zone == "Z" else zone[:3] + ":" + zone[-2:]
    return datetime.fromisoformat(f"{match[1]}T{match[2]}.{micros}{zone}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-02-10T05:05:21Z", datetime(2023, 2, 10, 5, 5, 21, tzinfo=UTC)),
        ("2023-02-10 05:05:21.299Z", datetime(2023, 2, 10, 5, 5, 21, 299000, tzinfo=UTC)),
        ("2023-02-10T05:05:21.123456789Z", datetime(2023, 2, 10, 5, 5, 21, 123456, tzinfo=UTC)),
        ("2023-02-10T00:05:21-0500", datetime(2023, 2, 10, 5, 5, 21, tzinfo=UTC)),
        ("2023-02-10T05:05:21", datetime(2023, 2, 10, 5, 5, 21, tzinfo=UTC)),
        ("2023-02-10", datetime(2023, 2, 10, tzinfo=UTC)),
        ("2023-02-30T00:00:00Z", None),
        ("soon", None),
        (None, None),
    ],
)
def test_timestamps_are_read_leniently(text, expected):
    """Space or T, any precision, Z or offsets, plain dates; impossible dates are None."""
    assert parse_timestamp(text) == expected


def test_offset_zone_is_converted_not_relabelled():
    """Writing in a -05:00 server format shifts the clock time rather than renaming the zone."""
    fmt = TimestampFormat(fraction_digits=0, zone="-05:00")
    text = fmt.format(MOMENT)
    assert datetime.fromisoformat(text) == MOMENT.replace(microsecond=0)
    assert datetime.fromisoformat(text).utcoffset() == timezone(timedelta(hours=-5)).utcoffset(None)


@given(st.text() | st.text(alphabet="AZaz09-._~ %+&='/", max_size=20))
def test_encode_component_is_strict_rfc3986_percent_encoding(text: str) -> None:
    """Any text encodes exactly as ``quote(text, safe="")`` does (the unreserved-only fast path
    changes nothing): only ``A-Z a-z 0-9 - . _ ~`` stay as they are."""
    assert encode_component(text) == quote(text, safe="")
