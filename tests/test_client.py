"""OneRosterClient against a small scriptable OneRoster server on 127.0.0.1 (no patching)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from producer import errors
from producer.auth import BearerToken, OAuth1Signer, OAuth2ClientCredentials
from producer.client import BASE_PATHS, OneRosterClient
from producer.discovery import DirectOAuth1, discover
from producer.model import Secret
from producer.protocols import ClientEvent, ListingDone, PageFetched, RequestRetried
from producer.responses import describe_body, records_of
from producer.retry import RetryPolicy
from producer.simulator import DistrictSpec, Faults, Simulator
from producer.simulator.auth import SCOPE_CORE
from producer.simulator.faults import RANDOM_KINDS
from producer.timestamps import TimestampFormat

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


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with FakeServer() as fake:
        yield fake


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


async def test_full_listing_with_total_fetches_concurrently_and_exactly_once(server):
    """With X-Total-Count, every record arrives once, pages overlap, within the concurrency cap."""
    server.records = make_records(95)
    server.delay = 0.02
    async with client_for(server, concurrency=3) as client:
        listing, records = await collect(client)
    assert ids(records) == Counter(r["sourcedId"] for r in server.records)
    assert listing.complete
    assert listing.total == 95
    assert listing.pages == 10
    assert 1 < server.max_in_flight <= 3


async def test_listing_without_total_pages_until_an_empty_page(server):
    """No total: sequential pages until an empty one; a short page is not taken as the end."""
    server.send_total, server.max_limit = False, 7
    async with client_for(server) as client:
        listing, records = await collect(client)
    assert ids(records) == Counter(r["sourcedId"] for r in server.records)
    assert listing.complete
    assert listing.total is None
    assert parse_qsl(server.queries[-1])[1] == ("offset", "25")


async def test_clamped_pages_under_a_total_are_not_the_end(server):
    """A server clamping limit to 7 (asked 10) still yields every record exactly once."""
    server.records, server.max_limit = make_records(53), 7
    async with client_for(server, concurrency=4) as client:
        listing, records = await collect(client)
    assert ids(records) == Counter(r["sourcedId"] for r in server.records)
    assert listing.complete


async def test_clamping_discovered_after_the_first_page_fills_the_gaps(server):
    """Pages that come back short mid-listing (offset > 0) have their gaps fetched."""
    server.records = make_records(40)

    def clamp_later(offset: int) -> None:
        server.max_limit = 4 if offset else None

    server.on_page = clamp_later
    async with client_for(server, concurrency=2) as client:
        listing, records = await collect(client)
    assert ids(records) == Counter(r["sourcedId"] for r in server.records)
    assert listing.complete


async def test_total_changing_mid_listing_marks_it_incomplete(server):
    """If X-Total-Count changes while paging, the listing finishes but is not complete."""
    server.records = make_records(40)

    def grow(offset: int) -> None:
        if offset >= 20:
            server.total_bonus = 1

    server.on_page = grow
    async with client_for(server, concurrency=1) as client:
        listing, _ = await collect(client)
    assert not listing.complete
    assert "X-Total-Count changed" in (listing.incomplete_reason or "")


async def test_revision_changing_mid_listing_marks_it_incomplete(server):
    """A changed X-Perm-Rev (ClassLink's dataset revision) while paging: not complete."""
    server.records, server.revision = make_records(40), "r1"

    def bump(offset: int) -> None:
        if offset >= 20:
            server.revision = "r2"

    server.on_page = bump
    async with client_for(server, concurrency=1) as client:
        listing, records = await collect(client)
        assert len(records) == 40
        assert not listing.complete
        assert "X-Perm-Rev changed from r1 to r2" in (listing.incomplete_reason or "")
        again, _ = await collect(client)
    assert again.complete


async def test_empty_collection_is_a_complete_listing(server):
    """An empty collection yields one empty page and counts as complete."""
    server.records = []
    async with client_for(server) as client:
        listing, records = await collect(client)
    assert records == []
    assert listing.complete
    assert listing.pages == 1


async def test_delta_filter_uses_observed_format_and_strict_encoding(server):
    """The delta filter is written like the server's timestamps and percent-encoded on the wire."""
    server.records = make_records(12, modified="2026-01-0{d} 10:00:00Z")
    async with client_for(server) as client:
        full, _ = await collect(client)
        assert full.observed_format == TimestampFormat(separator=" ", fraction_digits=0)
        delta, records = await collect(client, since=datetime(2026, 1, 5, 10, 0, 0, 999, UTC))
    assert delta.complete
    assert {r["dateLastModified"][:10] for r in records} == {f"2026-01-0{d}" for d in (6, 7, 8, 9)}
    assert "filter=dateLastModified%3E%272026-01-05%2010%3A00%3A00Z%27" in server.queries[-1]
    assert server.queries[-1].startswith("limit=10&offset=0&sort=sourcedId&orderBy=asc&filter=")


@pytest.mark.parametrize("ignored", [False, True])
async def test_a_server_ignoring_the_filter_is_detected(server, ignored):
    """A delta listing that returns records not newer than the cursor says filter_ignored."""
    server.ignore_filter = ignored
    async with client_for(server) as client:
        listing, records = await collect(client, since=datetime(2026, 1, 5, 10, tzinfo=UTC))
    assert listing.complete
    assert listing.filter_ignored is ignored
    newer = [r for r in server.records if r["dateLastModified"] > "2026-01-05T10:00:00.000Z"]
    assert len(records) == (25 if ignored else len(newer))


async def test_rejected_filter_raises_filter_unsupported(server):
    """A 400 on the delta filter becomes FilterUnsupported, not retried beyond the sort probe."""
    server.reject_filter = True
    async with client_for(server) as client:
        with pytest.raises(errors.FilterUnsupported, match="filter field not supported"):
            await collect(client, since=datetime(2026, 1, 1, tzinfo=UTC))
    assert len(server.requests) == 2  # with sort, then without sort
    assert "sort=" not in server.queries[1]


async def test_rejected_sort_is_dropped_for_the_district(server):
    """A server refusing sort= is asked again without it, and later listings omit it."""
    server.reject_sort = True
    async with client_for(server) as client:
        listing, records = await collect(client)
        await collect(client, entity="orgs")
    assert listing.complete
    assert len(records) == 25
    assert "sort=" in server.queries[0]
    assert all("sort=" not in q for q in server.queries[1:])


@pytest.mark.parametrize("fault", ["429", "500", "html", "reset", "truncated", "busy200", "hang"])
async def test_transient_faults_are_retried(server, fault):
    """429, 5xx, HTML gateways, resets, truncated JSON, busy envelopes and hangs are retried."""
    server.faults.extend([None, fault, fault])
    events: list[ClientEvent] = []
    client = client_for(server, concurrency=1, request_timeout=0.3, observer=events.append)
    async with client:
        listing, records = await collect(client)
    assert len(records) == 25
    assert listing.complete
    attempts = [e.attempt for e in events if isinstance(e, RequestRetried)]
    if fault == "reset":  # aiohttp itself re-sends once when a kept-alive connection drops
        assert attempts in ([1], [1, 2])
    else:
        assert attempts == [1, 2]
    assert {type(e) for e in events} >= {PageFetched, ListingDone}


async def test_a_page_disagreeing_with_its_x_count_is_retried(server):
    """A page whose record count differs from its x-count header is refetched."""
    rows = orjson.dumps({"users": make_records(3)})

    def short(_: web.Request) -> web.Response:
        return web.Response(body=rows, headers={"x-count": "10"}, content_type="application/json")

    server.faults.append(short)
    events: list[ClientEvent] = []
    async with client_for(server, observer=events.append) as client:
        listing, records = await collect(client)
    assert listing.complete
    assert ids(records) == Counter(r["sourcedId"] for r in server.records)
    assert sum(isinstance(e, RequestRetried) for e in events) == 1


async def test_a_slow_consumer_holds_back_fetching(server):
    """Pages are fetched only as they are consumed: at most `concurrency` ahead (flat memory)."""
    server.records = make_records(500)
    async with client_for(server, concurrency=3) as client:
        listing = client.listing("users")
        await anext(listing)
        await asyncio.sleep(0.2)
        ahead = len(server.requests)
        rest = [page async for page in listing]
    assert ahead <= 1 + 3
    assert len(rest) == 49
    assert listing.complete


async def test_retry_after_is_honoured_up_to_the_cap(server):
    """A 429 with Retry-After waits at least the (capped) advertised delay."""
    server.retry_after = "30"
    server.faults.append("429")
    async with client_for(server) as client:
        started = time.monotonic()
        await collect(client)
    assert time.monotonic() - started >= FAST.max_retry_after


async def test_retries_are_bounded(server):
    """After ``attempts`` tries a retriable fault surfaces as SourceUnavailable with its status."""
    server.faults.extend(["500"] * 10)
    async with client_for(server) as client:
        with pytest.raises(errors.SourceUnavailable) as caught:
            await collect(client)
    assert caught.value.status == 500
    assert len(server.requests) == FAST.attempts


@pytest.mark.parametrize(
    ("status", "body", "error", "text"),
    [
        (
            400,
            {
                "imsx_codeMajor": "failure",
                "imsx_severity": "error",
                "imsx_description": "bad limit",
                "imsx_CodeMinor": {"imsx_codeMinorField": [{"imsx_codeMinorFieldValue": "x"}]},
            },
            errors.BadRequest,
            "bad limit",
        ),
        (
            403,
            {"statusInfoSet": [{"imsx_description": "no demographics"}]},
            errors.Forbidden,
            "no demographics",
        ),
        (
            404,
            {"imsx_codeMajor": "failure", "imsx_codeMinor": "unknownobject"},
            errors.NotFound,
            "unknownobject",
        ),
        (
            403,
            "<html><title>Access denied by WAF</title></html>",
            errors.Forbidden,
            "Access denied by WAF",
        ),
    ],
)
async def test_client_errors_are_typed_and_never_retried(server, status, body, error, text):
    """400/403/404 in every body shape raise their typed error with the server's words, once."""
    payload = orjson.dumps(body) if isinstance(body, dict) else body.encode()

    def answer(_: web.Request) -> web.Response:
        return web.Response(status=status, body=payload)

    server.faults.extend([answer, answer])
    async with client_for(server, sort=False) as client:
        with pytest.raises(error, match=text):
            await collect(client, entity="demographics")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("body", "description", "code_minor", "implied"),
    [
        (
            b'{"imsx_codeMajor":"failure","imsx_severity":"error","imsx_description":"busy",'
            b'"imsx_CodeMinor":{"imsx_codeMinorField":[{"imsx_codeMinorFieldName":"T",'
            b'"imsx_codeMinorFieldValue":"server_busy"}]}}',
            "busy",
            "server_busy",
            429,
        ),
        (
            b'{"statusInfoSet":[{"imsx_codeMajor":"failure","imsx_description":"no such field",'
            b'"imsx_codeMinor":"invalid_filter_field"}]}',
            "no such field",
            "invalid_filter_field",
            400,
        ),
        (
            b'{"statusInfoSet":{"imsx_description":"denied","imsx_codeMinor":"forbidden"}}',
            "denied",
            "forbidden",
            403,
        ),
        (
            b'{"imsx_codeMajor":"failure","imsx_description":"bad","imsx_codeMinor":"invalid_data"}',
            "bad",
            "invalid_data",
            400,
        ),
        (
            b'{"error":"invalid_token","error_description":"expired"}',
            "expired",
            "invalid_token",
            None,
        ),
        (b'{"message":"Internal error"}', "Internal error", None, None),
        (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "502 Bad Gateway", None, None),
        (b"upstream connect error", "upstream connect error", None, None),
        (b"", "empty body", None, None),
    ],
)
def test_error_bodies_of_every_shape_are_described(body, description, code_minor, implied):
    """1.2 imsx, 1.1 statusInfoSet (list or object), flat, OAuth, HTML, text and empty bodies."""
    info = describe_body(body)
    assert info.description == description
    assert info.code_minor == code_minor
    assert info.implied_status == implied


