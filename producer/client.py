"""The OneRoster source client: one district, paged listings streamed as :class:`RawPage`.

One seam to the network: the ``aiohttp.ClientSession`` (injected, or owned and closed by the
client). Everything a request needs (auth headers, retries with backoff, typed errors from any
error body) happens in :class:`producer.retry.Requester`, which discovery reuses; its module
docstring lists the observer events.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, Self
from urllib.parse import quote

import aiohttp
import structlog
import yarl
from multidict import CIMultiDictProxy

from producer import errors
from producer.auth import Authenticator
from producer.config import DistrictConfig, default
from producer.filters import delta_filter, encode_query, filter_ignored
from producer.model import Entity, RawPage, Version
from producer.protocols import ClientObserver, ListingDone, ignore_events
from producer.retry import Requester, RetryPolicy, loggable_url
from producer.timestamps import DEFAULT_FORMAT, TimestampFormat, detect_format, parse_timestamp

log = structlog.get_logger(__name__)

VersionSetting = Literal["1.1", "1.2", "auto"]

#: The envelope keys of a single-object GET, per collection (1.2 spec; 1.1 uses the same),
#: the spec's first: some 1.1 servers answer a single demographics record as ``demographic``.
SINGULAR_KEYS: Final[dict[Entity, tuple[str, ...]]] = {
    "orgs": ("org",),
    "academicSessions": ("academicSession",),
    "courses": ("course",),
    "classes": ("class",),
    "users": ("user",),
    "enrollments": ("enrollment",),
    "demographics": ("demographics", "demographic"),
}
#: The probe of ``filter_answers``: every record of a live server is newer than this.
_FILTER_PROBE: Final = datetime(1970, 1, 2, tzinfo=UTC)
BASE_PATHS: Final[dict[Version, str]] = {
    "1.1": "/ims/oneroster/v1p1",
    "1.2": "/ims/oneroster/rostering/v1p2",
}


def _total(headers: CIMultiDictProxy[str]) -> int | None:
    raw = headers.get("X-Total-Count")
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


@dataclass(slots=True)
class ServerTraits:
    """What the listings of one client have learned of its server (each listing reads and
    updates it, so the next one starts from what the last one found)."""

    #: Whether the server accepts ``sort=sourcedId``: ``None`` until a first page tells.
    sorts: bool | None = None
    #: How it writes ``dateLastModified`` (delta cursors are written the same way).
    timestamp_format: TimestampFormat | None = None


class OneRosterClient:
    """Reads one district's collections. An async context manager; closed clients refuse use.

    ``base_url`` is the server root (``https://sis.example``) or a root that already ends in a
    OneRoster base path. Path segments in it are used verbatim (ClassLink's already-encoded
    application ids stay as they are).
    """

    def __init__(
        self,
        *,
        district_id: str,
        base_url: str,
        version: VersionSetting,
        auth: Authenticator,
        page_size: int = default(DistrictConfig, "page_size"),
        concurrency: int = default(DistrictConfig, "concurrency"),
        request_timeout: float = default(DistrictConfig, "request_timeout"),
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 -- frozen value object
        session: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | None = None,
        observer: ClientObserver = ignore_events,
        sort: bool = True,
    ) -> None:
        if version not in ("1.1", "1.2", "auto"):
            raise ValueError(f"version must be '1.1', '1.2' or 'auto', not {version!r}")
        if page_size < 1 or concurrency < 1:
            raise ValueError("page_size and concurrency must be at least 1")
        self.district_id = district_id
        self.page_size = page_size
        self.concurrency = concurrency
        self._root = base_url.rstrip("/")
        self._version: Version | None = None if version == "auto" else version
        for known, path in BASE_PATHS.items():
            if self._root.endswith(path):
                self._root, self._version = self._root[: -len(path)], known
        self._auth = auth
        self._timeout = request_timeout
        self._retry = retry
        self._observer = observer
        self._ssl = ssl_context
        self._session = session
        self._owns_session = session is None
        self._requester: Requester | None = None
        self._closed = False
        self._detect_lock = asyncio.Lock()
        #: What listings learn of the server, for the listings after them.
        self.traits = ServerTraits(sorts=None if sort else False)

    def __repr__(self) -> str:
        return f"OneRosterClient(district_id={self.district_id!r}, base_url={self._root!r})"

    @property
    def version(self) -> Version | None:
        """The OneRoster version in use (``None`` until "auto" has been detected)."""
        return self._version

    async def __aenter__(self) -> Self:
        if self._closed:
            raise errors.ClientClosed(f"client for district {self.district_id!r} is closed")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the owned session; idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    def requester(self) -> Requester:
        """The request machinery (creating the owned session on first use)."""
        if self._closed:
            raise errors.ClientClosed(f"client for district {self.district_id!r} is closed")
        if self._requester is None:
            if self._session is None:
                connector = aiohttp.TCPConnector(
                    limit=max(8, 2 * self.concurrency), ssl=self._ssl if self._ssl else True
                )
                self._session = aiohttp.ClientSession(connector=connector)
            self._requester = Requester(
                session=self._session,
                auth=self._auth,
                district_id=self.district_id,
                request_timeout=self._timeout,
                retry=self._retry,
                observer=self._observer,
            )
        return self._requester

    def url(self, entity: str, params: list[tuple[str, str]], version: Version) -> yarl.URL:
        """The exact URL sent: root + base path + collection + strictly encoded query."""
        query = encode_query(params)
        text = f"{self._root}{BASE_PATHS[version]}/{entity}" + (f"?{query}" if query else "")
        return yarl.URL(text, encoded=True)

    async def resolve_version(self) -> Version:
        """The configured version, or the one detected by probing ``orgs`` (1.2 first)."""
        if self._version is not None:
            return self._version
        async with self._detect_lock:
            if self._version is None:
                self._version = await self._detect()
        return self._version

    async def _detect(self) -> Version:
        requester = self.requester()
        failures: list[str] = []
        for candidate in ("1.2", "1.1"):
            url = self.url("orgs", [("limit", "1"), ("offset", "0")], candidate)
            try:
                await requester.get(url, "orgs", entity="orgs")
            except (errors.NotFound, errors.BadResponse, errors.BadRequest) as exc:
                failures.append(f"{candidate}: {exc}")
                continue
            log.info("source.version_detected", district_id=self.district_id, version=candidate)
            return candidate
        raise errors.NotFound(
            f"no OneRoster 1.1 or 1.2 base path answers under {self._root} "
            f"({'; '.join(failures)}); set the district's version explicitly"
        )

    def listing(
        self,
        entity: Entity,
        *,
        since: datetime | None = None,
        since_format: TimestampFormat | None = None,
    ) -> Listing:
        """Every page of ``entity`` (records changed after ``since``, when given).

        ``since`` is written in ``since_format``, else the format last observed on this server.
        """
        if self._closed:
            raise errors.ClientClosed(f"client for district {self.district_id!r} is closed")
        return Listing(self, entity, since=since, since_format=since_format)

    async def fetch_one(self, entity: Entity, sourced_id: str) -> dict[str, Any] | None:
        """The single record ``GET {base}/{entity}/{sourcedId}``, or None when the server says
        404 (unknown object). The sourcedId is percent-encoded as one path segment."""
        version = await self.resolve_version()
        segment = quote(sourced_id, safe="")
        url = yarl.URL(f"{self._root}{BASE_PATHS[version]}/{entity}/{segment}", encoded=True)
        try:
            record, _headers = await self.requester().get(
                url, SINGULAR_KEYS[entity], entity=entity, expect=dict
            )
        except errors.NotFound:
            return None
        return dict(record)

    async def filter_answers(self, entity: Entity) -> bool:
        """Whether a delta filter that every record matches (``dateLastModified`` after
        1970-01-02) returns a record: False from a server that cannot parse the filter but
        answers an empty list instead of a 400, or that rejects it."""
        version = await self.resolve_version()
        fmt = self.traits.timestamp_format or DEFAULT_FORMAT
        params = [("limit", "1"), ("offset", "0"), ("filter", delta_filter(_FILTER_PROBE, fmt))]
        try:
            records, _headers = await self.requester().get(
                self.url(entity, params, version), entity, entity=entity, filter_sent=True
            )
        except errors.FilterUnsupported:
            return False
        return bool(records)

    def _sort_params(self) -> list[tuple[str, str]]:
        return [] if self.traits.sorts is False else [("sort", "sourcedId"), ("orderBy", "asc")]


class Listing:
    """An async iterator of :class:`RawPage` over one collection; iterate it once.

    With ``X-Total-Count`` the pages after the first are fetched concurrently (at most
    ``concurrency`` at a time, so memory stays flat) and may arrive out of offset order. Without
    it, pages are fetched one after another until an empty page. Either way the next requests
    are sent before a page is handed over: fetching overlaps the consumer's work. A page
    shorter than asked while the total says more is the server clamping ``limit``: the gap is
    fetched, it is not the end.

    ``complete`` becomes True only when the iterator is exhausted without error and neither the
    total nor ClassLink's ``X-Perm-Rev`` changed on the way; otherwise ``incomplete_reason``
    says why.
    """

    def __init__(
        self,
        client: OneRosterClient,
        entity: Entity,
        *,
        since: datetime | None,
        since_format: TimestampFormat | None,
    ) -> None:
        self.entity: Entity = entity
        self.complete = False
        self.incomplete_reason: str | None = None
        self.observed_format: TimestampFormat | None = None
        self.total: int | None = None
        self.records = 0
        self.pages = 0
        self._client = client
        self._since = since
        self._since_format = since_format
        self._filter: str | None = None
        self._revision: str | None = None
        #: The cursor as sent (truncated to the server's precision) and whether ``>=`` was used.
        self._sent_cursor: datetime | None = None
        self._inclusive = False
        #: True when a delta listing returned a record not newer than its cursor: the server
        #: ignores the filter (the listing is then a full one, and may be used as such).
        self.filter_ignored = False
        self._pages = self._run()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> RawPage:
        return await self._pages.__anext__()

    async def aclose(self) -> None:
        """Stop early: cancels the pages in flight."""
        await self._pages.aclose()

    def _incomplete(self, reason: str) -> None:
        if self.incomplete_reason is None:
            self.incomplete_reason = reason
            log.warning(
                "source.listing_incomplete",
                district_id=self._client.district_id,
                entity=self.entity,
                reason=reason,
            )

    def _page(self, offset: int, records: list[Any]) -> RawPage:
        if self.observed_format is None:
            for record in records:
                if isinstance(record, dict):
                    found = detect_format(record.get("dateLastModified"))
                    if found is not None:
                        self.observed_format = self._client.traits.timestamp_format = found
                        break
        if self._sent_cursor is not None and not self.filter_ignored:
            self._check_filter(records, self._sent_cursor)
        self.records += len(records)
        self.pages += 1
        return RawPage(self.entity, offset, records, self.total)

    def _check_filter(self, records: list[Any], cursor: datetime) -> None:
        if filter_ignored(records, cursor, inclusive=self._inclusive):
            self.filter_ignored = True
            log.warning(
                "source.filter_ignored",
                district_id=self._client.district_id,
                entity=self.entity,
                filter=self._filter,
            )

    async def _fetch(
        self, offset: int, limit: int, *, sort: bool = True
    ) -> tuple[list[Any], int | None]:
        client = self._client
        version = await client.resolve_version()
        params = [("limit", str(limit)), ("offset", str(offset))]
        if sort:
            params += client._sort_params()
        if self._filter is not None:
            params.append(("filter", self._filter))
        url = client.url(self.entity, params, version)
        records, headers = await client.requester().get(
            url, self.entity, entity=self.entity, filter_sent=self._filter is not None
        )
        if len(records) > limit:  # a server ignoring `limit`: the rest belongs to later pages
            records = records[:limit]
        revision = headers.get("X-Perm-Rev")  # ClassLink's dataset revision
        if revision is not None:
            if self._revision is None:
                self._revision = revision
            elif revision != self._revision:
                self._incomplete(f"X-Perm-Rev changed from {self._revision} to {revision}")
        return records, _total(headers)

    async def _first(self) -> tuple[list[Any], int | None]:
        client = self._client
        if client.traits.sorts is False:
            return await self._fetch(0, client.page_size)
        try:
            result = await self._fetch(0, client.page_size)
        except errors.BadRequest:
            # Maybe the server refuses `sort`: ask once more without it before blaming the filter.
            result = await self._fetch(0, client.page_size, sort=False)
            client.traits.sorts = False
            log.info("source.sort_unsupported", district_id=client.district_id, entity=self.entity)
        else:
            client.traits.sorts = True
        return result

    async def _run(self) -> AsyncGenerator[RawPage, None]:
        client = self._client
        if self._since is not None:
            fmt = self._since_format or client.traits.timestamp_format or DEFAULT_FORMAT
            self._filter = delta_filter(self._since, fmt)
            self._sent_cursor = parse_timestamp(fmt.format(self._since))
            self._inclusive = fmt.date_only
        started = time.monotonic()
        bound = log.bind(district_id=client.district_id, entity=self.entity)
        bound.info("source.listing_started", delta=self._filter is not None)
        records, total = await self._first()
        self.total = total
        first = self._page(0, records)
        pages = (
            self._sequential(len(records), first)
            if total is None
            else self._concurrent(total, first)
        )
        async for page in pages:
            yield page
        if self.incomplete_reason is None:
            self.complete = True
        seconds = time.monotonic() - started
        client._observer(
            ListingDone(
                client.district_id,
                self.entity,
                records=self.records,
                pages=self.pages,
                complete=self.complete,
                seconds=seconds,
            )
        )
        bound.info(
            "source.listing_done",
            records=self.records,
            pages=self.pages,
            complete=self.complete,
            seconds=round(seconds, 3),
        )

    async def _sequential(self, offset: int, first: RawPage) -> AsyncIterator[RawPage]:
        """No total: ``first``, then page until an empty page. The next page is requested
        before a page is handed over, so the consumer's work on it overlaps the request."""
        previous = first.records
        pending = self._prefetch(offset) if previous else None
        try:
            if pending is not None:
                await asyncio.sleep(0)
            yield first
            while pending is not None:
                records, total = await pending
                pending = None
                if total is not None and self.total is None:
                    self.total = total
                if not records:
                    return
                if records[0] == previous[0]:
                    raise errors.BadResponse(
                        f"the server returned the same page for offset {offset}: it ignores "
                        "`offset`, so the collection cannot be listed completely",
                        status=200,
                    )
                page = self._page(offset, records)
                offset += len(records)
                previous = records
                pending = self._prefetch(offset)
                await asyncio.sleep(0)  # let the request go out before the consumer works
                yield page
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

    def _prefetch(self, offset: int) -> asyncio.Task[tuple[list[Any], int | None]]:
        return asyncio.create_task(self._fetch(offset, self._client.page_size))

    def _settle(
        self,
        offset: int,
        limit: int,
        records: list[Any],
        *,
        seen_total: int | None,
        total: int,
        gaps: deque[tuple[int, int]],
        step: int,
    ) -> int:
        """Account for one fetched page: note a changed total, queue the gap of a clamped page.

        Returns the page size to ask for from now on.
        """
        if seen_total != total:
            self._incomplete(f"X-Total-Count changed from {total} to {seen_total}")
        expected = min(limit, max(0, total - offset))
        if 0 < len(records) < expected:
            gaps.append((offset + len(records), expected - len(records)))
            return min(step, len(records))
        if not records and expected:
            self._incomplete(f"empty page at offset {offset} of {total}")
        return step

    def _refill(
        self,
        running: dict[asyncio.Task[tuple[list[Any], int | None]], tuple[int, int]],
        gaps: deque[tuple[int, int]],
        next_offset: int,
        step: int,
        total: int,
    ) -> int:
        """Start fetches (gaps first) until ``concurrency`` run; returns the next offset."""
        while len(running) < self._client.concurrency and (gaps or next_offset < total):
            if gaps:
                offset, limit = gaps.popleft()
            else:
                offset, limit = next_offset, step
                next_offset += step
            running[asyncio.create_task(self._fetch(offset, limit))] = (offset, limit)
        return next_offset

    async def _concurrent(self, total: int, first_page: RawPage) -> AsyncIterator[RawPage]:
        """Known total: ``first_page``, then the remaining pages fetched concurrently, filling
        gaps left by clamping. The free slots are refilled before pages are handed over, so the
        requests run while the consumer works on them (at most ``concurrency`` pages in flight
        and as many handed over or waiting to be)."""
        client = self._client
        first = len(first_page.records)
        step = client.page_size
        if 0 < first < min(step, total):
            step = first  # the server clamps `limit`: ask for what it gives
        gaps: deque[tuple[int, int]] = deque()
        next_offset = first if first else total  # an empty first page under a total: done
        if first == 0 and total:
            self._incomplete(f"first page empty although X-Total-Count is {total}")
        running: dict[asyncio.Task[tuple[list[Any], int | None]], tuple[int, int]] = {}
        ready = [first_page]
        try:
            while True:
                next_offset = self._refill(running, gaps, next_offset, step, total)
                if running and ready:
                    await asyncio.sleep(0)  # let the new requests go out before the consumer works
                for page in ready:
                    yield page
                ready = []
                if not running:  # nothing in flight after the refill: no gap, no page left
                    return
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: running[t][0]):
                    offset, limit = running.pop(task)
                    records, seen_total = task.result()
                    step = self._settle(
                        offset,
                        limit,
                        records,
                        seen_total=seen_total,
                        total=total,
                        gaps=gaps,
                        step=step,
                    )
                    if records:
                        ready.append(self._page(offset, records))
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)


__all__ = [
    "BASE_PATHS",
    "Listing",
    "OneRosterClient",
    "Requester",
    "RetryPolicy",
    "VersionSetting",
    "loggable_url",
]
