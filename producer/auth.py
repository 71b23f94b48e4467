"""How requests to a OneRoster server are authorised: OAuth 2.0, OAuth 1.0a or a static bearer.

Every mode implements :class:`Authenticator`. The client asks for headers with the exact URL it
is about to send (query string included, already encoded), and calls ``invalidate()`` after a
401 so that the next ``headers()`` re-authenticates. Secrets stay in :class:`~producer.model.Secret`
until they are put on the wire; nothing here logs a token, a secret or a signature.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal, Protocol, runtime_checkable
from urllib.parse import quote

import aiohttp
import orjson
import structlog
import yarl
from oauthlib import oauth1

from producer import errors
from producer.model import Secret
from producer.protocols import SecondsClock
from producer.responses import describe_body

log = structlog.get_logger(__name__)

SignatureMethod = Literal["HMAC-SHA256", "HMAC-SHA1"]
CredentialsIn = Literal["basic", "body"]


@runtime_checkable
class Authenticator(Protocol):
    """Produces the headers that authorise one request."""

    async def headers(self, method: str, url: yarl.URL) -> dict[str, str]:
        """Headers for ``method url``; ``url`` carries the exact query string that is sent."""
        ...

    async def invalidate(self, rejected: Mapping[str, str] | None = None) -> None:
        """The server answered 401: the next ``headers()`` must re-authenticate.

        ``rejected`` are the headers the refused request carried; when the credentials in them
        were already replaced (another request re-authenticated first), nothing is done, so
        concurrent 401s cause one re-authentication, not one each.
        """
        ...


class OAuth2ClientCredentials:
    """OAuth 2.0 client-credentials grant; the token is cached and refreshed before it expires.

    One refresh at a time (single flight): concurrent callers wait for the same token. A token is
    refreshed ``refresh_margin`` seconds before ``expires_in`` runs out; without ``expires_in``
    it is kept until a 401 invalidates it.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        token_url: str,
        client_id: str,
        client_secret: Secret,
        scopes: Sequence[str] = (),
        credentials_in: CredentialsIn = "basic",
        refresh_margin: float = 60.0,
        request_timeout: float = 30.0,
        clock: SecondsClock = time.monotonic,
    ) -> None:
        if credentials_in not in ("basic", "body"):
            raise ValueError(f"credentials_in must be 'basic' or 'body', not {credentials_in!r}")
        self._session = session
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scopes = tuple(scopes)
        self._credentials_in = credentials_in
        self._refresh_margin = refresh_margin
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: Secret | None = None
        self._expires_at = float("inf")
        self.fetches = 0

    def __repr__(self) -> str:
        return (
            f"OAuth2ClientCredentials(token_url={self._token_url!r}, client_id={self._client_id!r})"
        )

    def _fresh(self) -> bool:
        return self._token is not None and self._clock() < self._expires_at - self._refresh_margin

    async def headers(self, method: str, url: yarl.URL) -> dict[str, str]:
        """``Authorization: Bearer <token>``, fetching a token first when needed."""
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    await self._fetch()
        assert self._token is not None
        return {"Authorization": f"Bearer {self._token.reveal()}"}

    async def invalidate(self, rejected: Mapping[str, str] | None = None) -> None:
        """Forget the cached token (the server refused it), unless already replaced."""
        async with self._lock:
            if _stale(rejected, self._token):
                return
            self._token = None

    async def _fetch(self) -> None:
        form: dict[str, str] = {"grant_type": "client_credentials"}
        if self._scopes:
            form["scope"] = " ".join(self._scopes)
        headers = {"Accept": "application/json"}
        if self._credentials_in == "basic":
            # RFC 6749 §2.3.1: both parts form-urlencoded before the Basic encoding.
            pair = (
                f"{quote(self._client_id, safe='')}:{quote(self._client_secret.reveal(), safe='')}"
            )
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form["client_id"] = self._client_id
            form["client_secret"] = self._client_secret.reveal()
        started = self._clock()
        try:
            async with self._session.post(
                self._token_url, data=form, headers=headers, timeout=self._timeout
            ) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise errors.SourceUnavailable(
                f"token endpoint unreachable: {type(exc).__name__}: {exc}", url=self._token_url
            ) from exc
        if status != 200:
            info = describe_body(body)
            message = f"token request refused (HTTP {status}: {info.text()})"
            if status == 429 or status >= 500:
                raise errors.SourceUnavailable(message, status=status, url=self._token_url)
            raise errors.AuthFailed(
                message + "; check client_id, client_secret, token_url and scopes",
                status=status,
                url=self._token_url,
            )
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise errors.BadResponse(
                "token endpoint answered 200 without JSON", status=status, url=self._token_url
            ) from exc
        token = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise errors.AuthFailed(
                "token endpoint answered 200 without an access_token",
                status=status,
                url=self._token_url,
            )
        expires_in = doc.get("expires_in")
        if isinstance(expires_in, str) and expires_in.strip().isdigit():
            expires_in = int(expires_in)
        self._token = Secret(token)
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            self._expires_at = started + float(expires_in)
        else:
            self._expires_at = float("inf")
        self.fetches += 1
        log.info("auth.token_fetched", token_url=self._token_url, expires_in=expires_in)