def test_200_with_an_error_envelope_is_not_an_empty_page():
    """A 200 carrying an imsx failure yields no records and the status it implies."""
    body = b'{"imsx_codeMajor":"failure","imsx_codeMinor":"unauthorisedrequest"}'
    records, status = records_of(body, "users", url="u")
    assert records == []
    assert status is not None
    assert status.implied_status == 401
    assert records_of(b'{"users":[],"statusInfoSet":[]}', "users", url="u") == ([], None)


async def test_200_without_the_data_key_is_an_error_not_an_empty_page(server):
    """A 200 that lacks the collection key is BadResponse (retried, then raised), never empty."""
    server.faults.extend([lambda _: web.json_response({"statusInfoSet": []})] * 10)
    async with client_for(server) as client:
        with pytest.raises(errors.BadResponse, match="without a 'users' list"):
            await collect(client)


async def test_401_reauthenticates_once_then_fails():
    """One 401 re-reads the bearer and retries; a second consecutive 401 raises AuthFailed."""
    reads: list[int] = []

    async def token() -> Secret:
        reads.append(1)
        return Secret(TOKEN)

    async with FakeServer(auth="bearer") as fake:
        fake.faults.append("401")
        async with client_for(fake, auth=BearerToken(token)) as client:
            listing, _ = await collect(client)
            assert listing.complete
            assert len(reads) == 2
            fake.faults.extend(["401", "401"])
            with pytest.raises(errors.AuthFailed):
                await collect(client)


