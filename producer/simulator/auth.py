"""Authentication the simulated servers demand: OAuth 2.0 client credentials and OAuth 1.0a.

* OAuth 2.0 (1.2 districts, or any district with ``auth="oauth2"``): ``POST
  {root}/{district}/oauth/token`` with ``grant_type=client_credentials``, credentials by HTTP
  Basic or in the form body, an optional space-separated ``scope``. Tokens are random opaque
  strings that expire on the simulated clock. Data requests need ``Authorization: Bearer``.
* OAuth 1.0a (1.1 districts): two-legged request signing verified by ``oauthlib`` over exactly
  the URL and query string received; HMAC-SHA256 (HMAC-SHA1 when enabled, or only HMAC-SHA1 as
  some outside servers do), a timestamp window of
  ``timestamp_lifetime`` seconds of wall time, and a nonce may be used once.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import unquote

from oauthlib.oauth1 import RequestValidator, SignatureOnlyEndpoint

SCOPE_ROOT: Final = "https://purl.imsglobal.org/spec/or/v1p2/scope/"
SCOPE_CORE: Final = SCOPE_ROOT + "roster-core.readonly"
SCOPE_ROSTER: Final = SCOPE_ROOT + "roster.readonly"
SCOPE_DEMOGRAPHICS: Final = SCOPE_ROOT + "roster-demographics.readonly"
ALL_SCOPES: Final = (SCOPE_CORE, SCOPE_ROSTER, SCOPE_DEMOGRAPHICS)
_V1P1_ROOT: Final = "https://purl.imsglobal.org/spec/or/v1p1/scope/"


def canonical_scope(scope: str) -> str:
    """Map the 1.1 spellings of the scopes onto the 1.2 ones (both are accepted)."""
    if scope.startswith(_V1P1_ROOT):
        return SCOPE_ROOT + scope[len(_V1P1_ROOT) :]
    return scope


def required_scopes(collection: str) -> frozenset[str]:
    """Scopes any one of which grants a rostering collection (OAS12 ``security``)."""
    if collection == "demographics":
        return frozenset((SCOPE_DEMOGRAPHICS,))
    return frozenset((SCOPE_CORE, SCOPE_ROSTER))


@dataclass(slots=True)
class Token:
    """An issued bearer token."""

    value: str
    district: str
    scopes: frozenset[str]
    expires: datetime
    revoked: bool = False


class TokenStore:
    """Issued OAuth 2.0 tokens of every district, expiring on the simulated clock."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}

    def issue(self, district: str, scopes: frozenset[str], ttl: float, now: datetime) -> Token:
        """A new random token for ``district``; earlier tokens stay valid."""
        token = Token(secrets.token_urlsafe(24), district, scopes, now + timedelta(seconds=ttl))
        self._tokens[token.value] = token
        return token

    def check(self, value: str, district: str, now: datetime) -> Token | None:
        """The live token ``value`` of ``district``, or None (unknown, expired or revoked)."""
        token = self._tokens.get(value)
        if token is None or token.district != district or token.revoked:
            return None
        if token.expires <= now:
            return None
        return token

    def revoke(self, value: str) -> None:
        """Expire ``value`` now (the ``token_expired`` fault)."""
        token = self._tokens.get(value)
        if token is not None:
            token.revoked = True


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(id, secret) from an ``Authorization: Basic`` header (each part may be URL-encoded)."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = raw.partition(":")
    if not sep:
        return None
    return unquote(user), unquote(password)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header."""
    if not header or not header.lower().startswith("bearer "):
        return None
    return header[7:].strip() or None


class _Validator(RequestValidator):  # type: ignore[misc] # oauthlib is untyped
    """oauthlib's questions about one district's consumer, answered."""

    def __init__(
        self, client_id: str, secret: str, methods: tuple[str, ...], lifetime: int
    ) -> None:
        super().__init__()
        self._client_id = client_id
        self._secret = secret
        self._methods = methods
        self._lifetime = lifetime
        self._seen: dict[tuple[str, str, str], float] = {}

    @property
    def enforce_ssl(self) -> bool:
        return False

    @property
    def allowed_signature_methods(self) -> tuple[str, ...]:
        return self._methods

    @property
    def timestamp_lifetime(self) -> int:
        return self._lifetime

    @property
    def dummy_client(self) -> str:
        return "dummy-client"

    def check_client_key(self, client_key: str) -> bool:
        return bool(client_key) and len(client_key) <= 200

    def check_nonce(self, nonce: str) -> bool:
        # Real clients send nonces of 8-64 characters (ClassLink's: as long as the timestamp).
        return 6 <= len(nonce) <= 128 and nonce.isascii()

    def validate_client_key(self, client_key: str, request: Any) -> bool:
        del request
        return secrets.compare_digest(client_key, self._client_id)

    def get_client_secret(self, client_key: str, request: Any) -> str:
        del request
        return self._secret if client_key == self._client_id else "dummy-secret"

    def validate_timestamp_and_nonce(  # noqa: PLR0917 - oauthlib's signature
        self,
        client_key: str,
        timestamp: str,
        nonce: str,
        request: Any,
        request_token: str | None = None,
        access_token: str | None = None,
    ) -> bool:
        del request, request_token, access_token
        now = time.time()
        if len(self._seen) > 10_000:
            horizon = now - 2 * self._lifetime
            self._seen = {k: t for k, t in self._seen.items() if t > horizon}
        key = (client_key, timestamp, nonce)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True


class OAuth1Verifier:
    """Verifies OAuth 1.0a signed requests for one consumer."""

    def __init__(
        self,
        client_id: str,
        secret: str,
        *,
        allow_sha1: bool = False,
        sha1_only: bool = False,
        timestamp_lifetime: int = 600,
    ) -> None:
        methods = ("HMAC-SHA256", "HMAC-SHA1") if allow_sha1 else ("HMAC-SHA256",)
        if sha1_only:
            methods = ("HMAC-SHA1",)
        self._endpoint = SignatureOnlyEndpoint(
            _Validator(client_id, secret, methods, timestamp_lifetime)
        )

    def verify(self, url: str, method: str, headers: Mapping[str, str]) -> bool:
        """True when the request to ``url`` (with its query string, as received) is signed."""
        relevant = {k: v for k, v in headers.items() if k.lower() == "authorization"}
        valid, _ = self._endpoint.validate_request(url, method, None, relevant)
        return bool(valid)
