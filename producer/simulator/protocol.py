"""The OneRoster REST surface of a district: collections, single objects, paging and errors."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from email.utils import format_datetime
from typing import Any, Final

import orjson
from aiohttp import web
from multidict import CIMultiDict

from producer.simulator import quirks as quirk_mod
from producer.simulator.auth import bearer, required_scopes
from producer.simulator.district import District
from producer.simulator.filters import (
    Filter,
    QueryError,
    entity_fields,
    parse_fields,
    parse_filter,
    select_fields,
)
from producer.simulator.store import VIEWS

SINGULAR: Final[dict[str, str]] = {
    "orgs": "org",
    "academicSessions": "academicSession",
    "courses": "course",
    "classes": "class",
    "users": "user",
    "enrollments": "enrollment",
    "demographics": "demographics",
}
JSON: Final = "application/json"
_PRESENTED: Final = web.RequestKey("oneroster.presented-bearer", str)


def imsx_body(code_minor: str, description: str, version: str = "1.2") -> dict[str, Any]:
    """An imsx_StatusInfo error body (1.1 districts wrap it in ``statusInfoSet``)."""
    info = {
        "imsx_codeMajor": "failure",
        "imsx_severity": "error",
        "imsx_description": description,
        "imsx_CodeMinor": {
            "imsx_codeMinorField": [
                {
                    "imsx_codeMinorFieldName": "TargetEndSystem",
                    "imsx_codeMinorFieldValue": code_minor,
                }
            ]
        },
    }
    return {"statusInfoSet": [info]} if version == "1.1" else info


def imsx(
    status: int,
    code_minor: str,
    description: str,
    version: str = "1.2",
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error response with an imsx body."""
    return web.Response(
        status=status,
        body=orjson.dumps(imsx_body(code_minor, description, version)),
        content_type=JSON,
        headers=headers,
    )


def json_response(
    body: Any, status: int = 200, headers: CIMultiDict[str] | None = None
) -> web.Response:
    """A JSON response serialised with orjson."""
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON, headers=headers)


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise QueryError(f"{name} must be an integer", "invalid_selection_field") from exc
    if value < 0:
        raise QueryError(f"{name} must not be negative", "invalid_selection_field")
    return value