async def test_oauth2_token_is_shared_by_concurrent_pages_and_refreshed_on_expiry():
    """Concurrent first use fetches one token; a token inside the refresh margin is replaced."""
    async with FakeServer(auth="oauth2", records=make_records(60)) as fake:
        fake.delay = 0.01
        async with aiohttp.ClientSession() as session:
            auth = OAuth2ClientCredentials(
                session=session,
                token_url=f"{fake.url}/oauth/token",
                client_id=CLIENT_ID,
                client_secret=Secret(CLIENT_SECRET),
                scopes=["a", "b"],
                credentials_in="body",
            )
            async with client_for(fake, auth=auth, session=session) as client:
                listing, records = await collect(client)
                assert listing.complete
                assert len(records) == 60
                assert auth.fetches == 1
                assert fake.token_requests[0]["scope"] == "a b"
                fake.valid_tokens = set()  # server revokes: 401, refresh, retry
                listing, _ = await collect(client)
                assert listing.complete
                assert auth.fetches == 2


async def test_concurrent_401s_cause_one_token_refresh():
    """When a token is revoked under four pages in flight, exactly one new token is fetched."""
    async with FakeServer(auth="oauth2", records=make_records(80)) as fake:
        fake.delay = 0.02

        def revoke_after_first_page(offset: int) -> None:
            if offset == 0:
                fake.valid_tokens = set()

        fake.on_page = revoke_after_first_page
        async with aiohttp.ClientSession() as session:
            auth = OAuth2ClientCredentials(
                session=session,
                token_url=f"{fake.url}/oauth/token",
                client_id=CLIENT_ID,
                client_secret=Secret(CLIENT_SECRET),
            )
            async with client_for(fake, auth=auth, session=session, concurrency=4) as client:
                listing, records = await collect(client)
    assert listing.complete
    assert len(records) == 80
    assert fake.max_in_flight == 4
    assert auth.fetches == 2


