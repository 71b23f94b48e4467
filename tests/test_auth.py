"""Authenticators: OAuth 2.0 client credentials, OAuth 1.0a signing, static/re-read bearer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer import errors
from producer.auth import Authenticator, BearerToken, OAuth1Signer, OAuth2ClientCredentials
from producer.filters import encode_query
from producer.model import Secret
from tests.oneroster_fake import CLIENT_ID, CLIENT_SECRET, FakeServer, oauth1_oracle

GOLDEN_URL = yarl.URL(
    "https://sis.example.org/ims/oneroster/v1p1/users?"
    + encode_query(
        [
            ("limit", "100"),
            ("offset", "0"),
            ("filter", "dateLastModified>'2026-01-01 00:00:00Z' AND familyName='O''Brien'"),
        ]
    ),
    encoded=True,
)


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def token_server() -> AsyncIterator[FakeServer]:
    async with FakeServer(auth="oauth2") as fake:
        yield fake


def oauth2(fake: FakeServer, session: aiohttp.ClientSession, **kw: Any) -> OAuth2ClientCredentials:
    options: dict[str, Any] = {
        "session": session,
        "token_url": f"{fake.url}/oauth/token",
        "client_id": CLIENT_ID,
        "client_secret": Secret(CLIENT_SECRET),
        "scopes": ["https://purl.imsglobal.org/spec/or/v1p2/scope/roster-core.readonly"],
    }
    options.update(kw)
    return OAuth2ClientCredentials(**options)


ANY_URL = yarl.URL("http://127.0.0.1/x")


def test_every_mode_satisfies_the_protocol(session):
    """All three modes are Authenticators."""
    modes = [
        OAuth2ClientCredentials(
            session=session, token_url="http://x", client_id="a", client_secret=Secret("b")
        ),
        OAuth1Signer(client_id="a", client_secret=Secret("b")),
        BearerToken(Secret("t")),
    ]
    assert all(isinstance(m, Authenticator) for m in modes)


async def test_basic_credentials_are_form_encoded_then_base64(token_server, session):
    """Basic mode sends urlencoded id:secret (secret has &, =, / and non-ASCII) and scopes."""
    auth = oauth2(token_server, session)
    headers = await auth.headers("GET", ANY_URL)
    assert headers == {"Authorization": "Bearer tok-123-very-secret-1"}
    sent = token_server.token_requests[0]
    assert sent["grant_type"] == "client_credentials"
    assert sent["scope"].endswith("roster-core.readonly")
    assert sent["auth"].startswith("Basic ")
    assert "client_secret" not in sent


async def test_body_credentials_travel_in_the_form(token_server, session):
    """Body mode puts client_id and client_secret in the form and sends no Basic header."""
    auth = oauth2(token_server, session, credentials_in="body", scopes=[])
    await auth.headers("GET", ANY_URL)
    sent = token_server.token_requests[0]
    assert sent["client_secret"] == CLIENT_SECRET
    assert sent["auth"] == ""
    assert "scope" not in sent


async def test_token_is_cached_and_refreshed_inside_the_margin(token_server, session):
    """A token is reused until refresh_margin before expiry, then fetched again."""
    token_server.token_expires_in = 100
    clock = Clock()
    auth = oauth2(token_server, session, refresh_margin=60.0, clock=clock)
    first = await auth.headers("GET", ANY_URL)
    clock.now += 39
    assert await auth.headers("GET", ANY_URL) == first
    clock.now += 2
    assert await auth.headers("GET", ANY_URL) != first
    assert auth.fetches == 2


async def test_token_without_expiry_lasts_until_invalidated(token_server, session):
    """Without expires_in the token is kept; invalidate() forces a new one."""
    token_server.token_expires_in = None
    clock = Clock()
    auth = oauth2(token_server, session, clock=clock)
    first = await auth.headers("GET", ANY_URL)
    clock.now += 10**7
    assert await auth.headers("GET", ANY_URL) == first
    await auth.invalidate()
    assert await auth.headers("GET", ANY_URL) != first


async def test_invalidating_an_already_replaced_token_is_a_no_op(token_server, session):
    """A 401 for an old token does not throw away the newer one another request fetched."""
    auth = oauth2(token_server, session)
    old = await auth.headers("GET", ANY_URL)
    await auth.invalidate(old)
    new = await auth.headers("GET", ANY_URL)
    await auth.invalidate(old)
    assert await auth.headers("GET", ANY_URL) == new
    assert auth.fetches == 2
    await auth.invalidate(new)
    assert await auth.headers("GET", ANY_URL) != new


async def test_concurrent_callers_share_one_refresh(token_server, session):
    """Twenty concurrent first calls cause exactly one token request (single flight)."""
    auth = oauth2(token_server, session)
    results = await asyncio.gather(*(auth.headers("GET", ANY_URL) for _ in range(20)))
    assert len({r["Authorization"] for r in results}) == 1
    assert len(token_server.token_requests) == 1


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, {"error": "invalid_client"}, errors.AuthFailed),
        (400, {"error": "invalid_scope", "error_description": "scope denied"}, errors.AuthFailed),
        (503, "down", errors.SourceUnavailable),
        (429, "slow down", errors.SourceUnavailable),
        (200, {"token_type": "bearer"}, errors.AuthFailed),
        (200, "<html>login</html>", errors.BadResponse),
    ],
)
async def test_token_endpoint_failures_are_typed(session, status, body, error):
    """Refusals are AuthFailed, outages retriable SourceUnavailable, junk BadResponse."""

    async def handler(_: web.Request) -> web.Response:
        if isinstance(body, dict):
            return web.json_response(body, status=status)
        return web.Response(text=body, status=status)

    app = web.Application()
    app.router.add_post("/token", handler)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        auth = OAuth2ClientCredentials(
            session=session,
            token_url=str(server.make_url("/token")),
            client_id="a",
            client_secret=Secret("SECRET-VALUE"),
        )
        with pytest.raises(error) as caught:
            await auth.headers("GET", ANY_URL)
    assert "SECRET-VALUE" not in str(caught.value)
    if isinstance(body, dict) and "error_description" in body:
        assert "scope denied" in str(caught.value)


async def test_unreachable_token_endpoint_is_retriable(session):
    """A refused connection to the token endpoint is SourceUnavailable (retriable)."""
    auth = OAuth2ClientCredentials(
        session=session,
        token_url="http://127.0.0.1:9/token",
        client_id="a",
        client_secret=Secret("b"),
    )
    with pytest.raises(errors.SourceUnavailable) as caught:
        await auth.headers("GET", ANY_URL)
    assert caught.value.retriable


@pytest.mark.parametrize(
    ("method", "golden"),
    [
        ("HMAC-SHA256", "3y1ehdvPr2dNu7nP4KDErR9FJOqwKISyxKG%2B3RPf4l0%3D"),
        ("HMAC-SHA1", "CMdE6WZKuTGaouLy7fftjnbYJok%3D"),
    ],
)
def test_oauth1_golden_signatures(method, golden):
    """Fixed nonce/timestamp give a known signature for a filter with quotes, spaces and >."""
    signer = OAuth1Signer(
        client_id="ck",
        client_secret=Secret("cs&x"),
        signature_method=method,
        nonce=lambda: "n0nce",
        timestamp=lambda: "1764291600",
    )
    header = signer.sign("GET", GOLDEN_URL)["Authorization"]
    assert f'oauth_signature="{golden}"' in header
    assert f'oauth_signature_method="{method}"' in header
    assert 'oauth_consumer_key="ck"' in header
    assert "oauth_token" not in header
    url = str(GOLDEN_URL.with_query(None))
    assert oauth1_oracle("GET", url, GOLDEN_URL.raw_query_string, header, "cs&x")


def test_oauth1_signs_the_query_sent():
    """A signature for one query does not verify for another (all params are signed)."""
    signer = OAuth1Signer(client_id="ck", client_secret=Secret("cs"))
    header = signer.sign("GET", GOLDEN_URL)["Authorization"]
    other = GOLDEN_URL.raw_query_string.replace("offset=0", "offset=100")
    assert not oauth1_oracle("GET", str(GOLDEN_URL.with_query(None)), other, header, "cs")


async def test_oauth1_signs_afresh_each_time():
    """Each request gets a new nonce; invalidate() is harmless."""
    signer = OAuth1Signer(client_id="ck", client_secret=Secret("cs"))
    first = await signer.headers("GET", GOLDEN_URL)
    await signer.invalidate()
    assert await signer.headers("GET", GOLDEN_URL) != first


def test_unknown_signature_method_is_refused():
    """Only HMAC-SHA256 and HMAC-SHA1 are accepted."""
    with pytest.raises(ValueError, match="signature_method"):
        OAuth1Signer(client_id="a", client_secret=Secret("b"), signature_method="PLAINTEXT")  # type: ignore[arg-type]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    params=st.lists(st.tuples(st.text(min_size=1, max_size=12), st.text(max_size=30)), max_size=5),
    secret=st.text(max_size=20),
    client_id=st.text(min_size=1, max_size=12),
)
def test_oauth1_signer_verifies_for_any_strictly_encoded_query(params, secret, client_id):
    """Any parameters, strictly encoded, sign without error and verify independently."""
    query = encode_query(params)
    url = yarl.URL(
        "https://h.example/ims/oneroster/v1p1/users" + ("?" + query if query else ""), encoded=True
    )
    signer = OAuth1Signer(client_id=client_id, client_secret=Secret(secret))
    try:
        header = signer.sign("GET", url)["Authorization"]
    except errors.AuthFailed:
        return  # typed refusal (e.g. a control character oauthlib will not sign) is allowed
    assert oauth1_oracle("GET", str(url.with_query(None)), query, header, secret)


@settings(max_examples=200)
@given(raw=st.text(max_size=40))
def test_oauth1_signer_raises_only_typed_errors_for_junk_urls(raw):
    """Malformed query strings give AuthFailed or a signature, never another exception."""
    try:
        url = yarl.URL("https://h.example/p?" + raw, encoded=True)
    except ValueError:
        return
    signer = OAuth1Signer(client_id="a", client_secret=Secret("SECRET-VALUE"))
    outcome: dict[str, str] | errors.AuthFailed
    try:
        outcome = signer.sign("GET", url)
    except errors.AuthFailed as exc:
        outcome = exc
    if isinstance(outcome, errors.AuthFailed):
        assert "SECRET-VALUE" not in str(outcome)
    else:
        assert outcome["Authorization"].startswith("OAuth ")


def test_reprs_hide_secrets(session):
    """No authenticator shows its secret in repr."""
    modes = [
        OAuth2ClientCredentials(
            session=session, token_url="http://x", client_id="a", client_secret=Secret("S3CR3T")
        ),
        OAuth1Signer(client_id="a", client_secret=Secret("S3CR3T")),
        BearerToken(Secret("S3CR3T")),
    ]
    assert "S3CR3T" not in repr(modes)


async def test_static_bearer_is_sent_and_survives_invalidate():
    """A static bearer is sent as is; invalidate() cannot change it."""
    auth = BearerToken(Secret("abc"))
    await auth.invalidate()
    assert await auth.headers("GET", ANY_URL) == {"Authorization": "Bearer abc"}
    assert "abc" not in repr(auth)


async def test_bearer_source_is_read_once_and_again_after_invalidate():
    """A callable bearer is read lazily, cached, and re-read after invalidate()."""
    tokens = iter(["one", "two"])
    reads = 0

    async def source() -> Secret:
        nonlocal reads
        reads += 1
        return Secret(next(tokens))

    auth = BearerToken(source)
    assert reads == 0
    assert await auth.headers("GET", ANY_URL) == {"Authorization": "Bearer one"}
    assert await auth.headers("GET", ANY_URL) == {"Authorization": "Bearer one"}
    await auth.invalidate()
    assert await auth.headers("GET", ANY_URL) == {"Authorization": "Bearer two"}
    assert reads == 2
