"""Authentication on the wire against the scriptable server: re-authentication after a 401,
shared and refreshed OAuth2 tokens, OAuth 1.0a signatures, and no secret in the logs."""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp
import pytest
from structlog.testing import capture_logs

from producer import errors
from producer.auth import BearerToken, OAuth1Signer, OAuth2ClientCredentials
from producer.model import Secret
from tests.oneroster_fake import (
    CLIENT_ID,
    CLIENT_SECRET,
    TOKEN,
    FakeServer,
    client_for,
    collect,
    make_records,
)


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