def _link_header(request: web.Request, offset: int, limit: int, total: int) -> str:
    """RFC 8288 ``Link`` relations first/next/prev/last (with the clamped ``limit``)."""

    def link(new_offset: int, rel: str) -> str:
        url = request.url.update_query({"offset": str(new_offset), "limit": str(limit)})
        return f'<{url}>; rel="{rel}"'

    links = [link(0, "first")]
    if offset + limit < total:
        links.append(link(offset + limit, "next"))
    if offset > 0:
        links.append(link(max(0, offset - limit), "prev"))
    links.append(link(max(0, (total - 1) // limit * limit), "last"))
    return ", ".join(links)


_BEARER: Final = 'Bearer realm="oneroster"'
_OAUTH: Final = 'OAuth realm="oneroster"'


def _unauthorised(version: str, description: str, challenge: str) -> web.Response:
    return imsx(401, "unauthorisedrequest", description, version, {"WWW-Authenticate": challenge})


def authorise(
    request: web.Request, district: District, collection: str, via_proxy: bool
) -> web.Response | None:
    """None when the request may proceed, else the 401/403 response to send."""
    version = district.spec.version
    header = request.headers.get("Authorization")
    if via_proxy:
        ok = bearer(header) == district.bearer
        return None if ok else _unauthorised(version, "invalid tenant bearer", _BEARER)
    if district.spec.auth_method == "oauth1":
        # Verify over exactly what was received: scheme, host and the raw path + query string.
        url = f"{request.scheme}://{request.host}{request.raw_path}"
        ok = district.verifier.verify(url, request.method, request.headers)
        if not ok and "oauth1_sha1_only" in district.spec.quirks:
            return json_response(
                {"error": "invalid_signature"}, 401, CIMultiDict({"WWW-Authenticate": _OAUTH})
            )
        return None if ok else _unauthorised(version, "OAuth 1.0a signature not valid", _OAUTH)
    value = bearer(header)
    now = district.clock.now()
    token = None if value is None else district.tokens.check(value, district.id, now)
    if token is None:
        return _unauthorised(version, "missing, unknown or expired token", _BEARER)
    if not token.scopes & required_scopes(VIEWS[collection].entity):
        return imsx(403, "forbidden", f"the token's scopes do not grant {collection}", version)
    request[_PRESENTED] = token.value
    return None


_STATUS_FAULTS: Final[dict[str, int]] = {
    "server_error": 500,
    "bad_gateway": 502,
    "unavailable": 503,
}
_HTML_PAGE: Final = (
    "<!DOCTYPE html><html><head><title>503 Maintenance</title></head>"
    "<body><h1>Down for maintenance</h1><p>Please try again later.</p></body></html>"
)


def _fault_response(request: web.Request, district: District, kind: str) -> web.Response | None:
    """The response that replaces the answer under fault ``kind``, or None to carry on."""
    version = district.spec.version
    faults = district.plan.faults
    response: web.Response | None = None
    if kind in ("rate_limit", "rate_limit_date"):
        after = str(faults.retry_after)
        if kind == "rate_limit_date":
            when = district.clock.now().replace(microsecond=0)
            after = format_datetime(when + timedelta(seconds=faults.retry_after), usegmt=True)
        response = imsx(429, "server_busy", "too many requests", version, {"Retry-After": after})
    elif kind in _STATUS_FAULTS:
        response = imsx(_STATUS_FAULTS[kind], "internal_server_error", f"simulated {kind}", version)
    elif kind == "html_error":
        response = web.Response(status=200, text=_HTML_PAGE, content_type="text/html")
    elif kind == "error_envelope":
        response = json_response(imsx_body("internal_server_error", "temporary failure", version))
    elif kind == "token_expired" and _PRESENTED in request:
        district.tokens.revoke(request[_PRESENTED])
        response = _unauthorised(version, "token expired", 'Bearer error="invalid_token"')
    return response


async def _broken_body(
    request: web.Request, body: bytes, headers: CIMultiDict[str], kind: str | None
) -> web.StreamResponse:
    """Send ``body`` broken: cut short (truncated JSON) or aborted mid-way (reset)."""
    if kind == "truncated_json":
        return web.Response(body=body[: max(1, len(body) // 2)], content_type=JSON, headers=headers)
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = JSON
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: max(1, len(body) // 2)])
    if request.transport is not None:
        request.transport.abort()
    return response


def _shift(district: District, collection: str, offset: int) -> None:
    """The ``shift_offsets`` fault: create or hard-delete a record before ``offset``."""
    view = VIEWS[collection]
    store = district.store
    if district.plan.choice(2) == 0:
        store.create(view.entity)
        return
    page = store.select(view, None, None, descending=False).page(
        district.plan.choice(max(1, offset)), 1
    )
    if page:
        store.hard_delete(view.entity, page[0]["sourcedId"])


@dataclass(frozen=True, slots=True)
class _Query:
    limit: int
    offset: int
    sort: str | None
    descending: bool
    flt: Filter | None
    fields: tuple[str, ...]


def _parse_query(request: web.Request, allowed: frozenset[str], max_page: int) -> _Query:
    """The listing parameters; QueryError for anything the server refuses."""
    query = request.query
    sort = query.get("sort") or None
    if sort is not None and sort.split(".")[0] not in allowed:
        raise QueryError(f"invalid sort field: {sort}", "invalid_selection_field")
    return _Query(
        limit=min(_int_param(request, "limit", 100), max_page),
        offset=_int_param(request, "offset", 0),
        sort=sort,
        descending=query.get("orderBy", "asc").lower() == "desc",
        flt=parse_filter(query["filter"], allowed) if query.get("filter") else None,
        fields=parse_fields(query["fields"], allowed) if query.get("fields") else (),
    )


async def serve(
    request: web.Request,
    district: District,
    collection: str,
    sourced_id: str | None,
    via_proxy: bool,
) -> web.StreamResponse:
    """Answer one OneRoster GET for ``district`` (already resolved from the path)."""
    version = district.spec.version
    denied = authorise(request, district, collection, via_proxy)
    if denied is not None:
        return denied
    plan = district.plan
    kind = plan.draw()
    if kind is not None:
        plan.note(kind)
        if kind in ("latency", "hang"):
            await asyncio.sleep(plan.faults.latency if kind == "latency" else plan.faults.hang)
        replaced = _fault_response(request, district, kind)
        if replaced is not None:
            return replaced
    allowed = entity_fields(VIEWS[collection].entity, version)
    try:
        if sourced_id is not None:
            fields = parse_fields(request.query.get("fields", ""), allowed)
            return _single(district, collection, sourced_id, fields)
        query = _parse_query(request, allowed, district.spec.max_page_size)
    except QueryError as exc:
        return imsx(400, exc.code_minor, str(exc), version)
    flt = query.flt
    if flt is not None and any(c.field == "dateLastModified" for c in flt.clauses()):
        if plan.standing("filter_rejected"):
            plan.note("filter_rejected")
            return imsx(
                400, "invalid_filter_field", "dateLastModified filters unsupported", version
            )
        if plan.standing("filter_ignored"):
            plan.note("filter_ignored")
            flt = None
    if kind == "shift_offsets" and query.offset > 0:
        _shift(district, collection, query.offset)
    return await _listing(
        request, district=district, collection=collection, query=query, flt=flt, kind=kind
    )


async def _listing(
    request: web.Request,
    *,
    district: District,
    collection: str,
    query: _Query,
    flt: Filter | None,
    kind: str | None,
) -> web.StreamResponse:
    view = VIEWS[collection]
    quirks = district.spec.quirks
    selection = district.store.select(view, flt, query.sort, query.descending)
    records = selection.page(query.offset, query.limit) if query.limit else []
    total = selection.total
    if "filter_empty_list" in quirks and query.flt is not None:
        records, total = [], 0  # "cannot parse that filter" said as an empty list
    out = [quirk_mod.apply(r, quirks) for r in records]
    if query.fields:
        out = [select_fields(r, query.fields) for r in out]
    # The envelope key is the entity's: /schools answers "orgs", /students "users".
    body: dict[str, Any] = {view.entity: out}
    if "status_info_set" in quirks:
        body["statusInfoSet"] = [{"imsx_codeMajor": "success", "imsx_severity": "status"}]
    headers: CIMultiDict[str] = CIMultiDict()
    if "no_total_count" not in quirks:
        headers["X-Total-Count"] = str(total)
    if "x_count" in quirks:
        headers["x-count"] = str(len(out))
    if query.limit:
        headers["Link"] = _link_header(request, query.offset, query.limit, total)
    raw = orjson.dumps(body)
    if kind in ("truncated_json", "reset"):
        return await _broken_body(request, raw, headers, kind)
    return web.Response(body=raw, content_type=JSON, headers=headers)


def _single(
    district: District, collection: str, sourced_id: str, fields: tuple[str, ...]
) -> web.Response:
    view = VIEWS[collection]
    record = district.store.get(view.entity, sourced_id)
    if record is None or not view.accepts(record):
        return imsx(
            404,
            "unknownobject",
            f"Unknown Object: {collection}/{sourced_id}",
            district.spec.version,
        )
    out = quirk_mod.apply(record, district.spec.quirks)
    if fields:
        out = select_fields(out, fields)
    key = SINGULAR[view.entity]
    if view.entity == "demographics" and "singular_demographic" in district.spec.quirks:
        key = "demographic"
    return json_response({key: out})
