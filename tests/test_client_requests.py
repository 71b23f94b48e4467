"""Requests against the scriptable server: transient faults retried (bounded, Retry-After
honoured), client errors typed and never retried, malformed 200s refused."""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest
from aiohttp import web

from producer import errors
from producer.config import config_from_mapping
from producer.districts import DistrictRegistry
from producer.protocols import (
    ClientEvent,
    ListingDone,
    PageFetched,
    RequestRetried,
    ignore_events,
)
from tests.oneroster_fake import (
    FAST,
    TOKEN,
    FakeServer,
    client_for,
    collect,
    ids,
    make_records,
)


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


async def test_200_without_the_data_key_is_an_error_not_an_empty_page(server):
    """A 200 that lacks the collection key is BadResponse (retried, then raised), never empty."""
    server.faults.extend([lambda _: web.json_response({"statusInfoSet": []})] * 10)
    async with client_for(server) as client:
        with pytest.raises(errors.BadResponse, match="without a 'users' list"):
            await collect(client)


async def test_districts_on_one_host_share_kept_alive_connections(server: FakeServer) -> None:
    """Two districts on the same server (a ClassLink proxy, one SIS for many districts) reuse
    each other's kept-alive connection instead of each opening its own."""
    config = config_from_mapping(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:1"},
            "districts": [
                {"id": d, "base_url": server.url, "version": "1.2", "auth": "bearer"}
                | {"bearer": TOKEN}
                for d in ("d1", "d2")
            ],
        },
        {},
    )
    registry = DistrictRegistry(config, observer=ignore_events)
    try:
        for district in ("d1", "d2"):
            listing, records = await collect(registry.client(district))
            assert listing.complete
            assert len(records) == len(server.records)
        ports = set()
        for request in server.requests:
            assert request.transport is not None
            ports.add(request.transport.get_extra_info("peername")[1])
        assert len(server.requests) == 2
        assert len(ports) == 1
    finally:
        await registry.close()
