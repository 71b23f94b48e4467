"""OneRoster ``filter`` expressions and query strings (pure).

A filter is ``<field><op>'<value>'``, optionally two or more joined by a single `` AND `` or
`` OR `` (never mixed). Values are single-quoted; a quote inside a value is doubled (``''``).
Timestamps are written in the server's own observed format (:class:`TimestampFormat`), so a
server comparing strings compares like with like. Query strings are percent-encoded strictly
(RFC 3986, only unreserved characters left bare): this is also the encoding OAuth 1.0a signs, so
the query sent on the wire is byte-for-byte the one that was signed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Final, Literal, get_args
from urllib.parse import quote

Op = Literal["=", "!=", ">", ">=", "<", "<=", "~"]
OPS: Final[frozenset[str]] = frozenset(get_args(Op))
Joiner = Literal["AND", "OR"]

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_TIMESTAMP = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:(?P<sep>[T ])\d{2}:\d{2}:\d{2}(?:\.(?P<frac>\d{1,9}))?"
    r"(?P<zone>Z|z|[+-]\d{2}:?\d{2})?)?"
)


class FilterError(ValueError):
    """A filter cannot be built from these parts (bad field name, operator or combination)."""


@dataclass(frozen=True, slots=True)
class TimestampFormat:
    """How a server writes ``dateLastModified``, so cursors can be written the same way.

    ``zone`` is the suffix as the server writes it: ``"Z"``, ``""`` (no zone, read as UTC) or an
    offset such as ``"+00:00"`` / ``"-0500"`` (the cursor is converted to that offset).
    """

    date_only: bool = False
    separator: str = "T"
    fraction_digits: int = 3
    zone: str = "Z"

    def format(self, moment: datetime) -> str:
        """``moment`` in this format; sub-second digits are truncated (never rounded up).

        Truncation moves a cursor earlier, so a ``>`` filter can only include more, never less.
        A naive ``moment`` is taken as UTC.
        """
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            moment = moment.astimezone(_zone_tz(self.zone))
        except OverflowError:
            raise FilterError(
                f"{moment.isoformat()} is out of range in zone {self.zone!r}"
            ) from None
        date = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        if self.date_only:
            return date
        text = f"{date}{self.separator}{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
        if self.fraction_digits:
            micros = f"{moment.microsecond:06d}"
            text += "." + (micros + "000")[: self.fraction_digits]
        return text + self.zone


#: What to write before any value has been observed: ISO 8601 UTC with milliseconds.
DEFAULT_FORMAT: Final = TimestampFormat()


def _zone_tz(zone: str) -> timezone:
    if zone in ("", "Z", "z"):
        return UTC
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4]))
    return timezone(sign * offset)


def detect_format(value: object) -> TimestampFormat | None:
    """The :class:`TimestampFormat` of one observed ``dateLastModified`` value, if it is one."""
    if not isinstance(value, str):
        return None
    match = _TIMESTAMP.fullmatch(value.strip())
    if match is None:
        return None
    if match["sep"] is None:
        return TimestampFormat(date_only=True, separator="T", fraction_digits=0, zone="")
    zone = match["zone"] or ""
    if zone == "z":
        zone = "Z"
    if zone not in ("", "Z"):
        hours, minutes = int(zone[1:3]), int(zone[-2:])
        if hours > 23 or minutes > 59:
            return None
    frac = match["frac"]
    return TimestampFormat(
        date_only=False,
        separator=match["sep"],
        fraction_digits=len(frac) if frac else 0,
        zone=zone,
    )


def parse_timestamp(value: object) -> datetime | None:
    """A lenient reading of a ``dateLastModified`` value as an aware datetime (UTC if no zone).

    Accepts ``T`` or a space, 0-9 fraction digits (cut to microseconds), ``Z``, offsets with or
    without a colon, and plain dates (midnight). ``None`` when it is not a timestamp.
    """
    if not isinstance(value, str):
        return None
    match = _TIMESTAMP.fullmatch(value.strip())
    if match is None:
        return None
    text = value.strip()
    try:
        if match["sep"] is None:
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        frac = match["frac"]
        main = text[: match.start("frac") - 1] if frac else text[: match.end("sep") + 8]
        moment = datetime.fromisoformat(main.replace(" ", "T"))
        if frac:
            moment = moment.replace(microsecond=int(frac[:6].ljust(6, "0")))
        return moment.replace(tzinfo=_zone_tz(match["zone"] or ""))
    except ValueError:
        return None


def quote_value(value: str) -> str:
    """``value`` single-quoted for a filter, inner single quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Filter:
    """One or more predicates joined by a single logical operator. ``str()`` gives the text.

    Combine with ``&`` (AND) and ``|`` (OR); mixing them raises :class:`FilterError`, because
    OneRoster servers do not agree on precedence. Portable servers accept two predicates.
    """

    clauses: tuple[str, ...]
    joiner: Joiner | None = None

    def __str__(self) -> str:
        return f" {self.joiner} ".join(self.clauses) if self.joiner else self.clauses[0]

    def _join(self, other: Filter, joiner: Joiner) -> Filter:
        for part in (self, other):
            if part.joiner not in (None, joiner):
                raise FilterError(f"cannot mix AND and OR in one filter: {part} {joiner} ...")
        return Filter(self.clauses + other.clauses, joiner)

    def __and__(self, other: Filter) -> Filter:
        return self._join(other, "AND")

    def __or__(self, other: Filter) -> Filter:
        return self._join(other, "OR")


def predicate(
    field: str, op: str, value: str | datetime, *, fmt: TimestampFormat = DEFAULT_FORMAT
) -> Filter:
    """A single ``field op 'value'`` predicate; a ``datetime`` value is written in ``fmt``."""
    if not _FIELD.fullmatch(field):
        raise FilterError(f"not a OneRoster field name: {field!r}")
    if op not in OPS:
        raise FilterError(f"unknown filter operator {op!r}; use one of {sorted(OPS)}")
    text = fmt.format(value) if isinstance(value, datetime) else value
    if not isinstance(text, str):
        raise FilterError(f"filter value must be a string or datetime, not {type(value).__name__}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise FilterError("filter value is not valid Unicode (unpaired surrogate)") from None
    return Filter((f"{field}{op}{quote_value(text)}",))


def delta_filter(cursor: datetime, fmt: TimestampFormat = DEFAULT_FORMAT) -> str:
    """``dateLastModified>'<cursor>'`` in the server's format.

    For a server that writes dates only, ``>=`` is used so that the cursor's own day is re-read
    (the differ makes re-reads harmless; missing a day would not be).
    """
    op = ">=" if fmt.date_only else ">"
    return str(predicate("dateLastModified", op, cursor, fmt=fmt))


def encode_component(text: str) -> str:
    """RFC 3986 percent-encoding: every byte except ``A-Z a-z 0-9 - . _ ~`` is escaped."""
    return quote(text, safe="")


def encode_query(params: Iterable[tuple[str, str]]) -> str:
    """A query string (without ``?``) in the order given, each key and value strictly encoded."""
    return "&".join(f"{encode_component(k)}={encode_component(v)}" for k, v in params)
