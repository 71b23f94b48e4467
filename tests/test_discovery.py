"""ClassLink discovery against a small local /applications server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from producer import errors
from producer.discovery import DirectOAuth1, ProxyBearer, bearer_reader, discover
from producer.model import Secret
from producer.retry import RetryPolicy

API_KEY = "partner-key-xyz"
FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)


def app_record(i: int, **extra: Any) -> dict[str, Any]:
    """One /applications record as ClassLink sends it (id already percent-encoded)."""
    record: dict[str, Any] = {
        "id": 1000 + i,
        "tenant_name": f"District {i}",
        "tenant_id": i,
        "application_id": 57,
        "bearer": f"bearer-{i}",
        "name": "ClassLink",
        "oneroster_application_id": f"AppId{i}%3D",
        "enabled": "true",
        "tenant_status": "Active",
    }
    record.update(extra)
    return record


class ClassLink:
    """A /applications endpoint that pages without count headers, plus /server lookups."""

    def __init__(self, apps: list[dict[str, Any]]) -> None:
        self.apps = apps
        self.paths: list[str] = []
        self.failures: list[int] = []
        self.servers: dict[str, dict[str, Any]] = {}
        self.server: BaseTestServer | None = None

    async def _applications(self, request: web.Request) -> web.Response:
        self.paths.append(request.raw_path)
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response({"status": 0, "message": "bad key"}, status=401)
        if self.failures:
            return web.Response(status=self.failures.pop(0))
        limit, offset = int(request.query["limit"]), int(request.query["offset"])
        return web.json_response({"status": 1, "applications": self.apps[offset : offset + limit]})

    async def _server(self, request: web.Request) -> web.Response:
        self.paths.append(request.raw_path)
        app_id = request.raw_path.split("/")[2]
        if app_id not in self.servers:
            return web.json_response({"status": 0, "message": "unknown application"}, status=404)
        return web.json_response({"status": 1, "server": self.servers[app_id], "message": ""})

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def classlink() -> AsyncIterator[ClassLink]:
    fake = ClassLink([app_record(i) for i in range(1, 8)])
    app = web.Application()
    app.router.add_get("/applications", fake._applications)
    app.router.add_get("/applications/{app}/server", fake._server)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        fake.server = server
        yield fake


async def test_proxy_discovery_pages_until_a_short_page(classlink, session):
    """Seven tenants over pages of three: three requests, every tenant once, ids verbatim."""
    found = await discover(
        session, host=classlink.url + "/", api_key=Secret(API_KEY), page_size=3, retry=FAST
    )
    assert [d.id for d in found] == [f"classlink-{i}" for i in range(1, 8)]
    assert [p.split("?")[1] for p in classlink.paths] == [
        "limit=3&offset=0",
        "limit=3&offset=3",
        "limit=3&offset=6",
    ]
    first = found[0]
    assert first.base_url == f"{classlink.url}/AppId1%3D"
    assert first.application_id == "AppId1%3D"
    assert first.auth == ProxyBearer(Secret("bearer-1"))
    assert first.version == "1.1"
    assert "bearer-1" not in repr(first)


async def test_full_last_page_is_followed_by_an_empty_one(classlink, session):
    """When the count is a multiple of the page size, an empty page ends the listing."""
    classlink.apps = classlink.apps[:6]
    found = await discover(session, host=classlink.url, api_key=Secret(API_KEY), page_size=3)
    assert len(found) == 6
    assert classlink.paths[-1].endswith("offset=6")


@pytest.mark.parametrize(
    "change",
    [
        {"enabled": "false"},
        {"enabled": False},
        {"tenant_status": "Inactive"},
        {"oneroster_application_id": None},
        {"bearer": None},
    ],
)
async def test_ineligible_tenants_are_skipped(classlink, session, change):
    """Disabled, inactive, id-less or bearer-less (proxy) tenants are left out."""
    classlink.apps = [app_record(1), app_record(2, **change)]
    found = await discover(session, host=classlink.url, api_key=Secret(API_KEY))
    assert [d.tenant_id for d in found] == ["1"]


async def test_direct_access_reads_server_credentials(classlink, session):
    """Direct mode asks /applications/{id}/server (id verbatim) and uses its OAuth1 creds."""
    classlink.apps = [app_record(1), app_record(2)]
    classlink.servers["AppId1%3D"] = {
        "client_id": "cid",
        "client_secret": "csecret",
        "endpoint_url": "https://sis.one.example/",
    }
    found = await discover(session, host=classlink.url, api_key=Secret(API_KEY), access="direct")
    assert len(found) == 1
    assert found[0].base_url == "https://sis.one.example"
    assert found[0].auth == DirectOAuth1("cid", Secret("csecret"))
    assert "/applications/AppId1%3D/server" in classlink.paths
    assert "/applications/AppId2%3D/server" in classlink.paths


async def test_outage_raises_instead_of_returning_fewer_districts(classlink, session):
    """A persistent 5xx raises (retriable) so callers keep their previous district list."""
    classlink.failures = [503, 503, 503]
    with pytest.raises(errors.SourceUnavailable):
        await discover(session, host=classlink.url, api_key=Secret(API_KEY), retry=FAST)
    classlink.failures = [503]
    assert (
        len(await discover(session, host=classlink.url, api_key=Secret(API_KEY), retry=FAST)) == 7
    )


async def test_wrong_api_key_is_auth_failed(classlink, session):
    """A refused API key raises AuthFailed."""
    with pytest.raises(errors.AuthFailed):
        await discover(session, host=classlink.url, api_key=Secret("nope"))


async def test_bearer_reader_rereads_the_tenant_bearer(classlink, session):
    """The bearer reader finds the tenant's current bearer, and AuthFailed once it is gone."""
    read = bearer_reader(session, host=classlink.url, api_key=Secret(API_KEY), tenant_id="3")
    assert await read() == Secret("bearer-3")
    classlink.apps[2]["bearer"] = "rotated"
    assert await read() == Secret("rotated")
    del classlink.apps[2]
    with pytest.raises(errors.AuthFailed, match="tenant 3"):
        await read()