@pytest.mark.parametrize("method", ["HMAC-SHA256", "HMAC-SHA1"])
async def test_oauth1_signatures_verify_on_the_wire_for_awkward_filters(method):
    """The server's independent check accepts signatures of filtered queries (quotes, >, spaces)."""
    async with FakeServer(auth="oauth1", version="1.1", records=make_records(30)) as fake:
        signer = OAuth1Signer(
            client_id=CLIENT_ID, client_secret=Secret(CLIENT_SECRET), signature_method=method
        )
        async with client_for(fake, auth=signer) as client:
            listing, records = await collect(client, since=datetime(2026, 1, 3, tzinfo=UTC))
            assert listing.complete
            assert records
        assert all("%27" in q and "%3E" in q for q in fake.queries)
        assert "%20" in fake.queries[0] or "%3A" in fake.queries[0]


async def test_oauth1_wrong_secret_fails_after_one_retry():
    """A signature the server refuses gives AuthFailed after exactly one re-sign."""
    async with FakeServer(auth="oauth1", version="1.1") as fake:
        signer = OAuth1Signer(client_id=CLIENT_ID, client_secret=Secret("wrong"))
        async with client_for(fake, auth=signer) as client:
            with pytest.raises(errors.AuthFailed):
                await collect(client)
        assert len(fake.requests) == 2


