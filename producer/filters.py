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
from datetime import datetime
from typing import Any, Final, Literal, get_args
from urllib.parse import quote

from producer.timestamps import (
    DEFAULT_FORMAT,
    TimestampFormat,
    TimestampRangeError,
    parse_timestamp,
)

#: A filter operator (not to be confused with ``model.Op``, a change's kind).
Operator = Literal["=", "!=", ">", ">=", "<", "<=", "~"]
OPS: Final[frozenset[str]] = frozenset(get_args(Operator))
Joiner = Literal["AND", "OR"]

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class FilterError(ValueError):
    """A filter cannot be built from these parts (bad field name, operator or combination)."""


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
    try:
        text = fmt.format(value) if isinstance(value, datetime) else value
    except TimestampRangeError as exc:
        raise FilterError(str(exc)) from None
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


_UNRESERVED: Final = re.compile(r"[A-Za-z0-9._~-]*")


def encode_component(text: str) -> str:
    """RFC 3986 percent-encoding: every byte except ``A-Z a-z 0-9 - . _ ~`` is escaped."""
    if _UNRESERVED.fullmatch(text) is not None:  # most keys and values: nothing to escape
        return text
    return quote(text, safe="")


def encode_query(params: Iterable[tuple[str, str]]) -> str:
    """A query string (without ``?``) in the order given, each key and value strictly encoded."""
    return "&".join(f"{encode_component(k)}={encode_component(v)}" for k, v in params)


def filter_ignored(records: Iterable[Any], cursor: datetime, *, inclusive: bool) -> bool:
    """True when a delta listing sent with ``dateLastModified>'cursor'`` (``>=`` when
    ``inclusive``) returned a record that does not pass it: the server ignored the filter.
    The one place this is decided (the client asks it of every page of a delta listing)."""
    for record in records:
        if not isinstance(record, dict):
            continue
        modified = parse_timestamp(record.get("dateLastModified"))
        if modified is None:
            continue
        if modified < cursor or (modified == cursor and not inclusive):
            return True
    return False