class OAuth1Signer:
    """Two-legged OAuth 1.0a request signing (no token), as OneRoster 1.1 servers expect.

    Signs exactly the URL it is given, query string included, with oauthlib; the client sends
    that same URL. Signature parameters travel in the ``Authorization`` header, never in the URL.
    ``nonce`` and ``timestamp`` can be fixed for golden-signature tests.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: Secret,
        signature_method: SignatureMethod = "HMAC-SHA256",
        nonce: Callable[[], str] | None = None,
        timestamp: Callable[[], str] | None = None,
    ) -> None:
        methods = {
            "HMAC-SHA256": oauth1.SIGNATURE_HMAC_SHA256,
            "HMAC-SHA1": oauth1.SIGNATURE_HMAC_SHA1,
        }
        if signature_method not in methods:
            raise ValueError(f"signature_method must be one of {sorted(methods)}")
        self._client_id = client_id
        self._client_secret = client_secret
        self._method = methods[signature_method]
        self._nonce = nonce
        self._timestamp = timestamp

    def __repr__(self) -> str:
        return f"OAuth1Signer(client_id={self._client_id!r})"

    def sign(self, method: str, url: yarl.URL) -> dict[str, str]:
        """The ``Authorization`` header for ``method url``.

        Raises:
            errors.AuthFailed: the request cannot be signed (e.g. a malformed query string).
        """
        client = oauth1.Client(
            self._client_id,
            client_secret=self._client_secret.reveal(),
            signature_method=self._method,
            signature_type=oauth1.SIGNATURE_TYPE_AUTH_HEADER,
            nonce=self._nonce() if self._nonce else None,
            timestamp=self._timestamp() if self._timestamp else None,
        )
        try:
            _, headers, _ = client.sign(str(url), http_method=method.upper())
        except (ValueError, TypeError, UnicodeError) as exc:
            raise errors.AuthFailed(
                f"cannot sign the request with OAuth 1.0a: {type(exc).__name__}",
                url=str(url.with_query(None)),
            ) from None
        return {"Authorization": str(headers["Authorization"])}

    async def headers(self, method: str, url: yarl.URL) -> dict[str, str]:
        """A fresh signature (new nonce and timestamp) for this exact request."""
        return self.sign(method, url)

    async def invalidate(self, rejected: Mapping[str, str] | None = None) -> None:
        """Nothing is cached: every request is signed afresh."""


class BearerToken:
    """A static bearer (e.g. ClassLink's proxy token), or one read afresh after a 401.

    With a callable, the token is fetched on first use (unless ``initial`` is given) and again
    after ``invalidate()``.
    """

    def __init__(
        self, token: Secret | Callable[[], Awaitable[Secret]], *, initial: Secret | None = None
    ) -> None:
        self._source = token
        self._token: Secret | None = token if isinstance(token, Secret) else initial
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return "BearerToken(**********)"

    async def headers(self, method: str, url: yarl.URL) -> dict[str, str]:
        """``Authorization: Bearer <token>``."""
        token = self._token
        if token is None:
            async with self._lock:
                if self._token is None:
                    assert not isinstance(self._source, Secret)
                    self._token = await self._source()
                token = self._token
        return {"Authorization": f"Bearer {token.reveal()}"}

    async def invalidate(self, rejected: Mapping[str, str] | None = None) -> None:
        """Re-read the token on next use (static tokens cannot be re-read)."""
        if not isinstance(self._source, Secret) and not _stale(rejected, self._token):
            self._token = None


def _stale(rejected: Mapping[str, str] | None, current: Secret | None) -> bool:
    """True when ``rejected`` carried a bearer other than ``current`` (already replaced)."""
    if rejected is None or current is None:
        return False
    return rejected.get("Authorization") != f"Bearer {current.reveal()}"
