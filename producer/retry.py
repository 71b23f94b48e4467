"""Retrying source requests: the policy (exponential backoff, full jitter, Retry-After) and
:class:`Requester`, the one place that GETs from a OneRoster or ClassLink server.

Whether an error is retried is decided by its class attribute ``retriable``
(``producer.errors``), never by a message. The requester is the network seam: it only talks
through the ``aiohttp.ClientSession`` it is given.

Observer events are the typed values of ``producer.protocols`` (``RequestRetried``,
``Reauthenticated``, ``PageFetched``; the client adds ``ListingDone``).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import aiohttp
import structlog
import yarl
from multidict import CIMultiDictProxy

from producer import errors
from producer.auth import Authenticator
from producer.config import DistrictConfig, default
from producer.protocols import (
    ClientObserver,
    PageFetched,
    Reauthenticated,
    RequestRetried,
    ignore_events,
)
from producer.responses import ServerStatus, describe_body, error_for, records_of

log = structlog.get_logger(__name__)

_SECRET_PARAMS: Final = ("oauth_", "access_token", "client_secret")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a request is retried.

    ``attempts`` counts every try, the first included (so ``attempts=1`` never retries). Delays
    grow as ``base_delay * 2**n`` capped by ``max_delay``, and the actual sleep is drawn
    uniformly from ``[0, that]`` (full jitter). A server's ``Retry-After`` is honoured up to
    ``max_retry_after`` seconds: the sleep is never shorter than what the server asked for.
    """

    #: Every try, the first included: ``[districts] max_retries`` + 1.
    attempts: int = default(DistrictConfig, "max_retries") + 1
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0

    @classmethod
    def for_district(cls, cfg: DistrictConfig) -> RetryPolicy:
        """The policy of a district: ``max_retries`` retries after the first try."""
        return cls(attempts=cfg.max_retries + 1)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    def delay(
        self,
        retry_number: int,
        *,
        retry_after: float | None = None,
        rand: random.Random | None = None,
    ) -> float:
        """Seconds to wait before retry ``retry_number`` (0 for the first retry).

        Full jitter on the exponential backoff; a ``retry_after`` (already in seconds) is a floor,
        capped at ``max_retry_after``.
        """
        ceiling = min(self.max_delay, self.base_delay * (2 ** min(retry_number, 62)))
        draw = (rand or _RANDOM).uniform(0.0, ceiling)
        if retry_after is not None and retry_after > 0:
            return max(draw, min(retry_after, self.max_retry_after))
        return draw


