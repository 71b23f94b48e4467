"""Dates as OneRoster servers write them and as oneroster-cdc writes them: one module.

- ``parse_timestamp``: the one grammar for reading a source date (``dateLastModified``,
  cursors): ISO-8601 extended format, ``T``, ``t`` or a space between date and time, minutes,
  seconds and any fraction optional (cut to microseconds), ``Z``/``z``/``+HH[[:]MM]`` or no
  zone (taken as UTC; the spec requires UTC), or a bare date (midnight UTC). Returns an aware
  UTC datetime, or ``None`` when the value is not such a timestamp.
- ``format_timestamp``: what oneroster-cdc writes (canonical records, cursors):
  ``YYYY-MM-DDTHH:MM:SS.sssZ``, UTC, millisecond precision, sorts as time.
- ``TimestampFormat`` / ``detect_format``: how one server writes its dates, so a delta filter's
  cursor is written the same way (a server comparing strings compares like with like).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

_TS_RE: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?)?"
)


class TimestampRangeError(ValueError):
    """A moment cannot be written in a format (it falls outside years 1-9999 there)."""


def parse_timestamp(value: object) -> datetime | None:
    """A source date as an aware UTC datetime; None when it cannot be read (see above)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    text = value.strip()
    if _TS_RE.fullmatch(text) is None:
        return None
    try:
        moment = datetime.fromisoformat(text.upper())
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def format_timestamp(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.sssZ`` in UTC (naive datetimes are taken as UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


#: What ``detect_format`` recognises: the formats a cursor can be written back in.
_TIMESTAMP = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:(?P<sep>[T ])\d{2}:\d{2}:\d{2}(?:\.(?P<frac>\d{1,9}))?"
    r"(?P<zone>Z|z|[+-]\d{2}:?\d{2})?)?"
)


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
            raise TimestampRangeError(
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
