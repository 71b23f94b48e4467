"""ClassLink discovery: the districts (tenants) that granted our application access.

``GET {host}/applications`` with the partner API key as a bearer, paged with limit/offset until
an empty or short page (it sends no count headers). Only enabled, ``Active`` tenants are kept.
``oneroster_application_id`` arrives already percent-encoded and is used verbatim in paths:
re-encoding turns ``%3D`` into ``%253D`` and requests fail opaquely.

Two access modes:

- ``proxy``: ``{host}/{oneroster_application_id}/ims/oneroster/...`` with the tenant's
  ``bearer`` (ClassLink signs towards the district server for us);
- ``direct``: ``{host}/applications/{id}/server`` gives the district server's URL and OAuth 1.0a
  credentials, used as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp
import structlog
import yarl

from producer import errors
from producer.auth import BearerToken
from producer.client import VersionSetting
from producer.filters import encode_query
from producer.model import Secret
from producer.protocols import ClientObserver, ignore_events
from producer.retry import Requester, RetryPolicy

log = structlog.get_logger(__name__)

Access = Literal["proxy", "direct"]
#: Seconds a ClassLink API request may take.
REQUEST_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True)
class ProxyBearer:
    """Access through ClassLink's proxy with the tenant's static bearer."""

    token: Secret


@dataclass(frozen=True, slots=True)
class DirectOAuth1:
    """Direct access to the district's server, signed with OAuth 1.0a."""

    client_id: str
    client_secret: Secret


@dataclass(frozen=True, slots=True)
class DiscoveredDistrict:
    """One district found through ClassLink, ready to build a ``OneRosterClient`` from."""

    id: str
    tenant_id: str
    tenant_name: str
    #: ``oneroster_application_id`` exactly as ClassLink sent it (already percent-encoded).
    application_id: str
    base_url: str
    version: VersionSetting
    auth: ProxyBearer | DirectOAuth1


def _eligible(app: dict[str, Any]) -> str | None:
    """Why an application is skipped, or ``None`` when it is usable."""
    enabled = app.get("enabled", True)
    if enabled not in (True, 1, "true", "True", "1"):
        return f"not enabled ({enabled!r})"
    status = app.get("tenant_status", "Active")
    if not isinstance(status, str) or status.strip().lower() != "active":
        return f"tenant status {status!r}"
    if not isinstance(app.get("oneroster_application_id"), str) or not app[
        "oneroster_application_id"
    ].strip("/"):
        return "no oneroster_application_id"
    if app.get("tenant_id") in (None, ""):
        return "no tenant_id"
    return None


async def list_applications(
    requester: Requester, host: str, *, page_size: int = 100
) -> list[dict[str, Any]]:
    """Every record of ``/applications`` (limit/offset until an empty or short page)."""
    apps: list[dict[str, Any]] = []
    offset = 0
    previous: list[Any] = []
    while True:
        query = encode_query([("limit", str(page_size)), ("offset", str(offset))])
        url = yarl.URL(f"{host}/applications?{query}", encoded=True)
        page, _ = await requester.get(url, "applications", entity="applications")
        if page and page == previous:
            raise errors.BadResponse(
                "ClassLink /applications ignores offset (same page twice)",
                url=f"{host}/applications",
            )
        apps.extend(app for app in page if isinstance(app, dict))
        if len(page) < page_size:
            return apps
        offset += len(page)
        previous = page


async def _server(requester: Requester, host: str, app_id: str) -> tuple[str, DirectOAuth1] | None:
    url = yarl.URL(f"{host}/applications/{app_id}/server", encoded=True)
    try:
        server, _ = await requester.get(url, "server", entity="applications", expect=dict)
    except (errors.NotFound, errors.Forbidden, errors.BadRequest, errors.BadResponse) as exc:
        log.warning("discovery.server_unavailable", application_id=app_id, error=str(exc))
        return None
    endpoint, client_id, secret = (
        server.get("endpoint_url"),
        server.get("client_id"),
        server.get("client_secret"),
    )
    if not (isinstance(endpoint, str) and endpoint and isinstance(client_id, str) and client_id):
        log.warning("discovery.server_incomplete", application_id=app_id)
        return None
    return endpoint.rstrip("/"), DirectOAuth1(
        client_id, Secret(secret if isinstance(secret, str) else "")
    )