@pytest.mark.parametrize("version", ["1.1", "1.2"])
async def test_auto_detects_the_version(version):
    """version="auto" probes the 1.2 then 1.1 base path and lists from the one that answers."""
    async with FakeServer(version=version) as fake:
        async with client_for(fake, version="auto") as client:
            listing, records = await collect(client)
            assert client.version == version
        assert listing.complete
        assert len(records) == 25


async def test_path_segments_of_base_url_are_sent_verbatim():
    """An already-encoded application id in base_url (ClassLink) is not re-encoded."""
    async with FakeServer(version="1.1", prefix="/MoYPlyQWmG0%3D") as fake:
        async with client_for(fake) as client:
            listing, _ = await collect(client)
        assert listing.complete
        assert fake.requests[0].raw_path.startswith("/MoYPlyQWmG0%3D/ims/oneroster/v1p1/users?")


async def test_base_url_with_base_path_pins_the_version(server):
    """A base_url that already ends in a OneRoster base path fixes the version from it."""
    client = client_for(server, base_url=server.url + BASE_PATHS["1.2"], version="auto")
    async with client:
        assert client.version == "1.2"
        listing, _ = await collect(client)
    assert listing.complete


async def test_closed_client_refuses_use_and_closes_idempotently(server):
    """After close, listing() and re-entering raise ClientClosed; close() twice is fine."""
    client = client_for(server)
    async with client:
        await collect(client)
    await client.close()
    with pytest.raises(errors.ClientClosed):
        client.listing("users")
    with pytest.raises(errors.ClientClosed):
        async with client:
            pass


async def test_stopping_early_cancels_pages_in_flight(server):
    """Breaking out of a listing and closing it leaves no pending tasks or warnings."""
    server.records, server.delay = make_records(200), 0.01
    async with client_for(server, concurrency=4) as client:
        listing = client.listing("users")
        async for _page in listing:
            break
        await listing.aclose()
        assert not listing.complete
    await asyncio.sleep(0.05)
    assert server.in_flight == 0


async def test_logs_never_contain_oauth1_signatures():
    """OAuth 1.0a signatures and secrets stay out of logs, also when requests fail."""
    async with FakeServer(auth="oauth1", version="1.1") as fake:
        fake.faults.extend(["500", "401"])
        signer = OAuth1Signer(client_id=CLIENT_ID, client_secret=Secret(CLIENT_SECRET))
        with capture_logs() as logs:
            async with client_for(fake, auth=signer) as client:
                await collect(client, since=datetime(2026, 1, 1, tzinfo=UTC))
    text = repr(logs)
    assert "source.retry" in text
    assert "source.reauthenticate" in text
    assert "oauth_signature" not in text
    assert "oauth_nonce" not in text
    assert CLIENT_SECRET not in text


async def test_logs_never_contain_secrets():
    """Tokens, secrets and signatures stay out of every log event, even on failures."""
    async with FakeServer(auth="oauth2") as fake, aiohttp.ClientSession() as session:
        auth = OAuth2ClientCredentials(
            session=session,
            token_url=f"{fake.url}/oauth/token",
            client_id=CLIENT_ID,
            client_secret=Secret(CLIENT_SECRET),
            scopes=[],
        )
        fake.faults.extend(["500", "401"])
        with capture_logs() as logs:
            async with client_for(fake, auth=auth, session=session) as client:
                await collect(client)
    text = repr(logs)
    assert "source.retry" in text
    assert "auth.token_fetched" in text
    assert TOKEN not in text
    assert CLIENT_SECRET not in text
    assert "Bearer" not in text


# -- against producer.simulator ---------------------------------------------------------------

SIM_FAST = RetryPolicy(attempts=8, base_delay=0.001, max_delay=0.01, max_retry_after=0.01)


def sim_auth(district: Any, session: aiohttp.ClientSession, **kw: Any) -> Any:
    """The authenticator a simulated district demands, built from its spec."""
    spec = district.spec
    if spec.auth_method == "oauth2":
        return OAuth2ClientCredentials(
            session=session,
            token_url=district.token_url,
            client_id=spec.client_id,
            client_secret=Secret(spec.client_secret),
            scopes=kw.get("scopes", ()),
            credentials_in=kw.get("credentials_in", "basic"),
        )
    return OAuth1Signer(
        client_id=spec.client_id,
        client_secret=Secret(spec.client_secret),
        signature_method=kw.get("signature_method", "HMAC-SHA256"),
    )


