"""OneRosterClient listings against the scriptable server: paging, totals, clamped pages, revisions,
delta filters and sort, version detection, base paths and the client lifecycle."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import pytest

from producer import errors
from producer.client import BASE_PATHS
from producer.timestamps import TimestampFormat
from tests.oneroster_fake import (
    FakeServer,
    client_for,
    collect,
    ids,
    make_records,
)


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


@pytest.mark.parametrize("send_total", [True, False])
async def test_next_pages_are_requested_while_the_consumer_works_on_a_page(
    server: FakeServer, send_total: bool
) -> None:
    """The listing asks for the next pages before it hands a page over: while the consumer is
    busy with the first page (here: waiting), the requests for the pages after it have already
    reached the server (all of them up to the concurrency with a total, the next one without),
    and the listing still yields every record once."""
    server.records = make_records(95)
    server.send_total = send_total
    async with client_for(server, concurrency=3) as client:
        listing = client.listing("users")
        pages = aiter(listing)
        first = await anext(pages)
        await asyncio.sleep(0.2)  # the consumer's work on the first page
        asked = sorted(int(dict(parse_qsl(q))["offset"]) for q in server.queries)
        assert asked == ([0, 10, 20, 30] if send_total else [0, 10])
        rest = [r async for page in pages for r in page.records]
    assert ids(first.records + rest) == Counter(r["sourcedId"] for r in server.records)
    assert listing.complete