async def discover(
    session: aiohttp.ClientSession,
    *,
    host: str,
    api_key: Secret,
    access: Access = "proxy",
    version: VersionSetting = "1.1",
    page_size: int = 100,
    concurrency: int = 4,
    request_timeout: float = REQUEST_TIMEOUT,
    retry: RetryPolicy = RetryPolicy(),  # noqa: B008 -- frozen value object
    observer: ClientObserver = ignore_events,
) -> list[DiscoveredDistrict]:
    """The usable districts behind ``host`` (ids ``classlink-<tenant_id>``).

    Tenants that are disabled, inactive, lack a bearer (proxy) or whose server details are
    refused (direct) are skipped with a warning. A retriable failure (network, 5xx, 429 after
    retries) raises, so a caller keeps its previous list rather than dropping districts.
    """
    if access not in ("proxy", "direct"):
        raise ValueError(f"access must be 'proxy' or 'direct', not {access!r}")
    host = host.rstrip("/")
    requester = Requester(
        session=session,
        auth=BearerToken(api_key),
        district_id="classlink",
        request_timeout=request_timeout,
        retry=retry,
        observer=observer,
    )
    apps = await list_applications(requester, host, page_size=page_size)
    usable: list[dict[str, Any]] = []
    for app in apps:
        reason = _eligible(app)
        if reason is None and access == "proxy" and not app.get("bearer"):
            reason = "no bearer for proxy access"
        if reason is not None:
            log.info("discovery.skipped", tenant_id=app.get("tenant_id"), reason=reason)
            continue
        usable.append(app)

    gate = asyncio.Semaphore(concurrency)

    async def build(app: dict[str, Any]) -> DiscoveredDistrict | None:
        app_id: str = app["oneroster_application_id"].strip("/")
        tenant = str(app["tenant_id"])
        name = str(app.get("tenant_name") or "")
        if access == "proxy":
            return DiscoveredDistrict(
                f"classlink-{tenant}", tenant, name, app_id, f"{host}/{app_id}", version,
                ProxyBearer(Secret(str(app["bearer"]))),
            )  # fmt: skip
        async with gate:
            found = await _server(requester, host, app_id)
        if found is None:
            return None
        endpoint, creds = found
        return DiscoveredDistrict(
            f"classlink-{tenant}", tenant, name, app_id, endpoint, version, creds
        )

    built = await asyncio.gather(*(build(app) for app in usable))
    districts = [d for d in built if d is not None]
    log.info("discovery.done", applications=len(apps), districts=len(districts), access=access)
    return districts


def bearer_reader(
    session: aiohttp.ClientSession,
    *,
    host: str,
    api_key: Secret,
    tenant_id: str,
    request_timeout: float = REQUEST_TIMEOUT,
    retry: RetryPolicy = RetryPolicy(),  # noqa: B008 -- frozen value object
) -> Callable[[], Awaitable[Secret]]:
    """A token source for :class:`BearerToken` that re-reads the tenant's proxy bearer.

    After a 401 the proxy client re-reads ``/applications`` once: a rotated bearer then works.
    """
    host = host.rstrip("/")

    async def read() -> Secret:
        requester = Requester(
            session=session,
            auth=BearerToken(api_key),
            district_id=f"classlink-{tenant_id}",
            request_timeout=request_timeout,
            retry=retry,
        )
        for app in await list_applications(requester, host):
            if str(app.get("tenant_id")) == tenant_id and app.get("bearer"):
                return Secret(str(app["bearer"]))
        raise errors.AuthFailed(
            f"ClassLink lists no bearer for tenant {tenant_id}: access was revoked or disabled",
            url=f"{host}/applications",
        )

    return read