async def sim_listing(
    spec: Any, entity: str = "users", *, version: str | None = None, **kw: Any
) -> tuple[Any, list[dict[str, Any]], Any]:
    """List ``entity`` of a one-district simulator; returns (listing, records, district)."""
    sim = Simulator([spec], frozen_clock=True)
    async with sim.serve("127.0.0.1", 0), aiohttp.ClientSession() as session:
        district = sim.district(spec.id)
        auth = kw.pop("auth", None) or sim_auth(district, session, **kw.pop("auth_kw", {}))
        client = OneRosterClient(
            district_id=spec.id,
            base_url=district.base_url,
            version=version or spec.version,  # type: ignore[arg-type]
            auth=auth,
            session=session,
            retry=SIM_FAST,
            page_size=kw.pop("page_size", 50),
            request_timeout=kw.pop("request_timeout", 2.0),
            **kw,
        )
        async with client:
            listing, records = await collect(client, entity)
        return listing, records, district


def exactly_the_truth(records: list[dict[str, Any]], district: Any, entity: str) -> bool:
    """Every record of the (unmutated) district arrived exactly once.

    ``truth_state`` holds the active records; the listing also carries the tobedeleted ones, so
    the check is: no duplicates, every active record present, and the base count reached.
    """
    seen = ids(records)
    return (
        max(seen.values(), default=1) == 1
        and set(district.truth_state(entity)) <= set(seen)
        and len(seen) == district.counts()[entity]
    )


@pytest.mark.parametrize(
    ("version", "auth", "auth_kw"),
    [
        ("1.2", None, {}),
        ("1.2", None, {"credentials_in": "body"}),
        ("1.1", None, {}),
        ("1.1", None, {"signature_method": "HMAC-SHA1"}),
        ("1.1", "oauth2", {}),
    ],
)
async def test_simulator_every_version_and_auth_mode(version, auth, auth_kw):
    """Both versions under OAuth2 (Basic/body), OAuth1 (SHA256/SHA1) list every record once."""
    spec = DistrictSpec(id="sim", version=version, size="small", auth=auth, allow_sha1=True)
    listing, records, district = await sim_listing(spec, version="auto", auth_kw=auth_kw)
    assert listing.complete
    assert exactly_the_truth(records, district, "users")


# shift_offsets changes the data (tested on its own), token_expired has its own test below.
@pytest.mark.parametrize("kind", sorted(RANDOM_KINDS - {"shift_offsets", "token_expired"}))
async def test_simulator_faults_are_absorbed(kind):
    """Each injected fault kind at a 30% rate still yields a complete, exactly-once listing."""
    faults = Faults(rate=0.3, kinds=(kind,), seed=5, latency=0.01, hang=5.0, retry_after=1)
    spec = DistrictSpec(id="sim", version="1.2", size="small", faults=faults)
    listing, records, district = await sim_listing(spec, request_timeout=0.5)
    assert listing.complete
    assert exactly_the_truth(records, district, "users")
    assert district.plan.fired.get(kind, 0) > 0


async def test_simulator_expired_tokens_are_renewed():
    """Tokens expired by the server are re-fetched once per request and the listing completes.

    Sequential paging keeps the seeded fault stream deterministic: two 401s in a row for one
    request would (by design) be AuthFailed, and this seed never draws that.
    """
    faults = Faults(rate=0.2, kinds=("token_expired",), seed=3)
    spec = DistrictSpec(id="sim", version="1.2", size="small", faults=faults)
    listing, records, district = await sim_listing(spec, concurrency=1)
    assert listing.complete
    assert exactly_the_truth(records, district, "users")
    assert district.plan.fired["token_expired"] > 1


async def test_simulator_shifting_offsets_mark_the_listing_incomplete():
    """Records created or deleted mid-listing change the total: not complete."""
    spec = DistrictSpec(
        id="sim", size="small", faults=Faults(rate=0.5, kinds=("shift_offsets",), seed=2)
    )
    listing, _, _ = await sim_listing(spec, concurrency=1)
    assert not listing.complete
    assert listing.incomplete_reason


