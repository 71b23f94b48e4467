"""A small scriptable OneRoster server on 127.0.0.1 (no patching) and the client helpers the
client tests share; the ``server`` fixture (``tests/conftest.py``) serves one per test."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
from collections import Counter, deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from producer.auth import BearerToken
from producer.client import BASE_PATHS, OneRosterClient
from producer.model import Secret
from producer.retry import RetryPolicy

FAST = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.005, max_retry_after=0.05)
TOKEN = "tok-123-very-secret"
CLIENT_ID = "client-1"
CLIENT_SECRET = "s3cr3t&=+/ ünï"


def make_records(n: int, *, modified: str = "2026-01-0{d}T10:00:00.123Z") -> list[dict[str, Any]]:
    """``n`` user records with sortable sourcedIds and varied dateLastModified values."""
    return [
        {
            "sourcedId": f"u{i:07d}",
            "status": "active",
            "dateLastModified": modified.format(d=1 + i % 9),
            "givenName": f"G{i}",
        }
        for i in range(n)
    ]


def oauth1_oracle(method: str, url: str, raw_query: str, auth_header: str, secret: str) -> bool:
    """An independent RFC 5849 check of a signature: built from the raw query on the wire."""
    assert auth_header.startswith("OAuth ")
    oauth = {k: unquote(v) for k, v in re.findall(r'(\w+)="([^"]*)"', auth_header[len("OAuth ") :])}
    params = parse_qsl(raw_query, keep_blank_values=True) + [
        (k, v) for k, v in oauth.items() if k not in ("oauth_signature", "realm")
    ]

    def enc(s: str) -> str:
        return quote(s, safe="~")

    normalised = "&".join(f"{k}={v}" for k, v in sorted((enc(k), enc(v)) for k, v in params))
    base = "&".join([method.upper(), enc(url), enc(normalised)])
    digest = {"HMAC-SHA256": hashlib.sha256, "HMAC-SHA1": hashlib.sha1}[
        oauth["oauth_signature_method"]
    ]
    key = enc(secret) + "&"
    expected = base64.b64encode(hmac.new(key.encode(), base.encode(), digest).digest()).decode()
    return hmac.compare_digest(expected, oauth["oauth_signature"])


Fault = str | Callable[[web.Request], Any]


class FakeServer:
    """A OneRoster server whose paging, auth, quirks and faults a test scripts.

    ``faults`` is consumed one entry per collection request: ``"429"``, ``"500"``, ``"reset"``,
    ``"hang"``, ``"truncated"``, ``"html"``, ``"401"``, ``"busy200"``, ``None`` (serve normally).
    """

    def __init__(
        self,
        *,
        version: str = "1.2",
        prefix: str = "",
        records: list[dict[str, Any]] | None = None,
        send_total: bool = True,
        max_limit: int | None = None,
        auth: str = "none",
        reject_filter: bool = False,
        ignore_filter: bool = False,
        reject_sort: bool = False,
        retry_after: str = "0",
        token_expires_in: int | None = 3600,
    ) -> None:
        self.version = version
        self.prefix = prefix
        self.records = records if records is not None else make_records(25)
        self.send_total = send_total
        self.max_limit = max_limit
        self.auth = auth
        self.reject_filter = reject_filter
        self.ignore_filter = ignore_filter
        self.reject_sort = reject_sort
        self.retry_after = retry_after
        self.token_expires_in = token_expires_in
        self.faults: deque[Fault | None] = deque()
        self.requests: list[web.Request] = []
        self.queries: list[str] = []
        self.token_requests: list[dict[str, str]] = []
        self.valid_tokens = {TOKEN}
        self.in_flight = 0
        self.max_in_flight = 0
        self.total_bonus = 0
        self.revision: str | None = None
        self.on_page: Callable[[int], None] | None = None
        self.delay = 0.0
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/") + self.prefix

    async def __aenter__(self) -> FakeServer:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        app.router.add_get("/{tail:.*}", self._get)
        self.server = TestServer(app, host="127.0.0.1", port=0)
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.close()

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        auth = request.headers.get("Authorization", "")
        self.token_requests.append({**{k: str(v) for k, v in form.items()}, "auth": auth})
        if auth.startswith("Basic "):
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            cid, secret = unquote(user), unquote(pw)
        else:
            cid, secret = str(form.get("client_id")), str(form.get("client_secret"))
        if (cid, secret) != (CLIENT_ID, CLIENT_SECRET):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = f"{TOKEN}-{len(self.token_requests)}"
        self.valid_tokens = {token}
        body: dict[str, Any] = {"access_token": token, "token_type": "bearer"}
        if self.token_expires_in is not None:
            body["expires_in"] = self.token_expires_in
        return web.json_response(body)

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if self.auth == "none":
            return True
        if self.auth in ("bearer", "oauth2"):
            return header.removeprefix("Bearer ") in self.valid_tokens
        url = str(request.url.with_query(None))
        raw_query = request.raw_path.partition("?")[2]
        return oauth1_oracle("GET", url, raw_query, header, CLIENT_SECRET)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        base = self.prefix + BASE_PATHS[self.version]  # type: ignore[index]
        path = request.raw_path.split("?")[0]
        if not path.startswith(base + "/"):
            return web.json_response(
                {"imsx_codeMajor": "failure", "imsx_description": "no such path"}, status=404
            )
        entity = path[len(base) + 1 :]
        self.requests.append(request)
        self.queries.append(request.raw_path.partition("?")[2])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            fault = self.faults.popleft() if self.faults else None
            if fault is not None:
                response = await self._fault(fault, request)
                if response is not None:
                    return response
            if not self._authorised(request):
                return web.json_response(
                    {"imsx_codeMajor": "failure", "imsx_description": "bad credentials"},
                    status=401,
                )
            return self._page(request, entity)
        finally:
            self.in_flight -= 1

    async def _fault(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        if callable(fault):
            return fault(request)  # type: ignore[no-any-return]
        if fault == "429":
            return web.Response(status=429, headers={"Retry-After": self.retry_after})
        if fault == "500":
            return web.Response(status=500, text="oops")
        if fault == "html":
            return web.Response(
                status=502, text="<html><title>Bad Gateway</title></html>", content_type="text/html"
            )
        if fault == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)
        if fault == "hang":
            await asyncio.sleep(5)
        if fault == "truncated":
            return web.Response(
                body=b'{"users": [{"sourcedId": "u', content_type="application/json"
            )
        if fault == "401":
            return web.Response(status=401)
        if fault == "busy200":
            return web.json_response(
                {"imsx_codeMajor": "failure", "imsx_codeMinor": "server_busy"}, status=200
            )
        return None

    def _page(self, request: web.Request, entity: str) -> web.Response:
        query = request.query
        if "sort" in query and self.reject_sort:
            return web.json_response(
                {"imsx_codeMajor": "failure", "imsx_description": "sort not supported"}, status=400
            )
        rows = sorted(self.records, key=lambda r: r["sourcedId"])
        if "filter" in query:
            match = re.fullmatch(r"dateLastModified(>=?)'(.*)'", query["filter"])
            if self.reject_filter or match is None:
                return web.json_response(
                    {
                        "imsx_codeMajor": "failure",
                        "imsx_severity": "error",
                        "imsx_description": "filter field not supported",
                        "imsx_CodeMinor": {
                            "imsx_codeMinorField": [
                                {
                                    "imsx_codeMinorFieldName": "TargetEndSystem",
                                    "imsx_codeMinorFieldValue": "invalid_filter_field",
                                }
                            ]
                        },
                    },
                    status=400,
                )
            if not self.ignore_filter:
                rows = [r for r in rows if r["dateLastModified"] > match[2]]
        limit = int(query.get("limit", "100"))
        offset = int(query.get("offset", "0"))
        if self.max_limit is not None:
            limit = min(limit, self.max_limit)
        if self.on_page is not None:
            self.on_page(offset)
        headers = {"X-Total-Count": str(len(rows) + self.total_bonus)} if self.send_total else {}
        if self.revision is not None:
            headers["X-Perm-Rev"] = self.revision
        body = orjson.dumps({entity: rows[offset : offset + limit]})
        return web.Response(body=body, headers=headers, content_type="application/json")


def client_for(fake: FakeServer, **kwargs: Any) -> OneRosterClient:
    """A client for ``fake`` with test-speed retries."""
    options: dict[str, Any] = {
        "district_id": "d1",
        "base_url": fake.url,
        "version": fake.version,
        "auth": BearerToken(Secret(TOKEN)),
        "page_size": 10,
        "retry": FAST,
        "request_timeout": 2.0,
    }
    options.update(kwargs)
    return OneRosterClient(**options)


async def collect(client: OneRosterClient, entity: str = "users", **kwargs: Any) -> Any:
    """Drain a listing; return it and its records."""
    listing = client.listing(entity, **kwargs)  # type: ignore[arg-type]
    records = [r async for page in listing for r in page.records]
    return listing, records


def ids(records: list[dict[str, Any]]) -> Counter[str]:
    return Counter(r["sourcedId"] for r in records)