_RANDOM = random.Random()  # noqa: S311 -- jitter, not cryptography


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """The ``Retry-After`` header in seconds: delta-seconds or an HTTP-date; ``None`` if unusable.

    Dates in the past give 0. Negative, non-finite or unparseable values give ``None``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    return max(0.0, (when - reference).total_seconds())


def loggable_url(url: yarl.URL) -> str:
    """``url`` without credentials or OAuth parameters, safe for logs and error messages."""
    query = [(k, v) for k, v in url.query.items() if not k.lower().startswith(_SECRET_PARAMS)]
    return str(url.with_user(None).with_password(None).with_query(query))


class _Unauthorised(errors.AuthFailed):
    """A 401 from the resource server (re-authenticate once before giving up)."""

    #: The auth headers the refused request carried (never logged; see Authenticator).
    rejected: Mapping[str, str] | None = None


class Requester:
    """GETs JSON pages for one district with auth, timeouts, retries and typed errors."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        auth: Authenticator,
        district_id: str,
        request_timeout: float = default(DistrictConfig, "request_timeout"),
        retry: RetryPolicy = RetryPolicy(),
        observer: ClientObserver = ignore_events,
    ) -> None:
        self.session = session
        self.auth = auth
        self.district_id = district_id
        self.retry = retry
        self.observer = observer
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        #: A 429 pauses every request of the district, not just the one that saw it.
        self._not_before = 0.0

    async def get(
        self,
        url: yarl.URL,
        key: str | tuple[str, ...],
        *,
        entity: str,
        filter_sent: bool = False,
        expect: type = list,
    ) -> tuple[Any, CIMultiDictProxy[str]]:
        """The value under ``key`` at ``url`` (a list unless ``expect`` says otherwise) and the
        response headers, retried as the policy says.

        Raises:
            errors.SourceError: a subclass saying what went wrong, after retries for retriable ones.
        """
        reauthenticated = False
        attempt = 0
        while True:
            wait = self._not_before - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            started = time.monotonic()
            try:
                records, headers = await self._once(
                    url, key, filter_sent=filter_sent, expect=expect
                )
            except _Unauthorised as exc:
                if reauthenticated:
                    raise errors.AuthFailed(
                        f"{exc}; {self.auth.refusal_hint()}", status=401, url=exc.url
                    ) from exc
                reauthenticated = True
                self.observer(Reauthenticated(self.district_id, entity))
                log.info("source.reauthenticate", district_id=self.district_id, entity=entity)
                await self.auth.invalidate(exc.rejected)
                continue
            except errors.SourceError as exc:
                attempt += 1
                if not exc.retriable or attempt >= self.retry.attempts:
                    raise
                retry_after = exc.retry_after if isinstance(exc, errors.RateLimited) else None
                delay = self.retry.delay(attempt - 1, retry_after=retry_after)
                if isinstance(exc, errors.RateLimited):
                    self._not_before = max(self._not_before, time.monotonic() + delay)
                self.observer(
                    RequestRetried(
                        self.district_id,
                        entity,
                        attempt=attempt,
                        delay=delay,
                        error=type(exc).__name__,
                        status=exc.status or 0,
                    )
                )
                log.warning(
                    "source.retry",
                    district_id=self.district_id,
                    entity=entity,
                    url=loggable_url(url),
                    attempt=attempt,
                    delay=round(delay, 3),
                    error=type(exc).__name__,
                    status=exc.status,
                    reason=str(exc),
                )
                await asyncio.sleep(delay)
                continue
            self.observer(
                PageFetched(
                    self.district_id,
                    entity,
                    offset=int(url.query.get("offset", "0") or 0),
                    records=len(records),
                    latency=time.monotonic() - started,
                )
            )
            return records, headers

    async def _once(
        self, url: yarl.URL, key: str | tuple[str, ...], *, filter_sent: bool, expect: type
    ) -> tuple[Any, CIMultiDictProxy[str]]:
        sent = await self.auth.headers("GET", url)
        headers = {**sent, "Accept": "application/json"}
        try:
            async with self.session.get(
                url, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                body = await resp.read()
                status, response_headers = resp.status, resp.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            kind = "timed out" if isinstance(exc, TimeoutError) else "failed"
            raise errors.SourceUnavailable(
                f"request {kind}: {type(exc).__name__}: {exc}", url=loggable_url(url)
            ) from exc
        info: ServerStatus
        if status == 200:
            # The loggable URL is made only for an error: a good page does not pay for it.
            try:
                records, envelope = records_of(body, key, url="", expect=expect)
                if envelope is None:
                    _check_count(records, response_headers, "")
                    return records, response_headers
            except errors.BadResponse as exc:
                exc.url = loggable_url(url)
                raise
            info = envelope
            status = envelope.implied_status or 200
        else:
            info = describe_body(body)
        where = loggable_url(url)
        if status == 401:
            unauthorised = _Unauthorised(f"HTTP 401: {info.text()}", status=401, url=where)
            unauthorised.rejected = sent
            raise unauthorised
        retry_after = parse_retry_after(response_headers.get("Retry-After"))
        raise error_for(status, info, url=where, filter_sent=filter_sent, retry_after=retry_after)


def _check_count(records: Any, headers: CIMultiDictProxy[str], where: str) -> None:
    """ClassLink's ``x-count`` (records in this page) must match what arrived."""
    raw = headers.get("X-Count")
    if raw is None or not isinstance(records, list):
        return
    try:
        expected = int(raw.strip())
    except ValueError:
        return
    if expected != len(records):
        raise errors.BadResponse(
            f"page carries {len(records)} records but x-count says {expected}",
            status=200,
            url=where,
        )
