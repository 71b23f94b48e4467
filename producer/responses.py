"""OneRoster response bodies: the collection in a data body, and error bodies in every shape.

Error shapes understood (the OneRoster status payloads and what servers send instead): the 1.2
``imsx_StatusInfoDType`` object (with ``imsx_CodeMinor.imsx_codeMinorField[]``), the 1.1
``statusInfoSet`` (list or object), the flat Ed-Fi form (``imsx_codeMinor`` as a string),
OAuth-style ``error``/``error_description``, ``message``/``error`` bodies, HTML pages from
proxies and plain text. A 200 whose body lacks the collection's key is an error, never an empty
page.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

from producer import errors

#: imsx codeMinor values and the HTTP status they stand for when a server sends them in a 200.
_CODE_MINOR_STATUS: Final[dict[str, int]] = {
    "unauthorisedrequest": 401,
    "unauthorizedrequest": 401,
    "forbidden": 403,
    "unknownobject": 404,
    "server_busy": 429,
    "internal_server_error": 500,
    "invalid_filter_field": 400,
    "invalid_selection_field": 400,
    "invalid_data": 400,
}
_MAX_DESCRIPTION: Final = 300
_TAG = re.compile(r"<[^>]*>")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """What a server said about a failure, as far as the body tells."""

    description: str | None = None
    code_major: str | None = None
    code_minor: str | None = None

    @property
    def implied_status(self) -> int | None:
        """The HTTP status the codeMinor stands for (for errors wrapped in a 200)."""
        if self.code_minor is None:
            return None
        return _CODE_MINOR_STATUS.get(self.code_minor.strip().lower())

    def text(self) -> str:
        """A one-line summary for an error message."""
        parts = [p for p in (self.description, self.code_minor) if p]
        return ": ".join(parts) if parts else "no description"


def _clip(text: str) -> str:
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 1] + "…"


def _str(value: object) -> str | None:
    return _clip(value) if isinstance(value, str) and value.strip() else None


def _code_minor(info: dict[str, Any]) -> str | None:
    flat = info.get("imsx_codeMinor")
    if isinstance(flat, str):
        return _str(flat)
    nested = info.get("imsx_CodeMinor", flat)
    if isinstance(nested, dict):
        fields = nested.get("imsx_codeMinorField")
        if isinstance(fields, dict):
            fields = [fields]
        if isinstance(fields, list):
            for item in fields:
                if isinstance(item, dict) and _str(item.get("imsx_codeMinorFieldValue")):
                    return _str(item["imsx_codeMinorFieldValue"])
    return None


def _from_imsx(info: dict[str, Any]) -> ServerStatus:
    return ServerStatus(
        description=_str(info.get("imsx_description")),
        code_major=_str(info.get("imsx_codeMajor")),
        code_minor=_code_minor(info),
    )


def describe_document(doc: object) -> ServerStatus | None:
    """The error information in a parsed JSON body, or ``None`` if it carries none."""
    if not isinstance(doc, dict):
        return None
    if "imsx_codeMajor" in doc:
        return _from_imsx(doc)
    for key in ("statusInfoSet", "imsx_statusInfo", "statusInfo"):
        info = doc.get(key)
        if isinstance(info, list):
            info = next((i for i in info if isinstance(i, dict)), None)
        if isinstance(info, dict):
            if "imsx_statusInfo" in info and isinstance(info["imsx_statusInfo"], dict):
                info = info["imsx_statusInfo"]
            return _from_imsx(info)
    error = doc.get("error")
    if isinstance(error, dict):
        return ServerStatus(
            description=_str(error.get("message")) or _str(error.get("description")),
            code_minor=_str(error.get("code")),
        )
    description = (
        _str(doc.get("error_description"))
        or _str(doc.get("message"))
        or _str(doc.get("detail"))
        or _str(doc.get("title"))
    )
    if description or _str(error):
        return ServerStatus(description=description or _str(error), code_minor=_str(error))
    return None


def describe_body(body: bytes) -> ServerStatus:
    """Error information from a raw body of any shape (JSON, HTML, text, empty)."""
    if not body.strip():
        return ServerStatus(description="empty body")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        if body.lstrip()[:1] in (b"{", b"["):
            # A truncated or malformed page: its text is roster records, never quoted.
            return ServerStatus(description=f"malformed or truncated JSON ({len(body)} bytes)")
        text = body[:4096].decode("utf-8", errors="replace")
        title = _TITLE.search(text)
        if title:
            return ServerStatus(description=_clip(html.unescape(title.group(1))))
        return ServerStatus(description=_clip(html.unescape(_TAG.sub(" ", text))) or None)
    # JSON without an error description may be records: name its shape, not its content.
    return describe_document(doc) or ServerStatus(
        description=f"JSON without an error description (top-level keys: {_keys(doc)})"
    )


def _loads(body: bytes) -> Any:
    """Parse a page. orjson first (fast); if it refuses, the lenient stdlib parser, which accepts
    what one bad record can carry (an unpaired surrogate escape, a number beyond double range),
    so that record is dead-lettered by the normaliser instead of failing its whole page.
    Truncated or non-JSON bodies fail both."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def records_of(
    body: bytes, key: str, *, url: str, expect: type = list
) -> tuple[Any, ServerStatus | None]:
    """The records (a list, or an ``expect`` object) under ``key`` of a 200 body.

    Returns ``(records, None)`` for a data page, or ``([], status)`` when the 200 carries an error
    envelope instead (the caller turns it into the error of ``status.implied_status``).

    Raises:
        errors.BadResponse: the body is not JSON (truncated, HTML) or has neither data nor error.
    """
    try:
        doc = _loads(body)
    except ValueError as exc:
        seen = describe_body(body)
        raise errors.BadResponse(
            f"response is not valid JSON (truncated or not OneRoster): {seen.text()}",
            status=200,
            url=url,
        ) from exc
    if isinstance(doc, dict):
        records = doc.get(key)
        if isinstance(records, expect):
            return records, None
    status = describe_document(doc)
    if status is not None and status.implied_status is not None:
        return [], status
    detail = status.text() if status else f"top-level keys {_keys(doc)}"
    raise errors.BadResponse(
        f"200 response without a {key!r} {expect.__name__}: {detail}", status=200, url=url
    )