@pytest.mark.parametrize("quirk", ["no_total_count", "status_info_set", "x_count", "date_space"])
async def test_simulator_quirks(quirk):
    """Missing totals, statusInfoSet beside data, x-count and space-separated dates all list."""
    spec = DistrictSpec(id="sim", version="1.1", size="small", quirks=frozenset({quirk}))
    listing, records, district = await sim_listing(spec)
    assert listing.complete
    assert exactly_the_truth(records, district, "users")
    assert (listing.total is None) == (quirk == "no_total_count")
    assert listing.observed_format is not None
    assert listing.observed_format.separator == (" " if quirk == "date_space" else "T")


async def test_simulator_filter_ignored_is_detected():
    """A server silently dropping the delta filter is noticed on the returned records."""
    spec = DistrictSpec(id="sim", size="small", faults=Faults(kinds=("filter_ignored",)))
    sim = Simulator([spec], frozen_clock=True)
    async with sim.serve("127.0.0.1", 0), aiohttp.ClientSession() as session:
        district = sim.district("sim")
        async with OneRosterClient(
            district_id="sim",
            base_url=district.base_url,
            version="1.2",
            auth=sim_auth(district, session),
            session=session,
        ) as client:
            cursor = sim.clock.now() - timedelta(days=10)
            listing, records = await collect(client, since=cursor)
    assert listing.filter_ignored
    assert exactly_the_truth(records, district, "users")


async def test_simulator_clamped_pages():
    """A server clamping limit to 7 (asked 50) loses and repeats nothing."""
    spec = DistrictSpec(id="sim", size="small", max_page_size=7)
    listing, records, district = await sim_listing(spec, "classes")
    assert listing.complete
    assert exactly_the_truth(records, district, "classes")


async def test_simulator_rejected_filter_and_missing_scope():
    """filter_rejected gives FilterUnsupported; demographics without its scope is Forbidden."""
    spec = DistrictSpec(
        id="sim", size="tiny", faults=Faults(kinds=("filter_rejected",)), scopes=(SCOPE_CORE,)
    )
    sim = Simulator([spec], frozen_clock=True)
    async with sim.serve("127.0.0.1", 0), aiohttp.ClientSession() as session:
        district = sim.district("sim")
        auth = sim_auth(district, session, scopes=[SCOPE_CORE])
        client = OneRosterClient(
            district_id="sim", base_url=district.base_url, version="1.2", auth=auth, session=session
        )
        async with client:
            with pytest.raises(errors.FilterUnsupported):
                await collect(client, since=datetime(2020, 1, 1, tzinfo=UTC))
            with pytest.raises(errors.Forbidden):
                await collect(client, entity="demographics")
            listing, records = await collect(client, entity="orgs")
    assert listing.complete
    assert records


@pytest.mark.parametrize("access", ["proxy", "direct"])
async def test_simulator_classlink_discovery_then_listing(access):
    """Discovered districts (proxy bearer or direct OAuth1) list every record of their tenant."""
    specs = [
        DistrictSpec(id="one", version="1.1", size="tiny"),
        DistrictSpec(id="two", version="1.2"),
    ]
    sim = Simulator(specs, classlink_api_key="cl-key", frozen_clock=True)
    async with sim.serve("127.0.0.1", 0) as root, aiohttp.ClientSession() as session:
        found = await discover(session, host=root, api_key=Secret("cl-key"), access=access)
        assert [d.tenant_name for d in found] == [sim.district("one").spec.tenant_name or "One"]
        district = found[0]
        auth: Any
        if isinstance(district.auth, DirectOAuth1):
            auth = OAuth1Signer(
                client_id=district.auth.client_id, client_secret=district.auth.client_secret
            )
        else:
            auth = BearerToken(district.auth.token)
        client = OneRosterClient(
            district_id=district.id,
            base_url=district.base_url,
            version=district.version,
            auth=auth,
            session=session,
        )
        async with client:
            listing, records = await collect(client)
    assert listing.complete
    assert exactly_the_truth(records, sim.district("one"), "users")