def _keys(doc: object) -> str:
    if isinstance(doc, dict):
        return ", ".join(sorted(str(k) for k in doc)[:10]) or "none"
    return type(doc).__name__


def error_for(  # noqa: PLR0911 -- one return per status class reads best
    status: int,
    info: ServerStatus,
    *,
    url: str,
    filter_sent: bool = False,
    retry_after: float | None = None,
) -> errors.SourceError:
    """The typed error for an HTTP ``status`` (or a status implied by an error envelope)."""
    message = f"HTTP {status}: {info.text()}"
    if status == 400:
        if filter_sent:
            return errors.FilterUnsupported(
                f"the server rejected the filter ({message}); fall back to a full listing",
                status=status,
                url=url,
            )
        return errors.BadRequest(message, status=status, url=url)
    if status == 401:
        return errors.AuthFailed(
            f"{message}; credentials refused after re-authenticating, check them",
            status=status,
            url=url,
        )
    if status == 403:
        return errors.Forbidden(
            f"{message}; the credentials lack access (scope?) to this collection",
            status=status,
            url=url,
        )
    if status == 404:
        return errors.NotFound(message, status=status, url=url)
    if status == 429:
        return errors.RateLimited(message, retry_after=retry_after, status=status, url=url)
    if status == 408 or status >= 500:
        return errors.SourceUnavailable(message, status=status, url=url)
    if status == 200:
        return errors.BadResponse(message, status=status, url=url)
    return errors.SourceError(message, status=status, url=url)
